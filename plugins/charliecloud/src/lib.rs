//! Charliecloud runtime plugin for shipyard: the host's MPI launcher wrapping `ch-run`.
//!
//! Build it with `cargo build -p shipyard-plugin-charliecloud`; the shared library is
//! `target/<profile>/libshipyard_plugin_charliecloud.so`. Load it with the CLI's `--plugin FILE`
//! (or `SHIPYARD_PLUGIN`) and select it with `runtime = "charliecloud"` in a job.
//!
//! [`CharliecloudRuntime`] plans jobs for non-native Linux pools the way the Singularity runtime
//! does:
//!
//! - multi-instance tasks with `mpi`: the HOST launcher (built by `shipyard-mpi-launch` from
//!   `$AZ_BATCH_HOST_LIST`) starts one `ch-run` per rank, rendered by mpi-launch's
//!   `ContainerWrapper::Charliecloud` ([`wrap`]; no shell per rank): `--join` (Open MPI, whose
//!   `OMPI_COMM_WORLD_LOCAL_SIZE` `ch-run` reads) or `--join-ct=<processes per node>` (MPICH,
//!   Intel MPI) so the ranks of a node share one container (shared-memory transport), `-b $AZ_BATCH_NODE_ROOT_DIR` (the
//!   task, shared and startup directories at their host paths), `-c $AZ_BATCH_TASK_WORKING_DIR`,
//!   `--set-env` for the job's and task's variables. The launcher forwards `USER` (which
//!   `ch-run` needs), the `AZ_BATCH_*` paths and the task's variables to every rank;
//! - other tasks run `ch-run` once, the same way;
//! - the job preparation task, on every node that runs the job, checks `ch-run` is installed
//!   (exit 127 naming the binary and the package `charliecloud-runtime` otherwise) and makes
//!   each image ready ([`image`]): an image directory is used as it is; a tarball (URL, fetched
//!   as a resource file of the preparation task, or a path) and a registry reference (pulled with
//!   `ch-image` + `ch-convert`, or `ch-convert -i docker`) are unpacked once per node into
//!   `$AZ_BATCH_NODE_SHARED_DIR/shipyard/charliecloud/<name>` and reused by later jobs.
//!
//! Every task command line sets `USER` when Batch did not (`ch-run` refuses to start without it).

#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod image;
pub mod wrap;

use shipyard_runtime::batch::{self, JobPreparationTask, ResourceFile, TaskAddParameter};
use shipyard_runtime::plan::{plan_tasks, TaskContext};
use shipyard_runtime::shell::bash_c;
use shipyard_runtime::{
    mpi, validate, ContainerRuntime, Field, JobNeeds, JobPlan, JobSpec, MpiRuntime, MpiSpec,
    OsFamily, PoolFacts, PoolNeeds, RuntimeError, TaskSpec, WorkingDir,
};

use crate::image::ImageSource;
use crate::wrap::ChRun;

/// The runtime's registry name.
pub const NAME: &str = "charliecloud";

/// Sets `USER` when unset (Batch's auto users may run without it; `ch-run` needs it).
pub const SET_USER: &str = "export USER=\"${USER:-$(id -un)}\"";

/// The Charliecloud runtime.
#[derive(Debug, Clone)]
pub struct CharliecloudRuntime {
    binary: String,
    elevated: bool,
}

impl Default for CharliecloudRuntime {
    fn default() -> Self {
        CharliecloudRuntime {
            binary: "ch-run".into(),
            elevated: false,
        }
    }
}

fn unsupported(field: Field, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::unsupported(NAME, field, reason)
}

impl CharliecloudRuntime {
    shipyard_runtime::host_program_builder! {
        /// The `ch-run` executable on the nodes (default `ch-run` from `PATH`).
    }

    fn ch_run(&self, job: &JobSpec, task: &TaskSpec, join: bool) -> ChRun {
        ChRun {
            binary: self.binary.clone(),
            image: ImageSource::of(&task.image).run_path(&task.image),
            join,
            cd_task_dir: task.default_working_dir == WorkingDir::Batch,
            set_env: job.environment(task).into_keys().collect(),
        }
    }

