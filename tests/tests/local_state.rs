//! Local state under stress: a job id that is taken, a disk that fills up, output privacy.
#![allow(clippy::unwrap_used)]

mod local_support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use local_support::*;
use shipyard_e2e::{require_test_image, TEST_IMAGE};
use shipyard_local::{
    LocalBackend, LocalError, LocalJob, LocalOptions, LocalTask, OnAllTasksComplete, TaskResult,
};

fn one_task_job(id: &str, command: &str) -> LocalJob {
    LocalJob {
        id: id.into(),
        tasks: vec![LocalTask::new("t", TEST_IMAGE, command)],
        uses_task_dependencies: false,
        on_all_tasks_complete: OnAllTasksComplete::TerminateJob,
        on_task_failure: Default::default(),
        max_parallel_tasks: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_same_job_id_twice_is_refused_while_active_and_needs_recreate_after() {
    if !require_test_image() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let id = unique_id("exists");
    let _guard = CleanGuard(id.clone());
    let first = backend(state.path()).await;
    let second = backend(state.path()).await;
    let long = one_task_job(&id, "/bin/sh -c 'echo first; sleep 4; echo first-done'");
    let running = tokio::spawn(async move { first.run_spec(long, None).await });
    // Wait until the first run has claimed the id (a loaded 2-core machine may take longer
    // than a few seconds to get there; going on without the claim would race the two runs).
    let store = LocalOptions::default().state_dir(state.path()).store();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while store.get_job(&id).unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never claimed the job id"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let err = second
        .run_spec(one_task_job(&id, "/bin/sh -c 'echo second'"), None)
        .await
        .expect_err("a second run of an active job id is refused");
    assert!(
        matches!(err, LocalError::JobExists { active: true, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("JobExists"), "{err}");
    let outcome = running.await.unwrap().expect("the first run");
    assert!(outcome.succeeded(), "{outcome:?}");
    // The first run's output is whole: the second wrote nothing.
    let out = std::fs::read_to_string(outcome.tasks[0].task_dir.join("stdout.txt")).unwrap();
    assert_eq!(out, "first\nfirst-done\n");
    // Finished: a rerun needs `recreate`.
    let err = second
        .run_spec(one_task_job(&id, "/bin/sh -c 'echo second'"), None)
        .await
        .expect_err("a finished job id is not rerun silently");
    assert!(
        matches!(err, LocalError::JobExists { active: false, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("--recreate"), "{err}");
    let again = LocalBackend::connect(
        LocalOptions::default()
            .state_dir(state.path())
            .label("shipyard.test", "1")
            .recreate(true),
    )
    .await
    .unwrap()
    .run_spec(one_task_job(&id, "/bin/sh -c 'echo second'"), None)
    .await
    .expect("recreate reruns it");
    assert!(again.succeeded());
    let out = std::fs::read_to_string(again.tasks[0].task_dir.join("stdout.txt")).unwrap();
    assert_eq!(out, "second\n");
}

/// A tiny tmpfs mounted on the state dir's `jobs` directory (task output), unmounted on drop.
struct TinyDisk(std::path::PathBuf);

impl TinyDisk {
    fn mount(at: &std::path::Path) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "size=64k",
                "shipyard-test",
                at.to_str().unwrap(),
            ])
            .status()
            .ok()?;
        st.success().then(|| TinyDisk(at.to_path_buf()))
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_full_disk_truncating_output_fails_the_task() {
    if !require_test_image() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let Some(_disk) = TinyDisk::mount(&state.path().join("jobs")) else {
        // Mounting needs root (CI runs as root).
        assert!(
            !shipyard_e2e::in_ci(),
            "cannot mount a tmpfs for the full-disk test"
        );
        eprintln!("skipping: cannot mount a tmpfs (not root)");
        return;
    };
    let id = unique_id("fulldisk");
    let _guard = CleanGuard(id.clone());
    let b = backend(state.path()).await;
    // 1 MB of output into a 64 kB disk; the command itself succeeds.
    let job = one_task_job(
        &id,
        "/bin/sh -c 'head -c 1000000 /dev/zero | tr \"\\0\" x; echo; echo end'",
    );
    let outcome = b.run_spec(job, None).await.expect("the run");
    let t = &outcome.tasks[0];
    assert_eq!(t.result, Some(TaskResult::Failure), "{t:?}");
    let why = t.failure.as_deref().unwrap_or_default();
    assert!(
        why.contains("truncated") && why.contains("stdout.txt") && why.contains("space"),
        "{why}"
    );
    assert_ne!(outcome.exit_code(), 0);
    // The record in the store says the same.
    let rec = b.list_tasks(&id).unwrap();
    assert_eq!(rec[0].result, Some(TaskResult::Failure));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_task_output_and_state_are_private() {
    if !require_test_image() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let id = unique_id("private");
    let _guard = CleanGuard(id.clone());
    let b = backend(state.path()).await;
    let outcome = b
        .run_spec(one_task_job(&id, "/bin/sh -c 'echo secret-ish'"), None)
        .await
        .unwrap();
    assert!(outcome.succeeded());
    let dir = &outcome.tasks[0].task_dir;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("stdout.txt")), 0o600);
    assert_eq!(mode(&dir.join("stderr.txt")), 0o600);
    let mut d = dir.as_path();
    while d != state.path() {
        assert_eq!(mode(d), 0o700, "{}", d.display());
        d = d.parent().unwrap();
    }
    assert_eq!(mode(&state.path().join(shipyard_local::STORE_FILE)), 0o600);
}
