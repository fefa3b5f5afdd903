//! Tasks that can never run: Batch keeps a task `active` forever when one of its dependencies
//! failed with `dependencyAction` = `block` (the default for every exit condition but exit code
//! 0), so the watcher has to notice it itself.

use std::collections::{BTreeSet, HashMap};

use shipyard_batch_api::models::{
    CloudTask, DependencyAction, ExitConditions, ExitOptions, TaskExecutionResult, TaskState,
};

/// A job that cannot make progress: every unfinished task waits (directly or through other
/// waiting tasks) on a failed task that blocks its dependents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Blocked {
    /// The failed tasks that block, sorted.
    pub failed: Vec<String>,
    /// The unfinished tasks that wait on them, sorted.
    pub blocked: Vec<String>,
}

/// `Some` when the job's unfinished tasks are all blocked by failed dependencies; `None` while
/// any unfinished task can still run (or nothing is blocked).
pub(crate) fn blocked_tasks(tasks: &[CloudTask]) -> Option<Blocked> {
    let by_id: HashMap<&str, &CloudTask> = tasks
        .iter()
        .filter_map(|t| Some((t.id.as_deref()?, t)))
        .collect();
    let blocking: BTreeSet<&str> = by_id
        .iter()
        .filter(|(_, t)| blocks_dependents(t))
        .map(|(id, _)| *id)
        .collect();
    if blocking.is_empty() {
        return None;
    }
    let unfinished: Vec<&str> = by_id
        .iter()
        .filter(|(_, t)| t.state != Some(TaskState::Completed))
        .map(|(id, _)| *id)
        .collect();
    if unfinished.is_empty() {
        return None;
    }
    let deps: HashMap<&str, Vec<&str>> = unfinished
        .iter()
        .map(|id| (*id, dependencies(by_id[id], &by_id)))
        .collect();
    // Fixed point: a task is stuck when one of its dependencies blocks or is stuck.
    let mut stuck: BTreeSet<&str> = BTreeSet::new();
    loop {
        let before = stuck.len();
        for (id, ds) in &deps {
            if ds.iter().any(|d| blocking.contains(d) || stuck.contains(d)) {
                stuck.insert(id);
            }
        }
        if stuck.len() == before {
            break;
        }
    }
    if stuck.len() < unfinished.len() {
        return None;
    }
    let failed: BTreeSet<&str> = deps
        .values()
        .flatten()
        .copied()
        .filter(|d| blocking.contains(d))
        .collect();
    Some(Blocked {
        failed: failed.into_iter().map(str::to_string).collect(),
        blocked: stuck.into_iter().map(str::to_string).collect(),
    })
}

/// The ids among the job's tasks that `task` depends on (`taskIds` and `taskIdRanges`).
fn dependencies<'a>(task: &'a CloudTask, all: &HashMap<&'a str, &'a CloudTask>) -> Vec<&'a str> {
    let Some(on) = task.depends_on.as_ref() else {
        return Vec::new();
    };
    let mut ids: Vec<&str> = on.task_ids.iter().flatten().map(String::as_str).collect();
    for range in on.task_id_ranges.iter().flatten() {
        ids.extend(all.keys().copied().filter(|id| {
            id.parse::<i32>()
                .is_ok_and(|n| (range.start..=range.end).contains(&n))
        }));
    }
    ids
}

/// Whether a completed task failed with an exit condition whose `dependencyAction` is `block`.
fn blocks_dependents(task: &CloudTask) -> bool {
    if task.state != Some(TaskState::Completed) {
        return false;
    }
    let Some(exec) = task.execution_info.as_ref() else {
        return false;
    };
    let code = exec.exit_code;
    let failed = exec.result == Some(TaskExecutionResult::Failure) || code.is_some_and(|c| c != 0);
    if !failed {
        return false;
    }
    let options = task
        .exit_conditions
        .as_ref()
        .and_then(|c| exit_options(c, code, exec.failure_info.is_some()));
    // Batch's default: satisfy for exit code 0, block for every other exit condition.
    options
        .and_then(|o| o.dependency_action.clone())
        .is_none_or(|a| a == DependencyAction::Block)
}

