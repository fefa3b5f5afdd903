//! What a Docker plan needs of its pool and its job: images and container configuration,
//! inter-node communication, and the job preparation/release tasks.

use shipyard_runtime::batch::{
    pool_admin, ContainerConfiguration, ContainerType, JobPreparationTask, JobReleaseTask,
};
use shipyard_runtime::shell::{bash_c, quote, quote_expanding};
use shipyard_runtime::ssh;
use shipyard_runtime::{JobNeeds, JobSpec, OsFamily, PoolFacts, PoolNeeds};

use crate::node_scripts::preparation_script;
use crate::{DockerRuntime, LABEL_JOB};

impl DockerRuntime {
    pub(crate) fn pool_needs(&self, job: &JobSpec, pool: &PoolFacts) -> PoolNeeds {
        let mut needs = PoolNeeds::for_job(job);
        if pool.native_containers {
            needs.container_configuration = Some(ContainerConfiguration {
                r#type: ContainerType::DockerCompatible,
                container_image_names: Some(needs.images.clone()),
                container_registries: (!self.registries.is_empty())
                    .then(|| self.registries.clone()),
            });
        } else if needs.enable_inter_node_communication {
            // sshd containers use host networking: one task per node avoids port 23 clashes.
            needs.task_slots_per_node = Some(1);
        }
        needs
    }

    pub(crate) fn job_needs(&self, job: &JobSpec, pool: &PoolFacts) -> JobNeeds {
        let mut needs = JobNeeds::for_job(job);
        if pool.os == OsFamily::Windows {
            windows_job_tasks(job, &mut needs);
        } else {
            self.linux_job_tasks(job, pool, &mut needs);
        }
        needs
    }

    /// Linux preparation (keys, image pulls, the user's command) and release (containers of
    /// the job, keys, the user's command) tasks.
    fn linux_job_tasks(&self, job: &JobSpec, pool: &PoolFacts, needs: &mut JobNeeds) {
        let keys = job.any_multi_instance();
        let pull = if pool.native_containers {
            Vec::new()
        } else {
            job.images()
        };
        if keys || !pull.is_empty() || job.job_preparation.is_some() {
            needs.job_preparation_task = Some(JobPreparationTask {
                command_line: bash_c(&preparation_script(job, pool, &self.docker, &pull, keys)),
                wait_for_success: Some(true),
                user_identity: Some(pool_admin()),
                ..Default::default()
            });
            needs.needs_ssh_key = keys;
        }
        let mut release = vec!["set +e".to_string()];
        if !pool.native_containers {
            let docker = quote(&self.docker);
            let filter = quote(&format!("label={LABEL_JOB}={}", job.id));
            release.push(format!(
                "{docker} ps -aq --filter {filter} | xargs -r {docker} rm -f -v"
            ));
        }
        if keys {
            release.push(format!(
                "rm -rf {}",
                quote_expanding(&ssh::node_key_dir_shell(&job.id))
            ));
        }
        if let Some(r) = &job.job_release {
            release.push("set -e".into());
            release.push(r.command.clone());
        }
        if release.len() > 1 {
            needs.job_release_task = Some(JobReleaseTask {
                command_line: bash_c(&release.join("; ")),
                user_identity: Some(pool_admin()),
                ..Default::default()
            });
            if needs.job_preparation_task.is_none() {
                // Batch runs the release task only on nodes where a preparation task ran.
                needs.job_preparation_task = Some(JobPreparationTask {
                    command_line: "/bin/true".into(),
                    wait_for_success: Some(false),
                    user_identity: Some(pool_admin()),
                    ..Default::default()
                });
            }
        }
    }
}

/// Windows preparation and release tasks: the user's commands only, under `cmd /c`.
fn windows_job_tasks(job: &JobSpec, needs: &mut JobNeeds) {
    if let Some(p) = &job.job_preparation {
        needs.job_preparation_task = Some(JobPreparationTask {
            command_line: format!("cmd /c {}", p.command),
            wait_for_success: Some(true),
            user_identity: Some(pool_admin()),
            ..Default::default()
        });
    }
    if let Some(r) = &job.job_release {
        needs.job_release_task = Some(JobReleaseTask {
            command_line: format!("cmd /c {}", r.command),
            user_identity: Some(pool_admin()),
            ..Default::default()
        });
    }
}
