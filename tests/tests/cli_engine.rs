//! `shipyard --target local` through the local engine, as a user runs it: the real binary, a
//! private state directory (`SHIPYARD_STATE_DIR`), the engine hosted by the first shipyard
//! process and shared with later ones through its 0600 endpoint file.
//!
//! - a Charliecloud job (`--plugin`, `runtime = "charliecloud"`) routed to the engine without
//!   `--engine`: 4 ranks of the image's smoke test under the host's Open MPI on one VM-like node;
//! - `examples/local-openmpi.toml` with `--engine` (3 VM-like nodes × 2 ranks), timed against
//!   the per-run backend in the same test (printed, not asserted);
//! - `jobs term` from another process ends a `run` that holds the engine;
//! - `pool add` / `pool list` / `pool del` across invocations of a container pool.
//!
//! Needs Docker with the test image; the VM-like tests also root, iproute2, iptables, dockerd,
//! docker-registry, Open MPI and `ch-run` (each `require_*` fails under CI).

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use shipyard_e2e::{
    cargo_build, export_image, require_ch_run, require_mpi, require_test_image, require_vm_nodes,
    show, HelloReport, KillOnDrop, MpiKind,
};

/// Heavy (VM-like nodes run a dockerd each, the machine has 2 cores): one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

type Scratch = shipyard_e2e::EngineScratch;

/// `pool list` on the engine does not show `pool`.
fn assert_pool_gone(s: &Scratch, pool: &str) {
    let list = s
        .cli()
        .args(["--engine", "-o", "json", "pool", "list"])
        .output()
        .expect("pool list");
    assert!(list.status.success(), "{}", show(&list));
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(pool),
        "{}",
        show(&list)
    );
}

/// A unique id for this test process.
fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

const VM_POOL: &str = r#"
[pool_specification]
id = "POOL"
vm_size = "Standard_D4s_v5"
vm_count = 1
[pool_specification.vm_configuration.platform_image]
publisher = "microsoft-dsvm"
offer = "ubuntu-hpc"
sku = "2204"
node_agent_sku_id = "batch.node.ubuntu 22.04"
"#;

#[test]
fn a_charliecloud_job_runs_under_host_openmpi_on_the_engine() {
    if !require_vm_nodes() {
        return;
    }
    let Some(ompi) = require_mpi(MpiKind::OpenMpi) else {
        return;
    };
    let Some(version) = require_ch_run() else {
        return;
    };
    eprintln!("ch-run {version}");
    let _serial = serial();
    let plugin = cargo_build(&["-p", "shipyard-plugin-charliecloud", "--lib"])
        .join("libshipyard_plugin_charliecloud.so");
    let mut s = Scratch::new("cli-engine-cc-");
    let tar = export_image(s.path());
    let pool = unique("cc-engine");
    s.pools.push(pool.clone());
    let config = s.write(
        "job.toml",
        &format!(
            r#"{pool_spec}
[[job_specifications]]
id = "cc-hello"
runtime = "charliecloud"
auto_complete = true
[[job_specifications.tasks]]
id = "hello"
image = "{image}"
command = "/opt/shipyard/bin/mpi-hello-openmpi"
[job_specifications.tasks.multi_instance]
num_instances = 1
[job_specifications.tasks.multi_instance.mpi]
runtime = "openmpi"
processes_per_node = 4
executable_path = "{launcher}"
"#,
            pool_spec = VM_POOL.replace("POOL", &pool),
            image = tar.display(),
            launcher = ompi.launcher.display(),
        ),
    );
    // no --vm-nodes: the runtime's host-MPI plan gets VM-like nodes by itself
    let out = s
        .cli()
        .arg("-v")
        .arg("--plugin")
        .arg(&plugin)
        .args(["run", "--tail"])
        .arg(&config)
        .output()
        .expect("run shipyard");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = HelloReport::parse(&stdout);
    report.assert_complete(4);
    assert_eq!(report.hosts().len(), 1, "one VM-like node: {stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hosting the local engine"),
        "the run went to the local engine: {}",
        show(&out)
    );
    // the run deleted the pool it made, and its endpoint file with the host process
    assert!(
        !s.state().join("engine/endpoint.json").exists(),
        "endpoint file left"
    );
    assert_pool_gone(&s, &pool);
}