    fn mpi_line(
        &self,
        job: &JobSpec,
        task: &TaskSpec,
        m: &MpiSpec,
        at: &Field,
    ) -> Result<String, RuntimeError> {
        if m.runtime == MpiRuntime::MsMpi {
            return Err(unsupported(
                mpi::mpi_field(at).key("runtime"),
                "msmpi runs on Windows pools, which Charliecloud does not support",
            ));
        }
        let env = job.environment(task);
        let ctx =
            mpi::LaunchContext::new(at, &env, job.infiniband(task)).run_as_root(self.elevated);
        let ch = self.ch_run(job, task, true);
        let mut req = mpi::launch_request(m, task.command.as_deref().unwrap_or_default(), ctx)?
            .container(ch.container());
        for name in ch.forwarded() {
            req = req.forward_env(name);
        }
        mpi::render_sh(&req, at)
    }

    fn plan_task(&self, cx: &TaskContext<'_>) -> Result<TaskAddParameter, RuntimeError> {
        let (job, task, at) = (cx.job, cx.task, &cx.at);
        if !task.additional_docker_run_options.is_empty() {
            return Err(unsupported(
                at.key("additional_docker_run_options"),
                "Docker options do not apply to ch-run",
            ));
        }
        if !task.additional_singularity_options.is_empty() {
            return Err(unsupported(
                at.key("additional_singularity_options"),
                "Singularity options do not apply to ch-run",
            ));
        }
        if job.gpus(task).is_some() {
            return Err(unsupported(
                at.key("gpus"),
                "GPU libraries must be injected into the image with ch-fromhost, which the plugin does not do yet",
            ));
        }
        let guards = vec![image::binary_guard(&self.binary), SET_USER.to_string()];
        let plain_line = || {
            let program = mpi::program_words(task.command.as_deref().unwrap_or("true"), "/bin/sh");
            let line = self
                .ch_run(job, task, false)
                .container()
                .render_sh(&program[0], &program[1..])
                .map_err(|e| RuntimeError::invalid(at.key("command"), e.to_string()))?;
            Ok(format!("exec {line}"))
        };
        cx.host_launched_task(batch::pool_user(self.elevated), guards, plain_line, |m| {
            self.mpi_line(job, task, m, at)
        })
    }

    /// The job preparation task: the `ch-run` check, every distinct image made ready, then the
    /// user's own preparation command.
    pub fn preparation_task(&self, job: &JobSpec) -> JobPreparationTask {
        let mut parts = vec!["set -e".to_string(), image::binary_guard(&self.binary)];
        let mut files = Vec::new();
        for img in job.images() {
            if let ImageSource::Tarball { remote: true, .. } = ImageSource::of(&img) {
                files.push(ResourceFile {
                    http_url: Some(img.clone()),
                    file_path: Some(image::download_path(&img)),
                    ..Default::default()
                });
            }
            parts.push(image::prepare(&img));
        }
        if let Some(p) = &job.job_preparation {
            parts.push(p.command.clone());
        }
        JobPreparationTask {
            command_line: bash_c(&parts.join("; ")),
            resource_files: (!files.is_empty()).then_some(files),
            wait_for_success: Some(true),
            user_identity: Some(batch::pool_admin()),
            ..Default::default()
        }
    }
}

impl ContainerRuntime for CharliecloudRuntime {
    fn name(&self) -> &str {
        NAME
    }

    fn plan(&self, job: &JobSpec, pool: &PoolFacts) -> Result<JobPlan, RuntimeError> {
        validate::job_against_pool(job, pool)?;
        if pool.os == OsFamily::Windows {
            return Err(unsupported(
                Field::pool().key("os"),
                "Charliecloud runs on Linux pools only",
            ));
        }
        if pool.native_containers {
            return Err(unsupported(
                Field::pool().key("native_containers"),
                "Charliecloud runs on pools without Batch container support (non-native)",
            ));
        }
        let tasks = plan_tasks(job, pool, |cx| self.plan_task(cx))?;
        tracing::debug!(job = %job.id, pool = %pool.pool_id, tasks = tasks.len(), "planned charliecloud job");
        Ok(JobPlan {
            runtime: NAME.into(),
            pool: PoolNeeds::for_job(job),
            job: JobNeeds {
                job_preparation_task: Some(self.preparation_task(job)),
                job_release_task: batch::job_release_task(job),
                ..JobNeeds::for_job(job)
            },
            tasks,
        })
    }
}

shipyard_runtime::export_runtime_plugin!("charliecloud", CharliecloudRuntime::default());

#[cfg(test)]
mod tests;
