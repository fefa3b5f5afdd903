//! Engine speed against the plain Docker CLI, measured in the same run (scripts/bench-engine.sh
//! runs it at full size and prints the ratios):
//!
//! - a multi-instance MPI job on a warm pool of N nodes (coordination starts sshd in each
//!   node's task container, then mpirun on the primary) against `docker exec mpirun` on
//!   containers that already run sshd;
//! - a bag of trivial tasks on 4 slots against `xargs -P4 docker run --rm`.
//!
//! Sizes: `SHIPYARD_BENCH_NODES` (comma-separated, default `2`), `SHIPYARD_BENCH_BAG`
//! (default 16). Every run checks that the work was done right; lines starting with `BENCH`
//! carry the numbers.

use std::process::Command;
use std::time::Instant;

#[path = "engine_support.rs"]
mod engine_support;
use engine_support::{completed, mpi_task, task_outputs, wait_for, wait_idle, SSH_SETUP};

use shipyard_batch_api::models::{
    JobState, PoolAddParameter, TaskAddParameter, TaskExecutionResult,
};
use shipyard_e2e::{HelloReport, MpiKind, TEST_IMAGE};
use shipyard_local::engine::{Engine, EngineOptions};

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

/// `docker exec mpirun` on N running containers with sshd up: seconds of the best of 3.
fn baseline_mpirun(n: usize, key: &shipyard_runtime::ssh::JobSshKey) -> f64 {
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
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let out = docker(&["exec", &b.1[0], "/bin/bash", "-c", &cmd]);
        best = best.min(t.elapsed().as_secs_f64());
        HelloReport::parse(&out).assert_complete(n as u32);
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_bench_warm_pool_mpi_job_and_bag_of_tasks() -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let key = shipyard_runtime::ssh::JobSshKey::generate("engine-bench")?;
    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;

    for n in env_usize_list("SHIPYARD_BENCH_NODES", "2") {
        let base = baseline_mpirun(n, &key);
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
        let mut best = f64::MAX;
        for round in 0..3 {
            let jid = format!("{pid}-j{round}");
            let t = Instant::now();
            e.add_job(model!({"id": jid, "poolInfo": {"poolId": pid}}))
                .await?;
            e.add_tasks(&jid, vec![mpi_task(&app, &key, n)]).await?;
            let done = completed(&e, &jid, "mpi", 120).await;
            best = best.min(t.elapsed().as_secs_f64());
            let info = done.execution_info.unwrap_or_default();
            assert_eq!(
                info.result,
                Some(TaskExecutionResult::Success),
                "{}",
                task_outputs(dir.path())
            );
            let out = engine_support::task_text(&e, &jid, "mpi", "stdout.txt");
            HelloReport::parse(&out).assert_complete(n as u32);
        }
        println!(
            "BENCH warm_mpi_job nodes={n} engine={best:.3}s docker_exec_mpirun={base:.3}s ratio={:.2}",
            best / base
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
        bag.to_string()
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
