//! [`LocalBackend`]: connecting, running a job (bag of tasks with slots, dependencies,
//! retries and job actions), listing recorded jobs and tasks, sweeping leftovers.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shipyard_runtime::registry_auth::{registry_of, RegistryLogin};
use tokio_util::sync::CancellationToken;

use crate::docker::Engine;
use crate::error::{LocalError, Result};
use crate::events::{EventSender, Events};
use crate::job_run::{JobRun, RunGuard, Schedule};
use crate::keys::{KeyMount, RunKeys};
use crate::spec::LocalJob;
use crate::store::{JobRecord, JobState, Store, TaskRecord, TaskResult};
use crate::sweep::SweepReport;
use crate::task::RunCtx;

/// Name of the store file inside the state directory.
pub const STORE_FILE: &str = "shipyard.redb";

/// Settings of the local backend. `Default` gives sensible values; setters consume and return.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Where task output and the store live (`<state>/jobs/<job>/tasks/<task>/stdout.txt`).
    /// Default: `$SHIPYARD_STATE_DIR`, else `$XDG_STATE_HOME/shipyard`, else
    /// `~/.local/state/shipyard`.
    pub state_dir: PathBuf,
    /// Task slots: how many tasks run at once unless the job says otherwise. Default: the
    /// number of CPUs.
    pub max_parallel_tasks: usize,
    /// How long every node's sshd may take to answer on port 23.
    pub sshd_timeout: Duration,
    /// How long the coordination command may take to return.
    pub coordination_timeout: Duration,
    /// Emit [`Event::Output`] for every line of output.
    pub stream_output: bool,
    /// Extra labels on every Docker object (tests add `shipyard.test=1`).
    pub extra_labels: Vec<(String, String)>,
    /// Parent of the private per-run key directories. Default: the system temp dir.
    pub key_dir: PathBuf,
    /// Mount the private key and client config on every node, not only the master (for
    /// launchers that ssh from non-master nodes, e.g. Open MPI tree spawn beyond 64 nodes).
    pub keys_on_all_nodes: bool,
    /// Sweep leftovers of dead runs when connecting.
    pub sweep_on_connect: bool,
    /// Probe the nodes' sshd from inside the master container instead of from this process
    /// (automatic when the nodes' network is unreachable from here).
    pub probe_from_master: bool,
    /// Rerun a job id whose earlier run finished (its records are replaced). A job id whose
    /// run is active is refused either way ([`LocalError::JobExists`]). Default: false.
    pub recreate: bool,
    /// Logins for private registries (`credentials.docker_registry`): a task image that is not
    /// present locally and whose registry has a login here is pulled with it before the run.
    /// Images of other registries must be present (nothing else is reachable from a laptop
    /// without credentials either).
    pub registry_logins: Vec<RegistryLogin>,
}

fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SHIPYARD_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("shipyard");
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".local/state/shipyard")
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            state_dir: default_state_dir(),
            max_parallel_tasks: std::thread::available_parallelism().map_or(2, |n| n.get()),
            sshd_timeout: Duration::from_secs(30),
            coordination_timeout: Duration::from_secs(120),
            stream_output: false,
            extra_labels: Vec::new(),
            key_dir: std::env::temp_dir(),
            keys_on_all_nodes: false,
            sweep_on_connect: true,
            probe_from_master: false,
            recreate: false,
            registry_logins: Vec::new(),
        }
    }
}

impl LocalOptions {
    /// Adds a login to [`LocalOptions::registry_logins`].
    pub fn registry_login(mut self, login: RegistryLogin) -> Self {
        self.registry_logins.push(login);
        self
    }

