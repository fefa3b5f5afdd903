//! Task semantics of the local engine on container pools, on real Docker: multi-instance Open
//! MPI across 3 nodes (coordination starts sshd as raw Batch users do), maxTaskRetryCount,
//! maxWallClockTime, dependencies with exit-condition dependency actions, exit conditions →
//! jobAction, and resource files from an HTTP server on loopback (a 404 is a pre-processing
//! error naming the URL).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

#[path = "engine_support.rs"]
mod engine_support;
use engine_support::{
    completed, mpi_task, ssh_settings, task_outputs, task_text, wait_for, wait_idle, SSH_SETUP,
};

use shipyard_batch_api::models::{
    CloudTask, JobAddParameter, JobState, PoolAddParameter, TaskAddParameter, TaskExecutionResult,
};
use shipyard_e2e::{HelloReport, TEST_IMAGE};
use shipyard_local::engine::{ContainerNodes, Engine, EngineOptions};

fn pool(id: &str, nodes: i32, slots: i32) -> PoolAddParameter {
    model!({
        "id": id, "vmSize": "standard_d2s_v3", "targetDedicatedNodes": nodes,
        "taskSlotsPerNode": slots, "enableInterNodeCommunication": true,
        "virtualMachineConfiguration": {
            "imageReference": {}, "nodeAgentSKUId": "batch.node.ubuntu 22.04",
            "containerConfiguration": {"type": "dockerCompatible", "containerImageNames": [TEST_IMAGE]}
        }
    })
}

fn job(id: &str, pool: &str, extra: serde_json::Value) -> JobAddParameter {
    let mut v = serde_json::json!({
        "id": id, "poolInfo": {"poolId": pool}, "onAllTasksComplete": "terminatejob"
    });
    if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    serde_json::from_value(v).expect("job")
}

/// A task in the test image; `extra` is merged into the JSON.
fn task(id: &str, cmd: &str, extra: serde_json::Value) -> TaskAddParameter {
    let mut v = serde_json::json!({
        "id": id, "commandLine": cmd,
        "containerSettings": {"imageName": TEST_IMAGE}
    });
    if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    serde_json::from_value(v).expect("task")
}

fn result(t: &CloudTask) -> (Option<TaskExecutionResult>, Option<i32>, Option<String>) {
    let i = t.execution_info.clone().unwrap_or_default();
    (i.result, i.exit_code, i.failure_info.and_then(|f| f.code))
}

