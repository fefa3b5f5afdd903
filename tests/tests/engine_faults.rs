//! Node faults on real Docker: a node whose engine dies while a task runs on it becomes
//! unusable with an error naming it, and the task's attempt fails; the task is retried on
//! another node when `maxTaskRetryCount` allows, else it completes failed naming the node.
//! Nothing of the dead node is left once the pool is deleted.

use std::process::Command;
use std::time::{Duration, Instant};

use shipyard_batch_api::models::{
    ComputeNodeState, ContainerConfiguration, ImageReference, JobAddParameter, OnAllTasksComplete,
    PoolAddParameter, PoolInformation, TaskAddParameter, TaskConstraints, TaskContainerSettings,
    TaskExecutionResult, TaskState, VirtualMachineConfiguration,
};
use shipyard_local::engine::{labels, Engine, EngineOptions};

const IMAGE: &str = "shipyard/mpi:bookworm";

fn pool(id: &str, nodes: i32) -> PoolAddParameter {
    PoolAddParameter {
        id: id.into(),
        vm_size: "standard_d2s_v3".into(),
        target_dedicated_nodes: Some(nodes),
        task_slots_per_node: Some(1),
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

fn long_task(id: &str, retries: i32) -> TaskAddParameter {
    TaskAddParameter {
        id: id.into(),
        command_line: "/bin/sh -c 'sleep 12; echo done $AZ_BATCH_NODE_ID'".into(),
        container_settings: Some(TaskContainerSettings {
            image_name: IMAGE.into(),
            ..Default::default()
        }),
        constraints: Some(TaskConstraints {
            max_task_retry_count: Some(retries),
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
) -> anyhow::Result<(
    Engine,
    String,
    shipyard_batch_api::models::CloudTask,
    Duration,
)> {
    let e = Engine::open(EngineOptions::new(dir)).await?;
    e.add_pool(pool(pool_id, 2)).await?;
    wait_for("2 idle nodes", 120, || {
        e.list_nodes(pool_id)
            .map(|v| v.len() == 2 && v.iter().all(|x| x.state == Some(ComputeNodeState::Idle)))
            .unwrap_or(false)
    })
    .await;
    let j = format!("{pool_id}-job");
    e.add_job(job(&j, pool_id)).await?;
    let tid = task.id.clone();
    e.add_tasks(&j, vec![task]).await?;
    wait_for("task running", 60, || {
        e.get_task(&j, &tid)
            .map(|t| t.state == Some(TaskState::Running))
            .unwrap_or(false)
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
            .map(|n| n.state == Some(ComputeNodeState::Unusable))
            .unwrap_or(false)
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
    wait_for("task completed", 90, || {
        e.get_task(&j, &tid)
            .map(|t| t.state == Some(TaskState::Completed))
            .unwrap_or(false)
    })
    .await;
    let t = e.get_task(&j, &tid)?;
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
    let out = std::fs::read_to_string(e.task_file("fr-job", "t", "stdout.txt")?.path)?;
    assert_eq!(out, format!("done {other}\n"));
    assert_eq!(
        e.get_node("fr", &dead)?.state,
        Some(ComputeNodeState::Unusable),
        "the dead node stays unusable"
    );
    assert_eq!(
        e.get_node("fr", &other)?.state,
        Some(ComputeNodeState::Idle)
    );
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
    wait_for("3 idle nodes", 120, || {
        e.list_nodes("fm")
            .map(|v| v.len() == 3 && v.iter().all(|x| x.state == Some(ComputeNodeState::Idle)))
            .unwrap_or(false)
    })
    .await;
    e.add_job(job("fmj", "fm")).await?;
    let mut t = long_task("mi", 1);
    t.multi_instance_settings = Some(shipyard_batch_api::models::MultiInstanceSettings {
        number_of_instances: Some(2),
        coordination_command_line: "/bin/true".into(),
        common_resource_files: None,
    });
    e.add_tasks("fmj", vec![t]).await?;
    wait_for("task running", 60, || {
        e.get_task("fmj", "mi")
            .map(|t| t.state == Some(TaskState::Running))
            .unwrap_or(false)
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
    wait_for("task completed", 90, || {
        e.get_task("fmj", "mi")
            .map(|t| t.state == Some(TaskState::Completed))
            .unwrap_or(false)
    })
    .await;
    assert_eq!(
        e.get_node("fm", &sub)?.state,
        Some(ComputeNodeState::Unusable)
    );
    let t = e.get_task("fmj", "mi")?;
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
    let out = std::fs::read_to_string(e.task_file("fmj", "mi", "stdout.txt")?.path)?;
    assert_eq!(out, format!("done {primary}\n"));
    delete_leaves_nothing(&e, "fm").await;
    Ok(())
}
