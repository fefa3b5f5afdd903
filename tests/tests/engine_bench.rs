//! Engine speed against the plain Docker CLI, measured in the same run (scripts/bench-engine.sh
//! runs it at full size and prints the ratios):
//!
//! - a multi-instance MPI job on a warm pool of N nodes (coordination starts sshd in each
//!   node's task container, then mpirun on the primary) against `docker exec mpirun` on
//!   containers that already run sshd: each job on an idle pool (its nodes' next containers
//!   made, the machine quiet), then the same jobs back to back (`back_to_back`);
//! - a bag of trivial tasks on 4 slots against `xargs -P4 docker run --rm`;
//! - cold runs (the pool made for the job, deleted after it) against the hand-written docker
//!   CLI script `scripts/bench/local-baseline.sh` (containers, sshd, mpirun, removal);
//! - large bags (`SHIPYARD_BENCH_LARGE_BAGS`, default `1000`) through the engine's normal
//!   path (store, scheduler, records, task directories and output files) on a node kind whose
//!   tasks are host processes, so that the engine's own per-task cost shows: tasks/s and the
//!   process's peak RSS.
//!
//! Sizes: `SHIPYARD_BENCH_NODES` (comma-separated, default `2`), `SHIPYARD_BENCH_BAG`
//! (default 16), `SHIPYARD_BENCH_COLD` (comma-separated nodes, default none). Every run checks
//! that the work was done right; lines starting with `BENCH` carry the numbers.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

#[path = "engine_support.rs"]
mod engine_support;
use engine_support::{completed, mpi_task, task_outputs, wait_for, wait_idle, SSH_SETUP};

use shipyard_batch_api::models::{
    JobState, PoolAddParameter, TaskAddParameter, TaskExecutionResult,
};
use shipyard_e2e::{HelloReport, MpiKind, TEST_IMAGE};
use shipyard_local::engine::{
    BoxFuture, CancellationToken, Engine, EngineOptions, NodeKind, NodeRef, PoolSetup,
    Result as EngineResult, RunEnd, RunSpec,
};

fn pool(id: &str, nodes: usize, slots: i32) -> PoolAddParameter {
    model!({
        "id": id, "vmSize": "standard_d2s_v3", "targetDedicatedNodes": nodes,
        "taskSlotsPerNode": slots, "enableInterNodeCommunication": true,
        "virtualMachineConfiguration": {
            "imageReference": {}, "nodeAgentSKUId": "batch.node.ubuntu 22.04",
            "containerConfiguration": {"type": "dockerCompatible", "containerImageNames": [TEST_IMAGE]}
        }
    })
}

/// Engine logs on stderr when `SHIPYARD_LOG` is set (a filter such as `shipyard_local=debug`),
/// to see where a benchmark's time goes.
fn trace_from_env() {
    if let Ok(filter) = std::env::var("SHIPYARD_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

fn env_usize_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn mpirun(hosts: &str, np: usize) -> String {
    format!(
        "mpirun.openmpi --allow-run-as-root -np {np} --host {hosts} \
         --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 {}",
        shipyard_e2e::image_hello_path(MpiKind::OpenMpi)
    )
}

/// Fails the test (with every task output under `dir`) unless `task` succeeded.
fn assert_succeeded(task: &shipyard_batch_api::models::CloudTask, dir: &std::path::Path) {
    let info = task.execution_info.clone().unwrap_or_default();
    assert_eq!(
        info.result,
        Some(TaskExecutionResult::Success),
        "{}",
        task_outputs(dir)
    );
}

/// Removes the baseline's containers and network, also when the test fails.
struct Baseline(String, Vec<String>);
impl Drop for Baseline {
    fn drop(&mut self) {
        if !self.1.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&self.1)
                .output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.0])
            .output();
    }
}