/// Seconds from `a` to `b`, two RFC 3339 UTC times of the same day (as the engine writes them).
fn secs_between(a: &Option<String>, b: &Option<String>) -> f64 {
    let secs = |s: &Option<String>| -> f64 {
        let t = s
            .as_deref()
            .and_then(|s| s.split_once('T'))
            .map(|(_, t)| t.trim_end_matches('Z'))
            .expect("an RFC 3339 UTC time");
        t.split(':')
            .map(|x| x.parse::<f64>().expect("a time field"))
            .fold(0.0, |acc, x| acc * 60.0 + x)
    };
    secs(b) - secs(a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_retries_wall_clock_dependencies_and_dependency_actions() -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    e.add_pool(pool("pc", 1, 4)).await?;
    wait_idle(&e, "pc", 1, 120).await;
    e.add_job(job(
        "jc",
        "pc",
        serde_json::json!({"usesTaskDependencies": true}),
    ))
    .await?;
    let tries = "/bin/sh -c 'echo try >> $AZ_BATCH_NODE_SHARED_DIR/tries; exit 3'";
    e.add_tasks(
        "jc",
        vec![
            task(
                "fail3",
                tries,
                serde_json::json!({
                    "constraints": {"maxTaskRetryCount": 2},
                    "exitConditions": {"exitCodes": [{"code": 3, "exitOptions": {"dependencyAction": "satisfy"}}]}
                }),
            ),
            task(
                "slow",
                "sleep 60",
                serde_json::json!({"constraints": {"maxWallClockTime": "PT2S"}}),
            ),
            task(
                "a",
                "/bin/sh -c 'sleep 1; echo from-a > $AZ_BATCH_NODE_SHARED_DIR/a'",
                serde_json::json!({}),
            ),
            task(
                "b",
                "/bin/sh -c 'cat $AZ_BATCH_NODE_SHARED_DIR/a'",
                serde_json::json!({"dependsOn": {"taskIds": ["a"]}}),
            ),
            task(
                "after-fail",
                "/bin/sh -c 'wc -l < $AZ_BATCH_NODE_SHARED_DIR/tries'",
                serde_json::json!({"dependsOn": {"taskIds": ["fail3"]}}),
            ),
        ],
    )
    .await?;
    let f = completed(&e, "jc", "fail3", 120).await;
    assert_eq!(
        result(&f),
        (Some(TaskExecutionResult::Failure), Some(3), None),
        "{}",
        task_outputs(dir.path())
    );
    assert_eq!(f.execution_info.as_ref().map(|i| i.retry_count), Some(2));

    let s = completed(&e, "jc", "slow", 60).await;
    let si = s.execution_info.clone().unwrap_or_default();
    assert_eq!(
        si.failure_info.and_then(|f| f.code).as_deref(),
        Some("MaxWallClockTimeExceeded")
    );
    let ran = secs_between(&si.start_time, &si.end_time);
    assert!(
        (1.5..15.0).contains(&ran),
        "killed after its 2 s limit, ran {ran}s"
    );

    let a = completed(&e, "jc", "a", 60).await;
    let b = completed(&e, "jc", "b", 60).await;
    assert_eq!(
        result(&b),
        (Some(TaskExecutionResult::Success), Some(0), None)
    );
    assert_eq!(task_text(&e, "jc", "b", "stdout.txt").trim(), "from-a");
    let ae = a.execution_info.and_then(|i| i.end_time);
    let bs = b.execution_info.and_then(|i| i.start_time);
    assert!(secs_between(&ae, &bs) >= 0.0, "b started after a ended");

    // fail3's exit code 3 satisfies its dependants (after all three tries).
    let af = completed(&e, "jc", "after-fail", 60).await;
    assert_eq!(
        result(&af),
        (Some(TaskExecutionResult::Success), Some(0), None)
    );
    assert_eq!(task_text(&e, "jc", "after-fail", "stdout.txt").trim(), "3");
    wait_for("job completion", 60, || {
        e.get_job("jc")
            .is_ok_and(|j| j.state == Some(JobState::Completed))
    })
    .await;
    e.delete_pool("pc").await?;
    wait_for("pool deletion", 60, || e.get_pool("pc").is_err()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_exit_code_with_job_action_terminate_ends_the_job() -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    e.add_pool(pool("pt", 1, 2)).await?;
    wait_idle(&e, "pt", 1, 120).await;
    e.add_job(job(
        "jt",
        "pt",
        serde_json::json!({"onTaskFailure": "performexitoptionsjobaction"}),
    ))
    .await?;
    let t0 = Instant::now();
    e.add_tasks(
        "jt",
        vec![
            task("long", "sleep 120", serde_json::json!({})),
            task(
                "seven",
                "/bin/sh -c 'sleep 1; exit 7'",
                serde_json::json!({
                    "exitConditions": {"exitCodeRanges": [{"start": 5, "end": 9, "exitOptions": {"jobAction": "terminate"}}]}
                }),
            ),
        ],
    )
    .await?;
    // A client that sees `long` stopped must already be able to read why (the CLI reports
    // "job was terminated" from this), even while the job is still terminating.
    let long = completed(&e, "jt", "long", 60).await;
    assert_eq!(result(&long).0, Some(TaskExecutionResult::Failure));
    let j = e.get_job("jt")?;
    assert_eq!(
        j.execution_info.and_then(|i| i.terminate_reason).as_deref(),
        Some("TaskFailed"),
        "terminateReason once a task was stopped by the termination (job state {:?})",
        j.state
    );
    wait_for("the job to end", 60, || {
        e.get_job("jt")
            .is_ok_and(|j| j.state == Some(JobState::Completed))
    })
    .await;
    let j = e.get_job("jt")?;
    assert_eq!(
        j.execution_info.and_then(|i| i.terminate_reason).as_deref(),
        Some("TaskFailed")
    );
    let seven = e.get_task("jt", "seven")?;
    assert_eq!(result(&seven).1, Some(7));
    assert!(t0.elapsed() < Duration::from_secs(60), "long was stopped");
    e.delete_pool("pt").await?;
    wait_for("pool deletion", 60, || e.get_pool("pt").is_err()).await;
    Ok(())
}

/// Serves `files` over HTTP/1.1 on loopback (404 for anything else); returns the address.
fn serve(files: Vec<(&'static str, Vec<u8>)>) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req);
            let path = text.split_whitespace().nth(1).unwrap_or_default();
            let head = text.starts_with("HEAD ");
            let (status, body) = match files.iter().find(|(p, _)| *p == path) {
                Some((_, b)) => ("200 OK", b.clone()),
                None => ("404 Not Found", b"no such file".to_vec()),
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if !head {
                let _ = s.write_all(&body);
            }
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_resource_files_from_loopback_http_and_a_404_names_the_url() -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let data: Vec<u8> = (0..70_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let addr = serve(vec![("/data.bin", data.clone())])?;
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    e.add_pool(pool("pr", 1, 2)).await?;
    wait_idle(&e, "pr", 1, 120).await;
    e.add_job(job("jr", "pr", serde_json::json!({}))).await?;
    let missing = format!("http://{addr}/missing.bin");
    e.add_tasks(
        "jr",
        vec![
            task(
                "fetch",
                "/bin/sh -c 'cksum < in/data.bin; stat -c %a in/data.bin'",
                serde_json::json!({"resourceFiles": [
                    {"httpUrl": format!("http://{addr}/data.bin"), "filePath": "in/data.bin", "fileMode": "0640"}
                ]}),
            ),
            task(
                "broken",
                "/bin/sh -c 'echo ran > $AZ_BATCH_NODE_SHARED_DIR/broken-ran'",
                serde_json::json!({"resourceFiles": [{"httpUrl": missing, "filePath": "x"}]}),
            ),
        ],
    )
    .await?;
    let f = completed(&e, "jr", "fetch", 60).await;
    assert_eq!(
        result(&f),
        (Some(TaskExecutionResult::Success), Some(0), None),
        "{}",
        task_outputs(dir.path())
    );
    let wd_file = e.task_file("jr", "fetch", "wd/in/data.bin")?;
    assert_eq!(std::fs::read(&wd_file.path)?, data, "the bytes served");
    let out = task_text(&e, "jr", "fetch", "stdout.txt");
    let mut lines = out.lines();
    let cksum = std::process::Command::new("cksum")
        .stdin(std::fs::File::open(&wd_file.path)?)
        .output()?;
    assert_eq!(
        lines.next(),
        Some(String::from_utf8_lossy(&cksum.stdout).trim()),
        "the task read the same bytes: {out:?} {}",
        task_text(&e, "jr", "fetch", "stderr.txt")
    );
    assert_eq!(lines.next(), Some("640"), "fileMode");

    let b = completed(&e, "jr", "broken", 60).await;
    let bi = b.execution_info.clone().unwrap_or_default();
    assert_eq!(bi.result, Some(TaskExecutionResult::Failure));
    assert_eq!(bi.exit_code, None, "the command never ran");
    let fi = bi.failure_info.expect("failure information");
    assert_eq!(
        fi.category,
        shipyard_batch_api::models::ErrorCategory::UserError
    );
    assert!(
        fi.message.as_deref().is_some_and(|m| m.contains(&missing)),
        "names the URL: {fi:?}"
    );
    assert!(
        !dir.path().join("pools/pr/pr-n0/shared/broken-ran").exists(),
        "the command did not run"
    );
    e.delete_pool("pr").await?;
    wait_for("pool deletion", 60, || e.get_pool("pr").is_err()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_multi_instance_openmpi_across_three_container_nodes() -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    // As root with a local Docker engine (CI), the pool is a bridge of the engine's own.
    mpi_across_three_nodes(&e, dir.path(), "10.212.", true).await
}

/// The same job on a pool made a Docker network (the engine's choice where it cannot make
/// bridges of its own: not root, a remote Docker engine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_multi_instance_openmpi_on_a_docker_network_pool() -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let kind = std::sync::Arc::new(ContainerNodes::connect_local()?.docker_networks());
    let e = Engine::open_with(EngineOptions::new(dir.path()), kind).await?;
    mpi_across_three_nodes(&e, dir.path(), "10.21", false).await?;
    Ok(())
}

/// An Open MPI job of 3 nodes × 2 ranks on a new pool whose node addresses start with
/// `prefix` (on one of the engine's bridges with `bridge`, else a Docker network), with a
/// container task and a host task that look up every node's name and the name servers; the
/// pool is deleted after it.
async fn mpi_across_three_nodes(
    e: &Engine,
    dir: &std::path::Path,
    prefix: &str,
    bridge: bool,
) -> anyhow::Result<()> {
    let key = shipyard_runtime::ssh::JobSshKey::generate("engine-test")?;
    e.add_pool(pool("pm", 3, 1)).await?;
    wait_idle(e, "pm", 3, 120).await;
    let ips: Vec<String> = e
        .list_nodes("pm")?
        .into_iter()
        .filter_map(|n| n.ip_address)
        .collect();
    assert!(
        ips.len() == 3 && ips.iter().all(|ip| ip.starts_with(prefix)),
        "node addresses {ips:?}, want {prefix}*"
    );
    e.add_job(job("jm", "pm", serde_json::json!({}))).await?;
    let app = format!(
        "/bin/bash -c 'mpirun.openmpi --allow-run-as-root -np 6 --host $(echo $AZ_BATCH_HOST_LIST | sed \"s/\\([^,]*\\)/\\1:2/g\") \
         --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 {}'",
        shipyard_e2e::image_hello_path(shipyard_e2e::MpiKind::OpenMpi)
    );
    // What every node's containers and the node itself resolve: each node's name to its
    // address, and the name servers Docker gives a container of its own.
    let nodes: Vec<(String, String)> = e
        .list_nodes("pm")?
        .into_iter()
        .filter_map(|n| Some((n.id?, n.ip_address?)))
        .collect();
    let names = nodes
        .iter()
        .map(|(id, _)| id.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let look_up =
        format!("/bin/sh -c 'for h in {names}; do getent hosts $h; done; grep ^nameserver /etc/resolv.conf'");
    let on_node: TaskAddParameter =
        serde_json::from_value(serde_json::json!({"id": "names-node", "commandLine": look_up}))?;
    let t0 = Instant::now();
    e.add_tasks(
        "jm",
        vec![
            mpi_task(&app, &key, 3),
            task("names", &look_up, serde_json::json!({})),
            on_node,
        ],
    )
    .await?;
    let t = completed(e, "jm", "mpi", 180).await;
    let secs = t0.elapsed().as_secs_f64();
    let docker_servers = std::process::Command::new("docker")
        .args(["run", "--rm", "--network", "none", TEST_IMAGE])
        .args(["grep", "^nameserver", "/etc/resolv.conf"])
        .output()?;
    // On a Docker network, Docker's embedded server.
    let docker_servers = if bridge {
        String::from_utf8_lossy(&docker_servers.stdout).into_owned()
    } else {
        "nameserver 127.0.0.11\n".to_string()
    };
    assert!(
        docker_servers.starts_with("nameserver "),
        "{docker_servers:?}"
    );
    for id in ["names", "names-node"] {
        let n = completed(e, "jm", id, 60).await;
        assert_eq!(
            result(&n).1,
            Some(0),
            "{id}: {:?} {}",
            n.execution_info,
            task_outputs(dir)
        );
        let out = task_text(e, "jm", id, "stdout.txt");
        let mut lines = out.lines();
        for (node, ip) in &nodes {
            let line = lines.next().unwrap_or_default();
            assert_eq!(
                line.split_whitespace().collect::<Vec<_>>(),
                [ip.as_str(), node.as_str()],
                "{id}: the address of {node} in {out:?}"
            );
        }
        assert_eq!(
            lines.map(|l| format!("{l}\n")).collect::<String>(),
            docker_servers,
            "{id}: the name servers"
        );
    }
    let stdout = task_text(e, "jm", "mpi", "stdout.txt");
    assert_eq!(
        result(&t),
        (Some(TaskExecutionResult::Success), Some(0), None),
        "{}",
        task_outputs(dir)
    );
    HelloReport::parse(&stdout).assert_complete(6);
    let subtasks = e.list_subtasks("jm", "mpi")?;
    assert_eq!(
        subtasks.len(),
        2,
        "subtasks of the 2 non-primary nodes: {subtasks:?}"
    );
    eprintln!("engine_tasks: multi-instance 3 nodes x 2 ranks {secs:.2}s");
    // The kept subtask containers are gone once the primary ended.
    let inst = e.instance_label().to_string();
    let left = || {
        std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", "label=shipyard.engine.task=jm/mpi"])
            .args([
                "--filter",
                &format!("label=shipyard.engine.instance={inst}"),
            ])
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout.is_empty())
    };
    wait_for("the task containers to go", 20, left).await;
    e.delete_pool("pm").await?;
    wait_for("pool deletion", 60, || e.get_pool("pm").is_err()).await;
    Ok(())
}

/// `requiredSlots`: a task takes that many of its node's `taskSlotsPerNode`, is placed only
/// where that many are free, and frees them all when it ends. One node of 4 slots: `a` (3
/// slots, short) and `c` (1 slot, waits for `b`) run together; `b` (2 slots) does not fit
/// beside them, must not start while `a` runs, and must start once `a`'s 3 slots are free
/// while `c` still runs (so `c` succeeds only if `b` ran beside it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_required_slots_place_tasks_where_enough_slots_are_free() -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    e.add_pool(pool("slots", 1, 4)).await?;
    wait_idle(&e, "slots", 1, 120).await;
    e.add_job(job("sj", "slots", serde_json::json!({}))).await?;
    let admin = serde_json::json!({"autoUser": {"elevationLevel": "admin", "scope": "pool"}});
    let shared = "$AZ_BATCH_NODE_SHARED_DIR";
    let added = e
        .add_tasks(
            "sj",
            vec![
                task(
                    "a",
                    &format!("/bin/sh -c 'touch {shared}/a-running; sleep 1; rm {shared}/a-running'"),
                    serde_json::json!({"requiredSlots": 3, "userIdentity": admin}),
                ),
                task(
                    "c",
                    &format!(
                        "/bin/sh -c 'for i in $(seq 1 300); do test -f {shared}/b-ran && exit 0; sleep 0.1; done; exit 3'"
                    ),
                    serde_json::json!({"requiredSlots": 1, "userIdentity": admin}),
                ),
                task(
                    "b",
                    &format!("/bin/sh -c 'test ! -f {shared}/a-running || exit 4; touch {shared}/b-ran'"),
                    serde_json::json!({"requiredSlots": 2, "userIdentity": admin}),
                ),
                task("zero", "/bin/true", serde_json::json!({"requiredSlots": 0})),
            ],
        )
        .await?;
    let refused: Vec<_> = added
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| r.task_id.clone())
        .collect();
    assert_eq!(refused, vec!["zero".to_string()], "{added:?}");
    // While a and c run, the node's 4 slots are taken and b waits.
    wait_for("a and c running", 60, || {
        e.list_nodes("slots")
            .is_ok_and(|n| n[0].running_task_slots_count == Some(4))
    })
    .await;
    for t in ["a", "b", "c"] {
        let done = completed(&e, "sj", t, 120).await;
        assert_eq!(
            result(&done),
            (Some(TaskExecutionResult::Success), Some(0), None),
            "task {t}: {}",
            task_outputs(dir.path())
        );
    }
    wait_for("slots freed", 30, || {
        e.list_nodes("slots")
            .is_ok_and(|n| n[0].running_task_slots_count == Some(0))
    })
    .await;
    e.delete_pool("slots").await?;
    wait_for("pool deletion", 60, || e.get_pool("slots").is_err()).await;
    Ok(())
}

/// The holder container of node `node` of `pool` of engine `instance` (the one container with
/// the node's label and no task label).
fn holder_of(instance: &str, pool: &str, node: &str) -> String {
    use shipyard_local::engine::labels;
    let out = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter"])
        .arg(format!("label={}={pool}/{node}", labels::NODE))
        .arg("--filter")
        .arg(format!("label={}={instance}", labels::INSTANCE))
        .args(["--format"])
        .arg(format!("{{{{.ID}}}} {{{{.Label \"{}\"}}}}", labels::TASK))
        .output()
        .expect("docker runs");
    let holders: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| match l.split_once(' ') {
            Some((id, "")) => Some(id.to_string()),
            None => Some(l.trim().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        holders.len(),
        1,
        "one holder for {pool}/{node}: {holders:?}"
    );
    holders[0].clone()
}

/// Host tasks (no `containerSettings`) on a container pool run on the node itself, as on a
/// Batch VM: what the start task wrote outside the node's directories is there for a later
/// host task, and a host task stopped by its wall-clock limit or by `terminate` takes every
/// process it started with it, leaving the node (its holder) running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_host_tasks_run_on_the_node_and_stop_without_it() -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    let mut p = pool("ph", 1, 2);
    p.start_task = Some(model!({
        "commandLine": "/bin/sh -c 'echo installed-by-start > /opt/from-start-task'",
        "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "admin"}},
        "waitForSuccess": true
    }));
    e.add_pool(p).await?;
    wait_idle(&e, "ph", 1, 120).await;
    let node = e.list_nodes("ph")?[0].id.clone().unwrap_or_default();
    let holder = holder_of(e.instance_label(), "ph", &node);
    e.add_job(job(
        "jh",
        "ph",
        serde_json::json!({"onAllTasksComplete": "noaction"}),
    ))
    .await?;
    let host = |id: &str, cmd: &str, extra: serde_json::Value| {
        let mut v = serde_json::json!({"id": id, "commandLine": cmd});
        if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(x.clone());
        }
        serde_json::from_value::<TaskAddParameter>(v).expect("task")
    };
    e.add_tasks(
        "jh",
        vec![
            host(
                "reads",
                "/bin/cat /opt/from-start-task",
                serde_json::json!({}),
            ),
            host(
                "limited",
                "/bin/sh -c 'sleep 313 & sleep 317; wait'",
                serde_json::json!({"constraints": {"maxWallClockTime": "PT2S"}}),
            ),
            // As root, a host task starts through the holder's command agent, not an exec.
            host(
                "limited-admin",
                "/bin/sh -c 'sleep 331 & sleep 337; wait'",
                serde_json::json!({
                    "constraints": {"maxWallClockTime": "PT2S"},
                    "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}
                }),
            ),
        ],
    )
    .await?;
    let reads = completed(&e, "jh", "reads", 60).await;
    assert_eq!(result(&reads).1, Some(0), "{:?}", result(&reads));
    assert_eq!(
        task_text(&e, "jh", "reads", "stdout.txt").trim(),
        "installed-by-start"
    );
    for id in ["limited", "limited-admin"] {
        let limited = completed(&e, "jh", id, 60).await;
        assert_eq!(
            result(&limited).0,
            Some(TaskExecutionResult::Failure),
            "{id}"
        );
    }
    let top = |h: &str| {
        let out = std::process::Command::new("docker")
            .args(["top", h, "-eo", "pid,args"])
            .output()
            .expect("docker top");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (running, procs) = loop {
        let (ok, procs) = top(&holder);
        if !procs.contains("sleep 3") || Instant::now() > deadline {
            break (ok, procs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(running, "the holder still runs after the limit");
    assert!(
        !procs.contains("sleep 3"),
        "the task's processes are gone: {procs}"
    );

    // Terminated, by exec (the default non-admin user) and through the agent (admin).
    let admin = serde_json::json!({
        "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}
    });
    for (id, secs, extra) in [
        ("stopped", "341", serde_json::json!({})),
        ("stopped-admin", "343", admin),
    ] {
        let sleep = format!("sleep {secs}");
        e.add_tasks(
            "jh",
            vec![host(id, &format!("/bin/sh -c '{sleep}'"), extra)],
        )
        .await?;
        wait_for("the host task to run", 60, || {
            top(&holder).1.contains(&sleep)
        })
        .await;
        e.terminate_task("jh", id).await?;
        let stopped = completed(&e, "jh", id, 60).await;
        assert_eq!(
            result(&stopped).0,
            Some(TaskExecutionResult::Failure),
            "{id}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while top(&holder).1.contains(&sleep) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (running, procs) = top(&holder);
        assert!(
            running && !procs.contains(&sleep),
            "{id} terminated: {procs}"
        );
    }
    e.delete_pool("ph").await?;
    wait_for("pool deletion", 60, || e.get_pool("ph").is_err()).await;
    Ok(())
}

/// A pool whose image's default user is not root: its holders keep `sleep infinity` (the
/// command agent's FIFOs are root's, so a non-root loop could not open them and its node would
/// die), and host tasks run there by exec, as before the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_nodes_of_an_image_with_a_non_root_user_keep_running_and_run_host_tasks(
) -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let image = format!("shipyard-test/nonroot:{}", std::process::id());
    let mut build = std::process::Command::new("docker")
        .args([
            "build",
            "-q",
            "--label",
            "shipyard.test=1",
            "-t",
            &image,
            "-",
        ])
        .env("DOCKER_BUILDKIT", "0")
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = build.stdin.take() {
        stdin.write_all(format!("FROM {TEST_IMAGE}\nUSER 1000:1000\n").as_bytes())?;
    }
    assert!(build.wait()?.success(), "docker build of {image}");
    struct Image(String);
    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::process::Command::new("docker")
                .args(["rmi", "-f", &self.0])
                .output();
        }
    }
    let _image = Image(image.clone());
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    let mut p = pool("pn", 1, 1);
    if let Some(c) = p
        .virtual_machine_configuration
        .as_mut()
        .and_then(|v| v.container_configuration.as_mut())
    {
        c.container_image_names = Some(vec![image.clone()]);
    }
    e.add_pool(p).await?;
    wait_idle(&e, "pn", 1, 120).await;
    let node = e.list_nodes("pn")?[0].id.clone().unwrap_or_default();
    let holder = holder_of(e.instance_label(), "pn", &node);
    e.add_job(job("jn", "pn", serde_json::json!({}))).await?;
    e.add_tasks(
        "jn",
        vec![model!({"id": "who", "commandLine": "/usr/bin/id -u"})],
    )
    .await?;
    let who = completed(&e, "jn", "who", 60).await;
    assert_eq!(result(&who).1, Some(0), "{}", task_outputs(dir.path()));
    assert_eq!(task_text(&e, "jn", "who", "stdout.txt").trim(), "1000");
    let inspect = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}} {{.Path}}", &holder])
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "true sleep",
        "the holder runs sleep infinity"
    );
    e.delete_pool("pn").await?;
    wait_for("pool deletion", 60, || e.get_pool("pn").is_err()).await;
    Ok(())
}

