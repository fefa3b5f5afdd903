//! The Azure Batch model values a plan is made of: re-exported from
//! [`shipyard_batch_models`] (camelCase on the wire, optional fields omitted when unset).

pub use shipyard_batch_models::{
    AutoUserScope, AutoUserSpecification, ComputeNodeFillType, ContainerConfiguration,
    ContainerRegistry, ContainerType, ContainerWorkingDirectory, ElevationLevel,
    EnvironmentSetting, ImageReference, JobAddParameter, JobConstraints, JobPreparationTask,
    JobReleaseTask, MultiInstanceSettings, NetworkConfiguration, OnAllTasksComplete, OutputFile,
    OutputFileBlobContainerDestination, OutputFileDestination, OutputFileUploadCondition,
    OutputFileUploadOptions, PoolAddParameter, PoolInformation, ResourceFile, StartTask,
    TaskAddParameter, TaskConstraints, TaskContainerSettings, TaskDependencies, TaskIdRange,
    TaskSchedulingPolicy, UserIdentity, VirtualMachineConfiguration,
};

/// The pool-scope administrator auto user (root on Linux): what container tasks run as.
pub fn pool_admin() -> UserIdentity {
    UserIdentity::auto_user(AutoUserScope::Pool, ElevationLevel::Admin)
}

/// The pool-scope auto user: the administrator when `admin`, else the non-admin one.
pub fn pool_user(admin: bool) -> UserIdentity {
    UserIdentity::auto_user(
        AutoUserScope::Pool,
        if admin {
            ElevationLevel::Admin
        } else {
            ElevationLevel::NonAdmin
        },
    )
}

/// The job release task of `job` (its `job_release` command under `bash -c`, as the pool's
/// administrator); `None` without one.
pub fn job_release_task(job: &crate::domain::JobSpec) -> Option<JobReleaseTask> {
    job.job_release.as_ref().map(|r| JobReleaseTask {
        command_line: crate::shell::bash_c(&r.command),
        user_identity: Some(pool_admin()),
        ..Default::default()
    })
}

/// Batch `constraints` of task `task` of `job` (wall-clock limit, retries; task wins over
/// job); `None` when nothing is set.
pub fn constraints(
    job: &crate::domain::JobSpec,
    task: &crate::domain::TaskSpec,
) -> Option<TaskConstraints> {
    let c = TaskConstraints {
        max_wall_clock_time: task.max_wall_time.clone(),
        retention_time: job.retention_time(task).map(str::to_string),
        max_task_retry_count: job.max_task_retries(task),
    };
    (c != TaskConstraints::default()).then_some(c)
}

/// Sets the job-level values of `job` on its Batch `JobAddParameter`: `priority` and
/// `constraints.maxWallClockTime` (what [`crate::JobPlan::job_add_parameter`] cannot know).
pub fn apply_job_settings(job: &crate::domain::JobSpec, add: &mut JobAddParameter) {
    if job.priority.is_some() {
        add.priority = job.priority;
    }
    if let Some(t) = &job.max_wall_time {
        add.constraints
            .get_or_insert_with(Default::default)
            .max_wall_clock_time = Some(t.clone());
    }
}

/// Batch `dependsOn` of a task (`depends_on` ids and the `depends_on_range`); `None` when it
/// depends on nothing. `at` is the task's field, for the error of a range beyond `i32`.
pub fn depends_on(
    task: &crate::domain::TaskSpec,
    at: &crate::error::Field,
) -> Result<Option<TaskDependencies>, crate::RuntimeError> {
    let ranges = match task.depends_on_range {
        None => None,
        Some([s, e]) => {
            let conv = |v: u32| {
                i32::try_from(v).map_err(|_| {
                    crate::RuntimeError::invalid(
                        at.key("depends_on_range"),
                        format!("{v} is larger than a Batch task id range allows"),
                    )
                })
            };
            Some(vec![TaskIdRange::new(conv(s)?, conv(e)?)])
        }
    };
    let ids = (!task.depends_on.is_empty()).then(|| task.depends_on.clone());
    Ok(
        (ids.is_some() || ranges.is_some()).then_some(TaskDependencies {
            task_ids: ids,
            task_id_ranges: ranges,
        }),
    )
}

/// Batch environment settings of a task: the job's variables overlaid with the task's; `None`
/// when there are none.
pub fn environment_settings(
    job: &crate::domain::JobSpec,
    task: &crate::domain::TaskSpec,
) -> Option<Vec<EnvironmentSetting>> {
    let env = job.environment(task);
    (!env.is_empty()).then(|| {
        env.into_iter()
            .map(|(k, v)| EnvironmentSetting::new(k, v))
            .collect()
    })
}

/// Batch resource files for a list of the domain's resource files; `None` when there are none
/// (Batch omits the property).
pub fn resource_files(files: &[crate::domain::ResourceFileSpec]) -> Option<Vec<ResourceFile>> {
    (!files.is_empty()).then(|| {
        files
            .iter()
            .map(|f| ResourceFile {
                http_url: Some(f.http_url.clone()),
                file_path: Some(f.file_path.clone()),
                file_mode: f.file_mode.clone(),
                ..Default::default()
            })
            .collect()
    })
}

/// The Batch task `index` of `job` before its command line: id, resource files, environment,
/// constraints and dependencies from `task`, run as `user`. `at` is the task's field (see
/// [`depends_on`]).
pub fn task_base(
    job: &crate::domain::JobSpec,
    task: &crate::domain::TaskSpec,
    index: usize,
    user: UserIdentity,
    at: &crate::error::Field,
) -> Result<TaskAddParameter, crate::RuntimeError> {
    Ok(TaskAddParameter {
        id: job.task_id(index),
        resource_files: resource_files(&task.resource_files),
        environment_settings: environment_settings(job, task),
        constraints: constraints(job, task),
        user_identity: Some(user),
        depends_on: depends_on(task, at)?,
        ..Default::default()
    })
}

/// A multi-instance task launched from the host (runtimes wrapping each rank, e.g. Singularity,
/// Charliecloud): appends the pre-execution command and then the launcher line (`mpi_line` of
/// the task's `mpi`, or without `mpi` `command` as-is on the host, Batch Shipyard's rule) to
/// `script`, and returns the Batch settings (instance count checked against `pool`; the
/// coordination command under `bash -c`, `/bin/true` when unset).
pub fn host_multi_instance(
    mi: &crate::domain::MultiInstanceSpec,
    pool: &crate::domain::PoolFacts,
    at: &crate::error::Field,
    command: Option<&str>,
    script: &mut Vec<String>,
    mpi_line: impl FnOnce(&crate::domain::MpiSpec) -> Result<String, crate::RuntimeError>,
) -> Result<MultiInstanceSettings, crate::RuntimeError> {
    let instances = crate::validate::instances(mi, pool, at)?;
    script.extend(mi.pre_execution_command.clone());
    match &mi.mpi {
        Some(m) => script.push(mpi_line(m)?),
        None => script.push(command.unwrap_or_default().to_string()),
    }
    Ok(MultiInstanceSettings {
        number_of_instances: Some(instances),
        coordination_command_line: mi
            .coordination_command
            .as_deref()
            .map(crate::shell::bash_c)
            .unwrap_or_else(|| "/bin/true".to_string()),
        common_resource_files: resource_files(&mi.resource_files),
    })
}