#[test]
fn the_openmpi_example_runs_on_the_engine_and_is_timed_against_the_per_run_backend() {
    if !require_vm_nodes() {
        return;
    }
    let _serial = serial();
    let mut s = Scratch::new("cli-engine-ompi-");
    s.pools.push("mpipool".into());
    let example = shipyard_e2e::repo_root().join("examples/local-openmpi.toml");

    let t = Instant::now();
    let engine = s
        .cli()
        .args(["--target", "local", "--vm-nodes", "-q", "run", "--tail"])
        .arg(&example)
        .output()
        .expect("run on VM-like nodes");
    let engine_secs = t.elapsed().as_secs_f64();
    assert_eq!(engine.status.code(), Some(0), "{}", show(&engine));
    let report = HelloReport::parse(&String::from_utf8_lossy(&engine.stdout));
    report.assert_complete(6);
    assert_eq!(report.hosts().len(), 3, "{}", show(&engine));

    // the default path: the same example on container nodes with Batch's native plan
    let t = Instant::now();
    let default = s
        .cli()
        .args(["--target", "local", "-q", "run", "--tail", "--recreate"])
        .arg(&example)
        .output()
        .expect("run on the default path");
    let default_secs = t.elapsed().as_secs_f64();
    assert_eq!(default.status.code(), Some(0), "{}", show(&default));
    let report = HelloReport::parse(&String::from_utf8_lossy(&default.stdout));
    report.assert_complete(6);
    assert_eq!(report.hosts().len(), 3, "{}", show(&default));

    let t = Instant::now();
    let per_run = s
        .cli()
        .args(["--target", "local", "--per-run", "-q", "run", "--tail"])
        .arg(&example)
        .output()
        .expect("run on the per-run backend");
    let per_run_secs = t.elapsed().as_secs_f64();
    assert_eq!(per_run.status.code(), Some(0), "{}", show(&per_run));
    HelloReport::parse(&String::from_utf8_lossy(&per_run.stdout)).assert_complete(6);
    eprintln!(
        "local-openmpi.toml wall time: --vm-nodes (3 VM-like nodes, pool made and deleted) {engine_secs:.1}s, \
         default (engine, 3 container nodes) {default_secs:.1}s, --per-run (3 containers) {per_run_secs:.1}s; \
         ratios to per-run {:.2} and {:.2}",
        engine_secs / per_run_secs.max(0.001),
        default_secs / per_run_secs.max(0.001)
    );
}

const CONTAINER_POOL: &str = r#"
[pool_specification]
id = "POOL"
vm_size = "Standard_D4s_v5"
vm_count = 1
[pool_specification.vm_configuration.platform_image]
publisher = "microsoft-azure-batch"
offer = "ubuntu-server-container"
sku = "20-04-lts"
node_agent_sku_id = "batch.node.ubuntu 20.04"
native = true

[[job_specifications]]
id = "JOB"
runtime = "docker"
[[job_specifications.tasks]]
id = "sleep"
image = "shipyard/mpi:bookworm"
command = "sleep 600"
"#;

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(o)))
}

