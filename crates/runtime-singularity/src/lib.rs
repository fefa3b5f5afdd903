//! Singularity/Apptainer runtime for shipyard: host mpirun wrapping `singularity exec`.
//!
//! [`SingularityRuntime`] implements [`ContainerRuntime`] as `singularity` and `apptainer`
//! (registered in [`shipyard_runtime::registry`]). It runs on non-native Linux pools only:
//!
//! - multi-instance tasks with `mpi`: the HOST launcher (built by `shipyard-mpi-launch` from
//!   `$AZ_BATCH_HOST_LIST`, reaching the other nodes through the host sshd that Batch sets up
//!   for the pool-scope auto user) starts one `singularity exec` per rank, with
//!   `--pwd $AZ_BATCH_TASK_WORKING_DIR`, the node root directory bound at the same path
//!   (through `SINGULARITY_BIND` / `APPTAINER_BIND`), `--nv` for GPUs, and the task's
//!   variables passed as `SINGULARITYENV_<NAME>` / `APPTAINERENV_<NAME>`;
//! - no coordination split (the coordination command is a no-op unless the user gives one) and
//!   nothing left running, so no cleanup;
//! - remote images (`docker://`, `library://`, `oras://`, `shub://`, `http(s)://`) are pulled
//!   once per node by the job preparation task into
//!   `$AZ_BATCH_NODE_SHARED_DIR/shipyard/images/<name>.sif`; local paths are used as they are
//!   (the preparation task checks they exist).
//!
//! Every command line first checks that the binary exists and fails with
//! `shipyard: singularity not found on <host>` (exit 127) otherwise; [`check_binary`] does the
//! same check on this machine.

#![warn(missing_docs)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use shipyard_mpi_launch::{Container, ContainerWrapper as Wrapper, Word};
use shipyard_runtime::batch::{self, JobPreparationTask, TaskAddParameter, UserIdentity};
use shipyard_runtime::domain::SingularityCmd;
use shipyard_runtime::plan::{plan_tasks, TaskContext};
use shipyard_runtime::registry::RuntimeRegistration;
use shipyard_runtime::shell::{bash_c, file_name_safe, join, quote, quote_expanding};
use shipyard_runtime::{
    mpi, validate, ContainerRuntime, Field, JobNeeds, JobPlan, JobSpec, MpiRuntime, OsFamily,
    PoolFacts, PoolNeeds, RuntimeError, TaskSpec, WorkingDir,
};

/// Which container engine (and binary) runs the containers: Singularity or Apptainer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SingularityEngine {
    /// `singularity` (SingularityCE / legacy), env prefix `SINGULARITYENV_`.
    Singularity,
    /// `apptainer`, env prefix `APPTAINERENV_`.
    Apptainer,
}

impl SingularityEngine {
    /// The registry name and default binary.
    pub fn name(self) -> &'static str {
        match self {
            SingularityEngine::Singularity => "singularity",
            SingularityEngine::Apptainer => "apptainer",
        }
    }

    fn wrapper(self) -> Wrapper {
        match self {
            SingularityEngine::Singularity => Wrapper::Singularity,
            SingularityEngine::Apptainer => Wrapper::Apptainer,
        }
    }

    /// The variable listing bind mounts (`SINGULARITY_BIND` / `APPTAINER_BIND`).
    pub fn bind_env(self) -> &'static str {
        match self {
            SingularityEngine::Singularity => "SINGULARITY_BIND",
            SingularityEngine::Apptainer => "APPTAINER_BIND",
        }
    }

    /// The prefix that injects a variable into the container.
    pub fn env_prefix(self) -> &'static str {
        self.wrapper().env_prefix()
    }
}

/// The Singularity/Apptainer runtime.
#[derive(Debug, Clone)]
pub struct SingularityRuntime {
    engine: SingularityEngine,
    binary: String,
    elevated: bool,
}

fn make_singularity() -> Box<dyn ContainerRuntime> {
    Box::new(SingularityRuntime::new(SingularityEngine::Singularity))
}

fn make_apptainer() -> Box<dyn ContainerRuntime> {
    Box::new(SingularityRuntime::new(SingularityEngine::Apptainer))
}

