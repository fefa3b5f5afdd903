//! The local engine on real Docker: persistent pools reused by jobs, job preparation once per
//! node, start task failure, recovery after the engine is dropped mid-task, and deletion that
//! leaves nothing behind.

use std::process::Command;
use std::time::{Duration, Instant};

use shipyard_batch_api::models::{
    ComputeNodeState, ContainerConfiguration, ImageReference, JobAddParameter, JobPreparationTask,
    JobReleaseTask, JobState, OnAllTasksComplete, PoolAddParameter, PoolInformation, StartTask,
    TaskAddParameter, TaskContainerSettings, TaskExecutionResult, TaskState,
    VirtualMachineConfiguration,
};
use shipyard_local::engine::{labels, Engine, EngineOptions};

const IMAGE: &str = "shipyard/mpi:bookworm";

fn pool(id: &str, nodes: i32, start: Option<StartTask>) -> PoolAddParameter {
    PoolAddParameter {
        id: id.into(),
        vm_size: "standard_d2s_v3".into(),
        target_dedicated_nodes: Some(nodes),
        task_slots_per_node: Some(1),
        start_task: start,
        virtual_machine_configuration: Some(VirtualMachineConfiguration {
            image_reference: ImageReference::default(),
            node_agent_sku_id: "batch.node.ubuntu 22.04".into(),
            container_configuration: Some(ContainerConfiguration {
                container_image_names: Some(vec![IMAGE.into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(id: &str, cmd: &str) -> TaskAddParameter {
    TaskAddParameter {
        id: id.into(),
        command_line: cmd.into(),
        container_settings: Some(TaskContainerSettings {
            image_name: IMAGE.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn job(id: &str, pool: &str) -> JobAddParameter {
    JobAddParameter {
        id: id.into(),
        pool_info: PoolInformation {
            pool_id: Some(pool.into()),
            ..Default::default()
        },
        on_all_tasks_complete: Some(OnAllTasksComplete::TerminateJob),
        ..Default::default()
    }
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn docker_ids(kind: &str, instance: &str) -> Vec<String> {
    let args: Vec<String> = match kind {
        "container" => vec!["ps".into(), "-aq".into()],
        _ => vec!["network".into(), "ls".into(), "-q".into()],
    };
    let out = Command::new("docker")
        .args(&args)
        .args([
            "--filter",
            &format!("label={}={instance}", labels::INSTANCE),
        ])
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A `docker events` process, ended (and waited for) when dropped, also by a failing test.
struct Watch(std::process::Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `docker events` of the containers of engine instance `instance` that Docker destroys, as
/// `(ns since the epoch, task label)` lines on its stdout.
fn watch_destroyed(instance: &str) -> Watch {
    let child = Command::new("docker")
        .args(["events", "--filter", "event=destroy"])
        .args([
            "--filter",
            &format!("label={}={instance}", labels::INSTANCE),
        ])
        .args([
            "--format",
            &format!(
                "{{{{.TimeNano}}}} {{{{index .Actor.Attributes \"{}\"}}}}",
                labels::TASK
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("docker runs");
    Watch(child)
}

/// What [`watch_destroyed`] saw: when each task's container went, by task label.
fn destroyed(mut watch: Watch) -> Vec<(i128, String)> {
    use std::io::Read as _;
    // Events are delivered as they happen; a moment for the last ones.
    std::thread::sleep(Duration::from_millis(500));
    let stdout = watch.0.stdout.take();
    drop(watch);
    let mut out = String::new();
    if let Some(mut o) = stdout {
        let _ = o.read_to_string(&mut out);
    }
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(t, task)| Some((t.parse().ok()?, task.to_string())))
        .collect()
}

/// The pool bridges (`/run/shipyard/bridges` records) of the engine instance `inst`, by name.
fn bridges_of(inst: &str) -> Vec<String> {
    let prefix = format!("shipyard-engine-{inst}-");
    let Ok(dir) = std::fs::read_dir(shipyard_vm_node::DEFAULT_BRIDGE_RECORDS) else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|f| std::fs::read(f.path()).ok())
        .filter_map(|b| serde_json::from_slice::<shipyard_vm_node::BridgeRecord>(&b).ok())
        .filter(|r| {
            r.owner
                .get("network")
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|r| r.name)
        .collect()
}

/// Whether the bridge's interface exists, and how many iptables rules (filter and nat) name it.
fn bridge_left(name: &str) -> (bool, usize) {
    let rules: usize = [vec!["-S"], vec!["-t", "nat", "-S"]]
        .iter()
        .map(|args| {
            let out = Command::new("iptables")
                .args(args)
                .output()
                .expect("iptables runs");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(&format!("shipyard bridge {name}\"")))
                .count()
        })
        .sum();
    (
        std::path::Path::new("/sys/class/net").join(name).exists(),
        rules,
    )
}

async fn wait_idle(e: &Engine, pool: &str, n: usize) {
    wait_for("idle nodes", 120, || {
        e.list_nodes(pool)
            .map(|v| v.len() == n && v.iter().all(|x| x.state == Some(ComputeNodeState::Idle)))
            .unwrap_or(false)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_pool_reused_by_two_jobs_prep_once_per_node_and_delete_leaves_nothing(
) -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    let inst = e.instance_label().to_string();
    let watch = watch_destroyed(&inst);
    let mut releases = vec![];
    e.add_pool(pool("p2", 2, None)).await?;
    wait_idle(&e, "p2", 2).await;
    let holders = docker_ids("container", &inst);
    assert_eq!(holders.len(), 2, "one holder container per node");
    for j in ["j1", "j2"] {
        let mut jp = job(j, "p2");
        jp.job_preparation_task = Some(JobPreparationTask {
            command_line:
                "/bin/sh -c 'echo prep >> $AZ_BATCH_NODE_SHARED_DIR/prep-$AZ_BATCH_JOB_ID'".into(),
            container_settings: Some(TaskContainerSettings {
                image_name: IMAGE.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        jp.job_release_task = Some(JobReleaseTask {
            command_line: "/bin/sh -c 'echo rel >> $AZ_BATCH_NODE_SHARED_DIR/rel-$AZ_BATCH_JOB_ID'"
                .into(),
            container_settings: Some(TaskContainerSettings {
                image_name: IMAGE.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        e.add_job(jp).await?;
        let tasks = (0..4)
            .map(|i| {
                task(
                    &format!("t{i}"),
                    "/bin/sh -c 'echo $AZ_BATCH_NODE_ID $AZ_BATCH_TASK_ID; id -u'",
                )
            })
            .collect();
        let r = e.add_tasks(j, tasks).await?;
        assert_eq!(r.len(), 4);
        wait_for("job completed", 120, || {
            e.get_job(j)
                .map(|x| x.state == Some(JobState::Completed))
                .unwrap_or(false)
        })
        .await;
        for t in e.list_tasks(j)? {
            let info = t.execution_info.clone().expect("ran");
            assert_eq!(info.exit_code, Some(0), "{t:?}");
            assert_eq!(info.result, Some(TaskExecutionResult::Success));
            let id = t.id.clone().unwrap_or_default();
            let f = e.task_file(j, &id, "stdout.txt")?;
            let out = std::fs::read_to_string(&f.path)?;
            let node = t.node_info.and_then(|n| n.node_id).unwrap_or_default();
            assert_eq!(
                out,
                format!("{node} {id}\n1000\n"),
                "stdout names node and task, runs as non-root"
            );
        }
        let pr = e.prep_release_status(j)?;
        assert!(!pr.is_empty());
        for p in &pr {
            let info = p
                .job_release_task_execution_info
                .clone()
                .expect("the release ran");
            let started = time::OffsetDateTime::parse(
                &info.start_time,
                &time::format_description::well_known::Rfc3339,
            )?
            .unix_timestamp_nanos();
            releases.push((j, started));
        }
        for p in &pr {
            let node = p.node_id.clone().unwrap_or_default();
            let root = dir
                .path()
                .canonicalize()?
                .join("pools")
                .join("p2")
                .join(&node)
                .join("shared");
            assert_eq!(
                std::fs::read_to_string(root.join(format!("prep-{j}")))?,
                "prep\n",
                "prep once on {node}"
            );
            assert_eq!(
                std::fs::read_to_string(root.join(format!("rel-{j}")))?,
                "rel\n",
                "release once on {node}"
            );
        }
    }
    assert_eq!(
        docker_ids("container", &inst),
        holders,
        "jobs reuse the pool's nodes"
    );
    // Each release started after the job's task containers were gone (as on Batch, where
    // they go as each task ends).
    let gone = destroyed(watch);
    for (j, started) in releases {
        let of_job: Vec<i128> = gone
            .iter()
            .filter(|(_, task)| task.starts_with(&format!("{j}/t")))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(of_job.len(), 4, "{j}'s 4 task containers went: {gone:?}");
        let last = of_job.iter().max().copied().unwrap_or_default();
        assert!(
            started > last,
            "a release of {j} started at {started}, before its last task container went at {last}"
        );
    }
    // As root with a local Docker engine (CI), the pool is a bridge of the engine's own: its
    // interface, with 3 forward rules and a NAT rule.
    let bridges = bridges_of(&inst);
    assert_eq!(bridges.len(), 1, "one pool bridge: {bridges:?}");
    assert_eq!(bridge_left(&bridges[0]), (true, 8), "{}", bridges[0]);
    e.delete_pool("p2").await?;
    assert_eq!(
        e.get_pool("p2")?.state.map(|s| s.to_string()),
        Some("deleting".into())
    );
    wait_for("pool gone", 60, || e.get_pool("p2").is_err()).await;
    assert_eq!(e.get_pool("p2").err().map(|x| x.http_status()), Some(404));
    assert!(
        docker_ids("container", &inst).is_empty(),
        "no container left"
    );
    assert!(docker_ids("network", &inst).is_empty(), "no network left");
    assert!(bridges_of(&inst).is_empty(), "no bridge record left");
    assert_eq!(
        bridge_left(&bridges[0]),
        (false, 0),
        "no bridge or rule left"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_start_task_failure_marks_nodes_and_fails_tasks() -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    let start = StartTask {
        command_line: "/bin/sh -c 'exit 3'".into(),
        container_settings: Some(TaskContainerSettings {
            image_name: IMAGE.into(),
            ..Default::default()
        }),
        wait_for_success: Some(true),
        ..Default::default()
    };
    e.add_pool(pool("sf", 1, Some(start))).await?;
    wait_for("starttaskfailed", 60, || {
        e.list_nodes("sf")
            .map(|v| {
                v.first().and_then(|n| n.state.clone()) == Some(ComputeNodeState::StartTaskFailed)
            })
            .unwrap_or(false)
    })
    .await;
    let n = &e.list_nodes("sf")?[0];
    assert_eq!(
        n.start_task_info.as_ref().and_then(|i| i.exit_code),
        Some(3)
    );
    e.add_job(job("sfj", "sf")).await?;
    e.add_tasks("sfj", vec![task("a", "/bin/true")]).await?;
    wait_for("task failed", 30, || {
        e.get_task("sfj", "a")
            .map(|t| t.state == Some(TaskState::Completed))
            .unwrap_or(false)
    })
    .await;
    let t = e.get_task("sfj", "a")?;
    let fi = t
        .execution_info
        .and_then(|i| i.failure_info)
        .expect("failure info");
    assert!(
        fi.message.unwrap_or_default().contains("starttaskfailed"),
        "names the start task failure"
    );
    e.delete_pool("sf").await?;
    wait_for("pool gone", 60, || e.get_pool("sf").is_err()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_reopened_after_drop_mid_task_fails_it_with_a_reason() -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let inst;
    {
        let e = Engine::open(EngineOptions::new(dir.path())).await?;
        inst = e.instance_label().to_string();
        e.add_pool(pool("rp", 1, None)).await?;
        wait_idle(&e, "rp", 1).await;
        e.add_job(job("rj", "rp")).await?;
        e.add_tasks("rj", vec![task("long", "sleep 300")]).await?;
        wait_for("running", 60, || {
            e.get_task("rj", "long")
                .map(|t| t.state == Some(TaskState::Running))
                .unwrap_or(false)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        e.close().await;
    }
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    let t = e.get_task("rj", "long")?;
    assert_eq!(t.state, Some(TaskState::Completed));
    let fi = t
        .execution_info
        .and_then(|i| i.failure_info)
        .expect("failure info");
    assert_eq!(fi.code.as_deref(), Some("TaskInterrupted"));
    assert_eq!(
        e.get_node("rp", &e.list_nodes("rp")?[0].id.clone().unwrap_or_default())?
            .state,
        Some(ComputeNodeState::Idle)
    );
    wait_for("job completed", 30, || {
        e.get_job("rj")
            .map(|j| j.state == Some(JobState::Completed))
            .unwrap_or(false)
    })
    .await;
    e.delete_pool("rp").await?;
    wait_for("pool gone", 60, || e.get_pool("rp").is_err()).await;
    assert!(
        docker_ids("container", &inst).is_empty(),
        "no container left"
    );
    Ok(())
}

/// A container pool left by an engine whose state directory was then deleted (as a failed
/// test's temporary directory is): the next engine to open, on any state directory, removes
/// its holders and its network; nothing else can, since no engine can open that directory
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_of_an_engine_whose_state_dir_is_gone_is_removed_by_the_next_engine(
) -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let gone = tempfile::tempdir()?;
    let inst;
    {
        let e = Engine::open(EngineOptions::new(gone.path())).await?;
        inst = e.instance_label().to_string();
        e.add_pool(pool("ap", 2, None)).await?;
        wait_idle(&e, "ap", 2).await;
        e.close().await;
    }
    assert_eq!(docker_ids("container", &inst).len(), 2, "two holders left");
    let bridges = bridges_of(&inst);
    assert_eq!(bridges.len(), 1, "its bridge left: {bridges:?}");
    assert_eq!(bridge_left(&bridges[0]), (true, 8));
    // A container of an engine of another host or mount namespace, whose state directory this
    // process cannot see: not this engine's to judge, so it stays.
    let foreign_inst = format!("foreign-{}", std::process::id());
    let foreign = std::process::Command::new("docker")
        .args([
            "create",
            "--label",
            "shipyard.test=1",
            "--label",
            "shipyard.engine=1",
        ])
        .args(["--label", &format!("{}={foreign_inst}", labels::INSTANCE)])
        .args([
            "--label",
            &format!("{}={}", labels::STATE_DIR, gone.path().display()),
        ])
        .args(["--label", &format!("{}=another-host/mnt:[1]", labels::HOST)])
        .args([IMAGE, "true"])
        .output()?;
    assert!(foreign.status.success(), "{foreign:?}");
    let foreign_id = String::from_utf8_lossy(&foreign.stdout).trim().to_string();
    drop(gone);
    let next = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(next.path())).await?;
    wait_for("the abandoned pool removed", 60, || {
        docker_ids("container", &inst).is_empty()
            && docker_ids("network", &inst).is_empty()
            && bridges_of(&inst).is_empty()
            && bridge_left(&bridges[0]) == (false, 0)
    })
    .await;
    let kept = docker_ids("container", &foreign_inst);
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &foreign_id])
        .output();
    assert_eq!(kept.len(), 1, "another host's container is not swept");
    e.close().await;
    Ok(())
}

/// A pool deleted while its nodes start (right after `add_pool`, which returns with them
/// starting) is gone once they are made: its deletion waits for their making, not for their
/// start tasks (here one that never ends), and leaves no container behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_deleted_while_its_nodes_start_is_removed_without_waiting_for_start_tasks(
) -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    let inst = e.instance_label().to_string();
    let start = StartTask {
        command_line: "/bin/sleep 1000".into(),
        wait_for_success: Some(true),
        ..Default::default()
    };
    e.add_pool(pool("pdel", 2, Some(start))).await?;
    e.delete_pool("pdel").await?;
    let t = Instant::now();
    wait_for("the pool's deletion", 60, || e.get_pool("pdel").is_err()).await;
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "deletion took {:?}",
        t.elapsed()
    );
    assert!(
        docker_ids("container", &inst).is_empty(),
        "containers left after the pool's deletion"
    );
    Ok(())
}

/// Two engines of one host (two state directories) may each have a pool of the same name:
/// deleting one engine's pool leaves the other's nodes running and usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pool_leaves_another_engines_pool_of_the_same_name() -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = Engine::open(EngineOptions::new(da.path())).await?;
    let b = Engine::open(EngineOptions::new(db.path())).await?;
    let (ia, ib) = (
        a.instance_label().to_string(),
        b.instance_label().to_string(),
    );
    a.add_pool(pool("twin", 1, None)).await?;
    b.add_pool(pool("twin", 1, None)).await?;
    wait_idle(&a, "twin", 1).await;
    wait_idle(&b, "twin", 1).await;
    let before = docker_ids("container", &ib);
    assert_eq!(before.len(), 1, "engine b's holder: {before:?}");
    delete_leaving_nothing(&a, "twin", &ia).await?;
    assert_eq!(docker_ids("container", &ib), before, "engine b's holder");
    b.add_job(job("j", "twin")).await?;
    b.add_tasks("j", vec![task("t", "/bin/true")]).await?;
    wait_for("engine b's task", 60, || {
        b.get_task("j", "t")
            .is_ok_and(|t| t.state == Some(TaskState::Completed))
    })
    .await;
    let info = b.get_task("j", "t")?.execution_info.unwrap_or_default();
    assert_eq!(
        (info.result.clone(), info.exit_code),
        (Some(TaskExecutionResult::Success), Some(0)),
        "{info:?}"
    );
    delete_leaving_nothing(&b, "twin", &ib).await
}

/// Deletes the pool of engine `e` (instance `inst`, whose only pool it is) and checks that no
/// container of the engine is left.
async fn delete_leaving_nothing(e: &Engine, pool: &str, inst: &str) -> anyhow::Result<()> {
    e.delete_pool(pool).await?;
    wait_for("the pool's deletion", 60, || e.get_pool(pool).is_err()).await;
    let left = docker_ids("container", inst);
    assert!(left.is_empty(), "engine {inst} left containers: {left:?}");
    Ok(())
}