#[test]
fn jobs_term_from_another_process_ends_a_run_that_holds_the_engine() {
    if !require_test_image() {
        return;
    }
    let _serial = serial();
    let mut s = Scratch::new("cli-engine-term-");
    let pool = unique("term-pool");
    let job = unique("term-job");
    s.pools.push(pool.clone());
    let config = s.write(
        "sleep.toml",
        &CONTAINER_POOL.replace("POOL", &pool).replace("JOB", &job),
    );
    let mut run = KillOnDrop(
        s.cli()
            .args(["--target", "local", "--engine", "-q", "run"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start run"),
    );
    // another process sees the task running through the host's endpoint
    s.wait_task_running(&mut run, &job, 120);
    let endpoint = s.state().join("engine/endpoint.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&endpoint)
            .expect("endpoint file while the host runs")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "endpoint file mode");
    let term = s
        .cli()
        .args(["--target", "local", "--engine", "jobs", "term", &job])
        .output()
        .expect("jobs term");
    assert!(term.status.success(), "{}", show(&term));

    let deadline = Instant::now() + Duration::from_secs(90);
    while run.0.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "run did not end after jobs term");
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = run.wait_output().expect("run output");
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("job `{job}` was terminated")),
        "{}",
        show(&out)
    );
    assert!(!endpoint.exists(), "the host removed its endpoint file");
    assert!(
        s.pool_containers(&pool).is_empty(),
        "the run deleted the pool it made"
    );
}

#[test]
fn pool_add_persists_across_invocations_and_pool_del_removes_its_containers() {
    if !require_test_image() {
        return;
    }
    let _serial = serial();
    let mut s = Scratch::new("cli-engine-pool-");
    let pool = unique("kept-pool");
    s.pools.push(pool.clone());
    let config = s.write(
        "pool.toml",
        &CONTAINER_POOL
            .replace("POOL", &pool)
            .replace("JOB", "unused")
            .replace("vm_count = 1", "vm_count = 2"),
    );
    let add = s
        .cli()
        .args(["--engine", "-c"])
        .arg(&config)
        .args(["pool", "add"])
        .output()
        .expect("pool add");
    assert!(add.status.success(), "{}", show(&add));
    assert_eq!(s.pool_containers(&pool).len(), 2, "two holder containers");

    // a separate invocation (the adding process is gone: it reopens the store)
    let list = s
        .cli()
        .args([
            "--target", "local", "--engine", "-o", "json", "pool", "list",
        ])
        .output()
        .expect("pool list");
    assert!(list.status.success(), "{}", show(&list));
    let pools = json(&list);
    let listed = pools
        .as_array()
        .and_then(|a| a.iter().find(|p| p["id"] == pool.as_str()))
        .unwrap_or_else(|| panic!("{pool} not listed: {}", show(&list)));
    assert_eq!(listed["state"], "active", "{}", show(&list));
    assert_eq!(listed["currentDedicatedNodes"], 2, "{}", show(&list));

    let del = s
        .cli()
        .args(["--engine", "pool", "del", "--pool-id", &pool])
        .output()
        .expect("pool del");
    assert!(del.status.success(), "{}", show(&del));
    assert!(
        s.pool_containers(&pool).is_empty(),
        "containers left after pool del"
    );
    assert_pool_gone(&s, &pool);
}

/// `pool add` of a VM-like pool by a command that hosts the engine itself is refused, naming
/// why (the nodes would go when the command exits) and what to run instead; nothing is made.
#[test]
fn a_vm_like_pool_add_that_would_end_with_its_command_is_refused() {
    if !require_vm_nodes() {
        return;
    }
    let _serial = serial();
    let s = Scratch::new("cli-engine-vmadd-");
    let example = shipyard_e2e::repo_root().join("examples/local-openmpi.toml");
    let add = s
        .cli()
        .args(["--vm-nodes", "-c"])
        .arg(&example)
        .args(["pool", "add"])
        .output()
        .expect("pool add");
    assert_eq!(add.status.code(), Some(2), "{}", show(&add));
    let err = String::from_utf8_lossy(&add.stderr);
    assert!(
        err.contains("pool `mpipool` would get VM-like nodes")
            && err.contains("shipyard --vm-nodes run CONFIG"),
        "{}",
        show(&add)
    );
    assert_pool_gone(&s, "mpipool");
}
