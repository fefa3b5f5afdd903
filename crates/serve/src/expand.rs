//! OData `$expand`, as the service answers it on the operations that document it
//! (`Pool_Get`/`Pool_List`, `Job_Get`/`Job_List`, `Task_Get`/`Task_List`): the only associated
//! entity of these objects is `stats`, which an answer holds only when `$expand` names it.
//! Any other value is refused with 400 `InvalidQueryParameterValue` naming `$expand`.
//!
//! The statistics come from what the backends expose: times from the objects' own creation
//! and execution times, task counts and retries from the tasks. What is not measured on this
//! machine is reported as zero (CPU times `PT0S`, I/O `0`); the pool's optional `usageStats`
//! and `resourceStats` are omitted.

use std::time::Duration;

use shipyard_batch_api::models::{
    duration_to_iso8601, CloudJob, CloudPool, CloudTask, JobStatistics, PoolStatistics,
    TaskStatistics,
};
use shipyard_batch_spec::wire::{bad_query_value, Query};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// What `$expand` asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Expand {
    /// `stats`.
    pub stats: bool,
}

impl Expand {
    /// Reads `$expand` (comma-separated; names compare case-insensitively as OData's do
    /// for the service's clauses); the error is (status, Batch error body).
    pub(crate) fn from_query(query: &Query) -> Result<Expand, (u16, serde_json::Value)> {
        let mut out = Expand::default();
        let Some(raw) = query.get("$expand") else {
            return Ok(out);
        };
        for item in raw.split(',').map(str::trim) {
            if item.eq_ignore_ascii_case("stats") {
                out.stats = true;
            } else {
                return Err(bad_query_value("$expand", raw));
            }
        }
        Ok(out)
    }
}

fn parse(t: Option<&str>) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(t?, &Rfc3339).ok()
}

