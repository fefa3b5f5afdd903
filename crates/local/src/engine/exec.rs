//! Scheduling and running: start tasks, job preparation/release, tasks (single and
//! multi-instance), exit conditions, retries, resource and output files, job completion.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shipyard_batch_api::models::{
    CloudTask, ComputeNodeInformation, ComputeNodeState, ContainerWorkingDirectory,
    DependencyAction, ElevationLevel, EnvironmentSetting, ErrorCategory, ExitOptions, JobAction,
    JobPreparationAndReleaseTaskExecutionInformation, JobPreparationTaskExecutionInformation,
    JobPreparationTaskState, JobReleaseTaskExecutionInformation, JobReleaseTaskState, JobState,
    OnAllTasksComplete, OnTaskFailure, ResourceFile, StartTaskInformation, StartTaskState,
    SubtaskInformation, SubtaskState, TaskAddParameter, TaskContainerSettings, TaskExecutionResult,
    TaskFailureInformation, TaskState, UserIdentity,
};
use tokio_util::sync::CancellationToken;

use super::node::{labels, NodeRef, RunEnd, RunSpec, NODE_ROOT_DIR};
use super::state::{now, TaskRec};
use super::{set_node_state, Engine, Key};

/// The task directory of `job`/`task` under a node root on the host.
pub(crate) fn host_task_dir(root: &Path, job: &str, task: &str) -> PathBuf {
    root.join("workitems").join(job).join("job-1").join(task)
}

pub(crate) fn failure(code: &str, message: impl Into<String>) -> TaskFailureInformation {
    TaskFailureInformation {
        category: ErrorCategory::UserError,
        code: Some(code.into()),
        message: Some(message.into()),
        details: None,
    }
}

pub(crate) fn new_task_record(
    account_url: &str,
    job: &str,
    t: TaskAddParameter,
    seq: u64,
) -> TaskRec {
    let ts = now();
    let task = CloudTask {
        id: Some(t.id.clone()),
        display_name: t.display_name.clone(),
        url: Some(format!("{account_url}/jobs/{job}/tasks/{}", t.id)),
        etag: Some(super::etag()),
        last_modified: Some(ts.clone()),
        creation_time: Some(ts.clone()),
        exit_conditions: t.exit_conditions.clone(),
        state: Some(TaskState::Active),
        state_transition_time: Some(ts),
        command_line: Some(t.command_line.clone()),
        container_settings: t.container_settings.clone(),
        resource_files: t.resource_files.clone(),
        output_files: t.output_files.clone(),
        environment_settings: t.environment_settings.clone(),
        affinity_info: t.affinity_info.clone(),
        constraints: t.constraints.clone(),
        required_slots: Some(t.required_slots.unwrap_or(1)),
        user_identity: t.user_identity.clone(),
        multi_instance_settings: t.multi_instance_settings.clone(),
        depends_on: t.depends_on.clone(),
        application_package_references: t.application_package_references.clone(),
        ..Default::default()
    };
    TaskRec {
        job: job.into(),
        task,
        params: t,
        seq,
        subtasks: vec![],
        nodes: vec![],
        containers: vec![],
    }
}

fn set_task_state(t: &mut CloudTask, s: TaskState) {
    if t.state.as_ref() != Some(&s) {
        t.previous_state = t.state.take();
        t.previous_state_transition_time = t.state_transition_time.take();
        t.state = Some(s);
        t.state_transition_time = Some(now());
    }
}

/// Marks a task completed with an exit code and/or failure.
pub(crate) fn complete_task_record(
    t: &mut TaskRec,
    exit: Option<i32>,
    fail: Option<TaskFailureInformation>,
) {
    let info = t.task.execution_info.get_or_insert_with(Default::default);
    info.end_time = Some(now());
    info.exit_code = exit;
    info.result = Some(if fail.is_none() && exit == Some(0) {
        TaskExecutionResult::Success
    } else {
        TaskExecutionResult::Failure
    });
    info.failure_info = fail;
    set_task_state(&mut t.task, TaskState::Completed);
    t.task.etag = Some(super::etag());
    t.task.last_modified = Some(now());
}

fn parse_duration(s: &str) -> Option<Duration> {
    // ISO 8601 durations as Batch sends them: PnDTnHnMnS (seconds may be fractional).
    let s = s.strip_prefix('P')?;
    let (days, time) = match s.split_once('T') {
        Some((d, t)) => (d, t),
        None => (s, ""),
    };
    let mut secs = 0f64;
    if let Some(d) = days.strip_suffix('D') {
        secs += d.parse::<f64>().ok()? * 86400.0;
    } else if !days.is_empty() {
        return None;
    }
    let mut num = String::new();
    for c in time.chars() {
        match c {
            'H' => {
                secs += num.parse::<f64>().ok()? * 3600.0;
                num.clear();
            }
            'M' => {
                secs += num.parse::<f64>().ok()? * 60.0;
                num.clear();
            }
            'S' => {
                secs += num.parse::<f64>().ok()?;
                num.clear();
            }
            _ => num.push(c),
        }
    }
    // Batch's "unlimited" is ~10675199 days; treat huge values as no limit.
    (secs < 1e9).then(|| Duration::from_secs_f64(secs))
}

/// What to run, before it is placed on a node.
struct Work<'a> {
    name: String,
    command: &'a str,
    container: Option<&'a TaskContainerSettings>,
    env: Vec<(String, String)>,
    identity: Option<&'a UserIdentity>,
    task_dir_in: String,
    host_task_dir: PathBuf,
    timeout: Option<Duration>,
    labels: HashMap<String, String>,
    keep: bool,
}

fn user_of(identity: Option<&UserIdentity>) -> Option<String> {
    let auto = identity.and_then(|i| i.auto_user.as_ref());
    match auto.and_then(|a| a.elevation_level.as_ref()) {
        Some(ElevationLevel::Admin) => None,
        // Batch's default auto-user is non-admin.
        _ if identity.and_then(|i| i.username.as_ref()).is_none()
            && auto.is_none()
            && identity.is_none() =>
        {
            Some("1000:1000".into())
        }
        _ => Some("1000:1000".into()),
    }
}

fn base_env(e: &Engine, node: &NodeRef, ip: &str) -> Vec<(String, String)> {
    vec![
        ("AZ_BATCH_ACCOUNT_NAME".into(), e.inner.opts.account.clone()),
        (
            "AZ_BATCH_ACCOUNT_URL".into(),
            e.inner.opts.account_url.clone(),
        ),
        ("AZ_BATCH_POOL_ID".into(), node.pool.clone()),
        ("AZ_BATCH_NODE_ID".into(), node.id.clone()),
        ("AZ_BATCH_NODE_IS_DEDICATED".into(), "true".into()),
        ("AZ_BATCH_NODE_ROOT_DIR".into(), NODE_ROOT_DIR.into()),
        (
            "AZ_BATCH_NODE_SHARED_DIR".into(),
            format!("{NODE_ROOT_DIR}/shared"),
        ),
        (
            "AZ_BATCH_NODE_STARTUP_DIR".into(),
            format!("{NODE_ROOT_DIR}/startup"),
        ),
        (
            "AZ_BATCH_NODE_STARTUP_WORKING_DIR".into(),
            format!("{NODE_ROOT_DIR}/startup/wd"),
        ),
        ("AZ_BATCH_NODE_IP_ADDRESS".into(), ip.into()),
        (
            "AZ_BATCH_CERTIFICATES_DIR".into(),
            format!("{NODE_ROOT_DIR}/certs"),
        ),
    ]
}

fn add_settings(env: &mut Vec<(String, String)>, s: Option<&Vec<EnvironmentSetting>>) {
    for s in s.into_iter().flatten() {
        env.push((s.name.clone(), s.value.clone().unwrap_or_default()));
    }
}

fn node_ip(e: &Engine, node: &NodeRef) -> String {
    e.lock()
        .nodes
        .get(&(node.pool.clone(), node.id.clone()))
        .and_then(|n| n.node.ip_address.clone())
        .unwrap_or_default()
}

fn spec_of(w: &Work<'_>, e: &Engine, node: &NodeRef) -> Result<RunSpec, String> {
    let argv =
        crate::cmdline::split_command_line(w.command, "commandLine").map_err(|e| e.to_string())?;
    let run = match w.container.and_then(|c| c.container_run_options.as_deref()) {
        Some(o) => {
            let args = crate::cmdline::split_command_line(o, "containerRunOptions")
                .map_err(|e| e.to_string())?;
            crate::cmdline::parse_run_options(&args).map_err(|e| e.to_string())?
        }
        None => Default::default(),
    };
    let image = w
        .container
        .map(|c| c.image_name.clone())
        .unwrap_or_else(|| e.inner.opts.holder_image.clone());
    let working_dir = match w.container.and_then(|c| c.working_directory.as_ref()) {
        Some(ContainerWorkingDirectory::ContainerImageDefault) => None,
        _ => Some(format!("{}/wd", w.task_dir_in)),
    };
    let mut env: Vec<String> = w.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("AZ_BATCH_TASK_DIR={}", w.task_dir_in));
    env.push(format!("AZ_BATCH_TASK_WORKING_DIR={}/wd", w.task_dir_in));
    Ok(RunSpec {
        name: w.name.clone(),
        argv,
        env,
        working_dir,
        user: user_of(w.identity),
        run,
        stdout: w.host_task_dir.join("stdout.txt"),
        stderr: w.host_task_dir.join("stderr.txt"),
        labels: w.labels.clone(),
        timeout: w.timeout,
        keep: w.keep,
        on_node: w.container.is_none(),
        registry: w
            .container
            .and_then(|c| c.registry.as_ref())
            .and_then(super::login_of)
            .or_else(|| {
                shipyard_runtime::registry_auth::login_for(&node.registries, &image).cloned()
            }),
        image,
    })
}

async fn fetch_files(
    e: &Engine,
    files: &[ResourceFile],
    dir: &Path,
) -> Result<(), TaskFailureInformation> {
    if files.is_empty() {
        return Ok(());
    }
    let client = e
        .inner
        .http
        .as_ref()
        .ok_or_else(|| failure("ResourceFileDownloadFailed", "no HTTP client"))?;
    // fetch_resource_files takes `Option<&dyn AutoStorage>` (not Sync), so its future is not
    // Send: drive it on a blocking thread.
    let (client, files, dir) = (client.clone(), files.to_vec(), dir.to_path_buf());
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        handle
            .block_on(shipyard_storage::fetch_resource_files(
                &client, &files, &dir, None,
            ))
            .map(|_| ())
    })
    .await
    .map_err(|err| failure("ResourceFileDownloadFailed", err.to_string()))?
    .map_err(|err| failure("ResourceFileDownloadFailed", err.to_string()))
}