/// IDs and names of the running containers of engine `instance` carrying `label` (any value).
fn containers_with(instance: &str, label: &str) -> Vec<(String, String)> {
    use shipyard_local::engine::labels;
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Names}}",
            "--filter",
        ])
        .arg(format!("label={}={instance}", labels::INSTANCE))
        .arg("--filter")
        .arg(format!("label={label}"))
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, name)| (id.to_string(), name.to_string()))
        .collect()
}

/// A multi-instance task's containers come from spares (fresh containers of the same image
/// and options, in which nothing has run): the first task's are made while its job preparation
/// still runs on the nodes; after it ends, a spare is made on each node, and the next identical
/// task runs in those very containers (which keep their names: no container of the task's own
/// is made, and the spares go when the task's containers are removed). Once that repeated
/// task has run 2 s, the spares for the next one are made. The pool's deletion leaves none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_repeated_multi_instance_tasks_run_in_spares() -> anyhow::Result<()> {
    use shipyard_batch_api::models::TaskState;
    use shipyard_local::engine::labels;
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    let inst = e.instance_label().to_string();
    e.add_pool(pool("psp", 2, 1)).await?;
    wait_idle(&e, "psp", 2, 120).await;
    e.add_job(job(
        "jsp",
        "psp",
        serde_json::json!({
            "onAllTasksComplete": "noaction",
            "jobPreparationTask": {"commandLine": "/bin/sleep 5"}
        }),
    ))
    .await?;
    // Running spare containers (taken or not), by id.
    let spare_ids = || -> std::collections::BTreeSet<String> {
        containers_with(&inst, labels::SPARE)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    };
    // Containers made for a task itself, not taken from spares.
    let own = || containers_with(&inst, labels::TASK);
    let state = |id: &str| e.get_task("jsp", id).ok().and_then(|t| t.state);
    let mi = |id: &str, app: &str| -> TaskAddParameter {
        model!({
            "id": id, "commandLine": app,
            "containerSettings": {"imageName": TEST_IMAGE, "containerRunOptions": "--shm-size=64m"},
            "multiInstanceSettings": {"numberOfInstances": 2, "coordinationCommandLine": "/bin/true"}
        })
    };
    e.add_tasks("jsp", vec![mi("first", "/bin/sleep 2")])
        .await?;
    let mut early = Default::default();
    wait_for(
        "the first task's containers made while the job preparation runs",
        30,
        || {
            early = spare_ids();
            state("first") == Some(TaskState::Preparing) && early.len() == 2
        },
    )
    .await;
    // ... and they are the very containers the first task runs in.
    wait_for("the first task to run", 30, || {
        state("first") == Some(TaskState::Running)
    })
    .await;
    assert_eq!(spare_ids(), early, "the task runs in the early containers");
    assert!(
        own().is_empty(),
        "no container of the task's own: {:?}",
        own()
    );
    let first = completed(&e, "jsp", "first", 60).await;
    assert_eq!(result(&first).1, Some(0));
    let mut spares = Default::default();
    wait_for("a new spare on each node", 30, || {
        spares = spare_ids();
        spares.len() == 2 && spares.is_disjoint(&early)
    })
    .await;
    e.add_tasks("jsp", vec![mi("second", "/bin/sleep 5")])
        .await?;
    wait_for("the second task to run", 30, || {
        state("second") == Some(TaskState::Running)
    })
    .await;
    assert!(
        spare_ids().is_superset(&spares),
        "the second task runs in the spares"
    );
    assert!(
        own().is_empty(),
        "no container of the task's own: {:?}",
        own()
    );
    // A container that comes back on a node has its next spare made while its task runs (from
    // 2 s into it: its start has the machine to itself).
    wait_for(
        "the next spares made while the repeated task runs",
        30,
        || {
            let now = spare_ids();
            state("second") == Some(TaskState::Running)
                && now.len() == 4
                && now.is_superset(&spares)
        },
    )
    .await;
    let second = completed(&e, "jsp", "second", 60).await;
    assert_eq!(result(&second).1, Some(0));
    wait_for("the second task's containers removed", 30, || {
        spare_ids().is_disjoint(&spares)
    })
    .await;
    e.delete_pool("psp").await?;
    wait_for("pool deletion", 60, || e.get_pool("psp").is_err()).await;
    let left = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label={}={inst}", labels::INSTANCE))
        .output()?;
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "containers left after the pool's deletion"
    );
    Ok(())
}

