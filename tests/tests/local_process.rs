//! Local backend as a process: SIGINT mid-run, a crashed run swept by the next one, and Docker
//! not running. Runs the `local_hello` example of `shipyard-local` as the child.
#![allow(clippy::unwrap_used)]

mod local_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use local_support::*;
use shipyard_e2e::require_test_image;

fn spawn_hello(job: &str, state: &std::path::Path, sleep: u32) -> std::process::Child {
    Command::new(example_binary("local_hello"))
        .args([
            "--job",
            job,
            "--nodes",
            "2",
            "--sleep",
            &sleep.to_string(),
            "--quiet",
            "--label",
            "shipyard.test=1",
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the job's node containers run (both of them).
fn wait_running(job: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                &format!("label=shipyard.job={job}"),
                "--filter",
                "status=running",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).lines().count() == 2 {
            // Let coordination start too.
            std::thread::sleep(Duration::from_millis(1500));
            return;
        }
        assert!(Instant::now() < deadline, "the job's nodes never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill(child: &std::process::Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn local_sigint_mid_run_leaves_nothing_within_10s() {
    if !require_test_image() {
        return;
    }
    // the child's backend sweeps dead runs when it connects
    let _sweeps = may_sweep();
    let state = tempfile::tempdir().unwrap();
    let id = unique_id("sigint");
    let _guard = CleanGuard(id.clone());
    let child = spawn_hello(&id, state.path(), 300);
    wait_running(&id);
    assert!(!leftovers(&id).is_empty());
    let t0 = Instant::now();
    kill(&child, "-INT");
    let out = child.wait_with_output().unwrap();
    let mut left = leftovers(&id);
    while !left.is_empty() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        left = leftovers(&id);
    }
    assert_eq!(left, Vec::<String>::new(), "left after {:?}", t0.elapsed());
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The record says so, and a fresh reader sees it.
    let jobs = Command::new(example_binary("local_jobs"))
        .args(["--state-dir", state.path().to_str().unwrap()])
        .output()
        .unwrap();
    let jobs = String::from_utf8_lossy(&jobs.stdout);
    assert!(
        jobs.contains(&format!("job {id} Completed 1 Cancelled")),
        "{jobs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_crashed_run_is_swept_by_the_next_backend() {
    if !require_test_image() {
        return;
    }
    // from the kill to the check that the crash left its objects, no other sweep may run
    let sweeps = exclusive_of_sweeps();
    let state = tempfile::tempdir().unwrap();
    let id = unique_id("crash");
    let _guard = CleanGuard(id.clone());
    let mut child = spawn_hello(&id, state.path(), 300);
    wait_running(&id);
    kill(&child, "-KILL");
    child.wait().unwrap();
    // The owner is gone but its objects are not: a crash cleans nothing.
    assert!(!leftovers(&id).is_empty());
    drop(sweeps);
    let backend = backend(state.path()).await; // sweeps on connect
    assert_eq!(leftovers(&id), Vec::<String>::new());
    // The dead run's private key directory went too.
    let dirs: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path().join("owner.pid"))
        .filter(|p| {
            std::fs::read_to_string(p).is_ok_and(|pid| pid.trim() == child.id().to_string())
        })
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(dirs, Vec::<String>::new());
    drop(backend);
}

#[test]
fn local_docker_not_running_is_a_clear_error() {
    // Needs no engine: points the client at a socket that does not exist.
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(example_binary("local_hello"))
        .args([
            "--job",
            "nodocker",
            "--state-dir",
            state.path().to_str().unwrap(),
        ])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot reach the Docker engine"),
        "{stderr}"
    );
    assert!(stderr.contains("is dockerd running"), "{stderr}");
}