    /// Sets [`LocalOptions::state_dir`].
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = dir.into();
        self
    }
    /// Sets [`LocalOptions::max_parallel_tasks`].
    pub fn max_parallel_tasks(mut self, n: usize) -> Self {
        self.max_parallel_tasks = n.max(1);
        self
    }
    /// Sets [`LocalOptions::sshd_timeout`].
    pub fn sshd_timeout(mut self, d: Duration) -> Self {
        self.sshd_timeout = d;
        self
    }
    /// Sets [`LocalOptions::stream_output`].
    pub fn stream_output(mut self, on: bool) -> Self {
        self.stream_output = on;
        self
    }
    /// Adds a label to every Docker object.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_labels.push((key.into(), value.into()));
        self
    }
    /// Sets [`LocalOptions::key_dir`].
    pub fn key_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.key_dir = dir.into();
        self
    }
    /// Sets [`LocalOptions::coordination_timeout`].
    pub fn coordination_timeout(mut self, d: Duration) -> Self {
        self.coordination_timeout = d;
        self
    }
    /// Sets [`LocalOptions::keys_on_all_nodes`].
    pub fn keys_on_all_nodes(mut self, on: bool) -> Self {
        self.keys_on_all_nodes = on;
        self
    }
    /// Sets [`LocalOptions::probe_from_master`].
    pub fn probe_from_master(mut self, on: bool) -> Self {
        self.probe_from_master = on;
        self
    }
    /// Sets [`LocalOptions::sweep_on_connect`].
    pub fn sweep_on_connect(mut self, on: bool) -> Self {
        self.sweep_on_connect = on;
        self
    }
    /// Sets [`LocalOptions::recreate`].
    pub fn recreate(mut self, on: bool) -> Self {
        self.recreate = on;
        self
    }
    /// The store of this state directory (usable without Docker).
    pub fn store(&self) -> Store {
        Store::new(self.state_dir.join(STORE_FILE))
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    /// Job id.
    pub job_id: String,
    /// The run's uuid (the `shipyard.run` label of everything it created).
    pub run_id: String,
    /// Final job state.
    pub state: JobState,
    /// Why the job was terminated, if it was (`AllTasksComplete`, `TaskFailed`, `Cancelled`).
    pub terminate_reason: Option<String>,
    /// Whether the run was cancelled.
    pub cancelled: bool,
    /// Every task, in the job's order.
    pub tasks: Vec<TaskRecord>,
}

impl JobOutcome {
    /// True when every task completed with exit code 0.
    pub fn succeeded(&self) -> bool {
        !self.cancelled
            && self
                .tasks
                .iter()
                .all(|t| t.result == Some(TaskResult::Success))
    }

    /// A process exit code for the run: 0 on success, 130 when cancelled, else the first
    /// failed task's exit code (1 when it has none or it does not fit 1..=255).
    pub fn exit_code(&self) -> i32 {
        if self.succeeded() {
            return 0;
        }
        if self.cancelled {
            return 130;
        }
        self.tasks
            .iter()
            .find(|t| t.result != Some(TaskResult::Success))
            .and_then(|t| t.exit_code)
            .filter(|c| (1..=255).contains(c))
            .map_or(1, |c| c as i32)
    }

    /// The task with `id`.
    pub fn task(&self, id: &str) -> Option<&TaskRecord> {
        self.tasks.iter().find(|t| t.id == id)
    }
}

/// The local backend: a connected Docker engine plus a state directory.
#[derive(Debug)]
pub struct LocalBackend {
    engine: Engine,
    opts: LocalOptions,
    store: Store,
    cancel: CancellationToken,
}

impl LocalBackend {
    /// Connects to Docker (`DOCKER_HOST` or the local socket) and, unless disabled, sweeps
    /// leftovers of dead runs.
    pub async fn connect(opts: LocalOptions) -> Result<Self> {
        let engine = Engine::connect().await?;
        let backend = LocalBackend {
            store: opts.store(),
            engine,
            opts,
            cancel: CancellationToken::new(),
        };
        if backend.opts.sweep_on_connect {
            let r = backend.sweep().await?;
            if !r.dead_runs.is_empty() {
                tracing::info!(
                    runs = r.dead_runs.len(),
                    objects = r.objects_removed,
                    "swept leftovers of dead runs"
                );
            }
        }
        Ok(backend)
    }

    /// The options in use.
    pub fn options(&self) -> &LocalOptions {
        &self.opts
    }

