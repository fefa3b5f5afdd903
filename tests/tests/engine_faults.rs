//! Node faults on real Docker: a node whose engine dies while a task runs on it becomes
//! unusable with an error naming it, and the task's attempt fails; the task is retried on
//! another node when `maxTaskRetryCount` allows, else it completes failed naming the node.
//! Nothing of the dead node is left once the pool is deleted.

use std::process::Command;
use std::time::{Duration, Instant};

#[path = "engine_support.rs"]
mod engine_support;
use engine_support::{completed, task_text, wait_for, wait_idle};

use shipyard_batch_api::models::{
    CloudTask, ComputeNodeState, JobState, PoolAddParameter, TaskAddParameter, TaskExecutionResult,
    TaskState,
};
use shipyard_e2e::TEST_IMAGE;
use shipyard_local::engine::{labels, Engine, EngineOptions};

fn pool(id: &str, nodes: i32) -> PoolAddParameter {
    model!({
        "id": id, "vmSize": "standard_d2s_v3", "targetDedicatedNodes": nodes,
        "taskSlotsPerNode": 1,
        "virtualMachineConfiguration": {
            "imageReference": {}, "nodeAgentSKUId": "batch.node.ubuntu 22.04",
            "containerConfiguration": {"type": "dockerCompatible", "containerImageNames": [TEST_IMAGE]}
        }
    })
}

/// 12 s, then `done <node id>`.
fn long_task(id: &str, retries: i32) -> TaskAddParameter {
    model!({
        "id": id, "commandLine": "/bin/sh -c 'sleep 12; echo done $AZ_BATCH_NODE_ID'",
        "containerSettings": {"imageName": TEST_IMAGE},
        "constraints": {"maxTaskRetryCount": retries}
    })
}

/// A job with a job preparation and a job release.
fn job(id: &str, pool: &str) -> shipyard_batch_api::models::JobAddParameter {
    model!({
        "id": id, "poolInfo": {"poolId": pool}, "onAllTasksComplete": "terminatejob",
        "jobPreparationTask": {"commandLine": "/bin/true", "containerSettings": {"imageName": TEST_IMAGE}},
        "jobReleaseTask": {"commandLine": "/bin/true", "containerSettings": {"imageName": TEST_IMAGE}}
    })
}

fn state_is(e: &Engine, job: &str, task: &str, s: TaskState) -> bool {
    e.get_task(job, task).is_ok_and(|t| t.state == Some(s))
}