/// A multi-instance task's kept containers are gone before the next task starts on its nodes:
/// a daemon its coordination command started (sshd on port 23 of the node's network) must
/// not hold the port the next task's own sshd needs. Four tasks of the same container run
/// back to back; from the third on, each runs in a spare made while the one before ran (its
/// application sleeps 3 s for that: the spare is made 2 s into it), so it starts the moment
/// that one ends. Each checks
/// that port 23 is free, starts sshd and waits until it listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_a_multi_instance_tasks_daemons_are_gone_before_the_next_task_on_its_nodes(
) -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    e.add_pool(pool("pdm", 2, 1)).await?;
    wait_idle(&e, "pdm", 2, 120).await;
    e.add_job(job("jdm", "pdm", serde_json::json!({}))).await?;
    let key = shipyard_runtime::ssh::JobSshKey::generate("daemons")?;
    let coordination = format!(
        "/bin/bash -c '(exec 3<>/dev/tcp/127.0.0.1/23) 2>/dev/null && {{ echo port 23 taken; exit 1; }}; \
         {SSH_SETUP} && until (exec 3<>/dev/tcp/127.0.0.1/23) 2>/dev/null; do sleep 0.05; done'"
    );
    let tasks: Vec<TaskAddParameter> = (1..=4)
        .map(|i| {
            model!({
                "id": format!("t{i}"), "commandLine": "/bin/sleep 3",
                "containerSettings": {"imageName": TEST_IMAGE},
                "userIdentity": {"autoUser": {"elevationLevel": "admin", "scope": "pool"}},
                "environmentSettings": ssh_settings(&key),
                "multiInstanceSettings": {"numberOfInstances": 2, "coordinationCommandLine": coordination}
            })
        })
        .collect();
    e.add_tasks("jdm", tasks).await?;
    for i in 1..=4 {
        let t = completed(&e, "jdm", &format!("t{i}"), 120).await;
        assert_eq!(
            result(&t),
            (Some(TaskExecutionResult::Success), Some(0), None),
            "t{i}: {}",
            task_outputs(dir.path())
        );
    }
    e.delete_pool("pdm").await?;
    wait_for("pool deletion", 60, || e.get_pool("pdm").is_err()).await;
    Ok(())
}