    /// A token that cancels every run of this backend (wire Ctrl-C / SIGTERM to it). A
    /// cancelled run stops its tasks, removes everything and returns an outcome with
    /// `cancelled: true`.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// The embedded store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Every recorded job.
    pub fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        self.store.list_jobs()
    }

    /// The recorded tasks of `job`.
    pub fn list_tasks(&self, job: &str) -> Result<Vec<TaskRecord>> {
        self.store.list_tasks(job)
    }

    /// Removes containers, networks, volumes and key directories of runs whose process is gone.
    pub async fn sweep(&self) -> Result<SweepReport> {
        crate::sweep::sweep(&self.engine, &self.opts.key_dir).await
    }

    /// Runs `job` to completion (or cancellation) and returns how it ended. Task failures are
    /// reported in the outcome; `Err` means the job could not start (invalid job, missing image,
    /// Docker trouble). Dropping the future stops the tasks and removes their containers too.
    pub async fn run_spec(&self, job: LocalJob, events: Option<EventSender>) -> Result<JobOutcome> {
        self.run_with(job, KeyMount::RootSsh, events).await
    }

    /// Runs a runtime's plan (made for a native container pool, e.g. with
    /// [`crate::convert::pool_facts`]) unmodified: the job's key files are mounted where the
    /// docker runtime's native coordination command installs them from
    /// (`$AZ_BATCH_NODE_SHARED_DIR/shipyard/ssh/<job>/`).
    pub async fn run_plan(
        &self,
        job_id: &str,
        plan: &shipyard_runtime::JobPlan,
        events: Option<EventSender>,
    ) -> Result<JobOutcome> {
        let spec = crate::convert::job_from_plan(job_id, plan)?;
        let dir = format!(
            "{}/shared/{}",
            crate::env::NODE_ROOT_DIR,
            shipyard_runtime::ssh::node_key_dir_relative(job_id)
        );
        self.run_with(spec, KeyMount::Directory(dir), events).await
    }

    /// Plans `job` with `runtime` for this machine ([`crate::convert::pool_facts`]) and runs the
    /// plan ([`LocalBackend::run_plan`]).
    pub async fn run_job(
        &self,
        job: &shipyard_runtime::JobSpec,
        runtime: &dyn shipyard_runtime::ContainerRuntime,
        events: Option<EventSender>,
    ) -> Result<JobOutcome> {
        let plan = runtime.plan(job, &crate::convert::pool_facts(job))?;
        self.run_plan(&job.id, &plan, events).await
    }

    async fn run_with(
        &self,
        job: LocalJob,
        key_mount: KeyMount,
        events: Option<EventSender>,
    ) -> Result<JobOutcome> {
        job.validate()?;
        let deps = resolve_dependencies(&job)?;
        self.check_images(&job).await?;
        let run_id = uuid::Uuid::new_v4().to_string();
        let ctx = Arc::new(RunCtx {
            engine: self.engine.clone(),
            opts: self.opts.clone(),
            job: job.id.clone(),
            run_id: run_id.clone(),
            keys: self.run_keys(&job, &run_id)?,
            key_mount,
            events: Events(events),
        });
        let slots = job
            .max_parallel_tasks
            .unwrap_or(self.opts.max_parallel_tasks)
            .max(1);
        let schedule = Schedule::new(deps, slots);
        let mut run = JobRun::start(&job, ctx, self.store.clone(), schedule, self.opts.recreate)?;
        let cancel = self.cancel.child_token();
        // If this future is dropped mid-run, remove everything of the run before returning.
        let guard = RunGuard::new(&run_id);
        run.drive(&job, &cancel).await;
        guard.disarm();
        run.finish(job, self.cancel.is_cancelled()).await
    }

    /// Makes every task image present: an absent one is pulled when its registry has a login
    /// in [`LocalOptions::registry_logins`] ([`LocalError::ImagePull`] naming image, registry
    /// and user when that fails); otherwise the first absent image is
    /// [`LocalError::ImageMissing`].
    async fn check_images(&self, job: &LocalJob) -> Result<()> {
        let mut checked = HashSet::new();
        for t in &job.tasks {
            if !checked.insert(t.image.clone()) || self.engine.image_exists(&t.image).await? {
                continue;
            }
            let registry = registry_of(&t.image);
            let Some(login) = self
                .opts
                .registry_logins
                .iter()
                .find(|l| l.server == registry)
            else {
                return Err(LocalError::ImageMissing {
                    task: t.id.clone(),
                    image: t.image.clone(),
                });
            };
            tracing::info!(image = %t.image, registry, user = %login.username, "pulling a task image");
            self.engine
                .pull_image(&t.image, login)
                .await
                .map_err(|reason| LocalError::ImagePull {
                    task: t.id.clone(),
                    image: t.image.clone(),
                    registry: registry.to_string(),
                    username: login.username.clone(),
                    reason,
                })?;
        }
        Ok(())
    }

    /// The run's SSH keys, when some task of `job` is multi-instance.
    fn run_keys(&self, job: &LocalJob, run_id: &str) -> Result<Option<Arc<RunKeys>>> {
        if !job.tasks.iter().any(|t| t.multi_instance.is_some()) {
            return Ok(None);
        }
        std::fs::create_dir_all(&self.opts.key_dir)
            .map_err(|e| LocalError::io(&self.opts.key_dir, e))?;
        Ok(Some(Arc::new(RunKeys::generate(
            &self.opts.key_dir,
            run_id,
        )?)))
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.opts.state_dir
    }
}

