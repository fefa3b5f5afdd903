//! Helpers shared by the engine tests (`#[path]`-included; no tests of its own).
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use shipyard_batch_api::models::{CloudTask, ComputeNodeState, TaskState};
use shipyard_local::engine::Engine;

/// Polls `f` every 20 ms; fails the test after `secs`.
pub async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the pool has `n` nodes, all idle.
pub async fn wait_idle(e: &Engine, pool: &str, n: usize, secs: u64) {
    wait_for("idle nodes", secs, || {
        e.list_nodes(pool).is_ok_and(|v| {
            v.len() == n && v.iter().all(|x| x.state == Some(ComputeNodeState::Idle))
        })
    })
    .await;
}

/// Waits until the task is completed and returns it.
pub async fn completed(e: &Engine, job: &str, task: &str, secs: u64) -> CloudTask {
    wait_for(&format!("task {job}/{task}"), secs, || {
        e.get_task(job, task)
            .is_ok_and(|t| t.state == Some(TaskState::Completed))
    })
    .await;
    e.get_task(job, task).expect("the task exists")
}

/// A task's file (`stdout.txt`, ...) as text; empty when missing.
pub fn task_text(e: &Engine, job: &str, task: &str, file: &str) -> String {
    e.task_file(job, task, file)
        .ok()
        .and_then(|c| std::fs::read_to_string(c.path).ok())
        .unwrap_or_default()
}

/// Every `stdout.txt`/`stderr.txt` under `dir`, with its path (for failure messages).
pub fn task_outputs(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push_str(&task_outputs(&p));
        } else if p
            .file_name()
            .is_some_and(|n| n == "stdout.txt" || n == "stderr.txt")
        {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            out.push_str(&format!("--- {}\n{text}\n", p.display()));
        }
    }
    out
}

/// A Batch model value from a `serde_json::json!` literal.
#[macro_export]
macro_rules! model {
    ($($v:tt)+) => {
        serde_json::from_value(serde_json::json!($($v)+)).expect("a valid Batch model value")
    };
}

/// Coordination for container-pool MPI tasks: the job's key (from [`ssh_settings`]) for root,
/// ssh on port 23 without host checks, and sshd on port 23, as raw Batch users write it.
pub const SSH_SETUP: &str = "mkdir -p /root/.ssh /run/sshd && chmod 700 /root/.ssh && \
printf \"%s\\n\" \"$TEST_SSH_KEY\" > /root/.ssh/id_ed25519 && \
printf \"%s\\n\" \"$TEST_SSH_PUB\" > /root/.ssh/authorized_keys && \
printf \"Host *\\n  Port 23\\n  StrictHostKeyChecking no\\n  UserKnownHostsFile /dev/null\\n  LogLevel ERROR\\n\" > /root/.ssh/config && \
chmod 600 /root/.ssh/* && \
{ test -f /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key; } && \
/usr/sbin/sshd -p 23 -h /etc/ssh/ssh_host_ed25519_key";

/// `environmentSettings` carrying the key [`SSH_SETUP`] installs.
pub fn ssh_settings(key: &shipyard_runtime::ssh::JobSshKey) -> serde_json::Value {
    serde_json::json!([
        {"name": "TEST_SSH_KEY", "value": key.private_openssh().trim()},
        {"name": "TEST_SSH_PUB", "value": key.public_openssh().trim()}
    ])
}

/// A multi-instance task `mpi` of the test image on `n` nodes: [`SSH_SETUP`] as coordination
/// (as admin, with the key of [`ssh_settings`]), `app` as the application.
pub fn mpi_task(
    app: &str,
    key: &shipyard_runtime::ssh::JobSshKey,
    n: usize,
) -> shipyard_batch_api::models::TaskAddParameter {
    model!({
        "id": "mpi", "commandLine": app,
        "containerSettings": {"imageName": shipyard_e2e::TEST_IMAGE},
        "userIdentity": {"autoUser": {"elevationLevel": "admin", "scope": "pool"}},
        "environmentSettings": ssh_settings(key),
        "multiInstanceSettings": {
            "numberOfInstances": n,
            "coordinationCommandLine": format!("/bin/bash -c '{SSH_SETUP}'")
        }
    })
}