/// Runs one process on a node, in its task dir; returns (exit code, failure).
async fn run_work(
    e: &Engine,
    node: &NodeRef,
    w: Work<'_>,
    files: &[ResourceFile],
    cancel: CancellationToken,
) -> (Option<i32>, Option<TaskFailureInformation>, bool) {
    let wd = w.host_task_dir.join("wd");
    if let Err(err) = std::fs::create_dir_all(&wd) {
        return (
            None,
            Some(failure(
                "TaskDirectoryFailed",
                format!("creating {}: {err}", wd.display()),
            )),
            false,
        );
    }
    super::set_open_mode(&w.host_task_dir);
    if let Err(f) = fetch_files(e, files, &wd).await {
        return (None, Some(f), true);
    }
    super::set_open_mode(&w.host_task_dir);
    let spec = match spec_of(&w, e, node) {
        Ok(s) => s,
        Err(m) => return (None, Some(failure("InvalidCommandLine", m)), false),
    };
    if !files.is_empty() {
        if let Some(user) = spec.run.user.as_deref().or(spec.user.as_deref()) {
            give_files_to(&wd, user);
        }
    }
    let kind = e.kind_of(&node.pool);
    let end = kind.run(node, &spec, cancel).await;
    // A task of its own container leaves it behind; one run on the node (an exec or a
    // process) leaves nothing to remove.
    if !w.keep && !spec.on_node {
        let owner = spec
            .labels
            .get(labels::TASK)
            .map(|t| t.split('/').next().unwrap_or(t));
        remove_later(e, owner.unwrap_or_default(), kind, vec![spec.name.clone()]);
    }
    end_outcome(end)
}

/// Makes the files under `dir` (downloaded by the engine, as root) the task user's, as Batch
/// does; `user` is `uid[:gid]` (names are left alone).
fn give_files_to(dir: &Path, user: &str) {
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    let (Ok(uid), Ok(gid)) = (u.parse::<u32>(), g.parse::<u32>()) else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let p = entry.path();
        if let Err(err) = std::os::unix::fs::lchown(&p, Some(uid), Some(gid)) {
            tracing::debug!(file = %p.display(), error = %err, "chown of a resource file");
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            give_files_to(&p, user);
        }
    }
}

/// Active jobs bound to a pool, oldest first: (seq, job, pool, maxParallelTasks).
fn active_jobs(st: &super::state::State) -> Vec<(u64, String, String, i32)> {
    let mut jobs: Vec<(u64, String, String, i32)> = st
        .jobs
        .values()
        .filter(|j| matches!(j.job.state, Some(JobState::Active)))
        .filter_map(|j| {
            Some((
                j.seq,
                j.params.id.clone(),
                j.params.pool_info.pool_id.clone()?,
                j.job.max_parallel_tasks.unwrap_or(-1),
            ))
        })
        .collect();
    jobs.sort();
    jobs
}

/// How many of a job's active tasks (oldest first) one scheduling round looks at, besides
/// four per free slot: a round costs the same however long the queue is.
const SCHEDULE_WINDOW: usize = 256;

/// Up to `window` of a job's active tasks in submission order.
fn job_tasks(st: &mut super::state::State, job: &str, window: usize) -> Vec<String> {
    if !st.queues.contains_key(job) {
        let mut order: Vec<(u64, String)> = st
            .tasks
            .range((job.to_string(), String::new())..)
            .take_while(|(k, _)| k.0 == job)
            .map(|(k, t)| (t.seq, k.1.clone()))
            .collect();
        order.sort();
        st.queues
            .insert(job.to_string(), super::state::JobQueue { order, first: 0 });
    }
    let (tasks, queues) = (&st.tasks, &mut st.queues);
    let Some(q) = queues.get_mut(job) else {
        return vec![];
    };
    let active = |id: &String| {
        tasks
            .get(&(job.to_string(), id.clone()))
            .is_some_and(|t| matches!(t.task.state, Some(TaskState::Active)))
    };
    while q.first < q.order.len() && !active(&q.order[q.first].1) {
        q.first += 1;
    }
    q.order[q.first..]
        .iter()
        .filter(|(_, id)| active(id))
        .take(window)
        .map(|(_, id)| id.clone())
        .collect()
}

/// How many of a job's tasks run (or prepare).
fn job_running(st: &super::state::State, job: &str) -> i32 {
    st.tasks
        .range((job.to_string(), String::new())..)
        .take_while(|(k, _)| k.0 == job)
        .filter(|(_, t)| {
            matches!(
                t.task.state,
                Some(TaskState::Running) | Some(TaskState::Preparing)
            )
        })
        .count() as i32
}

/// Whether tasks can be placed on node `n` of `pool` (idle or running, scheduling enabled).
fn schedulable(n: &super::state::NodeRec, pool: &str) -> bool {
    n.pool == pool
        && matches!(
            n.node.state,
            Some(ComputeNodeState::Idle) | Some(ComputeNodeState::Running)
        )
        && n.node.scheduling_state != Some(shipyard_batch_api::models::SchedulingState::Disabled)
}

/// Free slots on the schedulable nodes of `pool`.
fn free_slots(st: &super::state::State, pool: &str, slots: i32) -> usize {
    st.nodes
        .values()
        .filter(|n| schedulable(n, pool))
        .map(|n| (slots - n.used_slots).max(0) as usize)
        .sum()
}

/// Frees the `need` slots (its `requiredSlots`) task `key` (`job/task`) held on `nodes` and
/// counts it in their totals.
fn release_nodes(
    st: &mut super::state::State,
    pool: &str,
    nodes: &[String],
    (key, need): (&str, i32),
    ok: bool,
    keys: &mut Vec<Key>,
) {
    for n in nodes {
        if let Some(nr) = st.nodes.get_mut(&(pool.to_string(), n.clone())) {
            nr.tasks.retain(|t| t != key);
            nr.used_slots = (nr.used_slots - need.max(1)).max(0);
            nr.node.running_tasks_count = Some(nr.tasks.len() as i32);
            nr.node.total_tasks_run = Some(nr.node.total_tasks_run.unwrap_or(0) + 1);
            if ok {
                nr.node.total_tasks_succeeded =
                    Some(nr.node.total_tasks_succeeded.unwrap_or(0) + 1);
            }
            if nr.tasks.is_empty() {
                nr.used_slots = 0;
                // An unusable node (its engine died) stays so.
                if matches!(nr.node.state, Some(ComputeNodeState::Running)) {
                    set_node_state(&mut nr.node, ComputeNodeState::Idle);
                }
            }
            nr.node.running_task_slots_count = Some(nr.used_slots);
            keys.push(Key::Node(pool.to_string(), n.clone()));
        }
    }
}

/// Why no task can run on `pool` (every node failed its start task or is unusable), if so.
fn pool_broken(st: &super::state::State, pool: &str) -> Option<String> {
    let nodes: Vec<&super::state::NodeRec> = st.nodes.values().filter(|n| n.pool == pool).collect();
    let broken = !nodes.is_empty()
        && nodes.iter().all(|n| {
            matches!(
                n.node.state,
                Some(ComputeNodeState::StartTaskFailed) | Some(ComputeNodeState::Unusable)
            )
        });
    if !broken {
        return None;
    }
    nodes.first().map(|n| match n.node.state {
        Some(ComputeNodeState::StartTaskFailed) => format!(
            "every node of pool {pool} is in state starttaskfailed: {}",
            n.node
                .start_task_info
                .as_ref()
                .and_then(|i| i.failure_info.as_ref())
                .and_then(|f| f.message.clone())
                .unwrap_or_default()
        ),
        _ => format!("every node of pool {pool} is unusable"),
    })
}

/// `count` schedulable nodes of `pool` with `need` free slots, least used first; else (fewer
/// are free) `Err` with those that are.
fn free_nodes(
    st: &super::state::State,
    pool: &str,
    slots: i32,
    need: i32,
    count: usize,
) -> std::result::Result<Vec<String>, Vec<String>> {
    let mut free: Vec<(i32, String)> = st
        .nodes
        .values()
        .filter(|n| schedulable(n, pool) && slots - n.used_slots >= need)
        .map(|n| (n.used_slots, n.id().to_string()))
        .collect();
    free.sort();
    let enough = free.len() >= count;
    let free = free.into_iter().take(count).map(|(_, n)| n).collect();
    if enough {
        Ok(free)
    } else {
        Err(free)
    }
}

/// Puts task `job/tid` on `chosen` (slots taken, states set); returns the records to save.
fn place(
    st: &mut super::state::State,
    job: &str,
    tid: &str,
    pool: &str,
    chosen: &[String],
    need: i32,
) -> Vec<Key> {
    let mut keys = Vec::new();
    for n in chosen {
        if let Some(nr) = st.nodes.get_mut(&(pool.to_string(), n.clone())) {
            nr.used_slots += need;
            nr.tasks.push(format!("{job}/{tid}"));
            nr.node.running_tasks_count = Some(nr.tasks.len() as i32);
            nr.node.running_task_slots_count = Some(nr.used_slots);
            set_node_state(&mut nr.node, ComputeNodeState::Running);
            keys.push(Key::Node(pool.to_string(), n.clone()));
        }
    }
    if let Some(t) = st.tasks.get_mut(&(job.to_string(), tid.to_string())) {
        t.nodes = chosen.to_vec();
        set_task_state(&mut t.task, TaskState::Preparing);
        t.task.node_info = Some(ComputeNodeInformation {
            affinity_id: Some(chosen[0].clone()),
            pool_id: Some(pool.to_string()),
            node_id: Some(chosen[0].clone()),
            task_root_directory: Some(format!("workitems/{job}/job-1/{tid}")),
            ..Default::default()
        });
    }
    keys
}

/// How one attempt ended: (exit code, failure, whether it was a pre-processing failure).
pub(crate) type Outcome = (Option<i32>, Option<TaskFailureInformation>, bool);

/// The task attempt for how a process ended.
fn end_outcome(end: Result<RunEnd, super::EngineError>) -> Outcome {
    match end {
        Ok(RunEnd::Exited(c)) => (Some(c as i32), None, false),
        Ok(RunEnd::TimedOut) => (
            None,
            Some(failure(
                "MaxWallClockTimeExceeded",
                "the task ran longer than its maxWallClockTime and was killed",
            )),
            false,
        ),
        Ok(RunEnd::Cancelled) => (
            None,
            Some(failure("TaskEnded", "the task was terminated")),
            false,
        ),
        Err(err) => (
            None,
            Some(failure("ContainerFailed", err.to_string())),
            false,
        ),
    }
}

/// Numbers task containers apart across attempts.
static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What every part of one attempt shares.
struct AttemptCtx<'a> {
    job: &'a str,
    task: &'a str,
    refs: &'a [NodeRef],
    hosts: Vec<String>,
    timeout: Option<Duration>,
    params: &'a TaskAddParameter,
    jobenv: Option<&'a Vec<EnvironmentSetting>>,
}

/// Removes ended task containers off the task's critical path (the slot is free at once: a
/// kept container's processes were ended by [`super::NodeKind::end_kept`] before; the pool's
/// deletion and the engine's recovery remove any that a dying engine leaves).
/// The job's end ([`end_job`]) waits for them.
fn remove_later(e: &Engine, job: &str, kind: Arc<dyn super::NodeKind>, names: Vec<String>) {
    let h = tokio::spawn(async move {
        futures::future::join_all(names.iter().map(|n| kind.remove_container(n))).await;
    });
    job_waits_for(e, job, h);
}