/// The exit options Batch applies to a failure with `code` (a pre-processing or upload
/// failure when `code` is absent or 0 with a failure info).
fn exit_options(c: &ExitConditions, code: Option<i32>, failure: bool) -> Option<&ExitOptions> {
    if let Some(code) = code.filter(|c| *c != 0) {
        let listed = c
            .exit_codes
            .iter()
            .flatten()
            .find(|m| m.code == code)
            .map(|m| &m.exit_options)
            .or_else(|| {
                c.exit_code_ranges
                    .iter()
                    .flatten()
                    .find(|r| (r.start..=r.end).contains(&code))
                    .map(|r| &r.exit_options)
            });
        return listed.or(c.default.as_ref());
    }
    let specific = if failure && code.is_none() {
        c.pre_processing_error.as_ref()
    } else {
        c.file_upload_error.as_ref()
    };
    specific.or(c.default.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shipyard_batch_api::models::{
        ExitCodeMapping, TaskDependencies, TaskExecutionInformation, TaskIdRange,
    };

    fn task(id: &str, state: TaskState, exit: Option<i32>, deps: &[&str]) -> CloudTask {
        CloudTask {
            id: Some(id.into()),
            state: Some(state),
            execution_info: exit.map(|c| TaskExecutionInformation {
                exit_code: Some(c),
                result: Some(if c == 0 {
                    TaskExecutionResult::Success
                } else {
                    TaskExecutionResult::Failure
                }),
                ..Default::default()
            }),
            depends_on: (!deps.is_empty()).then(|| TaskDependencies {
                task_ids: Some(deps.iter().map(|d| d.to_string()).collect()),
                task_id_ranges: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_failed_dependency_blocks_its_dependents_transitively() {
        let tasks = [
            task("a", TaskState::Completed, Some(2), &[]),
            task("b", TaskState::Active, None, &["a"]),
            task("c", TaskState::Active, None, &["b"]),
        ];
        let b = blocked_tasks(&tasks).expect("blocked");
        assert_eq!(b.failed, ["a"]);
        assert_eq!(b.blocked, ["b", "c"]);
    }

    #[test]
    fn a_task_that_can_still_run_means_progress() {
        let tasks = [
            task("a", TaskState::Completed, Some(2), &[]),
            task("b", TaskState::Active, None, &["a"]),
            task("x", TaskState::Running, None, &[]),
        ];
        assert_eq!(blocked_tasks(&tasks), None);
        let done = [
            task("a", TaskState::Completed, Some(0), &[]),
            task("b", TaskState::Active, None, &["a"]),
        ];
        assert_eq!(blocked_tasks(&done), None);
    }

    #[test]
    fn satisfy_lets_dependents_run_and_ranges_count() {
        let mut a = task("1", TaskState::Completed, Some(3), &[]);
        a.exit_conditions = Some(ExitConditions {
            exit_codes: Some(vec![ExitCodeMapping {
                code: 3,
                exit_options: ExitOptions {
                    dependency_action: Some(DependencyAction::Satisfy),
                    ..Default::default()
                },
            }]),
            ..Default::default()
        });
        let mut b = task("2", TaskState::Active, None, &[]);
        b.depends_on = Some(TaskDependencies {
            task_ids: None,
            task_id_ranges: Some(vec![TaskIdRange { start: 1, end: 1 }]),
        });
        assert_eq!(blocked_tasks(&[a.clone(), b.clone()]), None);
        a.exit_conditions = None;
        let got = blocked_tasks(&[a, b]).expect("blocked by range");
        assert_eq!(
            (got.failed, got.blocked),
            (vec!["1".into()], vec!["2".into()])
        );
    }
}