fn containers(instance: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label={}={instance}", labels::INSTANCE))
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Starts `task` on a 2-node pool, removes the holder container of the node it runs on and
/// waits for the task to complete; returns the engine, the dead node's id and the task.
async fn kill_node_under_task(
    dir: &std::path::Path,
    pool_id: &str,
    task: TaskAddParameter,
) -> anyhow::Result<(Engine, String, CloudTask, Duration)> {
    let e = Engine::open(EngineOptions::new(dir)).await?;
    e.add_pool(pool(pool_id, 2)).await?;
    wait_idle(&e, pool_id, 2, 120).await;
    let j = format!("{pool_id}-job");
    e.add_job(job(&j, pool_id)).await?;
    let tid = task.id.clone();
    e.add_tasks(&j, vec![task]).await?;
    wait_for("task running", 60, || {
        state_is(&e, &j, &tid, TaskState::Running)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let node = e
        .get_task(&j, &tid)?
        .node_info
        .and_then(|n| n.node_id)
        .expect("the running task names its node");
    let holder = format!("shipyard-engine-{}-{node}", e.instance_label());
    let out = Command::new("docker")
        .args(["rm", "-f", &holder])
        .output()?;
    assert!(out.status.success(), "docker rm -f {holder}: {out:?}");
    let killed = Instant::now();
    wait_for("the node unusable", 30, || {
        e.get_node(pool_id, &node)
            .is_ok_and(|n| n.state == Some(ComputeNodeState::Unusable))
    })
    .await;
    let detected = killed.elapsed();
    let n = e.get_node(pool_id, &node)?;
    let err = n
        .errors
        .as_ref()
        .and_then(|v| v.first())
        .expect("the unusable node has an error");
    assert_eq!(err.code.as_deref(), Some("NodeContainerGone"));
    let msg = err.message.clone().unwrap_or_default();
    assert!(
        msg.contains(&node) && msg.contains(&holder),
        "the error names the node and its holder: {msg}"
    );
    let t = completed(&e, &j, &tid, 90).await;
    Ok((e, node, t, detected))
}

async fn delete_leaves_nothing(e: &Engine, pool_id: &str) {
    let _ = e.delete_pool(pool_id).await;
    wait_for("pool gone", 60, || e.get_pool(pool_id).is_err()).await;
    assert!(
        containers(e.instance_label()).is_empty(),
        "no container of the pool is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_makes_its_task_retry_on_the_other_node() -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (e, dead, t, detected) = kill_node_under_task(dir.path(), "fr", long_task("t", 1)).await?;
    eprintln!("dead node detected after {detected:?}");
    let info = t.execution_info.clone().expect("ran");
    assert_eq!(info.retry_count, 1, "{info:?}");
    assert_eq!(info.result, Some(TaskExecutionResult::Success), "{info:?}");
    assert_eq!(info.exit_code, Some(0));
    let other = t.node_info.and_then(|n| n.node_id).unwrap_or_default();
    assert!(
        !other.is_empty() && other != dead,
        "retried on {other}, not on {dead}"
    );
    assert_eq!(
        task_text(&e, "fr-job", "t", "stdout.txt"),
        format!("done {other}\n")
    );
    assert_eq!(
        e.get_node("fr", &dead)?.state,
        Some(ComputeNodeState::Unusable),
        "the dead node stays unusable"
    );
    assert_eq!(
        e.get_node("fr", &other)?.state,
        Some(ComputeNodeState::Idle)
    );
    // The job ends; its release runs on the live node only (none on an unusable node).
    wait_for("job completed", 60, || {
        e.get_job("fr-job")
            .is_ok_and(|j| j.state == Some(JobState::Completed))
    })
    .await;
    let status = e.prep_release_status("fr-job")?;
    assert_eq!(status.len(), 2, "prep ran on both nodes: {status:?}");
    for s in &status {
        let node = s.node_id.clone().unwrap_or_default();
        let release = s
            .job_release_task_execution_info
            .as_ref()
            .and_then(|r| r.exit_code);
        if node == dead {
            assert_eq!(release, None, "no release on the dead node: {s:?}");
        } else {
            assert_eq!(release, Some(0), "release on {node}: {s:?}");
        }
    }
    delete_leaves_nothing(&e, "fr").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_fails_its_task_when_no_retry_is_left() -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (e, dead, t, _) = kill_node_under_task(dir.path(), "fz", long_task("t", 0)).await?;
    let info = t.execution_info.clone().expect("ran");
    assert_eq!(info.retry_count, 0);
    assert_eq!(info.result, Some(TaskExecutionResult::Failure), "{info:?}");
    let fi = info.failure_info.expect("failure info");
    assert_eq!(fi.code.as_deref(), Some("NodeUnusable"));
    let msg = fi.message.unwrap_or_default();
    assert!(msg.contains(&dead), "the failure names the node: {msg}");
    assert_eq!(
        t.node_info.and_then(|n| n.node_id).as_deref(),
        Some(dead.as_str())
    );
    delete_leaves_nothing(&e, "fz").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_subtask_node_fails_the_multi_instance_attempt_which_is_retried(
) -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    e.add_pool(pool("fm", 3)).await?;
    wait_idle(&e, "fm", 3, 120).await;
    e.add_job(job("fmj", "fm")).await?;
    let mut t = long_task("mi", 1);
    t.multi_instance_settings = Some(shipyard_batch_api::models::MultiInstanceSettings {
        number_of_instances: Some(2),
        coordination_command_line: "/bin/true".into(),
        common_resource_files: None,
    });
    e.add_tasks("fmj", vec![t]).await?;
    wait_for("task running", 60, || {
        state_is(&e, "fmj", "mi", TaskState::Running)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let primary = e
        .get_task("fmj", "mi")?
        .node_info
        .and_then(|n| n.node_id)
        .unwrap_or_default();
    // The subtask's node: the other running one.
    let sub = e
        .list_nodes("fm")?
        .into_iter()
        .filter(|n| n.state == Some(ComputeNodeState::Running))
        .filter_map(|n| n.id)
        .find(|id| *id != primary)
        .expect("a running subtask node");
    let holder = format!("shipyard-engine-{}-{sub}", e.instance_label());
    let out = Command::new("docker")
        .args(["rm", "-f", &holder])
        .output()?;
    assert!(out.status.success(), "docker rm -f {holder}: {out:?}");
    let t = completed(&e, "fmj", "mi", 90).await;
    assert_eq!(
        e.get_node("fm", &sub)?.state,
        Some(ComputeNodeState::Unusable)
    );
    let info = t.execution_info.clone().expect("ran");
    assert_eq!(info.retry_count, 1, "{info:?}");
    assert_eq!(info.result, Some(TaskExecutionResult::Success), "{info:?}");
    let subtasks = e.list_subtasks("fmj", "mi")?;
    assert_eq!(subtasks.len(), 1);
    let nodes: Vec<String> = subtasks
        .iter()
        .filter_map(|s| s.node_info.as_ref().and_then(|n| n.node_id.clone()))
        .chain(t.node_info.and_then(|n| n.node_id))
        .collect();
    assert_eq!(nodes.len(), 2);
    assert!(!nodes.contains(&sub), "the retry avoided {sub}: {nodes:?}");
    let primary = &nodes[1];
    assert_eq!(
        task_text(&e, "fmj", "mi", "stdout.txt"),
        format!("done {primary}\n")
    );
    delete_leaves_nothing(&e, "fm").await;
    Ok(())
}
