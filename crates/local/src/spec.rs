//! What the backend executes: a job of tasks shaped like Azure Batch's `JobAddParameter` and
//! `TaskAddParameter` on a native container pool (the fields the local backend honours).
//!
//! These are produced from a runtime's plan (see [`crate::LocalBackend::run_job`]) or built by
//! hand (tests, examples) and passed to [`crate::LocalBackend::run_spec`].

use serde::{Deserialize, Serialize};

use crate::error::{LocalError, Result};

/// What happens when every task of the job is complete (`onAllTasksComplete`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnAllTasksComplete {
    /// The job stays active (Batch's default).
    #[default]
    NoAction,
    /// The job is terminated (state `completed`).
    TerminateJob,
}

/// What happens when a task fails (`onTaskFailure`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTaskFailure {
    /// Nothing: the other tasks go on (Batch's default).
    #[default]
    NoAction,
    /// The task's exit options apply; their default for a non-zero exit is to terminate the job,
    /// which stops the running tasks and starts no new ones.
    PerformExitOptionsJobAction,
}

/// An inclusive range of task ids (`TaskIdRange`), for tasks with integer ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskIdRange {
    /// First id of the range.
    pub start: i64,
    /// Last id of the range (inclusive).
    pub end: i64,
}

/// A task's dependencies (`dependsOn`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDependencies {
    /// Ids of tasks that must succeed first.
    #[serde(default)]
    pub task_ids: Vec<String>,
    /// Ranges of integer task ids that must succeed first.
    #[serde(default)]
    pub task_id_ranges: Vec<TaskIdRange>,
}

/// Multi-instance settings (`multiInstanceSettings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultiInstance {
    /// `numberOfInstances`: how many nodes.
    pub number_of_instances: u32,
    /// `coordinationCommandLine`: run on every node before the application command.
    pub coordination_command_line: String,
}

/// One task (`TaskAddParameter` subset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalTask {
    /// Task id, unique in the job.
    pub id: String,
    /// `commandLine`: the application (multi-instance: run on the master node only). Not run
    /// in a shell: wrap it in `/bin/bash -c '…'` to expand variables.
    pub command_line: String,
    /// `containerSettings.imageName`.
    pub image: String,
    /// `containerSettings.containerRunOptions`, split into arguments.
    #[serde(default)]
    pub container_run_options: Vec<String>,
    /// `environmentSettings`, in order.
    #[serde(default)]
    pub environment: Vec<(String, String)>,
    /// `multiInstanceSettings`; `None` for an ordinary single-node task.
    #[serde(default)]
    pub multi_instance: Option<MultiInstance>,
    /// `dependsOn`.
    #[serde(default)]
    pub depends_on: Option<TaskDependencies>,
    /// `constraints.maxTaskRetryCount` (-1: unlimited).
    #[serde(default)]
    pub max_task_retry_count: i32,
    /// `constraints.maxWallClockTime` in seconds, if any.
    #[serde(default)]
    pub max_wall_clock_secs: Option<u64>,
}

impl LocalTask {
    /// A single-instance task running `command_line` in `image`.
    pub fn new(
        id: impl Into<String>,
        image: impl Into<String>,
        command_line: impl Into<String>,
    ) -> Self {
        LocalTask {
            id: id.into(),
            command_line: command_line.into(),
            image: image.into(),
            container_run_options: Vec::new(),
            environment: Vec::new(),
            multi_instance: None,
            depends_on: None,
            max_task_retry_count: 0,
            max_wall_clock_secs: None,
        }
    }

    /// Number of nodes the task occupies.
    pub fn instances(&self) -> u32 {
        self.multi_instance
            .as_ref()
            .map_or(1, |m| m.number_of_instances.max(1))
    }
}

/// A job: tasks plus the job-level settings the backend honours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalJob {
    /// Job id (Docker object names and the state directory derive from it).
    pub id: String,
    /// The tasks.
    pub tasks: Vec<LocalTask>,
    /// `usesTaskDependencies`.
    #[serde(default)]
    pub uses_task_dependencies: bool,
    /// `onAllTasksComplete`.
    #[serde(default)]
    pub on_all_tasks_complete: OnAllTasksComplete,
    /// `onTaskFailure`.
    #[serde(default)]
    pub on_task_failure: OnTaskFailure,
    /// How many tasks may run at once (task slots on this machine); `None` = the backend's default.
    #[serde(default)]
    pub max_parallel_tasks: Option<usize>,
}

