//! Helpers shared by the engine tests (`#[path]`-included; no tests of its own).
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use shipyard_batch_api::models::{CloudTask, ComputeNodeState, TaskState};
use shipyard_local::engine::Engine;

/// Polls `f` every 100 ms; fails the test after `secs`.
pub async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
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
