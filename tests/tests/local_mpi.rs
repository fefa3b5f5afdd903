//! Local backend against a real Docker engine: multi-node MPI jobs of the three flavours in
//! `shipyard/mpi:bookworm`, a failing rank, a node killed mid-run, a missing image.
#![allow(clippy::unwrap_used)]

mod local_support;

use std::time::{Duration, Instant};

use local_support::*;
use shipyard_e2e::{require_test_image, HelloReport, MpiKind};
use shipyard_local::{Event, LocalError, TaskResult, TaskState};

async fn run_hello(name: &str, kind: MpiKind, nodes: u32, ppn: u32) {
    if !require_test_image() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let id = unique_id(name);
    let _guard = CleanGuard(id.clone());
    let backend = backend(state.path()).await;
    let mut job = hello_job(&id, kind, nodes, ppn);
    // Bounded, with one Batch retry for MPICH: across containers sharing one kernel an MPICH
    // launch was seen to hang in MPI_Init (1 in 7 in the trial, once in a full suite
    // here); the wall-clock limit ends that attempt and `maxTaskRetryCount` runs it again, as
    // a Batch user would configure it. A retry is reported below, never hidden.
    job.tasks[0].max_wall_clock_secs = Some(120);
    if kind == MpiKind::Mpich {
        job.tasks[0].max_task_retry_count = 1;
    }
    let outcome = backend.run_spec(job, None).await.unwrap();
    let task = outcome.task("hello").unwrap();
    if task.retry_count > 0 {
        eprintln!(
            "{name}: succeeded after {} retry (first attempt hit the wall-clock limit or failed)",
            task.retry_count
        );
    }
    let stdout = std::fs::read_to_string(task.task_dir.join("stdout.txt")).unwrap();
    let stderr = std::fs::read_to_string(task.task_dir.join("stderr.txt")).unwrap();
    assert_eq!(
        task.exit_code,
        Some(0),
        "failure={:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        task.failure
    );
    assert!(outcome.succeeded());
    let report = HelloReport::parse(&stdout);
    report.assert_complete(nodes * ppn);
    let want: Vec<String> = (0..nodes).map(|i| format!("node-{i}")).collect();
    assert_eq!(report.hosts(), want, "ranks must run on every node");
    // Coordination output is kept per node, as on Batch.
    for n in &want {
        assert!(task
            .task_dir
            .join("nodes")
            .join(n)
            .join("stdout.txt")
            .is_file());
    }
    assert_eq!(leftovers(&id), Vec::<String>::new(), "objects left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_openmpi_three_nodes_two_ranks_each() {
    run_hello("ompi", MpiKind::OpenMpi, 3, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mpich_two_nodes() {
    run_hello("mpich", MpiKind::Mpich, 2, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_intel_mpi_two_nodes() {
    run_hello("impi", MpiKind::IntelMpi, 2, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_batch_environment_reaches_every_rank() {
    if !require_test_image() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let id = unique_id("env");
    let _guard = CleanGuard(id.clone());
    let backend = backend(state.path()).await;
    let mut job = hello_job(&id, MpiKind::OpenMpi, 2, 1);
    job.tasks[0]
        .environment
        .push(("HELLO_PRINT_ENV".into(), "AZ_BATCH_HOST_LIST".into()));
    // The shared task directory is one volume: a file written on node-1 is seen by the master.
    job.tasks[0].command_line = format!(
        "/bin/bash -c 'echo master=$AZ_BATCH_IS_CURRENT_NODE_MASTER node=$AZ_BATCH_NODE_ID pwd=$(pwd); \
         ssh node-1 \"echo from-node-1 > $AZ_BATCH_TASK_SHARED_DIR/probe\" && cat $AZ_BATCH_TASK_SHARED_DIR/probe && {}'",
        hello_command(MpiKind::OpenMpi, 2, 1, 0)
            .trim_start_matches("/bin/bash -c '")
            .trim_end_matches('\'')
    );
    let outcome = backend.run_spec(job, None).await.unwrap();
    let task = outcome.task("hello").unwrap();
    let stdout = std::fs::read_to_string(task.task_dir.join("stdout.txt")).unwrap();
    assert_eq!(task.exit_code, Some(0), "{:?}\n{stdout}", task.failure);
    assert!(
        stdout.contains(&format!(
            "master=true node=node-0 pwd=/mnt/batch/tasks/workitems/{id}/job-1/hello/wd"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("from-node-1"), "{stdout}");
    let report = HelloReport::parse(&stdout);
    report.assert_complete(2);
    // The master's rank inherits the container environment; remote ranks get only what the
    // launcher exports (their orted runs in an ssh session), as on Batch.
    let hosts_line = stdout
        .lines()
        .find(|l| l.contains("host=node-0") && l.contains("AZ_BATCH_HOST_LIST="))
        .unwrap();
    let list = hosts_line.split("AZ_BATCH_HOST_LIST=").nth(1).unwrap();
    assert_eq!(list.split(',').count(), 2, "{hosts_line}");
    assert_eq!(leftovers(&id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_failing_rank_fails_the_task_and_leaves_nothing() {
    if !require_test_image() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let id = unique_id("failrank");
    let _guard = CleanGuard(id.clone());
    let backend = backend(state.path()).await;
    let mut job = hello_job(&id, MpiKind::OpenMpi, 2, 1);
    job.tasks[0]
        .environment
        .push(("HELLO_FAIL_RANK".into(), "1".into()));
    let outcome = backend.run_spec(job, None).await.unwrap();
    let task = outcome.task("hello").unwrap();
    assert_eq!(task.result, Some(TaskResult::Failure));
    assert_eq!(task.exit_code, Some(3), "{:?}", task.failure);
    assert_eq!(outcome.exit_code(), 3);
    let stderr = std::fs::read_to_string(task.task_dir.join("stderr.txt")).unwrap();
    assert!(stderr.contains("failing on purpose"), "{stderr}");
    assert_eq!(leftovers(&id), Vec::<String>::new(), "objects left behind");
    // No key directory of this run survives.
    let keys = std::env::temp_dir().join(format!("shipyard-keys-{}", outcome.run_id));
    assert!(!keys.exists(), "{} still exists", keys.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_node_killed_mid_run_fails_the_task_naming_the_node() {
    if !require_test_image() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let id = unique_id("nodekill");
    let _guard = CleanGuard(id.clone());
    let backend = backend(state.path()).await;
    let mut job = hello_job(&id, MpiKind::OpenMpi, 3, 1);
    job.tasks[0].command_line = hello_command(MpiKind::OpenMpi, 3, 1, 600);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let run = tokio::spawn(async move { backend.run_spec(job, Some(tx)).await });
    // Wait for the application to start, then kill node-1.
    let killed_at = loop {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(Event::TaskState {
                state: TaskState::Running,
                ..
            })) => {
                let f = format!("label=shipyard.job={id}");
                let out = std::process::Command::new("docker")
                    .args([
                        "ps",
                        "-q",
                        "--filter",
                        &f,
                        "--filter",
                        "label=shipyard.node=node-1",
                    ])
                    .output()
                    .unwrap();
                let cid = String::from_utf8_lossy(&out.stdout).trim().to_string();
                assert!(!cid.is_empty(), "node-1 container not found");
                let st = std::process::Command::new("docker")
                    .args(["kill", &cid])
                    .output()
                    .unwrap();
                assert!(st.status.success());
                break Instant::now();
            }
            Ok(Some(_)) => {}
            other => panic!("no Running event: {other:?}"),
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the task must fail within seconds")
        .unwrap()
        .unwrap();
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let task = outcome.task("hello").unwrap();
    assert_eq!(task.result, Some(TaskResult::Failure));
    let failure = task.failure.clone().unwrap_or_default();
    assert!(failure.contains("node-1"), "{failure}");
    assert_eq!(leftovers(&id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_missing_image_is_a_clear_error() {
    if !require_test_image() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let id = unique_id("noimage");
    let backend = backend(state.path()).await;
    let mut job = hello_job(&id, MpiKind::OpenMpi, 2, 1);
    job.tasks[0].image = "shipyard/does-not-exist:nope".into();
    let err = backend.run_spec(job, None).await.unwrap_err();
    assert!(matches!(err, LocalError::ImageMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("shipyard/does-not-exist:nope"), "{msg}");
    assert!(msg.contains("scripts/build-image.sh"), "{msg}");
    assert_eq!(leftovers(&id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_dropping_the_run_future_removes_everything() {
    if !require_test_image() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let id = unique_id("drop");
    let _guard = CleanGuard(id.clone());
    let backend = backend(state.path()).await;
    let mut job = hello_job(&id, MpiKind::OpenMpi, 2, 1);
    job.tasks[0].command_line = hello_command(MpiKind::OpenMpi, 2, 1, 600);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let run = tokio::spawn(async move { backend.run_spec(job, Some(tx)).await });
    loop {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(Event::TaskState {
                state: TaskState::Running,
                ..
            })) => break,
            Ok(Some(_)) => {}
            other => panic!("no Running event: {other:?}"),
        }
    }
    assert!(!leftovers(&id).is_empty());
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    // The dropped future removed the run's objects before it finished dropping.
    assert_eq!(leftovers(&id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_sshd_probe_from_inside_the_master_works() {
    if !require_test_image() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let id = unique_id("probe");
    let _guard = CleanGuard(id.clone());
    let backend = shipyard_local::LocalBackend::connect(
        shipyard_local::LocalOptions::default()
            .state_dir(state.path())
            .label("shipyard.test", "1")
            .probe_from_master(true),
    )
    .await
    .unwrap();
    let outcome = backend
        .run_spec(hello_job(&id, MpiKind::Mpich, 2, 1), None)
        .await
        .unwrap();
    let task = outcome.task("hello").unwrap();
    let stdout = std::fs::read_to_string(task.task_dir.join("stdout.txt")).unwrap();
    assert_eq!(task.exit_code, Some(0), "{:?}\n{stdout}", task.failure);
    HelloReport::parse(&stdout).assert_complete(2);
    assert_eq!(leftovers(&id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_sshd_never_up_fails_naming_the_nodes() {
    if !require_test_image() {
        return;
    }
    for from_master in [false, true] {
        let state = tempfile::tempdir().unwrap();
        let id = unique_id(if from_master { "nosshd-m" } else { "nosshd" });
        let _guard = CleanGuard(id.clone());
        let backend = shipyard_local::LocalBackend::connect(
            shipyard_local::LocalOptions::default()
                .state_dir(state.path())
                .label("shipyard.test", "1")
                .sshd_timeout(Duration::from_secs(3))
                .probe_from_master(from_master),
        )
        .await
        .unwrap();
        let mut job = hello_job(&id, MpiKind::OpenMpi, 2, 1);
        // sshd comes up on the master only.
        job.tasks[0]
            .multi_instance
            .as_mut()
            .unwrap()
            .coordination_command_line = format!(
            "/bin/bash -c 'if [ \"$AZ_BATCH_IS_CURRENT_NODE_MASTER\" = true ]; then {}; fi'",
            COORDINATION
                .trim_start_matches("/bin/bash -c '")
                .trim_end_matches('\'')
        );
        let t0 = Instant::now();
        let outcome = backend.run_spec(job, None).await.unwrap();
        let task = outcome.task("hello").unwrap();
        let failure = task.failure.clone().unwrap_or_default();
        assert_eq!(task.result, Some(TaskResult::Failure));
        assert!(
            failure.contains("node-1") && !failure.contains("node-0"),
            "from_master={from_master}: {failure}"
        );
        assert!(failure.contains("port 23"), "{failure}");
        assert!(t0.elapsed() < Duration::from_secs(30));
        assert_eq!(leftovers(&id), Vec::<String>::new());
    }
}
