//! What a Docker plan needs of its pool and its job: images and container configuration,
//! inter-node communication, and the job preparation/release tasks.

use std::collections::BTreeSet;

use shipyard_runtime::batch::{
    pool_admin, ContainerConfiguration, ContainerType, JobPreparationTask, JobReleaseTask,
    OnAllTasksComplete,
};
use shipyard_runtime::shell::{bash_c, quote, quote_expanding};
use shipyard_runtime::ssh;
use shipyard_runtime::{JobNeeds, JobSpec, OsFamily, PoolFacts, PoolNeeds};

use crate::node_scripts::preparation_script;
use crate::{DockerRuntime, LABEL_JOB};

/// The job's images, each once, in the order of first use.
fn images(job: &JobSpec) -> Vec<String> {
    let mut seen = BTreeSet::new();
    job.tasks
        .iter()
        .filter(|t| seen.insert(t.image.as_str()))
        .map(|t| t.image.clone())
        .collect()
}

fn any_multi_instance(job: &JobSpec) -> bool {
    job.tasks.iter().any(|t| t.multi_instance.is_some())
}

impl DockerRuntime {
    pub(crate) fn pool_needs(&self, job: &JobSpec, pool: &PoolFacts) -> PoolNeeds {
        let any_mi = any_multi_instance(job);
        let images = images(job);
        let mut needs = PoolNeeds {
            enable_inter_node_communication: any_mi,
            images: images.clone(),
            ..Default::default()
        };
        if pool.native_containers {
            needs.container_configuration = Some(ContainerConfiguration {
                r#type: ContainerType::DockerCompatible,
                container_image_names: Some(images),
                container_registries: (!self.registries.is_empty())
                    .then(|| self.registries.clone()),
            });
        } else if any_mi {
            // sshd containers use host networking: one task per node avoids port 23 clashes.
            needs.task_slots_per_node = Some(1);
        }
        needs
    }

    pub(crate) fn job_needs(&self, job: &JobSpec, pool: &PoolFacts) -> JobNeeds {
        let mut needs = JobNeeds {
            on_all_tasks_complete: job
                .auto_complete
                .then_some(OnAllTasksComplete::TerminateJob),
            uses_task_dependencies: job.uses_task_dependencies(),
            ..Default::default()
        };
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
        let keys = any_multi_instance(job);
        let pull = if pool.native_containers {
            Vec::new()
        } else {
            images(job)
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
