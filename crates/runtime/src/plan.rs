//! A runtime's plan: the Batch task, job and pool values that run a job.
//!
//! The same plan serves Azure Batch (the values are posted as they are) and the local backend
//! (which runs them like a native container pool).

use serde::{Deserialize, Serialize};

use crate::batch::{
    ContainerConfiguration, EnvironmentSetting, JobAddParameter, JobPreparationTask,
    JobReleaseTask, OnAllTasksComplete, PoolAddParameter, PoolInformation, StartTask,
    TaskAddParameter, UserIdentity,
};
use crate::domain::{JobSpec, MpiSpec, PoolFacts, TaskSpec};
use crate::error::{Field, RuntimeError};
use crate::ssh::{JobSshKey, PRIVATE_KEY_ENV, PUBLIC_KEY_ENV};

/// One task of a job being planned: what a runtime's per-task planning reads, handed to the
/// closure of [`plan_tasks`].
///
/// ```
/// use shipyard_runtime::plan::{plan_tasks, TaskContext};
/// use shipyard_runtime::{batch::TaskAddParameter, JobSpec, PoolFacts};
/// let job: JobSpec = toml::from_str(r#"
///     id = "j"
///     [[tasks]]
///     image = "img"
///     command = "true"
///     [[tasks]]
///     image = "img"
///     command = "false"
/// "#).unwrap();
/// let pool: PoolFacts = toml::from_str(r#"
///     pool_id = "p"
///     native_containers = true
///     subnet_pattern = "10.0.*"
///     node_count = 1
/// "#).unwrap();
/// let tasks = plan_tasks(&job, &pool, |cx: &TaskContext<'_>| {
///     assert_eq!(cx.at.to_string(), format!("job.tasks[{}]", cx.index));
///     Ok(TaskAddParameter {
///         id: cx.task_id(),
///         command_line: cx.task.command.clone().unwrap_or_default(),
///         ..Default::default()
///     })
/// })
/// .unwrap();
/// assert_eq!(tasks[1].command_line, "false");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TaskContext<'a> {
    /// The job (already expanded by the runtime, when it expands parametric sweeps).
    pub job: &'a JobSpec,
    /// The task: `job.tasks[index]`.
    pub task: &'a TaskSpec,
    /// Its index in the job's tasks.
    pub index: usize,
    /// The pool the job runs on.
    pub pool: &'a PoolFacts,
    /// The task's field, `job[<id>].tasks[<index>]`, which errors about it locate.
    pub at: Field,
}

impl<'a> TaskContext<'a> {
    /// The context of `job.tasks[index]` on `pool`; `None` when there is no such task.
    pub fn new(job: &'a JobSpec, index: usize, pool: &'a PoolFacts) -> Option<Self> {
        Some(TaskContext {
            job,
            task: job.tasks.get(index)?,
            index,
            pool,
            at: Field::job(&job.id).key("tasks").index(index),
        })
    }

    /// The Batch task id of this task ([`JobSpec::task_id`]).
    pub fn task_id(&self) -> String {
        self.job.task_id(self.index)
    }

    /// The Batch task of a runtime that launches from the host, wrapping each rank (Singularity,
    /// Charliecloud): [`crate::batch::task_base`] run as `user`, with the command line `bash -c`
    /// of `script` (the runtime's guards) followed, for an ordinary task, by `plain_line()`, for
    /// a multi-instance task by what [`crate::batch::host_multi_instance`] appends (the launcher
    /// line from `mpi_line`), whose settings it sets.
    pub fn host_launched_task(
        &self,
        user: UserIdentity,
        mut script: Vec<String>,
        plain_line: impl FnOnce() -> Result<String, RuntimeError>,
        mpi_line: impl FnOnce(&MpiSpec) -> Result<String, RuntimeError>,
    ) -> Result<TaskAddParameter, RuntimeError> {
        let mut t = crate::batch::task_base(self.job, self.task, self.index, user, &self.at)?;
        match &self.task.multi_instance {
            None => script.push(plain_line()?),
            Some(mi) => {
                t.multi_instance_settings = Some(crate::batch::host_multi_instance(
                    mi,
                    self.pool,
                    &self.at,
                    self.task.command.as_deref(),
                    &mut script,
                    mpi_line,
                )?);
            }
        }
        t.command_line = crate::shell::bash_c(&script.join("; "));
        Ok(t)
    }
}