/// The job's end waits for `h` (work on its task containers).
fn job_waits_for(e: &Engine, job: &str, h: tokio::task::JoinHandle<()>) {
    if let Ok(mut r) = e.inner.removals.lock() {
        let v = r.entry(job.to_string()).or_default();
        v.retain(|h| !h.is_finished());
        v.push(h);
    }
}

fn labels_for(e: &Engine, node: &NodeRef, what: String) -> HashMap<String, String> {
    let mut l = e.labels(&node.pool);
    l.insert(labels::NODE.into(), format!("{}/{}", node.pool, node.id));
    l.insert(labels::TASK.into(), what);
    l
}

/// Runs the pool's start task on a new node and sets the node's state.
pub(crate) async fn run_start_task(e: &Engine, node: &NodeRef) {
    let st = e
        .lock()
        .pools
        .get(&node.pool)
        .and_then(|p| p.params.start_task.clone());
    let Some(start) = st else {
        e.update_node(&node.pool, &node.id, |n| {
            set_node_state(&mut n.node, ComputeNodeState::Idle)
        });
        e.wake();
        return;
    };
    let wait = start.wait_for_success.unwrap_or(true);
    e.update_node(&node.pool, &node.id, |n| {
        set_node_state(
            &mut n.node,
            if wait {
                ComputeNodeState::WaitingForStartTask
            } else {
                ComputeNodeState::Idle
            },
        );
        n.node.start_task_info = Some(StartTaskInformation {
            state: StartTaskState::Running,
            start_time: now(),
            end_time: None,
            exit_code: None,
            container_info: None,
            failure_info: None,
            retry_count: 0,
            last_retry_time: None,
            result: None,
        });
    });
    e.wake();
    let ip = node_ip(e, node);
    let retries = start.max_task_retry_count.unwrap_or(0);
    let mut attempt = 0;
    let (code, fail) = loop {
        let mut env = base_env(e, node, &ip);
        add_settings(&mut env, start.environment_settings.as_ref());
        let dir = node.root.join("startup");
        let _ = std::fs::remove_file(dir.join("stdout.txt"));
        let _ = std::fs::remove_file(dir.join("stderr.txt"));
        let w = Work {
            name: format!("{}-start-{attempt}", node.holder),
            command: &start.command_line,
            container: start.container_settings.as_ref(),
            env,
            identity: start.user_identity.as_ref(),
            task_dir_in: format!("{NODE_ROOT_DIR}/startup"),
            host_task_dir: dir,
            timeout: None,
            labels: labels_for(e, node, "starttask".into()),
            keep: false,
        };
        let files = start.resource_files.clone().unwrap_or_default();
        let (code, fail, _) = run_work(e, node, w, &files, e.inner.shutdown.child_token()).await;
        let ok = fail.is_none() && code == Some(0);
        if ok || (retries != -1 && attempt >= retries) {
            break (code, fail);
        }
        attempt += 1;
    };
    let ok = fail.is_none() && code == Some(0);
    e.update_node(&node.pool, &node.id, |n| {
        let Some(info) = n.node.start_task_info.as_mut() else {
            return;
        };
        info.state = StartTaskState::Completed;
        info.end_time = Some(now());
        info.exit_code = code;
        info.retry_count = attempt;
        info.result = Some(if ok {
            TaskExecutionResult::Success
        } else {
            TaskExecutionResult::Failure
        });
        info.failure_info = match (&fail, ok) {
            (Some(f), _) => Some(f.clone()),
            (None, false) => Some(failure(
                "FailureExitCode",
                format!("the start task exited with code {}", code.unwrap_or(-1)),
            )),
            _ => None,
        };
        if !ok && wait {
            set_node_state(&mut n.node, ComputeNodeState::StartTaskFailed);
        } else if n.used_slots == 0 {
            set_node_state(&mut n.node, ComputeNodeState::Idle);
        }
    });
    e.wake();
}