impl LocalJob {
    /// Checks ids, dependencies and instance counts.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: String, reason: String| LocalError::InvalidJob {
            job: self.id.clone(),
            field,
            reason,
        };
        if !valid_id(&self.id) {
            return Err(bad(
                "id".into(),
                "must be 1-64 characters of letters, digits, `-` and `_`".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tasks.iter().enumerate() {
            if !valid_id(&t.id) {
                return Err(bad(
                    format!("tasks[{i}].id"),
                    format!(
                        "`{}`: must be 1-64 characters of letters, digits, `-` and `_`",
                        t.id
                    ),
                ));
            }
            if !seen.insert(t.id.as_str()) {
                return Err(bad(
                    format!("tasks[{i}].id"),
                    format!("duplicate id `{}`", t.id),
                ));
            }
            if t.image.trim().is_empty() {
                return Err(bad(
                    format!("tasks[{i}].containerSettings.imageName"),
                    "empty".into(),
                ));
            }
            if let Some(m) = &t.multi_instance {
                if m.number_of_instances == 0 || m.number_of_instances > 250 {
                    return Err(bad(
                        format!("tasks[{i}].multiInstanceSettings.numberOfInstances"),
                        format!("{} (must be 1..=250 locally)", m.number_of_instances),
                    ));
                }
            }
            if let Some(d) = &t.depends_on {
                if !self.uses_task_dependencies
                    && (!d.task_ids.is_empty() || !d.task_id_ranges.is_empty())
                {
                    return Err(bad(
                        format!("tasks[{i}].dependsOn"),
                        "the job does not set usesTaskDependencies (TaskDependenciesNotSpecifiedOnJob)".into(),
                    ));
                }
                for r in &d.task_id_ranges {
                    if r.start > r.end {
                        return Err(bad(
                            format!("tasks[{i}].dependsOn.taskIdRanges"),
                            format!("start {} > end {}", r.start, r.end),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Ids that are safe in Docker object names and paths.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(tasks: Vec<LocalTask>) -> LocalJob {
        LocalJob {
            id: "j1".into(),
            tasks,
            uses_task_dependencies: true,
            on_all_tasks_complete: OnAllTasksComplete::TerminateJob,
            on_task_failure: OnTaskFailure::NoAction,
            max_parallel_tasks: None,
        }
    }

    #[test]
    fn rejects_duplicate_and_bad_ids() {
        let j = job(vec![
            LocalTask::new("a", "img", "true"),
            LocalTask::new("a", "img", "true"),
        ]);
        let e = j.validate().unwrap_err().to_string();
        assert!(e.contains("tasks[1].id") && e.contains("duplicate"), "{e}");
        let j = job(vec![LocalTask::new("a/b", "img", "true")]);
        assert!(j
            .validate()
            .unwrap_err()
            .to_string()
            .contains("tasks[0].id"));
    }

    #[test]
    fn dependencies_need_the_job_flag() {
        let mut t = LocalTask::new("b", "img", "true");
        t.depends_on = Some(TaskDependencies {
            task_ids: vec!["a".into()],
            task_id_ranges: vec![],
        });
        let mut j = job(vec![LocalTask::new("a", "img", "true"), t]);
        j.validate().unwrap();
        j.uses_task_dependencies = false;
        let e = j.validate().unwrap_err().to_string();
        assert!(e.contains("usesTaskDependencies"), "{e}");
    }

    #[test]
    fn serde_names_are_batch_like() {
        let v = serde_json::to_value(OnTaskFailure::PerformExitOptionsJobAction).unwrap();
        assert_eq!(v, "performexitoptionsjobaction");
        let v = serde_json::to_value(OnAllTasksComplete::TerminateJob).unwrap();
        assert_eq!(v, "terminatejob");
    }
}
