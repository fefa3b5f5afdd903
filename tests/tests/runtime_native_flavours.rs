//! The docker runtime's NATIVE-pool plans for MPICH and Intel MPI (Open MPI is covered by
//! `local_runtime.rs`) run unmodified on 2 real container nodes by the local backend, which
//! runs a plan like a native Batch pool: the runtime's coordination command installs the job
//! key and starts sshd on port 23 in every node container, the application line waits for
//! every sshd and launches with the mpi-launch line, 2 ranks per node.
#![allow(clippy::unwrap_used)]

mod local_support;

use local_support::*;
use shipyard_e2e::{image_hello_path, require_test_image, HelloReport, MpiKind, TEST_IMAGE};
use shipyard_runtime::JobSpec;

async fn run(kind: MpiKind, mpi_toml: &str, env_toml: &str) {
    let state = tempfile::tempdir().unwrap();
    let id = unique_id(&format!("rt-{}", kind.short()));
    let _guard = CleanGuard(id.clone());
    let job: JobSpec = toml::from_str(&format!(
        r#"
        id = "{id}"
        auto_complete = true
        [[tasks]]
        id = "mpi"
        image = "{TEST_IMAGE}"
        command = "{hello}"
        shm_size = "256m"
        # Bounded, with one Batch retry: an MPICH launch of the full suite once hung in
        # MPI_Init for 15 minutes (a rank spinning, the others waiting in PMI); the limit ends
        # such an attempt and the retry runs it again, as a Batch user would configure it.
        # A retry is reported below, never hidden.
        max_wall_time = "PT2M"
        max_task_retries = 1
        environment_variables = {{ HELLO_EXPECT_SIZE = "4"{env_toml} }}
        [tasks.multi_instance]
        num_instances = 2
        mpi = {{ {mpi_toml}, processes_per_node = 2 }}
        "#,
        hello = image_hello_path(kind),
    ))
    .unwrap();
    let backend = backend(state.path()).await;
    let runtime = shipyard_runtime_docker::DockerRuntime::new();
    let started = std::time::Instant::now();
    let outcome = backend.run_job(&job, &runtime, None).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    let task = outcome.task("mpi").unwrap();
    if task.retry_count > 0 {
        eprintln!(
            "runtime_native_flavours: {} succeeded after {} retry",
            kind.short(),
            task.retry_count
        );
    }
    let stdout = std::fs::read_to_string(task.task_dir.join("stdout.txt")).unwrap();
    let stderr = std::fs::read_to_string(task.task_dir.join("stderr.txt")).unwrap();
    assert_eq!(
        task.exit_code,
        Some(0),
        "{:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        task.failure
    );
    let report = HelloReport::parse(&stdout);
    report.assert_complete(4);
    assert_eq!(
        report.hosts().len(),
        2,
        "ranks on both nodes: {:?}",
        report.ranks
    );
    assert_eq!(leftovers(&id), Vec::<String>::new());
    eprintln!(
        "runtime_native_flavours: {} 2x2 in {secs:.2}s",
        kind.short()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_plan_mpich_on_two_nodes() {
    if !require_test_image() {
        return;
    }
    run(
        MpiKind::Mpich,
        r#"runtime = "mpich", executable_path = "mpiexec.mpich""#,
        "",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_plan_intelmpi_on_two_nodes() {
    if !require_test_image() {
        return;
    }
    run(
        MpiKind::IntelMpi,
        r#"runtime = "intelmpi", executable_path = "/opt/intel/mpi/bin/mpiexec.hydra""#,
        r#", I_MPI_ROOT = "/opt/intel/mpi", LD_LIBRARY_PATH = "/opt/intel/mpi/lib""#,
    )
    .await;
}