/// `docker exec mpirun` on N running containers with sshd up: seconds of the best and the
/// median of 5.
fn baseline_mpirun(n: usize, key: &shipyard_runtime::ssh::JobSshKey) -> (f64, f64) {
    let net = format!("shipyard-bench-{}", std::process::id());
    let mut b = Baseline(net.clone(), Vec::new());
    docker(&["network", "create", "--label", "shipyard.test=1", &net]);
    let mut ips = Vec::new();
    for i in 0..n {
        let name = format!("{net}-{i}");
        docker(&[
            "run",
            "-d",
            "--init",
            "--label",
            "shipyard.test=1",
            "--name",
            &name,
            "--network",
            &net,
            "-e",
            &format!("TEST_SSH_KEY={}", key.private_openssh().trim()),
            "-e",
            &format!("TEST_SSH_PUB={}", key.public_openssh().trim()),
            TEST_IMAGE,
            "sleep",
            "infinity",
        ]);
        b.1.push(name.clone());
        docker(&["exec", &name, "/bin/bash", "-c", SSH_SETUP]);
        ips.push(docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &name,
        ]));
    }
    let hosts: Vec<String> = ips.iter().map(|ip| format!("{ip}:1")).collect();
    let cmd = mpirun(&hosts.join(","), n);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = docker(&["exec", &b.1[0], "/bin/bash", "-c", &cmd]);
        times.push(t.elapsed().as_secs_f64());
        HelloReport::parse(&out).assert_complete(n as u32);
    }
    times.sort_by(f64::total_cmp);
    (times[0], times[times.len() / 2])
}

/// Waits, right after a job ended, until the pool's nodes each have exactly one container: a
/// running spare made for the next task, none of the job's own left (the ones listed at the
/// start; the engine makes the next spares only 0.4 s after those went). The pool is then
/// idle and ready.
async fn wait_spares(inst: &str, pool: &str, n: usize) {
    use shipyard_local::engine::labels;
    let list = || -> Vec<(String, String)> {
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={}={inst}", labels::INSTANCE),
            "--filter",
            &format!("label={}={pool}", labels::POOL),
            "--filter",
            &format!("label={}", labels::SPARE),
            "--format",
            "{{.ID}} {{.State}}",
        ]);
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(id, state)| (id.to_string(), state.to_string()))
            .collect()
    };
    let old: std::collections::HashSet<String> = list().into_iter().map(|(id, _)| id).collect();
    let t = Instant::now();
    loop {
        let now = list();
        if now.len() == n
            && now
                .iter()
                .all(|(id, state)| state == "running" && !old.contains(id))
        {
            return;
        }
        assert!(
            t.elapsed().as_secs() < 60,
            "the pool's spares were not made: {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits (at most 3 s) until the machine is quiet: two 100 ms spans in a row with the CPUs
/// under 10% busy, as on an idle pool between a user's jobs (the last spares' start-up, the
/// shims and the daemon's own work after it, is then done).
async fn wait_quiet() {
    let stat = || -> Option<(u64, u64)> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = text
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        Some((v.iter().sum(), v.get(3)? + v.get(4)?))
    };
    let t = Instant::now();
    let mut quiet = 0;
    let Some(mut prev) = stat() else { return };
    while quiet < 2 && t.elapsed().as_secs() < 3 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let Some(now) = stat() else { return };
        let (total, idle) = (now.0 - prev.0, now.1 - prev.1);
        quiet = if (total - idle) * 10 < total.max(1) {
            quiet + 1
        } else {
            0
        };
        prev = now;
    }
}

