//! Windows pools: native containers only, `cmd /c` command lines, MS-MPI.

use shipyard_runtime::batch::{
    self, ContainerWorkingDirectory, MultiInstanceSettings, TaskAddParameter, TaskContainerSettings,
};
use shipyard_runtime::shell::join;
use shipyard_runtime::{
    mpi, validate, Field, JobSpec, MpiRuntime, PoolFacts, RuntimeError, TaskSpec, WorkingDir,
};

use crate::{flags, unsupported, DockerRuntime};

/// The default coordination command on Windows: start MS-MPI's SMPD daemon in the background.
pub const MSMPI_COORDINATION: &str = "cmd /c start cmd /c \"\"%MSMPI_BIN%\\smpd.exe\"\" -d";

impl DockerRuntime {
    pub(crate) fn plan_windows_task(
        &self,
        job: &JobSpec,
        task: &TaskSpec,
        index: usize,
        pool: &PoolFacts,
        at: &Field,
    ) -> Result<TaskAddParameter, RuntimeError> {
        let mut opts = self.common_run_options(job, task);
        if job.remove_container_after_exit(task) {
            opts.insert(0, flags::RM.to_string());
        }
        let task_id = job.task_id(index);
        opts.extend(Self::labels(&job.id, &task_id, false));
        let mut t = self.base_task(job, task, index, at)?;
        t.container_settings = Some(TaskContainerSettings {
            container_run_options: Some(join(&opts)),
            image_name: task.image.clone(),
            working_directory: Some(match task.default_working_dir {
                WorkingDir::Batch => ContainerWorkingDirectory::TaskWorkingDirectory,
                WorkingDir::Container => ContainerWorkingDirectory::ContainerImageDefault,
            }),
            ..Default::default()
        });
        let command = task.command.as_deref().ok_or_else(|| {
            RuntimeError::invalid(
                at.key("command"),
                "a task on a Windows pool needs a command",
            )
        })?;
        match &task.multi_instance {
            None => t.command_line = format!("cmd /c {command}"),
            Some(mi) => {
                let line = match &mi.mpi {
                    Some(m) if m.runtime == MpiRuntime::MsMpi => {
                        let env = job.environment(task);
                        let ctx = mpi::LaunchContext {
                            task: at,
                            ssh_port: None,
                            run_as_root: false,
                            user_env: &env,
                            infiniband: false,
                        };
                        let req = mpi::launch_request(m, command, ctx)?;
                        mpi::render_cmd(&req, at)?
                    }
                    Some(m) => {
                        return Err(unsupported(
                            mpi::mpi_field(at).key("runtime"),
                            format!("`{}` does not run on Windows pools; use msmpi", m.runtime),
                        ))
                    }
                    None => command.to_string(),
                };
                let line = match &mi.pre_execution_command {
                    Some(pre) => format!("{pre} && {line}"),
                    None => line,
                };
                t.command_line = format!("cmd /c {line}");
                t.multi_instance_settings = Some(MultiInstanceSettings {
                    number_of_instances: Some(validate::instances(mi, pool, at)?),
                    coordination_command_line: mi
                        .coordination_command
                        .as_ref()
                        .map(|c| format!("cmd /c {c}"))
                        .unwrap_or_else(|| MSMPI_COORDINATION.to_string()),
                    common_resource_files: batch::resource_files(&mi.resource_files),
                });
            }
        }
        Ok(t)
    }
}