/// A multi-instance task is completed when its application ends; its containers are ended
/// after that, and its nodes take no task (they stay running) until they are gone. The job
/// (`terminatejob`) ends only once those containers are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_a_multi_instance_jobs_end_waits_for_its_tasks_containers() -> anyhow::Result<()> {
    use shipyard_batch_api::models::{ComputeNodeState, TaskState};
    use shipyard_local::engine::labels;
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    let inst = e.instance_label().to_string();
    e.add_pool(pool("pje", 2, 1)).await?;
    wait_idle(&e, "pje", 2, 120).await;
    e.add_job(job(
        "jje",
        "pje",
        serde_json::json!({"onAllTasksComplete": "terminatejob"}),
    ))
    .await?;
    e.add_tasks(
        "jje",
        vec![model!({
            "id": "mi", "commandLine": "/bin/sleep 1",
            "containerSettings": {"imageName": TEST_IMAGE},
            "multiInstanceSettings": {"numberOfInstances": 2, "coordinationCommandLine": "/bin/true"}
        })],
    )
    .await?;
    let state = || e.get_task("jje", "mi").ok().and_then(|t| t.state);
    // Its containers (spares taken, or made for it with its task label), once they run.
    let mut ran = std::collections::BTreeSet::new();
    wait_for("the task's containers to run", 60, || {
        ran = containers_with(&inst, labels::SPARE)
            .into_iter()
            .chain(containers_with(&inst, labels::TASK))
            .map(|(id, _)| id)
            .collect();
        state() == Some(TaskState::Running) && ran.len() == 2
    })
    .await;
    let t = completed(&e, "jje", "mi", 60).await;
    assert_eq!(result(&t).1, Some(0));
    wait_for("the job's end", 60, || {
        e.get_job("jje")
            .is_ok_and(|j| j.state == Some(JobState::Completed))
    })
    .await;
    let out = std::process::Command::new("docker")
        .args(["ps", "-a", "--no-trunc", "--format", "{{.ID}}"])
        .output()?;
    let all = String::from_utf8_lossy(&out.stdout).to_string();
    let left: Vec<&String> = ran.iter().filter(|id| all.contains(id.as_str())).collect();
    assert!(
        left.is_empty(),
        "the task's containers outlived its job: {left:?}"
    );
    let nodes = e.list_nodes("pje")?;
    assert!(
        nodes
            .iter()
            .all(|n| n.state == Some(ComputeNodeState::Idle)),
        "the nodes are idle once the job ended: {:?}",
        nodes.iter().map(|n| &n.state).collect::<Vec<_>>()
    );
    e.delete_pool("pje").await?;
    wait_for("pool deletion", 60, || e.get_pool("pje").is_err()).await;
    Ok(())
}

