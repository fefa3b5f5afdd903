//! Windows pools: native containers only, `cmd /c` command lines, MS-MPI.

use shipyard_mpi_launch::shell::cmd;
use shipyard_mpi_launch::Word;
use shipyard_runtime::batch::{
    self, ContainerWorkingDirectory, MultiInstanceSettings, TaskAddParameter, TaskContainerSettings,
};
use shipyard_runtime::plan::TaskContext;
use shipyard_runtime::shell::join;
use shipyard_runtime::{mpi, validate, MpiRuntime, RuntimeError, WorkingDir};

use crate::{flags, unsupported, DockerRuntime};

/// The default coordination command on Windows: start MS-MPI's SMPD daemon in the background.
pub const MSMPI_COORDINATION: &str = "cmd /c start cmd /c \"\"%MSMPI_BIN%\\smpd.exe\"\" -d";

impl DockerRuntime {
    pub(crate) fn plan_windows_task(
        &self,
        cx: &TaskContext<'_>,
    ) -> Result<TaskAddParameter, RuntimeError> {
        let (job, task, index, pool, at) = (cx.job, cx.task, cx.index, cx.pool, &cx.at);
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
                        let ctx = mpi::LaunchContext::new(at, &env, false);
                        // Windows words keep their backslashes (`C:\app\x.exe`): split by the
                        // MSVCRT rules, then hand them on as a POSIX word list, which
                        // `launch_request` splits back into exactly these words.
                        let words = cmd::split(command).map_err(|e| RuntimeError::Mpi {
                            field: at.key("command"),
                            reason: format!("an MS-MPI command must be a plain word list: {e}"),
                        })?;
                        let req = mpi::launch_request(m, &join(&words), ctx)?
                            .workdir(Word::var("AZ_BATCH_TASK_SHARED_DIR"));
                        let program = m.executable_path.as_deref().unwrap_or(cmd::MSMPI_MPIEXEC);
                        let built = req
                            .build()
                            .and_then(|plan| match &mi.pre_execution_command {
                                // `cmd /c "<text>"` strips the outer quotes and runs the text.
                                Some(pre) => cmd::launch_line(program, &plan)
                                    .map(|l| format!("cmd /c \"{pre} && {l}\"")),
                                None => cmd::batch_launch_line(program, &plan),
                            });
                        built.map_err(|e| RuntimeError::Mpi {
                            field: mpi::mpi_field(at),
                            reason: e.to_string(),
                        })?
                    }
                    Some(m) => {
                        return Err(unsupported(
                            mpi::mpi_field(at).key("runtime"),
                            format!("`{}` does not run on Windows pools; use msmpi", m.runtime),
                        ))
                    }
                    None => command.to_string(),
                };
                t.command_line = match (&mi.mpi, &mi.pre_execution_command) {
                    (Some(_), _) => line,
                    (None, Some(pre)) => format!("cmd /c {pre} && {line}"),
                    (None, None) => format!("cmd /c {line}"),
                };
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
