//! From a runtime's plan to what the backend runs: the pool facts the local backend presents
//! (a native container pool of Linux nodes) to the runtime, and the conversion of the plan's
//! Batch values into a [`LocalJob`] ([`job_from_plan`]).

use shipyard_batch_api::models::{OnAllTasksComplete as BatchOnAllTasksComplete, TaskAddParameter};
use shipyard_runtime::{JobPlan, NumInstances, OsFamily, PoolFacts};

use crate::error::{LocalError, Result};
use crate::spec::{
    LocalJob, LocalTask, MultiInstance, OnAllTasksComplete, TaskDependencies, TaskIdRange,
};

/// The ssh `Host` pattern covering every address the backend gives nodes (10.213.x.y and
/// 10.214.x.y).
pub const SUBNET_PATTERN: &str = "10.21?.*";

/// The pool facts a job is planned against locally: a native container pool of Linux nodes,
/// one node per instance of the job's largest multi-instance task, one task slot per node.
pub fn pool_facts(job: &shipyard_runtime::JobSpec) -> PoolFacts {
    let nodes = job
        .tasks
        .iter()
        .filter_map(|t| t.multi_instance.as_ref())
        .filter_map(|m| match m.num_instances {
            NumInstances::Count(n) => Some(n),
            NumInstances::Pool(_) => None,
        })
        .max()
        .unwrap_or(1)
        .max(1);
    PoolFacts {
        pool_id: "local".into(),
        native_containers: true,
        os: OsFamily::Linux,
        subnet_pattern: SUBNET_PATTERN.into(),
        node_count: nodes,
        slots_per_node: 1,
        cores_per_node: std::thread::available_parallelism()
            .ok()
            .and_then(|n| u32::try_from(n.get()).ok()),
    }
}

/// Seconds of an ISO 8601 duration as Batch writes them (`PT1H30M`, `P1DT2H`, `PT45S`).
pub fn iso_duration_secs(s: &str) -> Option<u64> {
    let rest = s.strip_prefix('P')?;
    let (date, time) = rest.split_once('T').unwrap_or((rest, ""));
    let mut total = 0u64;
    for (part, units) in [
        (date, &[('W', 604_800u64), ('D', 86_400)][..]),
        (time, &[('H', 3600), ('M', 60), ('S', 1)][..]),
    ] {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() {
                num.push(c);
            } else {
                let (_, mult) = units.iter().find(|(u, _)| *u == c)?;
                total = total.checked_add(num.parse::<u64>().ok()?.checked_mul(*mult)?)?;
                num.clear();
            }
        }
        if !num.is_empty() {
            return None;
        }
    }
    Some(total)
}

fn task_from_batch(t: &TaskAddParameter, index: usize) -> Result<LocalTask> {
    let field = |f: &str| format!("tasks[{index}].{f}");
    let cs = t
        .container_settings
        .as_ref()
        .ok_or_else(|| LocalError::NotAContainerTask {
            task: t.id.clone(),
            field: field("containerSettings"),
        })?;
    let mut task = LocalTask::new(t.id.clone(), cs.image_name.clone(), t.command_line.clone());
    if let Some(opts) = cs
        .container_run_options
        .as_deref()
        .filter(|o| !o.trim().is_empty())
    {
        task.container_run_options = crate::cmdline::split_command_line(
            opts,
            &field("containerSettings.containerRunOptions"),
        )?;
    }
    task.environment = t
        .environment_settings
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    if let Some(mi) = &t.multi_instance_settings {
        let n = mi.number_of_instances.unwrap_or(1);
        task.multi_instance = Some(MultiInstance {
            number_of_instances: u32::try_from(n.max(1)).unwrap_or(1),
            coordination_command_line: mi.coordination_command_line.clone(),
        });
    }
    if let Some(d) = &t.depends_on {
        task.depends_on = Some(TaskDependencies {
            task_ids: d.task_ids.clone().unwrap_or_default(),
            task_id_ranges: d
                .task_id_ranges
                .iter()
                .flatten()
                .map(|r| TaskIdRange {
                    start: i64::from(r.start),
                    end: i64::from(r.end),
                })
                .collect(),
        });
    }
    if let Some(c) = &t.constraints {
        task.max_task_retry_count = c.max_task_retry_count.unwrap_or(0);
        task.max_wall_clock_secs = c.max_wall_clock_time.as_deref().and_then(iso_duration_secs);
    }
    Ok(task)
}

/// Converts a plan made for a native container pool into what the backend runs. The
/// coordination command lines are kept as planned: the backend mounts the job's key files where
/// the docker runtime's native coordination installs them from (see
/// [`crate::LocalBackend::run_plan`]).
pub fn job_from_plan(job_id: &str, plan: &JobPlan) -> Result<LocalJob> {
    let tasks = plan
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| task_from_batch(t, i))
        .collect::<Result<Vec<_>>>()?;
    Ok(LocalJob {
        id: job_id.to_string(),
        tasks,
        uses_task_dependencies: plan.job.uses_task_dependencies,
        on_all_tasks_complete: match plan.job.on_all_tasks_complete {
            Some(BatchOnAllTasksComplete::TerminateJob) => OnAllTasksComplete::TerminateJob,
            _ => OnAllTasksComplete::NoAction,
        },
        on_task_failure: Default::default(),
        max_parallel_tasks: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_durations() {
        assert_eq!(iso_duration_secs("PT1H30M"), Some(5400));
        assert_eq!(iso_duration_secs("P1DT2H"), Some(93_600));
        assert_eq!(iso_duration_secs("PT45S"), Some(45));
        assert_eq!(iso_duration_secs("P1W"), Some(604_800));
        assert_eq!(iso_duration_secs("1H"), None);
        assert_eq!(iso_duration_secs("PT5"), None);
    }

    #[test]
    fn converts_batch_tasks() {
        let t: TaskAddParameter = serde_json::from_value(serde_json::json!({
            "id": "mpi",
            "commandLine": "/bin/bash -c 'mpirun hostname'",
            "containerSettings": {
                "imageName": "shipyard/mpi:bookworm",
                "containerRunOptions": "--shm-size 256m --label shipyard.job=j"
            },
            "environmentSettings": [{"name": "A", "value": "1"}],
            "multiInstanceSettings": {"numberOfInstances": 3, "coordinationCommandLine": "sshd"},
            "dependsOn": {"taskIds": ["a"], "taskIdRanges": [{"start": 1, "end": 4}]},
            "constraints": {"maxTaskRetryCount": 2, "maxWallClockTime": "PT10M"}
        }))
        .unwrap();
        let s = task_from_batch(&t, 0).unwrap();
        assert_eq!(s.image, "shipyard/mpi:bookworm");
        assert_eq!(s.instances(), 3);
        assert_eq!(s.environment, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(s.container_run_options.len(), 4);
        assert_eq!(s.max_task_retry_count, 2);
        assert_eq!(s.max_wall_clock_secs, Some(600));
        let d = s.depends_on.unwrap();
        assert_eq!(d.task_ids, vec!["a"]);
        assert_eq!(d.task_id_ranges, vec![TaskIdRange { start: 1, end: 4 }]);
        let mut bare = t.clone();
        bare.container_settings = None;
        let e = task_from_batch(&bare, 2).unwrap_err();
        assert!(
            matches!(&e, LocalError::NotAContainerTask { task, .. } if task == "mpi"),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.contains("tasks[2].containerSettings"), "{e}");
    }
}