inventory::submit! {
    RuntimeRegistration { name: "singularity", factory: make_singularity }
}
inventory::submit! {
    RuntimeRegistration { name: "apptainer", factory: make_apptainer }
}

/// Forces this crate's registrations into the final binary.
pub fn link() {}

/// `exec` options refused for MPI tasks: they wipe the environment (and with it the MPI
/// launcher's wire-up variables) or isolate the container from the host.
pub const CLEANENV_OPTIONS: &[&str] =
    &["-e", "--cleanenv", "-C", "--containall", "-c", "--contain"];

/// Where pulled images live on a node (relative to `$AZ_BATCH_NODE_SHARED_DIR`).
pub const IMAGE_DIR: &str = "shipyard/images";

/// True for image references the preparation task pulls (`docker://`, `library://`, ...).
pub fn is_remote_image(image: &str) -> bool {
    [
        "docker://",
        "library://",
        "oras://",
        "shub://",
        "http://",
        "https://",
    ]
    .iter()
    .any(|p| image.starts_with(p))
}

/// The file name a pulled image gets: the reference with every character outside
/// `[A-Za-z0-9._-]` replaced by `_`, plus `.sif`.
pub fn pulled_image_file(image: &str) -> String {
    format!("{}.sif", file_name_safe(image))
}

/// Finds `binary` (a name looked up in `search_path`, a `PATH`-style list, or a path with a
/// `/`); the error names the binary and where it looked.
pub fn check_binary_in(binary: &str, search_path: &OsStr) -> Result<PathBuf, RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(RuntimeError::MissingBinary {
                binary: binary.to_string(),
                path: Some(p),
                reason: "no executable file there".into(),
            })
        };
    }
    for dir in std::env::split_paths(search_path) {
        let p = dir.join(binary);
        if executable(&p) {
            return Ok(p);
        }
    }
    Err(RuntimeError::MissingBinary {
        binary: binary.to_string(),
        path: None,
        reason: format!(
            "not in PATH ({}); install it on the nodes (e.g. in the pool's start task)",
            search_path.to_string_lossy()
        ),
    })
}

/// [`check_binary_in`] with this process's `PATH`.
pub fn check_binary(binary: &str) -> Result<PathBuf, RuntimeError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    check_binary_in(binary, &path)
}

fn unsupported(runtime: &str, field: Field, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::unsupported(runtime, field, reason)
}

impl SingularityRuntime {
    /// The runtime for `engine`, running its default binary.
    pub fn new(engine: SingularityEngine) -> Self {
        SingularityRuntime {
            engine,
            binary: engine.name().to_string(),
            elevated: false,
        }
    }

    shipyard_runtime::host_program_builder! {
        /// The binary on the nodes (default `singularity` / `apptainer` from `PATH`).
    }

    /// Checks that the configured binary exists on this machine (see [`check_binary`]).
    pub fn check(&self) -> Result<PathBuf, RuntimeError> {
        check_binary(&self.binary)
    }

    fn user(&self, task: &TaskSpec) -> UserIdentity {
        let elevated = task
            .singularity_execution
            .and_then(|e| e.elevated)
            .unwrap_or(self.elevated);
        batch::pool_user(elevated)
    }

    /// `command -v <binary>` guard printed before every command line.
    fn guard(&self) -> String {
        let b = quote(&self.binary);
        format!(
            "command -v {b} >/dev/null 2>&1 || {{ echo \"shipyard: {} not found on $(hostname)\" >&2; exit 127; }}",
            self.binary.replace(['"', '\\', '$', '`'], "_")
        )
    }

    /// The image argument as a shell word: the pulled `.sif` for remote references.
    fn image_word_sh(&self, image: &str) -> String {
        if is_remote_image(image) {
            quote_expanding(&format!(
                "$AZ_BATCH_NODE_SHARED_DIR/{IMAGE_DIR}/{}",
                pulled_image_file(image)
            ))
        } else {
            quote(image)
        }
    }