/// The Batch tasks of `job` on `pool`, in order: `plan_task` of each task's [`TaskContext`];
/// the first error stops planning.
pub fn plan_tasks(
    job: &JobSpec,
    pool: &PoolFacts,
    mut plan_task: impl FnMut(&TaskContext<'_>) -> Result<TaskAddParameter, RuntimeError>,
) -> Result<Vec<TaskAddParameter>, RuntimeError> {
    (0..job.tasks.len())
        .filter_map(|i| TaskContext::new(job, i, pool))
        .map(|cx| plan_task(&cx))
        .collect()
}

/// The builder methods `binary(path)` and `elevated(on)` of a runtime that runs a program of its
/// own on the nodes (Singularity/Apptainer, Charliecloud): expands, inside the runtime's `impl`
/// block, to setters of its fields `binary: String` and `elevated: bool`. The doc comments given
/// to the macro document `binary` (its default differs per runtime).
///
/// ```
/// #[derive(Debug, Default)]
/// pub struct MyRuntime {
///     binary: String,
///     elevated: bool,
/// }
/// impl MyRuntime {
///     shipyard_runtime::host_program_builder! {
///         /// The `my-run` executable on the nodes (default `my-run` from `PATH`).
///     }
/// }
/// let r = MyRuntime::default().binary("/opt/my-run").elevated(true);
/// assert_eq!((r.binary.as_str(), r.elevated), ("/opt/my-run", true));
/// ```
#[macro_export]
macro_rules! host_program_builder {
    ($(#[$binary_doc:meta])*) => {
        $(#[$binary_doc])*
        pub fn binary(mut self, path: impl Into<String>) -> Self {
            self.binary = path.into();
            self
        }

        /// Run tasks as the pool's administrator auto user (default: the non-admin one).
        pub fn elevated(mut self, on: bool) -> Self {
            self.elevated = on;
            self
        }
    };
}

/// Everything needed to run one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobPlan {
    /// The runtime that made the plan.
    pub runtime: String,
    /// What the pool must provide.
    pub pool: PoolNeeds,
    /// What the job must carry.
    pub job: JobNeeds,
    /// The tasks, in the job's order.
    pub tasks: Vec<TaskAddParameter>,
}

/// What a plan requires of its pool (not a model of the pool: the pool is
/// [`crate::pool::PoolSpec`]; [`JobPlan::apply_to_pool`] merges these into its
/// `PoolAddParameter`). Part of the plugin wire format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolNeeds {
    /// Batch container support with these images prefetched (native pools only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_configuration: Option<ContainerConfiguration>,
    /// A start task the nodes must run (e.g. pulling images on non-native pools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_task: Option<StartTask>,
    /// Multi-instance tasks need inter-node communication.
    #[serde(default)]
    pub enable_inter_node_communication: bool,
    /// A task-slot count the pool must use (e.g. 1 when host-network sshd containers would
    /// collide on port 23); `None` = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_slots_per_node: Option<i32>,
    /// Images the nodes must hold (prefetched by the pool or pulled by the start task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
}

/// Job-level needs of a plan. `Debug` redacts the SSH private key once installed.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobNeeds {
    /// Job preparation task (runs on each node before its first task of the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_preparation_task: Option<JobPreparationTask>,
    /// Job release task (runs on each node that ran the preparation task, when the job ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_release_task: Option<JobReleaseTask>,
    /// `onAllTasksComplete` (`terminatejob` for `auto_complete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_all_tasks_complete: Option<OnAllTasksComplete>,
    /// Some task has `dependsOn`.
    #[serde(default)]
    pub uses_task_dependencies: bool,
    /// The job preparation task expects the per-job SSH key in its environment
    /// ([`JobPlan::install_ssh_key`]).
    #[serde(default)]
    pub needs_ssh_key: bool,
}

impl PoolNeeds {
    /// What every runtime's pool needs for `job`: inter-node communication when a task is
    /// multi-instance, and the job's images ([`JobSpec::images`]).
    pub fn for_job(job: &JobSpec) -> PoolNeeds {
        PoolNeeds {
            enable_inter_node_communication: job.any_multi_instance(),
            images: job.images(),
            ..Default::default()
        }
    }
}

impl JobNeeds {
    /// What every runtime's job needs for `job`: `terminatejob` once all tasks complete when
    /// `auto_complete`, and task dependencies when a task depends on another; no preparation or
    /// release task and no SSH key (the runtime adds those).
    pub fn for_job(job: &JobSpec) -> JobNeeds {
        JobNeeds {
            on_all_tasks_complete: job
                .auto_complete
                .then_some(OnAllTasksComplete::TerminateJob),
            uses_task_dependencies: job.uses_task_dependencies(),
            ..Default::default()
        }
    }
}

