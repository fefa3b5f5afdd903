//! The engine's VM-like nodes for real: the Docker runtime's NON-NATIVE plan of
//! `examples/local-openmpi.toml` (3 nodes × 2 ranks), unmodified, on a pool without
//! `containerConfiguration`. Each node is a set of namespaces with its own dockerd; the job
//! preparation's `docker pull` is served by the pool registry (the nodes' Docker Hub mirror),
//! coordination starts sshd containers (`docker run -d --net=host`), the application runs
//! `docker exec … mpirun`, and the release removes the containers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "engine_support.rs"]
mod engine_support;
use engine_support::{completed, task_outputs, task_text, wait_for, wait_idle};

use shipyard_batch_api::models::{TaskExecutionResult, TaskState};
use shipyard_e2e::HelloReport;
use shipyard_local::engine::{Engine, EngineOptions, VmNodesOptions};
use shipyard_runtime::ssh::JobSshKey;
use shipyard_runtime::{JobSpec, PoolSpec};

/// Heavy (several dockerds each): one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn docker_ids_on(socket: &Path) -> Vec<String> {
    let out = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(["ps", "-aq"])
        .output()
        .expect("docker ps on a node");
    assert!(out.status.success(), "docker ps on {}", socket.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// The node sockets of every VM-like pool under `vm_state`.
fn node_sockets(vm_state: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for pool in std::fs::read_dir(vm_state.join("pools"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for node in std::fs::read_dir(pool.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let s = node.path().join("docker.sock");
            if s.exists() {
                v.push(s);
            }
        }
    }
    v.sort();
    v
}

fn engine_options(dir: &Path, run_tag: &str) -> EngineOptions {
    let mut opts = EngineOptions::new(dir.join("engine"));
    opts.vm_nodes = VmNodesOptions {
        state_dir: dir.join("vm"),
        run_dir: PathBuf::from(format!("/run/shipyard-e2-{run_tag}")),
        ..Default::default()
    };
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_runs_the_non_native_openmpi_example_on_three_vm_like_nodes() -> anyhow::Result<()> {
    if !shipyard_e2e::require_vm_nodes() {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local-openmpi.toml");
    let doc: toml::Table = toml::from_str(&std::fs::read_to_string(&example)?)?;
    let pool_spec: PoolSpec = doc["pool_specification"].clone().try_into()?;
    let job_spec: JobSpec = doc["job_specifications"]
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no job"))?
        .try_into()?;
    assert!(
        !pool_spec.facts().native_containers,
        "the example is non-native"
    );
    shipyard_runtime_docker::link();
    let runtime = shipyard_runtime::registry::get("docker")?;
    let mut plan = runtime.plan(&job_spec, &pool_spec.facts())?;
    let key = JobSshKey::generate(&format!("shipyard-{}", job_spec.id))?;
    plan.install_ssh_key(&key)?;
    let pool_param = pool_spec.add_parameter(&[&plan])?;
    assert!(
        pool_param
            .virtual_machine_configuration
            .as_ref()
            .is_some_and(|v| v.container_configuration.is_none()),
        "a non-native pool has no containerConfiguration"
    );
    let pool_id = pool_param.id.clone();
    let pool = pool_param.clone();
    let job_param = plan.job_add_parameter(&job_spec.id, &pool_id);

    let dir = tempfile::tempdir()?;
    let vm_state = dir.path().join("vm");
    let e = Engine::open(engine_options(dir.path(), &std::process::id().to_string())).await?;
    let t0 = Instant::now();
    e.add_pool(pool_param).await?;
    wait_idle(&e, &pool_id, 3, 180).await;
    let pool_secs = t0.elapsed().as_secs_f64();
    let sockets = node_sockets(&vm_state);
    assert_eq!(sockets.len(), 3, "one engine per node: {sockets:?}");

    let t1 = Instant::now();
    e.add_job(job_param).await?;
    let results = e.add_tasks(&job_spec.id, plan.tasks.clone()).await?;
    assert_eq!(results.len(), 1);
    let job_id = job_spec.id.clone();
    wait_for("the MPI task", 240, || {
        e.get_task(&job_id, "hello")
            .is_ok_and(|t| t.state == Some(TaskState::Completed))
    })
    .await;
    let job_secs = t1.elapsed().as_secs_f64();
    let t = e.get_task(&job_id, "hello")?;
    let read = |f: &str| {
        e.task_file(&job_id, "hello", f)
            .ok()
            .and_then(|c| std::fs::read_to_string(c.path).ok())
            .unwrap_or_default()
    };
    let (stdout, stderr) = (read("stdout.txt"), read("stderr.txt"));
    let info = t.execution_info.clone().unwrap_or_default();
    assert_eq!(
        info.result,
        Some(TaskExecutionResult::Success),
        "task failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
        info.failure_info,
        task_outputs(&dir.path().join("engine"))
    );
    assert_eq!(info.exit_code, Some(0));
    let report = HelloReport::parse(&stdout);
    report.assert_complete(6);
    let mut hosts: Vec<&str> = report.ranks.iter().map(|r| r.2.as_str()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    assert_eq!(hosts.len(), 3, "ranks on 3 distinct nodes: {hosts:?}");

    // Preparation ran (and pulled) on every node; release removed every container.
    let prep = e.prep_release_status(&job_id)?;
    assert_eq!(prep.len(), 3, "prep on 3 nodes: {prep:?}");
    for p in &prep {
        let pi = p.job_preparation_task_execution_info.as_ref();
        assert_eq!(pi.and_then(|i| i.exit_code), Some(0), "prep: {p:?}");
    }
    wait_for("release on 3 nodes", 120, || {
        e.prep_release_status(&job_id).is_ok_and(|v| {
            v.iter().all(|p| {
                p.job_release_task_execution_info
                    .as_ref()
                    .and_then(|i| i.exit_code)
                    == Some(0)
            })
        })
    })
    .await;
    for s in &sockets {
        assert_eq!(
            docker_ids_on(s),
            Vec::<String>::new(),
            "left on {}",
            s.display()
        );
        let images = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", s.display()))
            .args(["image", "inspect", "-f", "ok", shipyard_e2e::TEST_IMAGE])
            .output()?;
        assert!(images.status.success(), "the node pulled the image");
    }
    eprintln!("engine_vm: pool of 3 VM-like nodes {pool_secs:.2}s, job {job_secs:.2}s");

    // Pool deletion removes the nodes: namespaces, bridge, state.
    delete_and_check(&e, &pool_id, &vm_state).await?;

    // The same pool again: its image comes from the cache the first pool filled (no push, no
    // pull of layers), with the host's image ID, and a node's `docker pull` is served by the
    // pool registry.
    let t2 = Instant::now();
    e.add_pool(pool.clone()).await?;
    wait_idle(&e, &pool_id, 3, 60).await;
    let cached_secs = t2.elapsed().as_secs_f64();
    eprintln!("engine_vm: the same pool from the image cache {cached_secs:.2}s");
    assert!(cached_secs < 10.0, "a cached pool took {cached_secs:.2}s");
    let host_id = Command::new("docker")
        .args([
            "image",
            "inspect",
            "-f",
            "{{.Id}}",
            shipyard_e2e::TEST_IMAGE,
        ])
        .output()?;
    let host_id = String::from_utf8_lossy(&host_id.stdout).trim().to_string();
    let sockets = node_sockets(&vm_state);
    assert_eq!(sockets.len(), 3);
    for s in &sockets {
        let docker = |args: &[&str]| {
            Command::new("docker")
                .arg("-H")
                .arg(format!("unix://{}", s.display()))
                .args(args)
                .output()
        };
        let id = docker(&[
            "image",
            "inspect",
            "-f",
            "{{.Id}}",
            shipyard_e2e::TEST_IMAGE,
        ])?;
        assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), host_id);
        let pull = docker(&["pull", shipyard_e2e::TEST_IMAGE])?;
        let text = String::from_utf8_lossy(&pull.stdout);
        assert!(
            pull.status.success() && text.contains("Image is up to date"),
            "{text}{}",
            String::from_utf8_lossy(&pull.stderr)
        );
    }
    delete_and_check(&e, &pool_id, &vm_state).await
}

/// Deletes the pool and checks its nodes are gone: namespaces, bridge, state.
async fn delete_and_check(e: &Engine, pool_id: &str, vm_state: &Path) -> anyhow::Result<()> {
    let pool_dirs: Vec<String> = std::fs::read_dir(vm_state.join("pools"))?
        .flatten()
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(pool_dirs.len(), 1);
    e.delete_pool(pool_id).await?;
    wait_for("pool deletion", 60, || e.get_pool(pool_id).is_err()).await;
    let netns = Command::new("ip").args(["netns", "list"]).output()?;
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.contains(&format!("shipyard-{}", pool_dirs[0])),
        "namespaces left: {netns}"
    );
    let links = Command::new("ip").args(["link", "show"]).output()?;
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&format!("syb{}", pool_dirs[0])),
        "bridge left"
    );
    assert!(node_sockets(vm_state).is_empty());
    Ok(())
}

