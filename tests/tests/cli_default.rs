//! The `shipyard` binary's default local path: `--target local` without flags runs every job
//! on the local engine, through the same submission library and Batch client as
//! `--target azure` (issue 14, "one code path"). The README's quick start (a non-native pool,
//! so container nodes with Batch's native plan), its results read back after the run deleted
//! its pool, a rerun that needs `--recreate`, a failing task's exit code, SIGINT mid-run, and
//! a run killed with SIGKILL whose pool the next command deletes.

use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shipyard_e2e::{
    engine_pool_containers, repo_root, require_test_image, show, EngineScratch, HelloReport,
    KillOnDrop,
};

/// One test at a time: they share the host's Docker and load it.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(o)))
}

/// A pool of `nodes` container nodes and one job with one task running `command`.
fn one_task(pool: &str, job: &str, nodes: u32, command: &str) -> String {
    format!(
        r#"
[pool_specification]
id = "{pool}"
vm_count = {nodes}
[pool_specification.vm_configuration.platform_image]
publisher = "local"
offer = "local"
sku = "local"
node_agent_sku_id = "batch.node.debian 12"
native = true

[[job_specifications]]
id = "{job}"
[[job_specifications.tasks]]
id = "t"
image = "shipyard/mpi:bookworm"
command = "{command}"
"#
    )
}

/// A scratch directory whose pools `pool del` deletes on drop, and a unique pool and job id.
fn scratch(prefix: &str) -> (EngineScratch, String, String) {
    let mut s = EngineScratch::new(prefix);
    s.del_args.clear();
    let pool = unique(&format!("{prefix}pool"));
    let job = unique(&format!("{prefix}job"));
    s.pools.push(pool.clone());
    (s, pool, job)
}