fn fmt(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// `b - a`, zero when negative.
fn span(a: OffsetDateTime, b: OffsetDateTime) -> Duration {
    Duration::try_from(b - a).unwrap_or_default()
}

/// (wall clock, wait) of one task at `now`: running time of its latest execution, and the
/// time from its creation to the start of that execution (to `now` if it has not started).
fn task_times(t: &CloudTask, now: OffsetDateTime) -> (Duration, Duration) {
    let created = parse(t.creation_time.as_deref());
    let exec = t.execution_info.as_ref();
    let start = parse(exec.and_then(|e| e.start_time.as_deref()));
    let end = parse(exec.and_then(|e| e.end_time.as_deref())).unwrap_or(now);
    let wall = start.map(|s| span(s, end)).unwrap_or_default();
    let wait = match created {
        Some(c) => span(c, start.unwrap_or(now)),
        None => Duration::ZERO,
    };
    (wall, wait)
}

/// Statistics of `url`'s object, alive since `start`, over a total wall clock and wait time.
fn usage(
    url: &Option<String>,
    start: &Option<String>,
    wall: Duration,
    wait: Duration,
    now: OffsetDateTime,
) -> TaskStatistics {
    TaskStatistics {
        url: url.clone().unwrap_or_default(),
        start_time: start.clone().unwrap_or_else(|| fmt(now)),
        last_update_time: fmt(now),
        user_cpu_time: duration_to_iso8601(Duration::ZERO),
        kernel_cpu_time: duration_to_iso8601(Duration::ZERO),
        wall_clock_time: duration_to_iso8601(wall),
        read_iops: 0,
        write_iops: 0,
        read_io_gib: 0.0,
        write_io_gib: 0.0,
        wait_time: duration_to_iso8601(wait),
    }
}

/// The `stats` of a task.
pub(crate) fn task_stats(t: &CloudTask, now: OffsetDateTime) -> TaskStatistics {
    let (wall, wait) = task_times(t, now);
    usage(&t.url, &t.creation_time, wall, wait, now)
}

/// The `stats` of a job from its tasks: total wall clock and wait time, succeeded and failed
/// tasks (completed with result `success`/`failure`), and retries.
pub(crate) fn job_stats(j: &CloudJob, tasks: &[CloudTask], now: OffsetDateTime) -> JobStatistics {
    let (mut wall, mut wait) = (Duration::ZERO, Duration::ZERO);
    let (mut ok, mut failed, mut retries) = (0i64, 0i64, 0i64);
    for t in tasks {
        let (w, q) = task_times(t, now);
        wall += w;
        wait += q;
        let exec = t.execution_info.as_ref();
        retries += i64::from(exec.map_or(0, |e| e.retry_count));
        if t.state.as_ref().map(|s| s.as_str()) == Some("completed") {
            match exec.and_then(|e| e.result.as_ref()).map(|r| r.as_str()) {
                Some("success") => ok += 1,
                Some(_) => failed += 1,
                None => {}
            }
        }
    }
    let u = usage(&j.url, &j.creation_time, wall, wait, now);
    JobStatistics {
        url: u.url,
        start_time: u.start_time,
        last_update_time: u.last_update_time,
        user_cpu_time: u.user_cpu_time,
        kernel_cpu_time: u.kernel_cpu_time,
        wall_clock_time: u.wall_clock_time,
        read_iops: u.read_iops,
        write_iops: u.write_iops,
        read_io_gib: u.read_io_gib,
        write_io_gib: u.write_io_gib,
        num_succeeded_tasks: ok,
        num_failed_tasks: failed,
        num_task_retries: retries,
        wait_time: u.wait_time,
    }
}

/// The `stats` of a pool: its lifetime (usage and resource figures are not measured here and
/// are left out, as the spec allows).
pub(crate) fn pool_stats(p: &CloudPool, now: OffsetDateTime) -> PoolStatistics {
    PoolStatistics {
        url: p.url.clone().unwrap_or_default(),
        start_time: p.creation_time.clone().unwrap_or_else(|| fmt(now)),
        last_update_time: fmt(now),
        usage_stats: None,
        resource_stats: None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_expand_and_refuses_other_values() {
        assert!(!Expand::from_query(&Query::parse("a=b")).expect("ok").stats);
        assert!(
            Expand::from_query(&Query::parse("%24expand=stats"))
                .expect("ok")
                .stats
        );
        let (status, body) =
            Expand::from_query(&Query::parse("%24expand=stats,nodes")).expect_err("refused");
        assert_eq!(status, 400);
        assert_eq!(body["code"], "InvalidQueryParameterValue");
        assert_eq!(body["values"][0]["value"], "$expand");
        assert_eq!(body["values"][1]["value"], "stats,nodes");
    }

    #[test]
    fn job_stats_count_tasks_and_times() {
        let now = parse(Some("2026-01-01T00:10:00Z")).expect("time");
        let task = |state: &str, result: Option<&str>, retries: i32| -> CloudTask {
            let mut exec = json!({"startTime": "2026-01-01T00:01:00Z", "retryCount": retries, "requeueCount": 0});
            if let Some(r) = result {
                exec["endTime"] = json!("2026-01-01T00:03:00Z");
                exec["result"] = json!(r);
            }
            serde_json::from_value(json!({
                "id": "t", "url": "http://h/jobs/j/tasks/t", "state": state,
                "creationTime": "2026-01-01T00:00:00Z", "executionInfo": exec,
            }))
            .expect("task")
        };
        let tasks = [
            task("completed", Some("success"), 0),
            task("completed", Some("failure"), 2),
            task("running", None, 0),
        ];
        let ts = task_stats(&tasks[0], now);
        assert_eq!(ts.wall_clock_time, "PT2M");
        assert_eq!(ts.wait_time, "PT1M");
        assert_eq!(task_stats(&tasks[2], now).wall_clock_time, "PT9M");
        let job: CloudJob = serde_json::from_value(
            json!({"id": "j", "url": "http://h/jobs/j", "creationTime": "2026-01-01T00:00:00Z"}),
        )
        .expect("job");
        let js = job_stats(&job, &tasks, now);
        assert_eq!(
            (
                js.num_succeeded_tasks,
                js.num_failed_tasks,
                js.num_task_retries
            ),
            (1, 1, 2)
        );
        assert_eq!(js.wall_clock_time, "PT13M");
        assert_eq!(js.wait_time, "PT3M");
        assert_eq!(js.url, "http://h/jobs/j");
    }
}