impl Engine {
    pub(crate) fn spawn_scheduler(&self) {
        let weak = Arc::downgrade(&self.inner);
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let e = Engine { inner };
                e.schedule().await;
                let notified = {
                    let inner = e.inner.clone();
                    async move {
                        tokio::select! { _ = inner.wake.notified() => {}, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
                    }
                };
                drop(e);
                tokio::select! { _ = notified => {}, _ = shutdown.cancelled() => return }
            }
        });
    }

    /// Places runnable tasks on free nodes.
    async fn schedule(&self) {
        let mut starts = Vec::new();
        let mut failed_jobs = Vec::new();
        // The first multi-instance task of each pool that waits for nodes, with the free ones.
        let mut early: Vec<(String, String, Vec<NodeRef>)> = Vec::new();
        let mut early_pools = std::collections::HashSet::new();
        {
            let mut st = self.lock();
            let jobs = active_jobs(&st);
            for (_, job, pool, max_par) in jobs {
                let Some(p) = st.pools.get(&pool) else {
                    continue;
                };
                if !matches!(
                    p.pool.state,
                    Some(shipyard_batch_api::models::PoolState::Active)
                ) {
                    continue;
                }
                let slots = p.pool.task_slots_per_node.unwrap_or(1);
                let resizing = matches!(
                    p.pool.allocation_state,
                    Some(shipyard_batch_api::models::AllocationState::Resizing)
                );
                let broken = pool_broken(&st, &pool);
                let free = free_slots(&st, &pool, slots);
                if free == 0 && broken.is_none() {
                    continue;
                }
                let window = if broken.is_some() {
                    usize::MAX
                } else {
                    SCHEDULE_WINDOW + 4 * free
                };
                let tasks = job_tasks(&mut st, &job, window);
                let mut running = if max_par >= 0 {
                    job_running(&st, &job)
                } else {
                    0
                };
                for tid in tasks {
                    if max_par >= 0 && running >= max_par {
                        break;
                    }
                    if broken.is_none() && free_slots(&st, &pool, slots) == 0 {
                        break;
                    }
                    let key = (job.clone(), tid.clone());
                    if let Some(reason) = &broken {
                        if let Some(t) = st.tasks.get_mut(&key) {
                            complete_task_record(
                                t,
                                None,
                                Some(failure("NodeStartTaskFailed", reason.clone())),
                            );
                            let _ = self.save(&st, &[Key::Task(job.clone(), tid.clone())]);
                            failed_jobs.push(job.clone());
                        }
                        continue;
                    }
                    let Some(t) = st.tasks.get(&key) else {
                        continue;
                    };
                    match deps_state(&st, &job, &t.params) {
                        Deps::Ready => {}
                        Deps::Wait => continue,
                    }
                    let need = t.params.required_slots.unwrap_or(1).max(1);
                    let count = t
                        .params
                        .multi_instance_settings
                        .as_ref()
                        .map_or(1, |m| m.number_of_instances.unwrap_or(1).max(1))
                        as usize;
                    let chosen = match free_nodes(&st, &pool, slots, need, count) {
                        Ok(chosen) => chosen,
                        Err(free) => {
                            // A multi-instance task waiting for nodes of a pool that is
                            // growing (a new pool's, still starting): its containers are made
                            // on those already free.
                            if resizing
                                && count > 1
                                && !free.is_empty()
                                && !early_pools.contains(&pool)
                            {
                                early_pools.insert(pool.clone());
                                let refs = free
                                    .iter()
                                    .filter_map(|n| self.node_ref(&st, &pool, n))
                                    .collect();
                                early.push((job.clone(), tid.clone(), refs));
                            }
                            continue;
                        }
                    };
                    let mut keys = place(&mut st, &job, &tid, &pool, &chosen, need);
                    keys.push(Key::Task(job.clone(), tid.clone()));
                    let _ = self.save(&st, &keys);
                    running += 1;
                    starts.push((job.clone(), tid, pool.clone(), chosen));
                }
            }
        }
        for j in failed_jobs {
            self.check_job_complete(&j).await;
        }
        for (job, task, refs) in early {
            tracing::debug!(
                job,
                task,
                nodes = refs.len(),
                "containers made ahead on free nodes"
            );
            self.make_kept_ready(&job, &task, &refs);
        }
        for (job, task, pool, nodes) in starts {
            let e = self.clone();
            let token = e.inner.shutdown.child_token();
            if let Ok(mut c) = e.inner.cancels.lock() {
                c.insert((job.clone(), task.clone()), token.clone());
            }
            tokio::spawn(async move { e.run_task(job, task, pool, nodes, token).await });
        }
    }

    async fn run_task(
        self,
        job: String,
        task: String,
        pool: String,
        nodes: Vec<String>,
        cancel: CancellationToken,
    ) {
        let refs: Vec<NodeRef> = {
            let st = self.lock();
            nodes
                .iter()
                .filter_map(|n| self.node_ref(&st, &pool, n))
                .collect()
        };
        let began = std::time::Instant::now();
        let ((code, fail, pre), mut kept) = self.attempt(&job, &task, &refs, cancel.clone()).await;
        tracing::debug!(
            job,
            task,
            ms = began.elapsed().as_millis() as u64,
            "task attempt ran"
        );
        let mut fail = fail;
        let upload_failed = self
            .upload_outputs(&job, &task, &refs, code, &mut fail)
            .await;
        if let Ok(mut c) = self.inner.cancels.lock() {
            c.remove(&(job.clone(), task.clone()));
        }
        let kind = self.kind_of(&pool);
        if self.inner.shutdown.is_cancelled() {
            self.end_kept_later(&job, (&pool, kind), kept, None);
            return;
        }
        let succeeded = code == Some(0) && fail.is_none();
        if !kept.is_empty() && !succeeded {
            // A failed attempt may be retried on the same nodes: its containers go first.
            kind.end_kept(&kept).await;
            remove_later(&self, &job, kind.clone(), std::mem::take(&mut kept));
        }
        // An attempt that did not succeed may have lost a node: its engine died (the health
        // monitor ended the attempt, or the run failed because of it).
        let dead = if code == Some(0) && fail.is_none() {
            None
        } else {
            self.dead_node_of(&pool, &nodes).await
        };
        if let Some((node, message)) = &dead {
            fail = Some(TaskFailureInformation {
                category: ErrorCategory::ServerError,
                ..failure(
                    "NodeUnusable",
                    format!(
                        "node {node} of pool {pool} became unusable while the task ran: {message}"
                    ),
                )
            });
        }
        let cancelled = dead.is_none() && cancel.is_cancelled();
        let mut action = None;
        {
            let mut st = self.lock();
            let mut keys = Vec::new();
            let ok = code == Some(0) && fail.is_none();
            let need = st
                .tasks
                .get(&(job.clone(), task.clone()))
                .and_then(|t| t.params.required_slots)
                .unwrap_or(1);
            let slots = (format!("{job}/{task}"), need, ok);
            // Only a task that succeeded still has kept containers here (it is not retried, so
            // its nodes cannot take it again while they still hold it); the others' were ended
            // above.
            if kept.is_empty() {
                release_nodes(&mut st, &pool, &nodes, (&slots.0, need), ok, &mut keys);
            } else {
                // The task ends now; its nodes are free once its containers are gone.
                self.end_kept_later(
                    &job,
                    (&pool, kind.clone()),
                    std::mem::take(&mut kept),
                    Some((nodes.clone(), slots)),
                );
            }
            let job_retries = st
                .jobs
                .get(&job)
                .and_then(|j| j.job.constraints.as_ref())
                .and_then(|c| c.max_task_retry_count);
            if let Some(t) = st.tasks.get_mut(&(job.clone(), task.clone())) {
                let ok = fail.is_none() && code == Some(0);
                let max = t
                    .params
                    .constraints
                    .as_ref()
                    .and_then(|c| c.max_task_retry_count)
                    .or(job_retries)
                    .unwrap_or(0);
                let retry_count = t.task.execution_info.as_ref().map_or(0, |i| i.retry_count);
                // Batch retries non-zero exits and lost nodes only (not pre-processing/upload
                // failures or termination).
                let retriable = fail.is_none() || dead.is_some();
                if !ok && !cancelled && retriable && (max == -1 || retry_count < max) {
                    let info = t.task.execution_info.get_or_insert_with(Default::default);
                    info.retry_count += 1;
                    info.last_retry_time = Some(now());
                    info.exit_code = code;
                    info.failure_info = fail.clone();
                    set_task_state(&mut t.task, TaskState::Active);
                    if let Some(q) = st.queues.get_mut(&job) {
                        q.first = 0;
                    }
                } else {
                    complete_task_record(t, code, fail.clone());
                    action = Some(exit_options(t, code, fail.is_some(), pre, upload_failed));
                }
                keys.push(Key::Task(job.clone(), task.clone()));
            }
            let _ = self.save(&st, &keys);
        }
        if let Some(opts) = action {
            self.apply_exit_options(&job, &task, opts, fail.is_none() && code == Some(0))
                .await;
        }
        self.check_job_complete(&job).await;
        self.wake();
    }

    /// Ends a multi-instance task's kept containers in the background (every process of
    /// them gone: a coordination command's daemons hold the node's ports), then frees its
    /// nodes (`release`: the nodes and the task's slot key, its slots and whether it
    /// succeeded) and removes the containers. The job's end waits for all of it.
    /// `kind` is the pool's node kind (the caller may hold the state's lock).
    fn end_kept_later(
        &self,
        job: &str,
        (pool, kind): (&str, Arc<dyn super::NodeKind>),
        names: Vec<String>,
        release: Option<(Vec<String>, (String, i32, bool))>,
    ) {
        if names.is_empty() {
            return;
        }
        let (e, job_id, pool) = (self.clone(), job.to_string(), pool.to_string());
        let h = tokio::spawn(async move {
            let began = std::time::Instant::now();
            kind.end_kept(&names).await;
            tracing::debug!(
                job = %job_id,
                ms = began.elapsed().as_millis() as u64,
                "kept containers ended"
            );
            if let Some((nodes, (key, need, ok))) = release {
                {
                    let mut st = e.lock();
                    let mut keys = Vec::new();
                    release_nodes(&mut st, &pool, &nodes, (&key, need), ok, &mut keys);
                    let _ = e.save(&st, &keys);
                }
                e.wake();
            }
            futures::future::join_all(names.iter().map(|n| kind.remove_container(n))).await;
        });
        job_waits_for(self, job, h);
    }

    /// Uploads the task's output files; a failed upload becomes the task's failure (when it
    /// had none). Returns whether an upload failed.
    async fn upload_outputs(
        &self,
        job: &str,
        task: &str,
        refs: &[NodeRef],
        code: Option<i32>,
        fail: &mut Option<TaskFailureInformation>,
    ) -> bool {
        let outputs = {
            let st = self.lock();
            st.tasks
                .get(&(job.to_string(), task.to_string()))
                .and_then(|t| t.params.output_files.clone())
        };
        let (Some(outputs), Some(primary), Some(client)) =
            (outputs, refs.first(), self.inner.http.as_ref())
        else {
            return false;
        };
        let exit = if fail.is_none() {
            code.unwrap_or(-1)
        } else {
            -1
        };
        let outcome = shipyard_storage::TaskOutcome::from_exit_code(exit);
        let dir = host_task_dir(&primary.root, job, task).join("wd");
        match shipyard_storage::upload_output_files(client, &outputs, &dir, outcome).await {
            Ok(_) => false,
            Err(err) => {
                if fail.is_none() {
                    *fail = Some(failure("FileUploadError", err.to_string()));
                }
                true
            }
        }
    }

    /// The job action and dependency action of how a task ended.
    async fn apply_exit_options(&self, job: &str, task: &str, opts: ExitOptions, ok: bool) {
        let on_fail = self
            .lock()
            .jobs
            .get(job)
            .and_then(|j| j.job.on_task_failure.clone());
        let act = opts.job_action.unwrap_or(JobAction::None);
        if !ok
            && on_fail == Some(OnTaskFailure::PerformExitOptionsJobAction)
            && act == JobAction::Terminate
        {
            end_job(self, job, "TaskFailed".into(), false).await;
        }
        if let Some(DependencyAction::Block) = opts.dependency_action {
            let mut st = self.lock();
            if let Some(t) = st.tasks.get_mut(&(job.to_string(), task.to_string())) {
                t.containers = vec!["__blocked__".into()];
            }
            let _ = self.save(&st, &[Key::Task(job.to_string(), task.to_string())]);
        }
    }

    /// One attempt: job preparation, files, run (single or multi-instance). Also the kept
    /// containers of a multi-instance task, still to be ended.
    async fn attempt(
        &self,
        job: &str,
        task: &str,
        refs: &[NodeRef],
        cancel: CancellationToken,
    ) -> (Outcome, Vec<String>) {
        self.make_kept_ready(job, task, refs);
        // On every node of the task at once (each node's own preparation is still once per
        // job); the first failure, in node order, fails the attempt.
        let preps = futures::future::join_all(refs.iter().map(|r| self.ensure_prep(job, r))).await;
        if let Some(f) = preps.into_iter().find_map(Result::err) {
            return ((None, Some(f), true), vec![]);
        }
        let Some((params, jobenv)) = self.mark_running(job, task) else {
            return (
                (
                    None,
                    Some(failure("TaskEnded", "the task was deleted")),
                    false,
                ),
                vec![],
            );
        };
        let Some(primary) = refs.first() else {
            return ((None, Some(failure("NoNode", "no node")), false), vec![]);
        };
        let ctx = self.attempt_ctx(job, task, refs, &params, jobenv.as_ref());
        if params.multi_instance_settings.is_none() {
            let w = self.work(&ctx, primary, &params.command_line, false);
            self.record_containers(job, task, vec![w.name.clone()]);
            let files = params.resource_files.as_deref().unwrap_or_default();
            return (run_work(self, primary, w, files, cancel).await, vec![]);
        }
        self.run_multi_instance(&ctx, cancel).await
    }

    /// A multi-instance task's kept containers are started being made on its nodes now, while
    /// the job preparation runs there ([`super::NodeKind::make_ready`]), not after it.
    fn make_kept_ready(&self, job: &str, task: &str, refs: &[NodeRef]) {
        let Some((params, jobenv)) = self.task_params(&self.lock(), job, task) else {
            return;
        };
        let Some(mi) = params.multi_instance_settings.as_ref() else {
            return;
        };
        let Some(first) = refs.first() else {
            return;
        };
        let ctx = self.attempt_ctx(job, task, refs, &params, jobenv.as_ref());
        let kind = self.kind_of(&first.pool);
        for r in refs {
            let w = self.work(&ctx, r, &mi.coordination_command_line, true);
            if let Ok(spec) = spec_of(&w, self, r) {
                kind.make_ready(r, &spec);
            }
        }
    }

    /// A task's parameters and its job's environment (`None`: the task is gone).
    fn task_params(
        &self,
        st: &super::state::State,
        job: &str,
        task: &str,
    ) -> Option<(TaskAddParameter, Option<Vec<EnvironmentSetting>>)> {
        let t = st.tasks.get(&(job.to_string(), task.to_string()))?;
        let env = st
            .jobs
            .get(job)
            .and_then(|j| j.params.common_environment_settings.clone());
        Some((t.params.clone(), env))
    }

    /// What every command of an attempt of `task` on `refs` is made from.
    fn attempt_ctx<'a>(
        &self,
        job: &'a str,
        task: &'a str,
        refs: &'a [NodeRef],
        params: &'a TaskAddParameter,
        jobenv: Option<&'a Vec<EnvironmentSetting>>,
    ) -> AttemptCtx<'a> {
        AttemptCtx {
            job,
            task,
            refs,
            hosts: refs.iter().map(|r| node_ip(self, r)).collect(),
            timeout: params
                .constraints
                .as_ref()
                .and_then(|c| c.max_wall_clock_time.as_deref())
                .and_then(parse_duration),
            params,
            jobenv,
        }
    }

    /// Marks the task running; returns its parameters and the job's environment.
    fn mark_running(
        &self,
        job: &str,
        task: &str,
    ) -> Option<(TaskAddParameter, Option<Vec<EnvironmentSetting>>)> {
        let mut st = self.lock();
        let found = self.task_params(&st, job, task)?;
        let t = st.tasks.get_mut(&(job.to_string(), task.to_string()))?;
        set_task_state(&mut t.task, TaskState::Running);
        let info = t.task.execution_info.get_or_insert_with(Default::default);
        info.start_time = Some(now());
        let _ = self.save(&st, &[Key::Task(job.to_string(), task.to_string())]);
        Some(found)
    }

    /// The environment of the task on node `r` (address `ip`).
    fn task_env(&self, ctx: &AttemptCtx<'_>, r: &NodeRef, ip: &str) -> Vec<(String, String)> {
        let (job, task) = (ctx.job, ctx.task);
        let mut env = base_env(self, r, ip);
        env.push(("AZ_BATCH_JOB_ID".into(), job.to_string()));
        env.push(("AZ_BATCH_TASK_ID".into(), task.to_string()));
        env.push((
            "AZ_BATCH_JOB_PREP_DIR".into(),
            format!("{NODE_ROOT_DIR}/workitems/{job}/job-1/jobpreparation"),
        ));
        env.push((
            "AZ_BATCH_JOB_PREP_WORKING_DIR".into(),
            format!("{NODE_ROOT_DIR}/workitems/{job}/job-1/jobpreparation/wd"),
        ));
        if ctx.params.multi_instance_settings.is_some() {
            env.push(("AZ_BATCH_HOST_LIST".into(), ctx.hosts.join(",")));
            env.push((
                "AZ_BATCH_MASTER_NODE".into(),
                format!("{}:6000", ctx.hosts[0]),
            ));
            env.push((
                "AZ_BATCH_TASK_SHARED_DIR".into(),
                format!("{NODE_ROOT_DIR}/workitems/{job}/job-1/{task}"),
            ));
            env.push((
                "AZ_BATCH_IS_CURRENT_NODE_MASTER".into(),
                (r.id == ctx.refs[0].id).to_string(),
            ));
        }
        add_settings(&mut env, ctx.jobenv);
        add_settings(&mut env, ctx.params.environment_settings.as_ref());
        env
    }

    /// The work of running `command` for the task on node `r`.
    fn work<'a>(
        &self,
        ctx: &AttemptCtx<'a>,
        r: &NodeRef,
        command: &'a str,
        keep: bool,
    ) -> Work<'a> {
        let (job, task) = (ctx.job, ctx.task);
        let i = ctx.refs.iter().position(|x| x.id == r.id).unwrap_or(0);
        let ip = ctx.hosts.get(i).cloned().unwrap_or_default();
        Work {
            // Unique per attempt: the previous attempt's container may still be being removed.
            name: format!(
                "{}-{}-{}-{:x}.{}",
                r.holder,
                super::sanitize(job),
                super::sanitize(task),
                std::process::id(),
                ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            command,
            container: ctx.params.container_settings.as_ref(),
            env: self.task_env(ctx, r, &ip),
            identity: ctx.params.user_identity.as_ref(),
            task_dir_in: format!("{NODE_ROOT_DIR}/workitems/{job}/job-1/{task}"),
            host_task_dir: host_task_dir(&r.root, job, task),
            timeout: ctx.timeout,
            labels: labels_for(self, r, format!("{job}/{task}")),
            keep,
        }
    }

    /// Multi-instance: a kept container per node; coordination everywhere, then the
    /// application on the primary.
    /// Its outcome and its kept containers, which the caller ends ([`Engine::end_kept_later`]).
    async fn run_multi_instance(
        &self,
        ctx: &AttemptCtx<'_>,
        cancel: CancellationToken,
    ) -> (Outcome, Vec<String>) {
        let Some(mi) = ctx.params.multi_instance_settings.as_ref() else {
            return (
                (None, Some(failure("NoNode", "not multi-instance")), false),
                vec![],
            );
        };
        let (job, task, refs) = (ctx.job, ctx.task, ctx.refs);
        let common = mi.common_resource_files.clone().unwrap_or_default();
        let mut names = Vec::new();
        let coord = refs
            .iter()
            .map(|r| {
                let w = self.work(ctx, r, &mi.coordination_command_line, true);
                names.push(w.name.clone());
                let (common, cancel) = (common.clone(), cancel.clone());
                async move {
                    let dir = w.host_task_dir.clone();
                    let _ = std::fs::create_dir_all(&dir);
                    if let Err(f) = fetch_files(self, &common, &dir).await {
                        return (None, Some(f), true);
                    }
                    run_work(self, r, w, &[], cancel).await
                }
            })
            .collect::<Vec<_>>();
        self.record_containers(job, task, names.clone());
        let results = futures::future::join_all(coord).await;
        self.record_subtasks(job, task, refs, &results);
        let out = match results
            .iter()
            .enumerate()
            .find(|(_, r)| r.1.is_some() || r.0 != Some(0))
        {
            Some((i, r)) => (
                r.0,
                Some(r.1.clone().unwrap_or_else(|| {
                    failure(
                        "CoordinationCommandFailed",
                        format!(
                            "the coordination command exited with code {} on node {}",
                            r.0.unwrap_or(-1),
                            refs[i].id
                        ),
                    )
                })),
                r.2,
            ),
            None => self.run_application(ctx, &names[0], cancel).await,
        };
        (out, names)
    }

    /// The application command line, in the primary's kept container `name`.
    async fn run_application(
        &self,
        ctx: &AttemptCtx<'_>,
        name: &str,
        cancel: CancellationToken,
    ) -> Outcome {
        let primary = &ctx.refs[0];
        let mut w = self.work(ctx, primary, &ctx.params.command_line, true);
        w.name = name.to_string();
        w.labels = HashMap::new();
        let _ = std::fs::remove_file(w.host_task_dir.join("stdout.txt"));
        let _ = std::fs::remove_file(w.host_task_dir.join("stderr.txt"));
        match spec_of(&w, self, primary) {
            Ok(spec) => {
                let end = self
                    .kind_of(&primary.pool)
                    .exec(primary, &spec, spec.argv.clone(), cancel)
                    .await;
                end_outcome(end)
            }
            Err(m) => (None, Some(failure("InvalidCommandLine", m)), false),
        }
    }

    fn record_containers(&self, job: &str, task: &str, names: Vec<String>) {
        let mut st = self.lock();
        if let Some(t) = st.tasks.get_mut(&(job.to_string(), task.to_string())) {
            t.containers = names;
        }
        let _ = self.save(&st, &[Key::Task(job.to_string(), task.to_string())]);
    }

    fn record_subtasks(
        &self,
        job: &str,
        task: &str,
        refs: &[NodeRef],
        results: &[(Option<i32>, Option<TaskFailureInformation>, bool)],
    ) {
        let mut st = self.lock();
        if let Some(t) = st.tasks.get_mut(&(job.to_string(), task.to_string())) {
            t.subtasks = refs
                .iter()
                .zip(results)
                .enumerate()
                .skip(1)
                .map(|(i, (r, res))| SubtaskInformation {
                    id: Some(i as i32),
                    node_info: Some(ComputeNodeInformation {
                        pool_id: Some(r.pool.clone()),
                        node_id: Some(r.id.clone()),
                        affinity_id: Some(r.id.clone()),
                        task_root_directory: Some(format!("workitems/{job}/job-1/{task}")),
                        ..Default::default()
                    }),
                    start_time: Some(now()),
                    end_time: Some(now()),
                    exit_code: res.0,
                    failure_info: res.1.clone(),
                    state: Some(SubtaskState::Completed),
                    state_transition_time: Some(now()),
                    result: Some(if res.0 == Some(0) && res.1.is_none() {
                        TaskExecutionResult::Success
                    } else {
                        TaskExecutionResult::Failure
                    }),
                    ..Default::default()
                })
                .collect();
        }
        let _ = self.save(&st, &[Key::Task(job.to_string(), task.to_string())]);
    }

    /// Job preparation on `node`, once per job (waits if another task is running it).
    async fn ensure_prep(&self, job: &str, node: &NodeRef) -> Result<(), TaskFailureInformation> {
        let Some(prep) = self
            .lock()
            .jobs
            .get(job)
            .and_then(|j| j.params.job_preparation_task.clone())
        else {
            return Ok(());
        };
        let lock = {
            let mut m = self
                .inner
                .prep_locks
                .lock()
                .map_err(|_| failure("InternalError", "lock"))?;
            m.entry((job.to_string(), node.id.clone()))
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        let _g = lock.lock().await;
        let done = self
            .lock()
            .jobs
            .get(job)
            .and_then(|j| j.prep.get(&node.id).cloned());
        if let Some(d) = done.and_then(|d| d.job_preparation_task_execution_info) {
            if d.state == JobPreparationTaskState::Completed {
                return if d.exit_code == Some(0) || !prep.wait_for_success.unwrap_or(true) {
                    Ok(())
                } else {
                    Err(failure(
                        "JobPreparationTaskFailed",
                        format!(
                            "the job preparation task failed on node {} with exit code {}",
                            node.id,
                            d.exit_code.unwrap_or(-1)
                        ),
                    ))
                };
            }
        }
        let start = now();
        self.set_prep(job, node, |p| {
            p.job_preparation_task_execution_info = Some(JobPreparationTaskExecutionInformation {
                start_time: start.clone(),
                end_time: None,
                state: JobPreparationTaskState::Running,
                task_root_directory: Some(format!("workitems/{job}/job-1/jobpreparation")),
                task_root_directory_url: None,
                exit_code: None,
                container_info: None,
                failure_info: None,
                retry_count: 0,
                last_retry_time: None,
                result: None,
            });
        });
        let ip = node_ip(self, node);
        let mut env = base_env(self, node, &ip);
        env.push(("AZ_BATCH_JOB_ID".into(), job.to_string()));
        env.push((
            "AZ_BATCH_TASK_ID".into(),
            prep.id.clone().unwrap_or_else(|| "jobpreparation".into()),
        ));
        add_settings(&mut env, prep.environment_settings.as_ref());
        let w = Work {
            name: format!("{}-{}-prep", node.holder, super::sanitize(job)),
            command: &prep.command_line,
            container: prep.container_settings.as_ref(),
            env,
            identity: prep.user_identity.as_ref(),
            task_dir_in: format!("{NODE_ROOT_DIR}/workitems/{job}/job-1/jobpreparation"),
            host_task_dir: node
                .root
                .join("workitems")
                .join(job)
                .join("job-1")
                .join("jobpreparation"),
            timeout: prep
                .constraints
                .as_ref()
                .and_then(|c| c.max_wall_clock_time.as_deref())
                .and_then(parse_duration),
            labels: labels_for(self, node, format!("{job}/jobpreparation")),
            keep: false,
        };
        let (code, fail, _) = run_work(
            self,
            node,
            w,
            prep.resource_files.as_deref().unwrap_or_default(),
            self.inner.shutdown.child_token(),
        )
        .await;
        let ok = fail.is_none() && code == Some(0);
        self.set_prep(job, node, |p| {
            if let Some(i) = p.job_preparation_task_execution_info.as_mut() {
                i.state = JobPreparationTaskState::Completed;
                i.end_time = Some(now());
                i.exit_code = code;
                i.failure_info = fail.clone();
                i.result = Some(if ok {
                    TaskExecutionResult::Success
                } else {
                    TaskExecutionResult::Failure
                });
            }
        });
        if ok || !prep.wait_for_success.unwrap_or(true) {
            Ok(())
        } else {
            Err(fail.unwrap_or_else(|| {
                failure(
                    "JobPreparationTaskFailed",
                    format!(
                        "the job preparation task failed on node {} with exit code {}",
                        node.id,
                        code.unwrap_or(-1)
                    ),
                )
            }))
        }
    }

    fn set_prep(
        &self,
        job: &str,
        node: &NodeRef,
        f: impl FnOnce(&mut JobPreparationAndReleaseTaskExecutionInformation),
    ) {
        let mut st = self.lock();
        if let Some(j) = st.jobs.get_mut(job) {
            let e = j.prep.entry(node.id.clone()).or_insert_with(|| {
                JobPreparationAndReleaseTaskExecutionInformation {
                    pool_id: Some(node.pool.clone()),
                    node_id: Some(node.id.clone()),
                    ..Default::default()
                }
            });
            f(e);
        }
        let _ = self.save(&st, &[Key::Job(job.to_string())]);
    }

    /// Completes the job when every task is complete and onAllTasksComplete says so.
    pub(crate) async fn check_job_complete(&self, job: &str) {
        let done = {
            let st = self.lock();
            let Some(j) = st.jobs.get(job) else { return };
            matches!(j.job.state, Some(JobState::Active))
                && j.job.on_all_tasks_complete == Some(OnAllTasksComplete::TerminateJob)
                && st
                    .tasks
                    .range((job.to_string(), String::new())..)
                    .take_while(|(k, _)| k.0 == job)
                    .all(|(_, t)| matches!(t.task.state, Some(TaskState::Completed)))
        };
        if done {
            Box::pin(end_job(self, job, "AllTasksComplete".into(), false)).await;
        }
    }
}