    fn exec_options(&self, job: &JobSpec, task: &TaskSpec) -> Vec<String> {
        let mut v = Vec::new();
        if job.gpus(task).is_some() {
            v.push("--nv".to_string());
        }
        v.extend(task.additional_singularity_options.iter().cloned());
        v
    }

    /// The line of a task without a launcher: `[ENV=...] exec singularity exec ... image cmd`.
    fn plain_exec_line(&self, job: &JobSpec, task: &TaskSpec) -> String {
        let env = job.environment(task);
        let mut parts: Vec<String> = env
            .keys()
            .map(|k| format!("{}{k}=\"${k}\"", self.engine.env_prefix()))
            .collect();
        parts.push(format!(
            "{}={}",
            self.engine.bind_env(),
            quote_expanding("$AZ_BATCH_NODE_ROOT_DIR:$AZ_BATCH_NODE_ROOT_DIR")
        ));
        // `exec` after the assignments: they are exported to the exec'd process.
        parts.push("exec".into());
        parts.push(quote(&self.binary));
        parts.push(
            match task
                .singularity_execution
                .map(|e| e.cmd)
                .unwrap_or_default()
            {
                SingularityCmd::Exec => "exec",
                SingularityCmd::Run => "run",
            }
            .into(),
        );
        if task.default_working_dir == WorkingDir::Batch {
            parts.push("--pwd".into());
            parts.push(quote_expanding("$AZ_BATCH_TASK_WORKING_DIR"));
        }
        parts.push(join(&self.exec_options(job, task)));
        parts.push(self.image_word_sh(&task.image));
        if let Some(c) = &task.command {
            parts.push(join(&mpi::program_words(c, "/bin/sh")));
        }
        parts.retain(|p| !p.is_empty());
        parts.join(" ")
    }

    fn mpi_line(
        &self,
        job: &JobSpec,
        task: &TaskSpec,
        m: &shipyard_runtime::MpiSpec,
        at: &Field,
    ) -> Result<String, RuntimeError> {
        if task.singularity_execution.map(|e| e.cmd) == Some(SingularityCmd::Run) {
            return Err(unsupported(
                self.engine.name(),
                at.key("singularity_execution").key("cmd"),
                "MPI ranks start with `exec` (each rank runs `command` in the image); put the \
                 runscript's command in `command`",
            ));
        }
        if m.runtime == MpiRuntime::MsMpi {
            return Err(unsupported(
                self.engine.name(),
                mpi::mpi_field(at).key("runtime"),
                "msmpi runs on Windows pools, which Singularity does not support",
            ));
        }
        let command = task.command.as_deref().unwrap_or_default();
        for (i, o) in task.additional_singularity_options.iter().enumerate() {
            if CLEANENV_OPTIONS.contains(&o.as_str()) {
                return Err(unsupported(
                    self.engine.name(),
                    at.key("additional_singularity_options").index(i),
                    format!(
                        "`{o}` drops the launcher's PMI variables, so every rank would start \
                         as a silent singleton; pass variables with environment_variables"
                    ),
                ));
            }
        }
        let env = job.environment(task);
        let ctx = mpi::LaunchContext::new(at, &env, job.infiniband(task));
        let mut req = mpi::launch_request(m, command, ctx)?;
        // The image: remote references were pulled by the preparation task into the node's
        // shared directory; the ranks start there (`-wdir`) and name the file relatively, while
        // `--pwd` puts the container in the task's working directory.
        let image = if is_remote_image(&task.image) {
            req = req.workdir(Word::concat([
                shipyard_mpi_launch::Part::Deferred(shipyard_mpi_launch::Deferred::Var(
                    "AZ_BATCH_NODE_SHARED_DIR".into(),
                )),
                shipyard_mpi_launch::Part::Lit(format!("/{IMAGE_DIR}")),
            ]));
            format!("./{}", pulled_image_file(&task.image))
        } else {
            task.image.clone()
        };
        let mut c = Container::new(self.engine.wrapper(), image)
            .program(self.binary.clone())
            .nv(job.gpus(task).is_some());
        if task.default_working_dir == WorkingDir::Batch {
            c = c.pwd(Word::var("AZ_BATCH_TASK_WORKING_DIR"));
        }
        for o in &task.additional_singularity_options {
            c = c.option(o.clone());
        }
        for k in job.environment(task).keys() {
            c = c.env(k.clone(), Word::var(k.clone()));
        }
        let root = shipyard_mpi_launch::Part::Deferred(shipyard_mpi_launch::Deferred::Var(
            "AZ_BATCH_NODE_ROOT_DIR".into(),
        ));
        req = req
            .env(
                self.engine.bind_env(),
                Word::concat([
                    root.clone(),
                    shipyard_mpi_launch::Part::Lit(":".into()),
                    root,
                ]),
            )
            .container(c);
        mpi::render_sh(&req, at)
    }

