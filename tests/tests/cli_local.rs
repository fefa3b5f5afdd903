//! The `shipyard` binary running real jobs on the per-run backend (`--target local --per-run`;
//! the default local path, the engine, is `cli_default.rs`): the README's quick start example on
//! 3 nodes, a failing rank, SIGINT mid-run, and reading the results back from a fresh process.
#![allow(clippy::unwrap_used)]

mod local_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use local_support::{exclusive_of_sweeps, leftovers, may_sweep, unique_id, CleanGuard};
use shipyard_e2e::{repo_root, require_test_image, HelloReport};

/// Builds the CLI once per test process (quick when up to date) and returns its path.
fn shipyard_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(build_shipyard).clone()
}

fn build_shipyard() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = repo_root();
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-q", "-p", "shipyard-cli", "--bin", "shipyard"])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the shipyard binary");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug").join("shipyard")
}

/// The README's example with a unique job id, a private state dir and the test label, plus
/// `extra_job` lines appended to the job table and `pre` as pre-execution command.
fn config(dir: &Path, job: &str, extra_job: &str, pre: Option<&str>) -> PathBuf {
    let example = std::fs::read_to_string(repo_root().join("examples/local-openmpi.toml")).unwrap();
    let mut text = example
        .replace("id = \"hello-openmpi\"", &format!("id = \"{job}\""))
        .replace(
            "\n[[job_specifications.tasks]]",
            &format!("\n{extra_job}\n[[job_specifications.tasks]]"),
        );
    if let Some(pre) = pre {
        text = text.replace(
            "num_instances = 3",
            &format!("num_instances = 3\npre_execution_command = \"{pre}\""),
        );
    }
    text.push_str(&format!(
        "\n[local]\nstate_dir = \"{}\"\nlabels = {{ \"shipyard.test\" = \"1\" }}\n",
        dir.join("state").display()
    ));
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The binary on the per-run backend.
fn per_run() -> Command {
    let mut c = Command::new(shipyard_binary());
    c.env("SHIPYARD_LOCAL_PER_RUN", "1")
        .env_remove("SHIPYARD_LOCAL_VM_NODES");
    c
}

fn shipyard(args: &[&str], cfg: &Path) -> Output {
    per_run()
        .arg("-c")
        .arg(cfg)
        .args(args)
        .env_remove("SHIPYARD_TARGET")
        .output()
        .unwrap()
}

#[test]
fn cli_run_local_openmpi_example_on_3_nodes() {
    if !require_test_image() {
        return;
    }
    let _sweeps = may_sweep();
    let dir = tempfile::tempdir().unwrap();
    let job = unique_id("cli-ompi");
    let _guard = CleanGuard(job.clone());
    let cfg = config(dir.path(), &job, "", None);
    let out = shipyard(&["--quiet", "run", "--tail"], &cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = HelloReport::parse(&stdout);
    report.assert_complete(6);
    assert_eq!(report.hosts().len(), 3, "{:?}", report.hosts());
    assert!(leftovers(&job).is_empty(), "{:?}", leftovers(&job));

    // A fresh process reads the results back from the store.
    let out = shipyard(&["--output", "json", "jobs", "list"], &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rec = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == job.as_str())
        .expect("job recorded");
    assert_eq!(rec["state"], "completed");
    let out = shipyard(
        &["--output", "json", "tasks", "get", "--job", &job, "hello"],
        &cfg,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let task: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["exitCode"], 0);
    assert_eq!(task["nodes"].as_array().map(Vec::len), Some(3));
    let out = shipyard(
        &[
            "files",
            "--job",
            &job,
            "--task",
            "hello",
            "--file",
            "stdout.txt",
        ],
        &cfg,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    HelloReport::parse(&String::from_utf8_lossy(&out.stdout)).assert_complete(6);
    // Unknown task: usage error with a hint.
    let out = shipyard(&["tasks", "get", "--job", &job, "helo"], &cfg);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `hello`?"));
}

#[test]
fn cli_run_failing_rank_exits_non_zero_and_leaves_nothing() {
    if !require_test_image() {
        return;
    }
    let _sweeps = may_sweep();
    let dir = tempfile::tempdir().unwrap();
    let job = unique_id("cli-fail");
    let _guard = CleanGuard(job.clone());
    let cfg = config(
        dir.path(),
        &job,
        "[job_specifications.environment_variables]\nHELLO_FAIL_RANK = \"1\"",
        None,
    );
    let out = shipyard(&["--quiet", "run"], &cfg);
    let code = out.status.code();
    assert!(
        code.is_some_and(|c| c != 0),
        "expected a non-zero exit, got {code:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not succeed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(leftovers(&job).is_empty(), "{:?}", leftovers(&job));
}

/// `tasks get` of the job's task `hello` (`null` while there is none).
fn task_record(cfg: &Path, job: &str) -> serde_json::Value {
    let out = shipyard(
        &["--output", "json", "tasks", "get", "--job", job, "hello"],
        cfg,
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
}

/// Waits (90 s at most) until a fresh process reads the task `hello` as running.
fn wait_task_running(cfg: &Path, job: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while task_record(cfg, job)["state"] != "running" {
        assert!(
            Instant::now() < deadline,
            "the task was never recorded running: {}",
            task_record(cfg, job)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `shipyard --quiet run` in the background, stdout discarded.
fn spawn_run(cfg: &Path, stderr: Stdio) -> std::process::Child {
    per_run()
        .arg("-c")
        .arg(cfg)
        .args(["--quiet", "run"])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

#[test]
fn cli_sigint_mid_run_exits_130_and_leaves_nothing_within_10s() {
    if !require_test_image() {
        return;
    }
    let _sweeps = may_sweep();
    let dir = tempfile::tempdir().unwrap();
    let job = unique_id("cli-int");
    let _guard = CleanGuard(job.clone());
    let cfg = config(dir.path(), &job, "", Some("sleep 300"));
    let child = spawn_run(&cfg, Stdio::piped());
    // Wait until the three nodes run.
    let deadline = Instant::now() + Duration::from_secs(60);
    while leftovers(&job)
        .iter()
        .filter(|o| o.starts_with("container"))
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "the job's nodes never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    // ... and the task is recorded running (its pre-execution command sleeps): mid-run.
    wait_task_running(&cfg, &job);
    let t0 = Instant::now();
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    assert_eq!(
        out.status.code(),
        Some(130),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(leftovers(&job).is_empty(), "{:?}", leftovers(&job));
}

#[test]
fn cli_local_pool_list_add_and_del_talk_to_docker() {
    if !shipyard_e2e::require_docker() {
        return;
    }
    // `pool del` sweeps dead runs
    let _sweeps = may_sweep();
    let dir = tempfile::tempdir().unwrap();
    let job = unique_id("cli-pool");
    let cfg = config(dir.path(), &job, "", None);
    for cmd in [["pool", "list"], ["pool", "add"]] {
        let out = shipyard(&["--output", "json", cmd[0], cmd[1]], &cfg);
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["id"], "mpipool", "{cmd:?}");
        assert_eq!(v[0]["state"], "active", "{cmd:?}");
    }
    // `pool del` locally sweeps the leftovers of dead runs (never live ones).
    let out = shipyard(&["--output", "json", "pool", "del", "--yes"], &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["deadRuns"].is_array() && v["objectsRemoved"].is_u64(),
        "{v}"
    );
}

#[test]
fn cli_kill_9_of_run_is_reconciled_by_the_next_command() {
    if !require_test_image() {
        return;
    }
    // from the kill to the check that the crash left its objects, no sweep may run
    let _sweeps = exclusive_of_sweeps();
    let dir = tempfile::tempdir().unwrap();
    let job = unique_id("cli-kill9");
    let _guard = CleanGuard(job.clone());
    let cfg = config(dir.path(), &job, "", Some("sleep 300"));
    let mut child = spawn_run(&cfg, Stdio::null());
    let task_json = || task_record(&cfg, &job);
    // The transition to running is recorded when it happens, while the run goes on.
    wait_task_running(&cfg, &job);
    let jobs = shipyard(&["--output", "json", "jobs", "list"], &cfg);
    let jobs: serde_json::Value = serde_json::from_slice(&jobs.stdout).unwrap();
    let rec = |jobs: &serde_json::Value| {
        jobs.as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == job.as_str())
            .cloned()
            .unwrap()
    };
    assert_eq!(
        rec(&jobs)["state"],
        "active",
        "a live run is not reconciled"
    );
    let st = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    child.wait().unwrap();
    // The next command sees the owner gone: job and task end as failed, with the reason.
    let out = shipyard(&["--output", "json", "jobs", "list"], &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let j = rec(&jobs);
    assert_eq!(j["state"], "completed", "{j}");
    assert_eq!(j["terminateReason"], "RunProcessDied", "{j}");
    let t = task_json();
    assert_eq!(t["state"], "completed", "{t}");
    assert_eq!(t["result"], "failure", "{t}");
    assert!(
        t["failure"].as_str().is_some_and(|f| f.contains("died")),
        "{t}"
    );
    // The next backend that connects to Docker (as `run` does) sweeps the dead run's containers.
    assert!(
        !leftovers(&job).is_empty(),
        "a crash cleans nothing by itself"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    drop(rt.block_on(local_support::backend(&dir.path().join("state"))));
    assert!(leftovers(&job).is_empty(), "{:?}", leftovers(&job));
}