/// A pool's nodes start in the background, as in Batch: `add_pool` returns while they are
/// starting, and a multi-instance task added meanwhile has its containers made on the nodes
/// already up while it waits for the others (here node 1, whose start task takes 4 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_a_waiting_multi_instance_task_has_its_containers_made_on_nodes_already_up(
) -> anyhow::Result<()> {
    use shipyard_batch_api::models::{ComputeNodeState, TaskState};
    use shipyard_local::engine::labels;
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    let inst = e.instance_label().to_string();
    let mut p = pool("pea", 2, 1);
    p.start_task = Some(model!({
        "commandLine": "/bin/sh -c 'case $AZ_BATCH_NODE_ID in *-n1) sleep 4;; esac'",
        "waitForSuccess": true
    }));
    let t = Instant::now();
    e.add_pool(p).await?;
    let states: Vec<_> = e.list_nodes("pea")?.into_iter().map(|n| n.state).collect();
    assert!(
        states
            .iter()
            .all(|s| *s == Some(ComputeNodeState::Starting)),
        "add_pool returned after {:?} with nodes {states:?}",
        t.elapsed()
    );
    e.add_job(job("jea", "pea", serde_json::json!({}))).await?;
    e.add_tasks(
        "jea",
        vec![model!({
            "id": "mi", "commandLine": "/bin/true",
            "containerSettings": {"imageName": TEST_IMAGE},
            "multiInstanceSettings": {"numberOfInstances": 2, "coordinationCommandLine": "/bin/true"}
        })],
    )
    .await?;
    let node_state = |id: &str| {
        e.list_nodes("pea").ok().and_then(|v| {
            v.into_iter()
                .find(|n| n.id.as_deref() == Some(id))
                .and_then(|n| n.state)
        })
    };
    // Running spare containers on node 0 while node 1 is still in its start task.
    let on_n0 = || {
        containers_with(&inst, labels::SPARE)
            .iter()
            .filter(|(_, name)| name.contains("-pea-n0-spare-"))
            .count()
    };
    wait_for("a container made ahead on node 0", 30, || {
        on_n0() == 1 || node_state("pea-n1") == Some(ComputeNodeState::Idle)
    })
    .await;
    assert_eq!(
        node_state("pea-n1"),
        Some(ComputeNodeState::WaitingForStartTask),
        "node 1 is still starting"
    );
    assert_eq!(
        e.get_task("jea", "mi")?.state,
        Some(TaskState::Active),
        "the task waits for both nodes"
    );
    let done = completed(&e, "jea", "mi", 60).await;
    assert_eq!(result(&done).1, Some(0), "{}", task_outputs(dir.path()));
    e.delete_pool("pea").await?;
    wait_for("pool deletion", 60, || e.get_pool("pea").is_err()).await;
    Ok(())
}