enum Deps {
    Ready,
    Wait,
}

fn deps_state(st: &super::state::State, job: &str, p: &TaskAddParameter) -> Deps {
    let Some(d) = &p.depends_on else {
        return Deps::Ready;
    };
    let mut ids: Vec<String> = d.task_ids.clone().unwrap_or_default();
    for r in d.task_id_ranges.iter().flatten() {
        for i in r.start..=r.end {
            ids.push(i.to_string());
        }
    }
    for id in ids {
        match st.tasks.get(&(job.to_string(), id)) {
            Some(t) if matches!(t.task.state, Some(TaskState::Completed)) => {
                let ok = matches!(
                    t.task
                        .execution_info
                        .as_ref()
                        .and_then(|i| i.result.as_ref()),
                    Some(TaskExecutionResult::Success)
                );
                let blocked = t.containers.first().map(String::as_str) == Some("__blocked__");
                if !ok && blocked {
                    return Deps::Wait;
                }
            }
            _ => return Deps::Wait,
        }
    }
    Deps::Ready
}

/// The exit options that apply to how a task ended.
fn exit_options(
    t: &TaskRec,
    code: Option<i32>,
    failed: bool,
    pre: bool,
    upload: bool,
) -> ExitOptions {
    let Some(c) = &t.params.exit_conditions else {
        let fail = failed || code != Some(0);
        return ExitOptions {
            job_action: Some(JobAction::None),
            dependency_action: Some(if fail {
                DependencyAction::Block
            } else {
                DependencyAction::Satisfy
            }),
        };
    };
    let found = if pre {
        c.pre_processing_error.clone()
    } else if upload {
        c.file_upload_error.clone()
    } else if let Some(code) = code {
        c.exit_codes
            .iter()
            .flatten()
            .find(|m| m.code == code)
            .map(|m| m.exit_options.clone())
            .or_else(|| {
                c.exit_code_ranges
                    .iter()
                    .flatten()
                    .find(|r| r.start <= code && code <= r.end)
                    .map(|r| r.exit_options.clone())
            })
    } else {
        None
    };
    let ok = !failed && code == Some(0);
    let mut o = found
        .or_else(|| if ok { None } else { c.default.clone() })
        .unwrap_or_default();
    if o.dependency_action.is_none() {
        o.dependency_action = Some(if ok {
            DependencyAction::Satisfy
        } else {
            DependencyAction::Block
        });
    }
    o
}