/// A pool of `nodes` VM-like nodes (no `containerConfiguration`), one task slot each.
fn vm_pool(id: &str, nodes: i32) -> shipyard_batch_api::models::PoolAddParameter {
    model!({
        "id": id, "vmSize": "standard_d2s_v3", "targetDedicatedNodes": nodes,
        "taskSlotsPerNode": 1,
        "virtualMachineConfiguration": {
            "imageReference": {}, "nodeAgentSKUId": "batch.node.ubuntu 22.04"
        }
    })
}

/// The pid in a node's `dockerd.pid` (next to its socket).
fn engine_pid(socket: &Path) -> Option<u32> {
    let dir = socket.parent()?;
    std::fs::read_to_string(dir.join("dockerd.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_like_pool_grows_to_three_nodes_that_reach_each_other_and_shrinks_back(
) -> anyhow::Result<()> {
    if !shipyard_e2e::require_vm_nodes() {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir()?;
    let vm_state = dir.path().join("vm");
    let tag = format!("{}r", std::process::id());
    let e = Engine::open(engine_options(dir.path(), &tag)).await?;
    let t0 = Instant::now();
    e.add_pool(vm_pool("rz", 1)).await?;
    wait_idle(&e, "rz", 1, 180).await;
    let first = node_sockets(&vm_state);
    assert_eq!(first.len(), 1);
    let created = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    e.resize_pool("rz", model!({"targetDedicatedNodes": 3}))
        .await?;
    wait_idle(&e, "rz", 3, 120).await;
    wait_for("steady", 30, || {
        e.get_pool("rz").is_ok_and(|p| {
            p.allocation_state == Some(shipyard_batch_api::models::AllocationState::Steady)
                && p.current_dedicated_nodes == Some(3)
        })
    })
    .await;
    let grown = t1.elapsed().as_secs_f64();
    let sockets = node_sockets(&vm_state);
    assert_eq!(sockets.len(), 3, "one engine per node: {sockets:?}");
    let new_sockets: Vec<PathBuf> = sockets
        .iter()
        .filter(|s| !first.contains(s))
        .cloned()
        .collect();
    assert_eq!(new_sockets.len(), 2, "each new node has its own engine");

    // Every node (the first one and the new ones): every /etc/hosts names all three, the
    // engine answers and holds the pool's image (from the image cache, as the first node's),
    // and the other nodes' addresses answer on the bridge (a refused connection is the other
    // node's kernel answering).
    e.add_job(model!({
        "id": "rj", "poolInfo": {"poolId": "rz"}, "onAllTasksComplete": "terminatejob"
    }))
    .await?;
    let check = format!(
        "getent hosts node-0 node-1 node-2 | wc -l | grep -qx 3 && \
         docker info -f {{{{.Name}}}} && docker image inspect -f ok {}",
        shipyard_e2e::TEST_IMAGE
    );
    let probe = "for h in $(echo $AZ_BATCH_HOST_LIST | tr , \" \"); do \
         timeout 5 bash -c \"exec 3<>/dev/tcp/$h/9\" 2>&1 | grep -q refused || exit 7; \
         echo reached $h; done";
    e.add_tasks(
        "rj",
        vec![model!({
            "id": "all", "commandLine": format!("/bin/bash -c '{probe}'"),
            "userIdentity": {"autoUser": {"elevationLevel": "admin", "scope": "pool"}},
            "multiInstanceSettings": {
                "numberOfInstances": 3,
                "coordinationCommandLine": format!("/bin/bash -c '{check}'")
            }
        })],
    )
    .await?;
    let t = completed(&e, "rj", "all", 120).await;
    let info = t.execution_info.clone().unwrap_or_default();
    let stdout = task_text(&e, "rj", "all", "stdout.txt");
    assert_eq!(
        info.result,
        Some(TaskExecutionResult::Success),
        "{:?}\n{stdout}\n{}\n{:?}",
        info.failure_info,
        task_outputs(&dir.path().join("engine")),
        e.list_subtasks("rj", "all")
    );
    assert_eq!(stdout.matches("reached ").count(), 3, "{stdout}");
    let subtasks = e.list_subtasks("rj", "all")?;
    assert_eq!(subtasks.len(), 2);
    assert!(
        subtasks.iter().all(|s| s.exit_code == Some(0)),
        "{subtasks:?}"
    );

    // Back to one node: the new nodes go, with their namespaces, engines and directories.
    let pids: Vec<u32> = new_sockets.iter().filter_map(|s| engine_pid(s)).collect();
    assert_eq!(pids.len(), 2, "the new nodes' dockerd pids");
    let t2 = Instant::now();
    e.resize_pool("rz", model!({"targetDedicatedNodes": 1}))
        .await?;
    wait_for("one node", 60, || {
        e.list_nodes("rz").is_ok_and(|v| v.len() == 1)
            && e.get_pool("rz").is_ok_and(|p| {
                p.allocation_state == Some(shipyard_batch_api::models::AllocationState::Steady)
            })
    })
    .await;
    let shrunk = t2.elapsed().as_secs_f64();
    assert_eq!(node_sockets(&vm_state), first, "the first node stays");
    for pid in pids {
        // Gone, or dead and not yet reaped by its parent (the node's `unshare`).
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone(), "a removed node's dockerd {pid} is gone");
    }
    let pool_dirs: Vec<String> = std::fs::read_dir(vm_state.join("pools"))?
        .flatten()
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(pool_dirs.len(), 1);
    let netns = Command::new("ip").args(["netns", "list"]).output()?;
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        netns.contains(&format!("shipyard-{}-node-0", pool_dirs[0]))
            && !netns.contains(&format!("shipyard-{}-node-1", pool_dirs[0]))
            && !netns.contains(&format!("shipyard-{}-node-2", pool_dirs[0])),
        "only the first node's namespace is left: {netns}"
    );
    let links = Command::new("ip").args(["link", "show"]).output()?;
    let links = String::from_utf8_lossy(&links.stdout);
    for n in ["n1", "n2"] {
        assert!(
            !links.contains(&format!("syv{}{n}", pool_dirs[0])),
            "the removed nodes' veths are gone"
        );
    }
    let hosts = std::fs::read_to_string(vm_state.join("pools").join(&pool_dirs[0]).join("hosts"))?;
    assert!(
        hosts.contains("node-0") && !hosts.contains("node-1") && !hosts.contains("node-2"),
        "/etc/hosts no longer names the removed nodes: {hosts}"
    );
    for s in &new_sockets {
        assert!(
            !s.parent().is_some_and(Path::exists),
            "{} is gone",
            s.display()
        );
    }
    eprintln!(
        "engine_vm: 1 VM-like node {created:.2}s, grown to 3 in {grown:.2}s, shrunk to 1 in {shrunk:.2}s"
    );
    delete_and_check(&e, "rz", &vm_state).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_like_node_whose_dockerd_dies_is_unusable_and_its_task_retries_elsewhere(
) -> anyhow::Result<()> {
    if !shipyard_e2e::require_vm_nodes() {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir()?;
    let vm_state = dir.path().join("vm");
    let mut opts = engine_options(dir.path(), &format!("{}f", std::process::id()));
    // No images: the nodes need none here.
    opts.mirror_images.clear();
    let e = Engine::open(opts).await?;
    e.add_pool(vm_pool("vf", 2)).await?;
    wait_idle(&e, "vf", 2, 120).await;
    e.add_job(model!({
        "id": "fj", "poolInfo": {"poolId": "vf"}, "onAllTasksComplete": "terminatejob"
    }))
    .await?;
    e.add_tasks(
        "fj",
        vec![model!({
            "id": "long",
            "commandLine": "/bin/sh -c 'echo $DOCKER_HOST; sleep 10; echo done'",
            "constraints": {"maxTaskRetryCount": 1}
        })],
    )
    .await?;
    // The task names its node's engine; that engine is killed.
    let mut first = String::new();
    wait_for("the task's first line", 60, || {
        first = task_text(&e, "fj", "long", "stdout.txt");
        first.ends_with('\n')
    })
    .await;
    let socket = PathBuf::from(first.trim().trim_start_matches("unix://"));
    let dead = e
        .get_task("fj", "long")?
        .node_info
        .and_then(|n| n.node_id)
        .expect("the running task names its node");
    let pid = engine_pid(&socket).expect("the node's dockerd pid");
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    assert!(killed.success());
    let t0 = Instant::now();
    wait_for("the node unusable", 30, || {
        e.get_node("vf", &dead)
            .is_ok_and(|n| n.state == Some(shipyard_batch_api::models::ComputeNodeState::Unusable))
    })
    .await;
    eprintln!("engine_vm: dead dockerd found after {:?}", t0.elapsed());
    let node = e.get_node("vf", &dead)?;
    let err = node
        .errors
        .as_ref()
        .and_then(|v| v.first())
        .expect("a node error");
    assert_eq!(err.code.as_deref(), Some("NodeEngineDied"));
    let msg = err.message.clone().unwrap_or_default();
    assert!(msg.contains(&dead) && msg.contains("dockerd"), "{msg}");
    let t = completed(&e, "fj", "long", 60).await;
    let info = t.execution_info.clone().unwrap_or_default();
    assert_eq!(info.result, Some(TaskExecutionResult::Success), "{info:?}");
    assert_eq!(info.retry_count, 1);
    let other = t.node_info.and_then(|n| n.node_id).unwrap_or_default();
    assert!(!other.is_empty() && other != dead, "retried on {other}");
    let out = task_text(&e, "fj", "long", "stdout.txt");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_ne!(
        lines[0],
        first.trim(),
        "the retry ran on the other node's engine"
    );
    assert_eq!(lines[1], "done");
    delete_and_check(&e, "vf", &vm_state).await
}