/// Seconds from adding job `jid` with the MPI task to its completion; checks its output.
async fn timed_mpi_job(
    e: &Engine,
    jid: &str,
    pool: &str,
    app: &str,
    key: &shipyard_runtime::ssh::JobSshKey,
    n: usize,
    dir: &std::path::Path,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    e.add_job(model!({"id": jid, "poolInfo": {"poolId": pool}}))
        .await?;
    e.add_tasks(jid, vec![mpi_task(app, key, n)]).await?;
    let done = completed(e, jid, "mpi", 120).await;
    let secs = t.elapsed().as_secs_f64();
    assert_succeeded(&done, dir);
    let out = engine_support::task_text(e, jid, "mpi", "stdout.txt");
    HelloReport::parse(&out).assert_complete(n as u32);
    Ok(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_bench_warm_pool_mpi_job_and_bag_of_tasks() -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    trace_from_env();
    let key = shipyard_runtime::ssh::JobSshKey::generate("engine-bench")?;
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;

    for n in env_usize_list("SHIPYARD_BENCH_NODES", "2") {
        let (base, base_median) = baseline_mpirun(n, &key);
        let pid = format!("warm{n}");
        e.add_pool(pool(&pid, n, 1)).await?;
        wait_idle(&e, &pid, n, 300).await;
        let app = format!(
            "/bin/bash -c '{} '",
            mpirun(
                "$(echo $AZ_BATCH_HOST_LIST | sed \"s/\\([^,]*\\)/\\1:1/g\")",
                n
            )
        );
        // A job on an idle warm pool (the target): each starts once the engine has made its
        // nodes' next containers, which it does after a task's containers go, and the machine
        // is quiet (as the baseline's is).
        // The first job on the new pool makes its containers itself (a spare is made for a
        // container once a task has asked for it).
        let inst = e.instance_label().to_string();
        let first =
            timed_mpi_job(&e, &format!("{pid}-first"), &pid, &app, &key, n, dir.path()).await?;
        let mut times = Vec::new();
        for round in 0..5 {
            wait_spares(&inst, &pid, n).await;
            wait_quiet().await;
            let jid = format!("{pid}-j{round}");
            times.push(timed_mpi_job(&e, &jid, &pid, &app, &key, n, dir.path()).await?);
        }
        // Back to back: each job's containers are made while the one before ends, on the same
        // two cores (every task gets fresh containers).
        let mut back = Vec::new();
        for round in 0..5 {
            let jid = format!("{pid}-b{round}");
            back.push(timed_mpi_job(&e, &jid, &pid, &app, &key, n, dir.path()).await?);
        }
        times.sort_by(f64::total_cmp);
        back.sort_by(f64::total_cmp);
        let (best, median) = (times[0], times[times.len() / 2]);
        let back_median = back[back.len() / 2];
        println!(
            "BENCH warm_mpi_job nodes={n} engine_best={best:.3}s engine_median={median:.3}s first_job={first:.3}s docker_exec_mpirun_best={base:.3}s docker_exec_mpirun_median={base_median:.3}s ratio_best={:.2} ratio_median={:.2} back_to_back_median={back_median:.3}s back_to_back_ratio={:.2}",
            best / base,
            median / base_median,
            back_median / base_median
        );
        e.delete_pool(&pid).await?;
        wait_for("pool deletion", 120, || e.get_pool(&pid).is_err()).await;
    }

    let bag = env_usize_list("SHIPYARD_BENCH_BAG", "16")
        .first()
        .copied()
        .unwrap_or(16);
    let t = Instant::now();
    let xargs = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "seq 1 {bag} | xargs -P4 -I{{}} docker run --rm --label shipyard.test=1 {TEST_IMAGE} /bin/sh -c 'echo task-{{}}' | wc -l"
        ))
        .output()?;
    let base = t.elapsed().as_secs_f64();
    assert_eq!(
        String::from_utf8_lossy(&xargs.stdout).trim(),
        bag.to_string(),
        "{}",
        String::from_utf8_lossy(&xargs.stderr)
    );

    e.add_pool(pool("bag", 1, 4)).await?;
    wait_idle(&e, "bag", 1, 120).await;
    let t = Instant::now();
    e.add_job(model!({"id": "bagjob", "poolInfo": {"poolId": "bag"}, "onAllTasksComplete": "terminatejob"}))
        .await?;
    let tasks: Vec<TaskAddParameter> = (1..=bag)
        .map(|i| {
            model!({
                "id": format!("t{i}"), "commandLine": format!("/bin/sh -c 'echo task-{i}'"),
                "containerSettings": {"imageName": TEST_IMAGE}
            })
        })
        .collect();
    e.add_tasks("bagjob", tasks).await?;
    wait_for("the bag", 600, || {
        e.get_job("bagjob")
            .is_ok_and(|j| j.state == Some(JobState::Completed))
    })
    .await;
    let secs = t.elapsed().as_secs_f64();
    let counts = e.task_counts("bagjob")?;
    assert_eq!(counts.task_counts.succeeded as usize, bag, "{counts:?}");
    println!(
        "BENCH bag tasks={bag} slots=4 engine={secs:.3}s xargs_docker_run={base:.3}s ratio={:.2}",
        secs / base
    );
    e.delete_pool("bag").await?;
    wait_for("pool deletion", 120, || e.get_pool("bag").is_err()).await;
    Ok(())
}

