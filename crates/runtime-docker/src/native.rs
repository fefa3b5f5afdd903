//! Native pools: Batch runs the containers (`containerSettings`), multi-instance tasks run
//! sshd and the launcher inside them.

use shipyard_runtime::batch::{
    self, ContainerWorkingDirectory, MultiInstanceSettings, TaskAddParameter, TaskContainerSettings,
};
use shipyard_runtime::plan::TaskContext;
use shipyard_runtime::shell::{bash_c, join, quote};
use shipyard_runtime::{validate, RuntimeError, WorkingDir};

use crate::{flags, native_coordination_script, DockerRuntime};

impl DockerRuntime {
    pub(crate) fn plan_native_linux_task(
        &self,
        cx: &TaskContext<'_>,
    ) -> Result<TaskAddParameter, RuntimeError> {
        let (job, task, index, pool, at) = (cx.job, cx.task, cx.index, cx.pool, &cx.at);
        let task_id = job.task_id(index);
        let mut opts = self.common_run_options(job, task);
        if job.remove_container_after_exit(task) {
            opts.insert(0, flags::RM.to_string());
        }
        opts.extend(Self::labels(
            &job.id,
            &task_id,
            task.multi_instance.is_some(),
        ));
        let container_settings = TaskContainerSettings {
            container_run_options: Some(join(&opts)),
            image_name: task.image.clone(),
            working_directory: Some(match task.default_working_dir {
                WorkingDir::Batch => ContainerWorkingDirectory::TaskWorkingDirectory,
                WorkingDir::Container => ContainerWorkingDirectory::ContainerImageDefault,
            }),
            ..Default::default()
        };
        let mut t = self.base_task(job, task, index, at)?;
        t.container_settings = Some(container_settings);
        match &task.multi_instance {
            None => {
                let command = task.command.as_deref().ok_or_else(|| {
                    RuntimeError::invalid(
                        at.key("command"),
                        "a task on a native container pool needs a command",
                    )
                })?;
                t.command_line = format!("/bin/sh -c {}", quote(command));
            }
            Some(mi) => {
                let coordination = match &mi.coordination_command {
                    Some(c) => bash_c(c),
                    None => bash_c(&native_coordination_script(
                        &job.id,
                        self.sshd_listen_address.as_deref(),
                    )),
                };
                t.command_line = bash_c(&self.mi_application_line(job, task, at)?);
                t.multi_instance_settings = Some(MultiInstanceSettings {
                    number_of_instances: Some(validate::instances(mi, pool, at)?),
                    coordination_command_line: coordination,
                    common_resource_files: batch::resource_files(&mi.resource_files),
                });
            }
        }
        Ok(t)
    }
}