/// For each task, the indexes of the tasks it depends on; rejects unknown ids and cycles.
pub(crate) fn resolve_dependencies(job: &LocalJob) -> Result<Vec<Vec<usize>>> {
    let index: std::collections::HashMap<&str, usize> = job
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let numeric: Vec<(i64, usize)> = job
        .tasks
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.id.parse::<i64>().ok().map(|n| (n, i)))
        .collect();
    let mut deps = vec![Vec::new(); job.tasks.len()];
    for (i, t) in job.tasks.iter().enumerate() {
        let Some(d) = &t.depends_on else { continue };
        let mut set = std::collections::BTreeSet::new();
        for id in &d.task_ids {
            let j = *index
                .get(id.as_str())
                .ok_or_else(|| LocalError::InvalidJob {
                    job: job.id.clone(),
                    field: format!("tasks[{i}].dependsOn.taskIds"),
                    reason: format!("no task `{id}` in the job"),
                })?;
            set.insert(j);
        }
        for r in &d.task_id_ranges {
            for &(n, j) in &numeric {
                if n >= r.start && n <= r.end {
                    set.insert(j);
                }
            }
        }
        if set.contains(&i) {
            return Err(LocalError::InvalidJob {
                job: job.id.clone(),
                field: format!("tasks[{i}].dependsOn"),
                reason: format!("task `{}` depends on itself", t.id),
            });
        }
        deps[i] = set.into_iter().collect();
    }
    // Kahn's algorithm: every task must become schedulable.
    let mut indeg: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut ready: Vec<usize> = (0..indeg.len()).filter(|&i| indeg[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for (k, d) in deps.iter().enumerate() {
            if d.contains(&i) {
                indeg[k] -= 1;
                if indeg[k] == 0 {
                    ready.push(k);
                }
            }
        }
    }
    if done != deps.len() {
        let stuck: Vec<&str> = (0..deps.len())
            .filter(|&i| indeg[i] > 0)
            .map(|i| job.tasks[i].id.as_str())
            .collect();
        return Err(LocalError::InvalidJob {
            job: job.id.clone(),
            field: "tasks[].dependsOn".into(),
            reason: format!("dependency cycle among: {}", stuck.join(", ")),
        });
    }
    Ok(deps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{
        LocalTask, OnAllTasksComplete, OnTaskFailure, TaskDependencies, TaskIdRange,
    };
    use crate::store::TaskState;

    fn job(tasks: Vec<LocalTask>) -> LocalJob {
        LocalJob {
            id: "j".into(),
            tasks,
            uses_task_dependencies: true,
            on_all_tasks_complete: OnAllTasksComplete::NoAction,
            on_task_failure: OnTaskFailure::NoAction,
            max_parallel_tasks: None,
        }
    }

    fn dep(t: &mut LocalTask, ids: &[&str], ranges: &[(i64, i64)]) {
        t.depends_on = Some(TaskDependencies {
            task_ids: ids.iter().map(|s| s.to_string()).collect(),
            task_id_ranges: ranges
                .iter()
                .map(|&(start, end)| TaskIdRange { start, end })
                .collect(),
        });
    }

    #[test]
    fn resolves_ids_and_ranges() {
        let mut ts: Vec<LocalTask> = (1..=5)
            .map(|i| LocalTask::new(i.to_string(), "img", "true"))
            .collect();
        let mut last = LocalTask::new("merge", "img", "true");
        dep(&mut last, &["5"], &[(1, 3)]);
        ts.push(last);
        let d = resolve_dependencies(&job(ts)).unwrap();
        assert_eq!(d[5], vec![0, 1, 2, 4]);
        assert!(d[0].is_empty());
    }

    #[test]
    fn rejects_unknown_ids_and_cycles() {
        let mut a = LocalTask::new("a", "img", "true");
        dep(&mut a, &["zz"], &[]);
        let e = resolve_dependencies(&job(vec![a])).unwrap_err().to_string();
        assert!(e.contains("zz") && e.contains("taskIds"), "{e}");
        let mut a = LocalTask::new("a", "img", "true");
        let mut b = LocalTask::new("b", "img", "true");
        dep(&mut a, &["b"], &[]);
        dep(&mut b, &["a"], &[]);
        let e = resolve_dependencies(&job(vec![a, b]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cycle"), "{e}");
    }

    #[test]
    fn outcome_exit_code() {
        let rec = |id: &str, result, code| TaskRecord {
            job_id: "j".into(),
            id: id.into(),
            state: TaskState::Completed,
            result: Some(result),
            exit_code: code,
            failure: None,
            start_time: None,
            end_time: None,
            retry_count: 0,
            nodes: vec![],
            task_dir: "/x".into(),
        };
        let mut o = JobOutcome {
            job_id: "j".into(),
            run_id: "r".into(),
            state: JobState::Completed,
            terminate_reason: None,
            cancelled: false,
            tasks: vec![rec("a", TaskResult::Success, Some(0))],
        };
        assert_eq!(o.exit_code(), 0);
        o.tasks.push(rec("b", TaskResult::Failure, Some(3)));
        assert_eq!(o.exit_code(), 3);
        o.tasks[1].exit_code = None;
        assert_eq!(o.exit_code(), 1);
        o.cancelled = true;
        assert_eq!(o.exit_code(), 130);
    }
}