/// A scratch directory whose `run` (started in the background) has its only task, `sleep
/// 300`, running on a 1-node pool: (scratch, pool, job, the run).
fn sleeping_run(prefix: &str) -> (EngineScratch, String, String, KillOnDrop) {
    let (s, pool, job) = scratch(prefix);
    let config = s.write("sleep.toml", &one_task(&pool, &job, 1, "sleep 300"));
    let mut run = KillOnDrop(
        s.cli()
            .args(["-q", "run"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start run"),
    );
    s.wait_task_running(&mut run, &job, 120);
    (s, pool, job, run)
}

/// `shipyard -q run CONFIG` to its end: it must exit with `code` and leave no container of
/// `pool`.
fn quiet_run(s: &EngineScratch, config: &std::path::Path, pool: &str, code: i32) {
    let run = s
        .cli()
        .args(["-q", "run"])
        .arg(config)
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(code), "{}", show(&run));
    assert!(engine_pool_containers(pool).is_empty(), "containers left");
}

/// Waits until the engine has no container of `pool` left.
fn wait_no_containers(pool: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !engine_pool_containers(pool).is_empty() {
        assert!(
            Instant::now() < deadline,
            "pool {pool} still has containers after {secs} s: {:?}",
            engine_pool_containers(pool)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_quick_start_runs_on_the_engine_and_its_results_outlive_the_pool() {
    if !require_test_image() {
        return;
    }
    let _serial = serial();
    let (s, pool, job) = scratch("cli-default-quick-");
    let example = std::fs::read_to_string(repo_root().join("examples/local-openmpi.toml"))
        .expect("the README's example");
    assert!(
        example.contains("native = false"),
        "the quick start is non-native"
    );
    let config = s.write(
        "quick.toml",
        &example
            .replace("id = \"mpipool\"", &format!("id = \"{pool}\""))
            .replace("id = \"hello-openmpi\"", &format!("id = \"{job}\"")),
    );
    let start = Instant::now();
    let run = s.cli().arg("run").arg(&config).output().expect("run");
    eprintln!(
        "[timing] quick start on the default path: {:.2} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(run.status.code(), Some(0), "{}", show(&run));
    // the run deleted the pool it made, and nothing of it is left
    assert!(engine_pool_containers(&pool).is_empty(), "containers left");
    let pools = s
        .cli()
        .args(["-o", "json", "pool", "list"])
        .output()
        .expect("pool list");
    assert!(pools.status.success(), "{}", show(&pools));
    assert!(
        !json(&pools)
            .as_array()
            .expect("a list")
            .iter()
            .any(|p| p["id"] == pool.as_str()),
        "{}",
        show(&pools)
    );
    // the job is finished, not left active without a pool
    let jobs = s
        .cli()
        .args(["-o", "json", "jobs", "list"])
        .output()
        .expect("jobs list");
    let listed = json(&jobs);
    let rec = listed
        .as_array()
        .expect("a list")
        .iter()
        .find(|j| j["id"] == job.as_str())
        .unwrap_or_else(|| panic!("job listed: {}", show(&jobs)));
    assert_eq!(rec["state"], "completed", "{rec}");
    // its output is read back from what the run kept: 6 ranks on 3 nodes
    let files = s
        .cli()
        .args([
            "files",
            "--job",
            &job,
            "--task",
            "hello",
            "--file",
            "stdout.txt",
        ])
        .output()
        .expect("files");
    assert!(files.status.success(), "{}", show(&files));
    let report = HelloReport::parse(&String::from_utf8_lossy(&files.stdout));
    report.assert_complete(6);
    assert_eq!(report.hosts().len(), 3, "{:?}", report.hosts());
    // the same job id again needs --recreate (exit 2), and then runs
    let again = s.cli().arg("run").arg(&config).output().expect("rerun");
    assert_eq!(again.status.code(), Some(2), "{}", show(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("--recreate"),
        "{}",
        show(&again)
    );
    let recreated = s
        .cli()
        .args(["-q", "run", "--recreate"])
        .arg(&config)
        .output()
        .expect("run --recreate");
    assert_eq!(recreated.status.code(), Some(0), "{}", show(&recreated));
    assert!(engine_pool_containers(&pool).is_empty(), "containers left");
}

#[test]
fn a_failing_task_sets_the_exit_code_and_leaves_nothing() {
    if !require_test_image() {
        return;
    }
    let _serial = serial();
    let (s, pool, job) = scratch("cli-default-fail-");
    let config = s.write(
        "fail.toml",
        &one_task(
            &pool,
            &job,
            1,
            "/bin/sh -c 'echo about to fail >&2; exit 3'",
        ),
    );
    quiet_run(&s, &config, &pool, 3);
    let err = s
        .cli()
        .args([
            "files",
            "--job",
            &job,
            "--task",
            "t",
            "--file",
            "stderr.txt",
        ])
        .output()
        .expect("files");
    assert!(err.status.success(), "{}", show(&err));
    assert_eq!(String::from_utf8_lossy(&err.stdout), "about to fail\n");
}

/// A run that deletes the pool it made waits for its job's release first: a release that
/// takes a while completes (exit code 0) instead of being killed by the pool's deletion.
#[test]
fn a_run_lets_its_job_release_finish_before_it_deletes_its_pool() {
    if !require_test_image() {
        return;
    }
    let _serial = serial();
    let (s, pool, job) = scratch("cli-default-release-");
    // `auto_complete`: the engine itself ends the job once its task is done, so the release
    // is already running when the run goes on to delete the pool.
    let toml = one_task(&pool, &job, 1, "true").replace(
        &format!("id = \"{job}\"\n"),
        &format!("id = \"{job}\"\nauto_complete = true\n"),
    ) + "[job_specifications.job_release]\ncommand = \"sleep 2; echo released\"\n";
    let config = s.write("release.toml", &toml);
    quiet_run(&s, &config, &pool, 0);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let status = rt.block_on(async {
        let opts = shipyard_local::engine::EngineOptions::new(s.state().join("engine"));
        let e = shipyard_local::engine::Engine::open(opts)
            .await
            .expect("engine");
        let status = e.prep_release_status(&job).expect("status");
        e.close().await;
        status
    });
    let release: Vec<_> = status
        .iter()
        .map(|n| n.job_release_task_execution_info.clone())
        .collect();
    assert_eq!(release.len(), 1, "{status:?}");
    let r = release[0].clone().expect("the release ran");
    assert_eq!(
        (r.state.clone(), r.exit_code),
        (
            shipyard_batch_api::models::JobReleaseTaskState::Completed,
            Some(0)
        ),
        "{r:?}"
    );
}

#[test]
fn sigint_mid_run_exits_130_and_removes_the_pool() {
    if !require_test_image() {
        return;
    }
    let _serial = serial();
    let (_s, pool, _job, mut run) = sleeping_run("cli-default-int-");
    let pid = run.0.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    assert!(kill.success());
    let interrupted = Instant::now();
    let deadline = interrupted + Duration::from_secs(60);
    while run.0.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "run did not end after SIGINT");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = run.wait_output().expect("run output");
    eprintln!(
        "[timing] SIGINT to exit: {:.2} s",
        interrupted.elapsed().as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(130), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: interrupted") && !err.contains("task failed"),
        "{}",
        show(&out)
    );
    assert!(engine_pool_containers(&pool).is_empty(), "containers left");
}

#[test]
fn the_pool_of_a_killed_run_is_deleted_by_the_next_command() {
    if !require_test_image() {
        return;
    }
    let _serial = serial();
    let (s, pool, job, mut run) = sleeping_run("cli-default-kill-");
    run.0.kill().expect("kill -9");
    let _ = run.0.wait();
    assert!(
        !engine_pool_containers(&pool).is_empty(),
        "the killed run left its pool's containers (what the next command must clean)"
    );
    let next = s.cli().args(["jobs", "list"]).output().expect("jobs list");
    assert!(next.status.success(), "{}", show(&next));
    assert!(
        String::from_utf8_lossy(&next.stderr).contains(&format!("deleting pool `{pool}`")),
        "{}",
        show(&next)
    );
    wait_no_containers(&pool, 90);
    let task = s
        .cli()
        .args(["-o", "json", "tasks", "list", "--job", &job])
        .output()
        .expect("tasks list");
    assert!(task.status.success(), "{}", show(&task));
    assert_eq!(json(&task)[0]["state"], "completed", "{}", show(&task));
}

/// A run whose image cannot be pulled (a registry on a loopback port where nothing listens)
/// fails with exit 1 and one error that names the node, why it is unusable (the image and the
/// registry) and nothing else: no warning about terminating a job that had ended, or about
/// task files of a task that never ran. Nothing of the pool is left.
#[test]
fn a_run_whose_image_cannot_be_pulled_names_the_image_and_registry() {
    if !require_test_image() {
        return;
    }
    let _serial = serial();
    let (s, pool, job) = scratch("nopull-");
    let image = "127.0.0.1:1/shipyard-test/none:1";
    let config = s.write(
        "nopull.toml",
        &one_task(&pool, &job, 2, "true").replace("shipyard/mpi:bookworm", image),
    );
    let out = s.cli().arg("run").arg(&config).output().expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert!(
        errors.len() == 1
            && errors[0].starts_with(&format!("error: pool `{pool}`: node `"))
            && errors[0].contains(&format!(
                "is unusable (NodeCreationFailed: pulling image {image} from registry 127.0.0.1:1"
            )),
        "{}",
        show(&out)
    );
    assert!(
        !err.contains("caused by"),
        "no cause repeats the error: {}",
        show(&out)
    );
    assert!(
        !err.contains("could not terminate") && !err.contains("keeping the task's files"),
        "{}",
        show(&out)
    );
    assert!(engine_pool_containers(&pool).is_empty(), "containers left");
}

/// Two runs on one state directory: the second uses the engine the first hosts. The first
/// run's job ends first; its process keeps serving until the second run, which deletes its
/// own pool after its job, is done (before, the host left and the second run waited 180 s for
/// a deletion nobody could report). Both exit 0, and neither pool is left.
#[test]
fn a_host_keeps_serving_a_run_that_uses_its_engine_until_that_run_is_done() {
    if !require_test_image() {
        return;
    }
    let _serial = serial();
    let (mut s, first_pool, first_job) = scratch("lease-a-");
    let (second_pool, second_job) = (unique("lease-b-pool"), unique("lease-b-job"));
    s.pools.push(second_pool.clone());
    let first = s.write(
        "first.toml",
        &one_task(&first_pool, &first_job, 1, "sleep 1"),
    );
    let second = s.write(
        "second.toml",
        &one_task(&second_pool, &second_job, 1, "sleep 4"),
    );
    let host = KillOnDrop(
        s.cli()
            .args(["-q", "run"])
            .arg(&first)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("first run"),
    );
    // The first run hosts the engine once its endpoint file is there.
    let endpoint = s.state().join("engine/endpoint.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !endpoint.exists() {
        assert!(Instant::now() < deadline, "no endpoint file");
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Instant::now();
    let out = s
        .cli()
        .args(["-q", "run"])
        .arg(&second)
        .output()
        .expect("second run");
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        secs < 60.0 && !String::from_utf8_lossy(&out.stderr).contains("still being deleted"),
        "the second run took {secs:.1} s: {}",
        show(&out)
    );
    let host = host.wait_output().expect("first run output");
    assert_eq!(host.status.code(), Some(0), "{}", show(&host));
    assert!(
        String::from_utf8_lossy(&host.stderr).contains("shipyard process"),
        "the host waited for the second run: {}",
        show(&host)
    );
    assert!(
        engine_pool_containers(&first_pool).is_empty(),
        "first pool left"
    );
    assert!(
        engine_pool_containers(&second_pool).is_empty(),
        "second pool left"
    );
}
