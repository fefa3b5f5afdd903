//! Shared helpers of the `local_*` tests (included with `mod local_support;`).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use shipyard_e2e::{image_hello_path, MpiKind, TEST_IMAGE};
use shipyard_local::{
    LocalBackend, LocalJob, LocalOptions, LocalTask, MultiInstance, OnAllTasksComplete,
};

/// The coordination command: host key if missing, sshd on port 23 (daemonizes).
pub const COORDINATION: &str = "/bin/bash -c 'mkdir -p /run/sshd && \
     { test -f /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key; } && \
     /usr/sbin/sshd -p 23 -h /etc/ssh/ssh_host_ed25519_key'";

/// Every backend that connects to Docker (`LocalBackend::connect`, so every `run`) and every
/// `pool del` removes the leftovers of *dead* runs on this Docker host, whatever their state
/// directory. A test that kills a run and then checks that its objects are still there holds
/// [`exclusive_of_sweeps`]; a test that connects a backend while such a test may be in that
/// window holds [`may_sweep`]. (One lock per test binary: test binaries run one after another.)
static SWEEPS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by a test whose backends may sweep dead runs (see [`SWEEPS`]).
pub fn may_sweep() -> std::sync::RwLockReadGuard<'static, ()> {
    SWEEPS.read().unwrap_or_else(|p| p.into_inner())
}

/// Held by a test that leaves a dead run behind on purpose (see [`SWEEPS`]).
pub fn exclusive_of_sweeps() -> std::sync::RwLockWriteGuard<'static, ()> {
    SWEEPS.write().unwrap_or_else(|p| p.into_inner())
}

/// A job id unique across concurrently running test processes.
pub fn unique_id(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("t-{name}-{}-{nanos:x}", std::process::id())
}

/// A backend on a private state dir; every object it creates carries `shipyard.test=1`.
pub async fn backend(state: &std::path::Path) -> LocalBackend {
    LocalBackend::connect(
        LocalOptions::default()
            .state_dir(state)
            .label("shipyard.test", "1"),
    )
    .await
    .expect("connect to Docker")
}

/// The application command running the smoke test over `nodes` × `ppn` ranks.
pub fn hello_command(kind: MpiKind, nodes: u32, ppn: u32, sleep_first: u32) -> String {
    let np = nodes * ppn;
    let prog = image_hello_path(kind);
    let launch = match kind {
        MpiKind::OpenMpi => format!(
            "mpirun.openmpi --allow-run-as-root -np {np} \
             --host $(echo $AZ_BATCH_HOST_LIST | sed \"s/,/:{ppn},/g\"):{ppn} \
             --mca btl tcp,self --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 \
             -x HELLO_EXPECT_SIZE -x HELLO_FAIL_RANK -x HELLO_PRINT_ENV {prog}"
        ),
        MpiKind::Mpich => format!(
            "mpiexec.mpich -n {np} -ppn {ppn} -hosts $AZ_BATCH_HOST_LIST -launcher ssh -iface eth0 {prog}"
        ),
        MpiKind::IntelMpi => format!(
            "/opt/intel/mpi/bin/mpiexec.hydra -n {np} -ppn {ppn} -hosts $AZ_BATCH_HOST_LIST \
             -bootstrap ssh -ordered-output {prog}"
        ),
    };
    let pre = if sleep_first > 0 {
        format!("sleep {sleep_first}; ")
    } else {
        String::new()
    };
    format!("/bin/bash -c '{pre}{launch}'")
}

/// A one-task job running the smoke test on `nodes` nodes with `ppn` ranks each.
pub fn hello_job(id: &str, kind: MpiKind, nodes: u32, ppn: u32) -> LocalJob {
    let mut task = LocalTask::new("hello", TEST_IMAGE, hello_command(kind, nodes, ppn, 0));
    task.multi_instance = Some(MultiInstance {
        number_of_instances: nodes,
        coordination_command_line: COORDINATION.into(),
    });
    task.environment
        .push(("HELLO_EXPECT_SIZE".into(), (nodes * ppn).to_string()));
    if kind == MpiKind::IntelMpi {
        for (k, v) in [
            ("I_MPI_ROOT", "/opt/intel/mpi"),
            ("LD_LIBRARY_PATH", "/opt/intel/mpi/lib"),
            ("FI_PROVIDER", "tcp"),
            ("I_MPI_HYDRA_IFACE", "eth0"),
            ("FI_TCP_IFACE", "eth0"),
        ] {
            task.environment.push((k.into(), v.into()));
        }
    }
    LocalJob {
        id: id.into(),
        tasks: vec![task],
        uses_task_dependencies: false,
        on_all_tasks_complete: OnAllTasksComplete::TerminateJob,
        on_task_failure: Default::default(),
        max_parallel_tasks: None,
    }
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Containers, networks and volumes labelled with `shipyard.job=<job>`.
pub fn leftovers(job: &str) -> Vec<String> {
    let f = format!("label=shipyard.job={job}");
    let mut all = Vec::new();
    for c in docker_lines(&["ps", "-a", "--filter", &f, "--format", "{{.Names}}"]) {
        all.push(format!("container {c}"));
    }
    for n in docker_lines(&["network", "ls", "--filter", &f, "--format", "{{.Name}}"]) {
        all.push(format!("network {n}"));
    }
    for v in docker_lines(&["volume", "ls", "--filter", &f, "--format", "{{.Name}}"]) {
        all.push(format!("volume {v}"));
    }
    all
}

/// Force-removes whatever a failed test left (best effort; the assertion already failed).
pub fn force_clean(job: &str) {
    let f = format!("label=shipyard.job={job}");
    for id in docker_lines(&["ps", "-aq", "--filter", &f]) {
        let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    }
    for id in docker_lines(&["network", "ls", "-q", "--filter", &f]) {
        let _ = Command::new("docker").args(["network", "rm", &id]).output();
    }
    for id in docker_lines(&["volume", "ls", "-q", "--filter", &f]) {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &id])
            .output();
    }
}

/// Removes the job's Docker objects when dropped (also when the test panics).
#[derive(Debug)]
pub struct CleanGuard(pub String);

impl Drop for CleanGuard {
    fn drop(&mut self) {
        force_clean(&self.0);
    }
}

/// Builds the `local_hello` / `local_jobs` examples (quick when up to date) and returns the path.
pub fn example_binary(name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = shipyard_e2e::repo_root();
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-q", "-p", "shipyard-local", "--example", name])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building example {name}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug").join("examples").join(name)
}