impl std::fmt::Debug for JobNeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prep = self.job_preparation_task.as_ref().map(|p| {
            let mut p = p.clone();
            for e in p.environment_settings.iter_mut().flatten() {
                if e.name == PRIVATE_KEY_ENV
                    || e.name
                        .starts_with(crate::registry_auth::PASSWORD_ENV_PREFIX)
                {
                    e.value = Some("<redacted>".into());
                }
            }
            p
        });
        f.debug_struct("JobNeeds")
            .field("job_preparation_task", &prep)
            .field("job_release_task", &self.job_release_task)
            .field("on_all_tasks_complete", &self.on_all_tasks_complete)
            .field("uses_task_dependencies", &self.uses_task_dependencies)
            .field("needs_ssh_key", &self.needs_ssh_key)
            .finish()
    }
}

impl JobPlan {
    /// Adds the per-job key to the job preparation task's environment (it writes the key files
    /// on every node). Does nothing when the plan needs no key.
    pub fn install_ssh_key(&mut self, key: &JobSshKey) -> Result<(), RuntimeError> {
        if !self.job.needs_ssh_key {
            return Ok(());
        }
        let prep = self.job.job_preparation_task.as_mut().ok_or_else(|| {
            RuntimeError::Ssh("the plan needs an SSH key but has no job preparation task".into())
        })?;
        let env = prep.environment_settings.get_or_insert_with(Vec::new);
        env.retain(|e| e.name != PRIVATE_KEY_ENV && e.name != PUBLIC_KEY_ENV);
        env.push(EnvironmentSetting::new(
            PRIVATE_KEY_ENV,
            key.private_openssh(),
        ));
        env.push(EnvironmentSetting::new(
            PUBLIC_KEY_ENV,
            key.public_openssh(),
        ));
        Ok(())
    }

    /// The Batch `JobAddParameter` of this plan: job `job_id` on pool `pool_id`.
    pub fn job_add_parameter(&self, job_id: &str, pool_id: &str) -> JobAddParameter {
        JobAddParameter {
            id: job_id.to_string(),
            pool_info: PoolInformation {
                pool_id: Some(pool_id.to_string()),
                ..Default::default()
            },
            job_preparation_task: self.job.job_preparation_task.clone(),
            job_release_task: self.job.job_release_task.clone(),
            on_all_tasks_complete: self.job.on_all_tasks_complete.clone(),
            uses_task_dependencies: self.job.uses_task_dependencies.then_some(true),
            ..Default::default()
        }
    }

    /// Merges the pool needs into a `PoolAddParameter`: container configuration (under
    /// `virtualMachineConfiguration`, which a native pool must have), start task, inter-node
    /// communication and task slots.
    pub fn apply_to_pool(&self, pool: &mut PoolAddParameter) -> Result<(), RuntimeError> {
        if let Some(cc) = &self.pool.container_configuration {
            let vm = pool.virtual_machine_configuration.as_mut().ok_or_else(|| {
                RuntimeError::invalid(
                    Field::pool().key("vm_configuration"),
                    "a native container pool needs a virtual machine configuration",
                )
            })?;
            vm.container_configuration = Some(cc.clone());
        }
        if let Some(st) = &self.pool.start_task {
            pool.start_task = Some(st.clone());
        }
        if self.pool.enable_inter_node_communication {
            pool.enable_inter_node_communication = Some(true);
        }
        if let Some(n) = self.pool.task_slots_per_node {
            pool.task_slots_per_node = Some(n);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_private_key() {
        let mut plan = JobPlan {
            runtime: "x".into(),
            pool: PoolNeeds::default(),
            job: JobNeeds {
                job_preparation_task: Some(JobPreparationTask {
                    command_line: "/bin/true".into(),
                    ..Default::default()
                }),
                needs_ssh_key: true,
                ..Default::default()
            },
            tasks: vec![],
        };
        let key = JobSshKey::generate("t").unwrap();
        plan.install_ssh_key(&key).unwrap();
        let dbg = format!("{plan:?}");
        assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        // Every environment value is redacted in Debug (batch-api models), the public key too;
        // the variable names stay visible so the output still shows what the task carries.
        assert!(
            dbg.contains(PRIVATE_KEY_ENV) && dbg.contains(PUBLIC_KEY_ENV),
            "{dbg}"
        );
        assert!(!dbg.contains(key.public_openssh()), "{dbg}");
        // the wire form carries it (the preparation task writes it on the nodes)
        let json = serde_json::to_string(&plan.job_add_parameter("j", "p")).unwrap();
        assert!(json.contains("OPENSSH PRIVATE KEY"));
    }
}