/// Nodes whose tasks are host processes (the command line run directly, stdout and stderr to
/// the task's files): the cheapest task kind that still goes through all of the engine. With
/// `inline`, an `echo` command is not spawned but done by the node kind (its words written to
/// the task's stdout), so that only the engine's own cost is left.
struct ProcessNodes {
    inline: bool,
}

impl ProcessNodes {
    async fn spawn(
        &self,
        spec: &RunSpec,
        argv: &[String],
        cancel: CancellationToken,
    ) -> EngineResult<RunEnd> {
        if self.inline && argv.first().is_some_and(|p| p.ends_with("/echo")) {
            let line = format!("{}\n", argv[1..].join(" "));
            let ok = std::fs::write(&spec.stdout, line).is_ok()
                && std::fs::write(&spec.stderr, "").is_ok();
            return Ok(RunEnd::Exited(if ok { 0 } else { 1 }));
        }
        let file = |p: &std::path::Path| std::fs::File::create(p).ok();
        let (Some(out), Some(err), Some((prog, args))) =
            (file(&spec.stdout), file(&spec.stderr), argv.split_first())
        else {
            return Ok(RunEnd::Exited(127));
        };
        let mut cmd = tokio::process::Command::new(prog);
        cmd.args(args).stdout(out).stderr(err).env_clear();
        for kv in &spec.env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        cmd.env("PATH", "/usr/bin:/bin");
        let Ok(mut child) = cmd.spawn() else {
            return Ok(RunEnd::Exited(127));
        };
        tokio::select! {
            s = child.wait() => Ok(RunEnd::Exited(s.ok().and_then(|s| s.code()).unwrap_or(137) as i64)),
            _ = cancel.cancelled() => { let _ = child.kill().await; Ok(RunEnd::Cancelled) }
        }
    }
}

impl NodeKind for ProcessNodes {
    fn create_pool<'a>(&'a self, _: &'a PoolSetup) -> BoxFuture<'a, EngineResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn remove_pool<'a>(&'a self, _: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn create_node<'a>(&'a self, _: &'a NodeRef) -> BoxFuture<'a, EngineResult<String>> {
        Box::pin(async { Ok("127.0.0.1".to_string()) })
    }
    fn remove_node<'a>(&'a self, _: &'a NodeRef) -> BoxFuture<'a, EngineResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn node_alive<'a>(&'a self, _: &'a NodeRef) -> BoxFuture<'a, bool> {
        Box::pin(async { true })
    }
    fn run<'a>(
        &'a self,
        _: &'a NodeRef,
        spec: &'a RunSpec,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, EngineResult<RunEnd>> {
        Box::pin(self.spawn(spec, &spec.argv, cancel))
    }
    fn exec<'a>(
        &'a self,
        _: &'a NodeRef,
        spec: &'a RunSpec,
        argv: Vec<String>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, EngineResult<RunEnd>> {
        Box::pin(async move { self.spawn(spec, &argv, cancel).await })
    }
    fn remove_container<'a>(&'a self, _: &'a str) -> BoxFuture<'a, EngineResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn remove_labelled<'a>(
        &'a self,
        _: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, EngineResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// `VmHWM` (peak resident set) and `VmRSS` of this process, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_bench_large_bags_tasks_per_second_and_peak_rss() -> anyhow::Result<()> {
    for inline in [false, true] {
        let dir = tempfile::tempdir()?;
        let kind: Arc<dyn NodeKind> = Arc::new(ProcessNodes { inline });
        let e = Engine::open_with_kinds(EngineOptions::new(dir.path()), kind.clone(), kind).await?;
        e.add_pool(pool("big", 1, 4)).await?;
        wait_idle(&e, "big", 1, 60).await;
        for n in env_usize_list("SHIPYARD_BENCH_LARGE_BAGS", "1000") {
            large_bag(&e, n, inline).await?;
        }
        e.delete_pool("big").await?;
        wait_for("pool deletion", 60, || e.get_pool("big").is_err()).await;
    }
    Ok(())
}