/// The start of a job's end: `terminating` (or `deleting`, with `delete`) with the reason,
/// saved. `false` when there is nothing to end (no such job, or a completed one that is not
/// being deleted). A job already in that state keeps its previous state and reason.
pub(crate) fn begin_end_job(e: &Engine, job: &str, reason: &str, delete: bool) -> bool {
    let mut st = e.lock();
    let Some(j) = st.jobs.get_mut(job) else {
        return false;
    };
    if matches!(j.job.state, Some(JobState::Completed)) && !delete {
        return false;
    }
    let target = if delete {
        JobState::Deleting
    } else {
        JobState::Terminating
    };
    if j.job.state != Some(target.clone()) {
        j.job.previous_state = j.job.state.take();
        j.job.state = Some(target);
        j.job.state_transition_time = Some(now());
        // Batch reports why a job ends from the moment it starts ending, so a client that
        // sees a task stopped by the termination can already tell who stopped it.
        if let Some(x) = j.job.execution_info.as_mut() {
            x.terminate_reason.get_or_insert_with(|| reason.to_string());
        }
        let _ = e.save(&st, &[Key::Job(job.to_string())]);
    }
    true
}

/// Ends a job: stops its tasks, runs job release on every node that ran preparation, marks it
/// completed; with `delete`, removes it and its task directories.
pub(crate) async fn end_job(e: &Engine, job: &str, reason: String, delete: bool) {
    // One worker per job: a later caller leaves the end to the running one (a deletion asked
    // for meanwhile is done by it once the termination is over).
    {
        let Ok(mut ending) = e.inner.ending.lock() else {
            return;
        };
        if let Some(d) = ending.get_mut(job) {
            *d |= delete;
            return;
        }
        ending.insert(job.to_string(), delete);
    }
    if begin_end_job(e, job, &reason, delete) {
        end_job_once(e, job, reason.clone(), delete).await;
    }
    let delete_next = e
        .inner
        .ending
        .lock()
        .map(|mut m| m.remove(job) == Some(true))
        .unwrap_or(false);
    if delete_next && !delete && !e.inner.shutdown.is_cancelled() {
        Box::pin(end_job(e, job, reason, true)).await;
    }
}

/// The end of a job (see [`end_job`]), by its one worker.
async fn end_job_once(e: &Engine, job: &str, reason: String, delete: bool) {
    let (tasks, prepped, release, pool) = {
        let st = e.lock();
        let Some(j) = st.jobs.get(job) else {
            return;
        };
        let pool = j.params.pool_info.pool_id.clone().unwrap_or_default();
        let prepped: Vec<String> = j
            .prep
            .iter()
            .filter(|(_, p)| p.job_release_task_execution_info.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        let release = j.params.job_release_task.clone();
        // Not on nodes whose engine died (Batch runs no release on an unusable node).
        let prepped: Vec<String> = prepped
            .into_iter()
            .filter(|n| {
                st.nodes
                    .get(&(pool.clone(), n.clone()))
                    .is_none_or(|n| !matches!(n.node.state, Some(ComputeNodeState::Unusable)))
            })
            .collect();
        let tasks: Vec<String> = st
            .tasks
            .range((job.to_string(), String::new())..)
            .take_while(|(k, _)| k.0 == job)
            .map(|(k, _)| k.1.clone())
            .collect();
        (tasks, prepped, release, pool)
    };
    for t in &tasks {
        e.cancel_task(job, t);
        let mut st = e.lock();
        if let Some(tr) = st.tasks.get_mut(&(job.to_string(), t.clone())) {
            if matches!(tr.task.state, Some(TaskState::Active)) {
                complete_task_record(
                    tr,
                    None,
                    Some(failure(
                        "TaskEnded",
                        format!("the job was terminated ({reason}) before the task ran"),
                    )),
                );
                let _ = e.save(&st, &[Key::Task(job.to_string(), t.clone())]);
            }
        }
    }
    // Wait for running tasks to stop.
    for _ in 0..300 {
        let busy = {
            let st = e.lock();
            tasks.iter().any(|t| {
                st.tasks
                    .get(&(job.to_string(), t.clone()))
                    .is_some_and(|t| {
                        matches!(
                            t.task.state,
                            Some(TaskState::Running) | Some(TaskState::Preparing)
                        )
                    })
            })
        };
        if !busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The release finds the job's task containers gone, as on Batch (they go as each task
    // ends); removals started since are awaited after it.
    super::take_and_await(&e.inner.removals, job).await;
    if let Some(rel) = release {
        let refs: Vec<NodeRef> = {
            let st = e.lock();
            prepped
                .iter()
                .filter_map(|n| e.node_ref(&st, &pool, n))
                .collect()
        };
        let runs = refs.iter().map(|node| {
            let rel = rel.clone();
            async move {
                e.set_prep(job, node, |p| {
                    p.job_release_task_execution_info = Some(JobReleaseTaskExecutionInformation {
                        start_time: now(),
                        end_time: None,
                        state: JobReleaseTaskState::Running,
                        task_root_directory: Some(format!("workitems/{job}/job-1/jobrelease")),
                        task_root_directory_url: None,
                        exit_code: None,
                        container_info: None,
                        failure_info: None,
                        result: None,
                    })
                });
                let ip = node_ip(e, node);
                let mut env = base_env(e, node, &ip);
                env.push(("AZ_BATCH_JOB_ID".into(), job.to_string()));
                env.push((
                    "AZ_BATCH_TASK_ID".into(),
                    rel.id.clone().unwrap_or_else(|| "jobrelease".into()),
                ));
                env.push((
                    "AZ_BATCH_JOB_PREP_DIR".into(),
                    format!("{NODE_ROOT_DIR}/workitems/{job}/job-1/jobpreparation"),
                ));
                add_settings(&mut env, rel.environment_settings.as_ref());
                let w = Work {
                    name: format!("{}-{}-release", node.holder, super::sanitize(job)),
                    command: &rel.command_line,
                    container: rel.container_settings.as_ref(),
                    env,
                    identity: rel.user_identity.as_ref(),
                    task_dir_in: format!("{NODE_ROOT_DIR}/workitems/{job}/job-1/jobrelease"),
                    host_task_dir: node
                        .root
                        .join("workitems")
                        .join(job)
                        .join("job-1")
                        .join("jobrelease"),
                    timeout: Some(
                        rel.max_wall_clock_time
                            .as_deref()
                            .and_then(parse_duration)
                            .unwrap_or(Duration::from_secs(900)),
                    ),
                    labels: labels_for(e, node, format!("{job}/jobrelease")),
                    keep: false,
                };
                let (code, fail, _) = run_work(
                    e,
                    node,
                    w,
                    rel.resource_files.as_deref().unwrap_or_default(),
                    e.inner.shutdown.child_token(),
                )
                .await;
                if e.inner.shutdown.is_cancelled() {
                    // Cut short by the engine's stop: left `running` for the next engine,
                    // which records why and finishes the job's end.
                    return;
                }
                e.set_prep(job, node, |p| {
                    if let Some(i) = p.job_release_task_execution_info.as_mut() {
                        i.state = JobReleaseTaskState::Completed;
                        i.end_time = Some(now());
                        i.exit_code = code;
                        i.result = Some(if fail.is_none() && code == Some(0) {
                            TaskExecutionResult::Success
                        } else {
                            TaskExecutionResult::Failure
                        });
                        i.failure_info = fail;
                    }
                });
            }
        });
        futures::future::join_all(runs).await;
    }
    if e.inner.shutdown.is_cancelled() {
        // The next engine on the state directory resumes this end.
        return;
    }
    // The job ends once its task containers are gone.
    super::take_and_await(&e.inner.removals, job).await;
    let mut st = e.lock();
    if delete {
        let dirs: Vec<PathBuf> = st
            .nodes
            .values()
            .filter(|n| n.pool == pool)
            .map(|n| n.root.join("workitems").join(job))
            .collect();
        let mut keys = vec![Key::Job(job.to_string())];
        for t in &tasks {
            st.tasks.remove(&(job.to_string(), t.clone()));
            st.queues.remove(job);
            keys.push(Key::Task(job.to_string(), t.clone()));
        }
        st.jobs.remove(job);
        let _ = e.save(&st, &keys);
        drop(st);
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        return;
    }
    let deleting_next = e
        .inner
        .ending
        .lock()
        .is_ok_and(|m| m.get(job) == Some(&true));
    if let Some(j) = st.jobs.get_mut(job).filter(|_| !deleting_next) {
        j.job.previous_state = j.job.state.take();
        j.job.state = Some(JobState::Completed);
        j.job.state_transition_time = Some(now());
        if let Some(x) = j.job.execution_info.as_mut() {
            x.end_time = Some(now());
            x.terminate_reason.get_or_insert(reason);
        }
    }
    let _ = e.save(&st, &[Key::Job(job.to_string())]);
}

/// How often the nodes that run tasks are checked for a dead engine (holder container or
/// dockerd): one inspect or socket ping per such node.
const BUSY_NODE_CHECK: Duration = Duration::from_secs(2);
/// How often idle nodes are checked.
const IDLE_NODE_CHECK: Duration = Duration::from_secs(10);
/// Node checks run concurrently by one round of the health check.
const HEALTH_CHECKS_AT_ONCE: usize = 8;
/// A node found dead is checked again after this long before it is marked unusable.
const RECHECK_AFTER: Duration = Duration::from_millis(300);

/// The node error of a node whose engine died: `vm` for VM-like nodes (their dockerd),
/// else the holder container `holder`; `when` says how it was found.
pub(crate) fn death_error(
    vm: bool,
    node: &str,
    holder: &str,
    when: &str,
) -> shipyard_batch_api::models::ComputeNodeError {
    let (code, what) = if vm {
        (
            "NodeEngineDied",
            format!("the Docker engine (dockerd) of node {node} exited or does not answer"),
        )
    } else {
        (
            "NodeContainerGone",
            format!("the holder container {holder} of node {node} is gone or stopped"),
        )
    };
    shipyard_batch_api::models::ComputeNodeError {
        code: Some(code.into()),
        message: Some(format!("{what} ({when})")),
        error_details: None,
    }
}

impl Engine {
    /// Checks node engines while the engine runs: nodes with running tasks every
    /// [`BUSY_NODE_CHECK`], idle ones every [`IDLE_NODE_CHECK`]. A dead node becomes unusable
    /// and its tasks' attempts end (see [`Engine::node_died`]).
    pub(crate) fn spawn_health_monitor(&self) {
        let weak = Arc::downgrade(&self.inner);
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            let mut last_idle = std::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(BUSY_NODE_CHECK) => {}
                    _ = shutdown.cancelled() => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                let e = Engine { inner };
                let idle = last_idle.elapsed() >= IDLE_NODE_CHECK;
                if idle {
                    last_idle = std::time::Instant::now();
                }
                e.check_nodes(idle).await;
            }
        });
    }

    /// Checks the running nodes (and, with `idle`, the idle ones) of active pools.
    async fn check_nodes(&self, idle: bool) {
        let nodes: Vec<(String, String)> = {
            let st = self.lock();
            st.nodes
                .values()
                .filter(|n| {
                    st.pools.get(&n.pool).is_some_and(|p| {
                        matches!(
                            p.pool.state,
                            Some(shipyard_batch_api::models::PoolState::Active)
                        )
                    })
                })
                .filter(|n| match n.node.state {
                    Some(ComputeNodeState::Running) => true,
                    Some(ComputeNodeState::Idle) => idle,
                    _ => false,
                })
                .map(|n| (n.pool.clone(), n.id().to_string()))
                .collect()
        };
        use futures::StreamExt;
        futures::stream::iter(nodes)
            .map(|(pool, node)| {
                let e = self.clone();
                async move {
                    e.check_alive(&pool, &node, "found by the engine's health check")
                        .await
                }
            })
            .buffer_unordered(HEALTH_CHECKS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
    }

    /// Whether node `pool/node` is usable: an unusable node is not; otherwise its engine is
    /// checked, and a dead one is marked (`when` goes into the node error). Returns the node's
    /// error message when it is dead (never for nodes being removed, see [`Engine::node_died`]).
    pub(crate) async fn check_alive(&self, pool: &str, node: &str, when: &str) -> Option<String> {
        let r = {
            let st = self.lock();
            let n = st.nodes.get(&(pool.to_string(), node.to_string()))?;
            if matches!(n.node.state, Some(ComputeNodeState::Unusable)) {
                return Some(node_error_text(n));
            }
            self.node_ref(&st, pool, node)?
        };
        let kind = self.kind_of(pool);
        if kind.node_alive(&r).await {
            return None;
        }
        // Once more after a moment: a slow or failed call of a busy Docker engine is no death.
        tokio::time::sleep(RECHECK_AFTER).await;
        if kind.node_alive(&r).await {
            return None;
        }
        self.node_died(pool, node, when)
    }

    /// Marks a node whose engine died unusable (with a node error naming it and what died)
    /// and ends the attempts of the tasks on it; they are retried elsewhere when their
    /// retries allow ([`Engine::run_task`]). Returns the error message (`None` for a node
    /// being removed, which is left alone).
    pub(crate) fn node_died(&self, pool: &str, node: &str, when: &str) -> Option<String> {
        let (tasks, message) = {
            let mut st = self.lock();
            let p = st.pools.get(pool)?;
            let vm = super::is_vm_pool(&p.params);
            // A pool being deleted, or a node leaving it, loses its engines on purpose.
            if !matches!(
                p.pool.state,
                Some(shipyard_batch_api::models::PoolState::Active)
            ) {
                return None;
            }
            let n = st.nodes.get_mut(&(pool.to_string(), node.to_string()))?;
            match n.node.state {
                Some(ComputeNodeState::LeavingPool) => return None,
                Some(ComputeNodeState::Unusable) => {}
                _ => {
                    let err = death_error(vm, node, &n.holder, when);
                    tracing::warn!(pool, node, error = ?err.message, "node engine died");
                    set_node_state(&mut n.node, ComputeNodeState::Unusable);
                    n.node.errors = Some(vec![err]);
                }
            }
            let out = (n.tasks.clone(), node_error_text(n));
            if let Err(e) = self.save(&st, &[Key::Node(pool.to_string(), node.to_string())]) {
                tracing::warn!(error = %e, "saving node");
            }
            out
        };
        for t in tasks {
            if let Some((j, t)) = t.split_once('/') {
                self.cancel_task(j, t);
            }
        }
        self.wake();
        Some(message)
    }

    /// The first node of `nodes` (of `pool`) that is unusable or whose engine is dead, with
    /// its error message.
    pub(crate) async fn dead_node_of(
        &self,
        pool: &str,
        nodes: &[String],
    ) -> Option<(String, String)> {
        for n in nodes {
            if let Some(m) = self
                .check_alive(pool, n, "found when a task on it failed")
                .await
            {
                return Some((n.clone(), m));
            }
        }
        None
    }
}

