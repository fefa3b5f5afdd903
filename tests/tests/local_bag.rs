//! Local backend bags of tasks: slots, dependencies (ids and ranges), retries, job actions, and
//! the record read back by a fresh process.
#![allow(clippy::unwrap_used)]

mod local_support;

use std::collections::HashMap;
use std::process::Command;

use local_support::*;
use shipyard_e2e::{require_test_image, TEST_IMAGE};
use shipyard_local::{
    JobState, LocalJob, LocalTask, OnAllTasksComplete, OnTaskFailure, TaskDependencies,
    TaskIdRange, TaskResult,
};

fn deps(ids: &[String], ranges: &[(i64, i64)]) -> Option<TaskDependencies> {
    Some(TaskDependencies {
        task_ids: ids.to_vec(),
        task_id_ranges: ranges
            .iter()
            .map(|&(start, end)| TaskIdRange { start, end })
            .collect(),
    })
}

/// One recorded task as printed by the `local_jobs` example: (state, result, exit, retries,
/// start ms, end ms).
type Line = (String, String, String, u32, i128, i128);

fn read_back(state: &std::path::Path, job: &str) -> HashMap<String, Line> {
    let bin = example_binary("local_jobs");
    let out = Command::new(bin)
        .args(["--state-dir", state.to_str().unwrap(), "--job", job])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 8, "{l}");
            (
                f[1].to_string(),
                (
                    f[2].to_string(),
                    f[3].to_string(),
                    f[4].to_string(),
                    f[5].parse().unwrap(),
                    f[6].parse().unwrap(),
                    f[7].parse().unwrap(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_bag_of_50_tasks_with_dependencies_slots_and_retries() {
    if !require_test_image() {
        return;
    }
    const SLOTS: usize = 4;
    let state = tempfile::tempdir().unwrap();
    let flags = tempfile::tempdir().unwrap();
    let id = unique_id("bag");
    let _guard = CleanGuard(id.clone());
    let backend = backend(state.path()).await;

    // 1..=40: task i > 5 depends on i-5; 41..=49 depend on the range 1..=10; 50 on 1..=49.
    // Task 7 fails on its first attempt (a flag file on a host bind mount) and is retried.
    let mut tasks = Vec::new();
    for i in 1..=50i64 {
        let cmd = if i == 7 {
            "/bin/bash -c 'if [ -e /flags/seen ]; then echo retried; else touch /flags/seen; exit 4; fi'"
                .to_string()
        } else {
            format!("/bin/bash -c 'echo task {i} on $AZ_BATCH_NODE_ID; sleep 0.2'")
        };
        let mut t = LocalTask::new(i.to_string(), TEST_IMAGE, cmd);
        if i == 7 {
            t.container_run_options =
                vec!["-v".into(), format!("{}:/flags", flags.path().display())];
            t.max_task_retry_count = 2;
        }
        t.depends_on = match i {
            6..=40 => deps(&[(i - 5).to_string()], &[]),
            41..=49 => deps(&[], &[(1, 10)]),
            50 => deps(&[], &[(1, 49)]),
            _ => None,
        };
        tasks.push(t);
    }
    let job = LocalJob {
        id: id.clone(),
        tasks: tasks.clone(),
        uses_task_dependencies: true,
        on_all_tasks_complete: OnAllTasksComplete::TerminateJob,
        on_task_failure: OnTaskFailure::NoAction,
        max_parallel_tasks: Some(SLOTS),
    };
    let outcome = backend.run_spec(job, None).await.unwrap();
    let failed: Vec<_> = outcome
        .tasks
        .iter()
        .filter(|t| t.result != Some(TaskResult::Success))
        .map(|t| (t.id.clone(), t.failure.clone()))
        .collect();
    assert!(outcome.succeeded(), "failed: {failed:?}");
    assert_eq!(outcome.state, JobState::Completed);
    assert_eq!(
        outcome.terminate_reason.as_deref(),
        Some("AllTasksComplete")
    );
    drop(backend);

    // A fresh process reads the record.
    let rec = read_back(state.path(), &id);
    assert_eq!(rec.len(), 50);
    for (tid, (st, result, code, _, start, end)) in &rec {
        assert_eq!(
            (st.as_str(), result.as_str(), code.as_str()),
            ("Completed", "Success", "0"),
            "task {tid}"
        );
        assert!(start <= end, "task {tid}");
    }
    assert_eq!(rec["7"].3, 1, "task 7 retried once");
    assert_eq!(rec["8"].3, 0);
    let out7 =
        std::fs::read_to_string(outcome.task("7").unwrap().task_dir.join("stdout.txt")).unwrap();
    assert_eq!(out7.trim(), "retried");
    let out9 =
        std::fs::read_to_string(outcome.task("9").unwrap().task_dir.join("stdout.txt")).unwrap();
    assert_eq!(out9.trim(), "task 9 on node-0");

    // Every task started after all its dependencies ended.
    for t in &tasks {
        let Some(d) = &t.depends_on else { continue };
        let mut dep_ids: Vec<String> = d.task_ids.clone();
        for r in &d.task_id_ranges {
            dep_ids.extend((r.start..=r.end).map(|n| n.to_string()));
        }
        for dep in dep_ids {
            assert!(
                rec[&t.id].4 >= rec[&dep].5,
                "task {} started before its dependency {dep} ended",
                t.id
            );
        }
    }
    // Never more than SLOTS at once; and really in parallel.
    let mut edges: Vec<(i128, i32)> = Vec::new();
    for (_, (_, _, _, _, start, end)) in rec.iter() {
        edges.push((*start, 1));
        edges.push((*end, -1));
    }
    edges.sort();
    let (mut cur, mut max) = (0, 0);
    for (_, d) in edges {
        cur += d;
        max = max.max(cur);
    }
    assert!(max <= SLOTS as i32, "{max} tasks ran at once");
    assert!(max >= 2, "tasks never ran in parallel");
    assert_eq!(leftovers(&id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_task_failure_terminates_the_job_when_asked() {
    if !require_test_image() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let id = unique_id("jobaction");
    let _guard = CleanGuard(id.clone());
    let backend = backend(state.path()).await;
    let mut a = LocalTask::new("a", TEST_IMAGE, "/bin/bash -c 'exit 5'");
    a.max_task_retry_count = 0;
    let mut b = LocalTask::new("b", TEST_IMAGE, "/bin/true");
    b.depends_on = deps(&["a".to_string()], &[]);
    let c = LocalTask::new("c", TEST_IMAGE, "/bin/true");
    let job = LocalJob {
        id: id.clone(),
        tasks: vec![a, b, c],
        uses_task_dependencies: true,
        on_all_tasks_complete: OnAllTasksComplete::TerminateJob,
        on_task_failure: OnTaskFailure::PerformExitOptionsJobAction,
        max_parallel_tasks: Some(1),
    };
    let outcome = backend.run_spec(job, None).await.unwrap();
    assert_eq!(outcome.state, JobState::Completed);
    assert_eq!(outcome.terminate_reason.as_deref(), Some("TaskFailed"));
    let a = outcome.task("a").unwrap();
    assert_eq!(
        (a.result, a.exit_code),
        (Some(TaskResult::Failure), Some(5))
    );
    // b waits on a (never runs); c would run next with one slot, but the job was terminated.
    for t in ["b", "c"] {
        let r = outcome.task(t).unwrap();
        assert_eq!(r.result, None, "task {t}");
        assert!(r.start_time.is_none(), "task {t} must not start");
    }
    assert_eq!(outcome.exit_code(), 5);
    assert_eq!(leftovers(&id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_wall_clock_limit_stops_the_task() {
    if !require_test_image() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let id = unique_id("wallclock");
    let _guard = CleanGuard(id.clone());
    let backend = backend(state.path()).await;
    let mut t = LocalTask::new("slow", TEST_IMAGE, "/bin/sleep 300");
    t.max_wall_clock_secs = Some(2);
    let job = LocalJob {
        id: id.clone(),
        tasks: vec![t],
        uses_task_dependencies: false,
        on_all_tasks_complete: OnAllTasksComplete::NoAction,
        on_task_failure: OnTaskFailure::NoAction,
        max_parallel_tasks: None,
    };
    let t0 = std::time::Instant::now();
    let outcome = backend.run_spec(job, None).await.unwrap();
    assert!(t0.elapsed() < std::time::Duration::from_secs(30));
    let slow = outcome.task("slow").unwrap();
    assert_eq!(slow.result, Some(TaskResult::Failure));
    let failure = slow.failure.clone().unwrap_or_default();
    assert!(failure.contains("maxWallClockTime"), "{failure}");
    // noaction: the job stays active, as on Batch.
    assert_eq!(outcome.state, JobState::Active);
    assert_eq!(leftovers(&id), Vec::<String>::new());
}
