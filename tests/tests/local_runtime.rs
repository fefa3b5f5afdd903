//! The local backend runs the docker runtime's native-pool plan unmodified: the runtime's
//! coordination command installs the job's key files from the node shared directory, its
//! application line waits for every sshd and launches with the mpi-launch command line.
#![allow(clippy::unwrap_used)]

mod local_support;

use local_support::*;
use shipyard_e2e::{require_test_image, HelloReport, TEST_IMAGE};
use shipyard_runtime::JobSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_runs_the_docker_runtime_native_plan_unmodified() {
    if !require_test_image() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let id = unique_id("plan");
    let _guard = CleanGuard(id.clone());
    let job: JobSpec = toml::from_str(&format!(
        r#"
        id = "{id}"
        auto_complete = true
        [[tasks]]
        id = "mpi"
        image = "{TEST_IMAGE}"
        command = "/opt/shipyard/bin/mpi-hello-openmpi"
        environment_variables = {{ HELLO_EXPECT_SIZE = "4" }}
        [tasks.multi_instance]
        num_instances = 2
        mpi = {{ runtime = "openmpi", processes_per_node = 2 }}
        "#
    ))
    .unwrap();
    let backend = backend(state.path()).await;
    let runtime = shipyard_runtime_docker::DockerRuntime::new();
    let outcome = backend.run_job(&job, &runtime, None).await.unwrap();
    let task = outcome.task("mpi").unwrap();
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
        report.hosts(),
        vec!["node-0".to_string(), "node-1".to_string()]
    );
    assert_eq!(
        outcome.terminate_reason.as_deref(),
        Some("AllTasksComplete")
    );
    assert_eq!(leftovers(&id), Vec::<String>::new());
}