/// A node's first error message (its code when it has none).
fn node_error_text(n: &super::state::NodeRec) -> String {
    n.node
        .errors
        .as_ref()
        .and_then(|e| e.first())
        .map(|e| {
            e.message
                .clone()
                .or_else(|| e.code.clone())
                .unwrap_or_default()
        })
        .unwrap_or_else(|| format!("node {} is unusable", n.id()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use shipyard_batch_api::models::{
        ContainerConfiguration, ImageReference, JobAddParameter, PoolAddParameter, PoolInformation,
        TaskConstraints, VirtualMachineConfiguration,
    };

    use super::*;
    use crate::engine::{EngineError, EngineOptions, NodeKind, PoolSetup, Result};

    /// Nodes that live in memory: a node in `dead` is dead; a task whose command names
    /// `slow` runs 6 s (unless cancelled), others end at once; a run on a dead node fails
    /// as Docker does when the holder is gone.
    #[derive(Default)]
    struct FakeNodes {
        dead: Mutex<HashSet<String>>,
        runs: Mutex<Vec<String>>,
    }

    impl FakeNodes {
        fn kill(&self, node: &str) {
            if let Ok(mut d) = self.dead.lock() {
                d.insert(node.to_string());
            }
        }
        fn is_dead(&self, node: &str) -> bool {
            self.dead.lock().is_ok_and(|d| d.contains(node))
        }
        async fn process(
            &self,
            node: &NodeRef,
            spec: &RunSpec,
            cancel: CancellationToken,
        ) -> Result<RunEnd> {
            if let Ok(mut r) = self.runs.lock() {
                r.push(node.id.clone());
            }
            if self.is_dead(&node.id) {
                return Err(EngineError::invalid(
                    "container",
                    "No such container: holder",
                ));
            }
            if !spec.argv.iter().any(|a| a.contains("slow")) {
                return Ok(RunEnd::Exited(0));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(6)) => Ok(RunEnd::Exited(0)),
                _ = cancel.cancelled() => Ok(RunEnd::Cancelled),
            }
        }
    }

    impl NodeKind for FakeNodes {
        fn create_pool<'a>(&'a self, _: &'a PoolSetup) -> BoxFuture<'a, Result<()>> {
            Box::pin(async { Ok(()) })
        }
        fn remove_pool<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<()>> {
            Box::pin(async { Ok(()) })
        }
        fn create_node<'a>(&'a self, _: &'a NodeRef) -> BoxFuture<'a, Result<String>> {
            Box::pin(async { Ok("10.0.0.2".to_string()) })
        }
        fn remove_node<'a>(&'a self, node: &'a NodeRef) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                self.kill(&node.id);
                Ok(())
            })
        }
        fn node_alive<'a>(&'a self, node: &'a NodeRef) -> BoxFuture<'a, bool> {
            Box::pin(async move { !self.is_dead(&node.id) })
        }
        fn run<'a>(
            &'a self,
            node: &'a NodeRef,
            spec: &'a RunSpec,
            cancel: CancellationToken,
        ) -> BoxFuture<'a, Result<RunEnd>> {
            Box::pin(self.process(node, spec, cancel))
        }
        fn exec<'a>(
            &'a self,
            node: &'a NodeRef,
            spec: &'a RunSpec,
            _: Vec<String>,
            cancel: CancellationToken,
        ) -> BoxFuture<'a, Result<RunEnd>> {
            Box::pin(self.process(node, spec, cancel))
        }
        fn remove_container<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<()>> {
            Box::pin(async { Ok(()) })
        }
        fn remove_labelled<'a>(&'a self, _: &'a [(&'a str, &'a str)]) -> BoxFuture<'a, Result<()>> {
            Box::pin(async { Ok(()) })
        }
    }

    fn pool(nodes: i32) -> PoolAddParameter {
        PoolAddParameter {
            id: "p".into(),
            vm_size: "standard_d2s_v3".into(),
            target_dedicated_nodes: Some(nodes),
            virtual_machine_configuration: Some(VirtualMachineConfiguration {
                image_reference: ImageReference::default(),
                node_agent_sku_id: "batch.node.ubuntu 22.04".into(),
                container_configuration: Some(ContainerConfiguration::default()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(id: &str, cmd: &str, retries: i32) -> TaskAddParameter {
        TaskAddParameter {
            id: id.into(),
            command_line: cmd.into(),
            constraints: Some(TaskConstraints {
                max_task_retry_count: Some(retries),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn engine(dir: &Path, nodes: i32) -> (Engine, Arc<FakeNodes>) {
        let fake = Arc::new(FakeNodes::default());
        let e = Engine::open_with_kinds(EngineOptions::new(dir), fake.clone(), fake.clone())
            .await
            .unwrap_or_else(|err| panic!("open: {err}"));
        assert!(e.add_pool(pool(nodes)).await.is_ok());
        wait("idle nodes", || {
            e.list_nodes("p").is_ok_and(|v| {
                v.len() == nodes as usize
                    && v.iter().all(|n| n.state == Some(ComputeNodeState::Idle))
            })
        })
        .await;
        let job = JobAddParameter {
            id: "j".into(),
            pool_info: PoolInformation {
                pool_id: Some("p".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(e.add_job(job).await.is_ok());
        (e, fake)
    }

    async fn wait(what: &str, mut f: impl FnMut() -> bool) {
        let t = std::time::Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `task` of job `j` is completed and returns it.
    async fn completed(e: &Engine, task: &str) -> CloudTask {
        completed_in(e, "j", task).await
    }

    /// Waits until `task` of `job` is completed and returns it.
    async fn completed_in(e: &Engine, job: &str, task: &str) -> CloudTask {
        let mut done = None;
        wait("completed", || {
            done = e
                .get_task(job, task)
                .ok()
                .filter(|t| t.state == Some(TaskState::Completed));
            done.is_some()
        })
        .await;
        done.unwrap_or_default()
    }

    /// Adds task `t` (`slow`, one retry) to job `j` and waits until it runs.
    async fn start_slow_task(e: &Engine) {
        assert!(e.add_tasks("j", vec![task("t", "slow", 1)]).await.is_ok());
        wait("running", || {
            e.get_task("j", "t")
                .is_ok_and(|t| t.state == Some(TaskState::Running))
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_health_check_finds_a_dead_node_under_a_task_which_is_retried_elsewhere() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (e, fake) = engine(dir.path(), 2).await;
        start_slow_task(&e).await;
        let first = e
            .get_task("j", "t")
            .ok()
            .and_then(|t| t.node_info)
            .and_then(|n| n.node_id)
            .unwrap_or_default();
        // The task keeps running on the dead node (as a process would): only the health
        // check can find it.
        fake.kill(&first);
        let t0 = std::time::Instant::now();
        wait("the node unusable", || {
            e.get_node("p", &first)
                .is_ok_and(|n| n.state == Some(ComputeNodeState::Unusable))
        })
        .await;
        assert!(t0.elapsed() < BUSY_NODE_CHECK + RECHECK_AFTER + Duration::from_secs(1));
        let node = e.get_node("p", &first).unwrap_or_default();
        let err = node.errors.unwrap_or_default().pop().unwrap_or_default();
        assert_eq!(err.code.as_deref(), Some("NodeContainerGone"));
        assert!(err.message.unwrap_or_default().contains(&first));
        let t = completed(&e, "t").await;
        let info = t.execution_info.unwrap_or_default();
        assert_eq!(info.retry_count, 1);
        assert_eq!(info.result, Some(TaskExecutionResult::Success));
        assert_eq!(info.failure_info, None);
        let second = t.node_info.and_then(|n| n.node_id).unwrap_or_default();
        assert!(!second.is_empty() && second != first);
        assert_eq!(
            fake.runs.lock().map(|r| r.clone()).unwrap_or_default(),
            vec![first.clone(), second.clone()]
        );
        assert_eq!(
            e.get_node("p", &first).ok().and_then(|n| n.state),
            Some(ComputeNodeState::Unusable),
            "a dead node stays unusable after its task left"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_failing_on_a_dead_node_fails_the_task_naming_the_node_when_no_retry_is_left() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (e, fake) = engine(dir.path(), 1).await;
        let node = e
            .list_nodes("p")
            .ok()
            .and_then(|v| v.into_iter().next())
            .and_then(|n| n.id)
            .unwrap_or_default();
        fake.kill(&node);
        assert!(e.add_tasks("j", vec![task("t", "quick", 0)]).await.is_ok());
        let info = completed(&e, "t").await.execution_info.unwrap_or_default();
        assert_eq!(info.retry_count, 0);
        assert_eq!(info.result, Some(TaskExecutionResult::Failure));
        let fi = info.failure_info.unwrap_or_else(|| failure("none", ""));
        assert_eq!(fi.code.as_deref(), Some("NodeUnusable"));
        assert_eq!(fi.category, ErrorCategory::ServerError);
        let msg = fi.message.unwrap_or_default();
        assert!(
            msg.contains(&node) && msg.contains("holder container"),
            "{msg}"
        );
        assert_eq!(
            e.get_node("p", &node).ok().and_then(|n| n.state),
            Some(ComputeNodeState::Unusable)
        );
        // Nothing is placed on it any more: a new task fails, the pool having no usable node.
        assert!(e.add_tasks("j", vec![task("u", "quick", 0)]).await.is_ok());
        let msg = completed(&e, "u")
            .await
            .execution_info
            .and_then(|i| i.failure_info)
            .and_then(|f| f.message)
            .unwrap_or_default();
        assert!(msg.contains("unusable"), "{msg}");
        assert_eq!(fake.runs.lock().map(|r| r.len()).unwrap_or_default(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_removed_by_a_resize_is_no_node_death() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (e, _fake) = engine(dir.path(), 1).await;
        start_slow_task(&e).await;
        let r = shipyard_batch_api::models::PoolResizeParameter {
            target_dedicated_nodes: Some(0),
            ..Default::default()
        };
        assert!(e.resize_pool("p", r).await.is_ok());
        let info = completed(&e, "t").await.execution_info.unwrap_or_default();
        assert_eq!(info.retry_count, 0, "{info:?}");
        let code = info.failure_info.and_then(|f| f.code);
        assert_eq!(code.as_deref(), Some("TaskEnded"));
        assert!(e.list_nodes("p").is_ok_and(|v| v.is_empty()));
    }

    /// Job `r` on pool `p` with a job preparation and a release whose command is `release`.
    async fn job_with_release(e: &Engine, release: &str) {
        use shipyard_batch_api::models::{JobPreparationTask, JobReleaseTask};
        let job = JobAddParameter {
            id: "r".into(),
            pool_info: PoolInformation {
                pool_id: Some("p".into()),
                ..Default::default()
            },
            job_preparation_task: Some(JobPreparationTask {
                command_line: "prep".into(),
                ..Default::default()
            }),
            job_release_task: Some(JobReleaseTask {
                command_line: release.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(e.add_job(job).await.is_ok());
        assert!(e.add_tasks("r", vec![task("t", "quick", 0)]).await.is_ok());
        completed_in(e, "r", "t").await;
    }

    /// Waits until job `r` is completed; returns its release on the (one) node.
    async fn release_once_completed(e: &Engine) -> JobReleaseTaskExecutionInformation {
        wait("the job completed", || {
            e.get_job("r")
                .is_ok_and(|j| j.state == Some(JobState::Completed))
        })
        .await;
        let status = e.prep_release_status("r").unwrap_or_default();
        let release = status
            .first()
            .and_then(|n| n.job_release_task_execution_info.clone());
        let Some(release) = release else {
            panic!("no release: {status:?}");
        };
        release
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn terminating_a_job_answers_at_once_and_the_job_completes_after_its_release() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (e, _) = engine(dir.path(), 1).await;
        job_with_release(&e, "slow release").await;
        let t0 = std::time::Instant::now();
        assert!(e.terminate_job("r", None).await.is_ok());
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        let job = e.get_job("r").unwrap_or_default();
        assert_eq!(job.state, Some(JobState::Terminating));
        assert_eq!(job.previous_state, Some(JobState::Active));
        let release = release_once_completed(&e).await;
        // Only after the release (6 s) ran to its end.
        assert!(t0.elapsed() >= Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(
            (release.state, release.exit_code),
            (JobReleaseTaskState::Completed, Some(0))
        );
        assert_eq!(
            e.get_job("r").unwrap_or_default().previous_state,
            Some(JobState::Terminating)
        );
        // Deleting answers at once too; the job is `deleting` until it is gone.
        assert!(e.delete_job("r").await.is_ok());
        let state = e.get_job("r").ok().and_then(|j| j.state);
        assert!(
            matches!(state, None | Some(JobState::Deleting)),
            "{state:?}"
        );
        wait("the job gone", || e.get_job("r").is_err()).await;
        e.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_deleted_while_it_terminates_runs_its_release_once_and_goes_without_completing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (e, fake) = engine(dir.path(), 1).await;
        job_with_release(&e, "slow release").await;
        let runs_before = fake.runs.lock().map(|r| r.len()).unwrap_or(0);
        let t0 = std::time::Instant::now();
        assert!(e.terminate_job("r", None).await.is_ok());
        let again = e.terminate_job("r", None).await.map_err(|e| e.to_string());
        assert!(
            again
                .as_ref()
                .is_err_and(|m| m.contains("JobBeingTerminated")),
            "{again:?}"
        );
        assert!(e.delete_job("r").await.is_ok());
        let twice = e.delete_job("r").await.map_err(|e| e.to_string());
        assert!(
            twice.as_ref().is_err_and(|m| m.contains("JobBeingDeleted")),
            "{twice:?}"
        );
        let mut seen = Vec::new();
        wait("the job gone", || match e.get_job("r") {
            Ok(j) => {
                seen.push(j.state);
                false
            }
            Err(_) => true,
        })
        .await;
        assert!(
            seen.iter().all(|s| *s == Some(JobState::Deleting)),
            "{seen:?}"
        );
        // Gone only once the release (6 s) was over, not while it ran.
        assert!(t0.elapsed() >= Duration::from_secs(5), "{:?}", t0.elapsed());
        let runs = fake.runs.lock().map(|r| r.len()).unwrap_or(0);
        assert_eq!(runs - runs_before, 1, "the release ran once");
        e.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_found_ending_when_the_engine_reopens_finishes_ending_with_the_cut_release_failed(
    ) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (e, _) = engine(dir.path(), 1).await;
        job_with_release(&e, "quick release").await;
        // As an engine stopped while the release ran leaves it: `terminating`, the release
        // `running` on the node.
        assert!(begin_end_job(&e, "r", "UserTerminate", false));
        let node = {
            let st = e.lock();
            let id = st.nodes.values().next().map(|n| n.id().to_string());
            id.and_then(|id| e.node_ref(&st, "p", &id))
        };
        let Some(node) = node else {
            panic!("no node");
        };
        e.set_prep("r", &node, |p| {
            p.job_release_task_execution_info = Some(JobReleaseTaskExecutionInformation {
                start_time: now(),
                end_time: None,
                state: JobReleaseTaskState::Running,
                task_root_directory: None,
                task_root_directory_url: None,
                exit_code: None,
                container_info: None,
                failure_info: None,
                result: None,
            })
        });
        e.close().await;
        let fake = Arc::new(FakeNodes::default());
        let e = Engine::open_with_kinds(EngineOptions::new(dir.path()), fake.clone(), fake)
            .await
            .unwrap_or_else(|err| panic!("reopen: {err}"));
        let release = release_once_completed(&e).await;
        assert_eq!(release.state, JobReleaseTaskState::Completed);
        assert_eq!(release.result, Some(TaskExecutionResult::Failure));
        let code = release.failure_info.and_then(|f| f.code);
        assert_eq!(code.as_deref(), Some("EngineRestarted"));
        assert_eq!(
            e.get_job("r")
                .ok()
                .and_then(|j| j.execution_info)
                .and_then(|x| x.terminate_reason),
            Some("UserTerminate".to_string())
        );
        e.close().await;
    }
}