    fn plan_task(&self, cx: &TaskContext<'_>) -> Result<TaskAddParameter, RuntimeError> {
        let (job, task, at) = (cx.job, cx.task, &cx.at);
        if !task.additional_docker_run_options.is_empty() {
            return Err(unsupported(
                self.engine.name(),
                at.key("additional_docker_run_options"),
                "Docker options do not apply; use additional_singularity_options",
            ));
        }
        cx.host_launched_task(
            self.user(task),
            vec![self.guard()],
            || Ok(self.plain_exec_line(job, task)),
            |m| self.mpi_line(job, task, m, at),
        )
    }

    fn preparation_script(&self, job: &JobSpec) -> String {
        let mut parts = vec!["set -e".to_string(), self.guard()];
        let b = quote(&self.binary);
        let mut seen = std::collections::BTreeSet::new();
        for task in &job.tasks {
            if !seen.insert(task.image.clone()) {
                continue;
            }
            if is_remote_image(&task.image) {
                let dir = quote_expanding(&format!("$AZ_BATCH_NODE_SHARED_DIR/{IMAGE_DIR}"));
                let file = pulled_image_file(&task.image);
                parts.push(format!(
                    "mkdir -p {dir}; if [ ! -s {dir}/{file} ]; then {b} pull --force {dir}/{file}.tmp$$ {img} && mv -f {dir}/{file}.tmp$$ {dir}/{file}; fi",
                    img = quote(&task.image),
                ));
            } else {
                let img = quote(&task.image);
                parts.push(format!(
                    "test -e {img} || {{ echo \"shipyard: image {} not found on $(hostname)\" >&2; exit 1; }}",
                    task.image.replace(['"', '\\', '$', '`'], "_")
                ));
            }
        }
        if let Some(p) = &job.job_preparation {
            parts.push(p.command.clone());
        }
        parts.join("; ")
    }
}

impl ContainerRuntime for SingularityRuntime {
    fn name(&self) -> &str {
        self.engine.name()
    }

    fn plan(&self, job: &JobSpec, pool: &PoolFacts) -> Result<JobPlan, RuntimeError> {
        let job = &*job.expanded()?;
        validate::job_against_pool(job, pool)?;
        let name = self.engine.name();
        if pool.os == OsFamily::Windows {
            return Err(unsupported(
                name,
                Field::pool().key("os"),
                "Singularity runs on Linux pools only",
            ));
        }
        if pool.native_containers {
            return Err(unsupported(
                name,
                Field::pool().key("native_containers"),
                "Singularity runs on pools without Batch container support (non-native)",
            ));
        }
        let tasks = plan_tasks(job, pool, |cx| self.plan_task(cx))?;
        tracing::debug!(
            job = %job.id,
            pool = %pool.pool_id,
            runtime = name,
            tasks = tasks.len(),
            "planned singularity job"
        );
        Ok(JobPlan {
            runtime: name.to_string(),
            pool: PoolNeeds::for_job(job),
            job: JobNeeds {
                job_preparation_task: Some(JobPreparationTask {
                    command_line: bash_c(&self.preparation_script(job)),
                    wait_for_success: Some(true),
                    user_identity: Some(batch::pool_admin()),
                    ..Default::default()
                }),
                job_release_task: batch::job_release_task(job),
                ..JobNeeds::for_job(job)
            },
            tasks,
        })
    }
}

#[cfg(test)]
mod tests;