/// A job of `n` tasks `/bin/echo task-<i>` on the pool `big`, to its end.
async fn large_bag(e: &Engine, n: usize, inline: bool) -> anyhow::Result<()> {
    let jid = format!("bag{n}");
    let t = Instant::now();
    // All tasks first, then `terminatejob`: with it set from the start, a first call's tasks
    // could all end before the next call, and the job would end with them (as on Batch), so
    // the next `add_tasks` fails (seen once with the in-process kind).
    e.add_job(model!({"id": jid, "poolInfo": {"poolId": "big"}, "onAllTasksComplete": "noaction"}))
        .await?;
    let mut tasks = (1..=n)
        .map(|i| -> TaskAddParameter {
            model!({
                "id": format!("t{i}"), "commandLine": format!("/bin/echo task-{i}"),
                "containerSettings": {"imageName": TEST_IMAGE}
            })
        })
        .peekable();
    // 100 a call, as Batch's addTaskCollection takes them.
    while tasks.peek().is_some() {
        let chunk: Vec<TaskAddParameter> = tasks.by_ref().take(100).collect();
        e.add_tasks(&jid, chunk).await?;
    }
    e.patch_job(&jid, model!({"onAllTasksComplete": "terminatejob"}))
        .await?;
    let added = t.elapsed().as_secs_f64();
    wait_for("the large bag", 3600, || {
        e.get_job(&jid)
            .is_ok_and(|j| j.state == Some(JobState::Completed))
    })
    .await;
    let secs = t.elapsed().as_secs_f64();
    let counts = e.task_counts(&jid)?;
    assert_eq!(counts.task_counts.succeeded as usize, n, "{counts:?}");
    assert_eq!(
        engine_support::task_text(e, &jid, &format!("t{n}"), "stdout.txt").trim(),
        format!("task-{n}")
    );
    let (peak, now) = rss_mib();
    let kind = if inline {
        "in-process-echo"
    } else {
        "host-process"
    };
    println!(
        "BENCH large_bag tasks={n} slots=4 kind={kind} engine={secs:.2}s added_in={added:.2}s tasks_per_s={:.0} peak_rss={peak:.0}MiB rss={now:.0}MiB",
        n as f64 / secs
    );
    e.delete_job(&jid).await?;
    // Deleting answers at once; the next bag starts once this one is gone.
    wait_for("the job's deletion", 300, || e.get_job(&jid).is_err()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_bench_cold_runs_against_the_docker_cli_script() -> anyhow::Result<()> {
    let sizes = env_usize_list("SHIPYARD_BENCH_COLD", "");
    if sizes.is_empty() || !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    trace_from_env();
    let key = shipyard_runtime::ssh::JobSshKey::generate("engine-bench-cold")?;
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    let script = shipyard_e2e::repo_root().join("scripts/bench/local-baseline.sh");
    for n in sizes {
        let mut base = Vec::new();
        let mut engine = Vec::new();
        for round in 0..3 {
            let t = Instant::now();
            let out = Command::new("bash")
                .arg(&script)
                .arg(n.to_string())
                .arg(TEST_IMAGE)
                .output()?;
            base.push(t.elapsed().as_secs_f64());
            assert!(out.status.success(), "{}", shipyard_e2e::show(&out));
            HelloReport::parse(&String::from_utf8_lossy(&out.stdout)).assert_complete(n as u32);

            let pid = format!("cold{n}-{round}");
            let app = format!(
                "/bin/bash -c '{} '",
                mpirun(
                    "$(echo $AZ_BATCH_HOST_LIST | sed \"s/\\([^,]*\\)/\\1:1/g\")",
                    n
                )
            );
            let t = Instant::now();
            e.add_pool(pool(&pid, n, 1)).await?;
            e.add_job(model!({"id": pid, "poolInfo": {"poolId": pid}}))
                .await?;
            e.add_tasks(&pid, vec![mpi_task(&app, &key, n)]).await?;
            let done = completed(&e, &pid, "mpi", 300).await;
            e.delete_pool(&pid).await?;
            wait_for("pool deletion", 120, || e.get_pool(&pid).is_err()).await;
            engine.push(t.elapsed().as_secs_f64());
            assert_succeeded(&done, dir.path());
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (b, x) = (median(&mut base), median(&mut engine));
        println!(
            "BENCH cold_mpi_run nodes={n} engine_median={x:.3}s docker_cli_script_median={b:.3}s ratio={:.2} engine={engine:.2?} script={base:.2?}",
            x / b
        );
    }
    Ok(())
}
