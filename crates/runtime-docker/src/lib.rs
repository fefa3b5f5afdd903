//! Docker container runtime for shipyard: native and non-native Azure Batch pools.
//!
//! [`DockerRuntime`] implements [`ContainerRuntime`] under the name `docker` (registered in
//! [`shipyard_runtime::registry`]).
//!
//! # Native pools (Batch runs the containers)
//!
//! The pool gets `containerConfiguration` (dockerCompatible, the job's images prefetched); each
//! task gets `containerSettings` (image, run options such as `--shm-size`, working directory).
//! Multi-instance tasks run both command lines inside the container, as Batch does:
//!
//! - coordination ([`native_coordination_script`]): install the job's SSH key files from
//!   `$AZ_BATCH_NODE_SHARED_DIR/shipyard/ssh/<job>` into `/root/.ssh` (mode 0600), create
//!   `/run/sshd`, start `sshd -p 23` with the job key pair as host key, the policy of
//!   [`sshd_policy_options`] and the node's own address ([`node_address_script`]) as its only
//!   listen address (it daemonizes, so the command returns as Batch requires);
//! - application: `/bin/bash -c '<wait for every node's sshd>; <pre_execution_command>; <mpi line>'`.
//!
//! # Non-native pools (shipyard drives Docker on the nodes)
//!
//! - coordination: a detached `docker run -d --net=host` of the image running sshd on port 23
//!   (job host key, command-line policy, bound to the node's address in `$AZ_BATCH_HOST_LIST`)
//!   (or the user's coordination command), named `shipyard-<job>-<task>` ([`container_name`]),
//!   labelled `shipyard.job=<job>`, with only the task's own directories mounted (its task
//!   directory, the multi-instance shared directory, the job preparation's working directory
//!   read-only; never the node root, which holds other jobs' files and keys), the task environment
//!   (an env file), `--shm-size`, RDMA devices and unlimited memlock for InfiniBand, `--gpus`,
//!   the user's run options and the job's key directory mounted read-only at `/root/.ssh`;
//! - application (master only): `docker exec` (in the background; a SIGTERM from Batch removes
//!   the container) into that container of a script that waits
//!   (bounded) until every node's sshd accepts connections, naming the nodes that never came up,
//!   then runs the pre-execution command and the launcher line built by `shipyard-mpi-launch`
//!   from `$AZ_BATCH_HOST_LIST`;
//! - cleanup: the job release task removes every container labelled `shipyard.job=<job>` and
//!   the key directory; the job preparation task (which Batch requires for release to run)
//!   writes the key files and pulls the images. `auto_complete` sets
//!   `onAllTasksComplete=terminatejob`, which triggers the release.
//!
//! Several multi-instance tasks per job work: container names include the task id, and a
//! coordination command first removes the finished sshd containers of this job's earlier tasks
//! on its node (labels `shipyard.job=<job>` and `shipyard.role=mpi-node`; the pool runs one
//! task per node, so they are finished; other jobs' containers are left alone),
//! which would otherwise hold port 23.

#![warn(missing_docs)]

mod job;
mod native;
mod node_scripts;
mod non_native;
mod windows;

use shipyard_runtime::batch::{self, pool_admin, ContainerRegistry, TaskAddParameter};
use shipyard_runtime::plan::{plan_tasks, TaskContext};
use shipyard_runtime::registry::RuntimeRegistration;
use shipyard_runtime::ssh::{self, SSHD_PORT};
use shipyard_runtime::{
    mpi, validate, ContainerRuntime, Field, JobPlan, JobSpec, MpiRuntime, OsFamily, PoolFacts,
    RuntimeError, TaskSpec,
};

pub use node_scripts::{
    native_coordination_script, node_address_script, sshd_policy_options, sshd_script,
    wait_for_sshd_script, SSHD_ADDRESS_VAR,
};
pub use windows::MSMPI_COORDINATION;

/// The runtime's registry name.
pub const NAME: &str = "docker";

/// Label carrying the job id on every container shipyard starts.
pub const LABEL_JOB: &str = "shipyard.job";
/// Label carrying the task id.
pub const LABEL_TASK: &str = "shipyard.task";
/// Label marking a multi-instance node container (sshd on port 23).
pub const LABEL_ROLE: &str = "shipyard.role";
/// Value of [`LABEL_ROLE`] for multi-instance node containers.
pub const ROLE_MPI_NODE: &str = "mpi-node";
/// The env file a non-native task writes in its working directory.
pub const ENV_FILE: &str = ".shipyard.env";

/// Batch variables passed into non-native containers (when set on the node).
pub const BATCH_ENV_PATTERN: &str = "AZ_BATCH_[A-Z0-9_]*";

/// Docker flag names.
pub mod flags {
    /// Detached.
    pub const DETACH: &str = "-d";
    /// Host networking.
    pub const NET_HOST: &str = "--net=host";
    /// Container name.
    pub const NAME: &str = "--name";
    /// Label.
    pub const LABEL: &str = "--label";
    /// Remove on exit.
    pub const RM: &str = "--rm";
    /// Bind mount.
    pub const VOLUME: &str = "-v";
    /// Working directory.
    pub const WORKDIR: &str = "-w";
    /// Env file.
    pub const ENV_FILE: &str = "--env-file";
    /// Environment variable (from the client's environment when no value is given).
    pub const ENV: &str = "-e";
    /// Shared memory size prefix.
    pub const SHM_SIZE: &str = "--shm-size=";
    /// GPUs prefix.
    pub const GPUS: &str = "--gpus=";
    /// Unlimited locked memory (RDMA).
    pub const MEMLOCK_UNLIMITED: &str = "--ulimit=memlock=-1:-1";
    /// Device prefix.
    pub const DEVICE: &str = "--device=";
}

/// The RDMA devices exposed for InfiniBand.
pub const INFINIBAND_DEVICES: &[&str] = &["/dev/infiniband/rdma_cm", "/dev/infiniband/uverbs0"];

/// Batch variables the application's `docker exec` forwards from the master task (they differ
/// between the coordination and the application subtasks or only exist for the latter).
pub const EXEC_FORWARDED_ENV: &[&str] = &[
    "AZ_BATCH_HOST_LIST",
    "AZ_BATCH_NODE_LIST",
    "AZ_BATCH_MASTER_NODE",
    "AZ_BATCH_IS_CURRENT_NODE_MASTER",
    "AZ_BATCH_TASK_SHARED_DIR",
    "AZ_BATCH_TASK_ID",
    "AZ_BATCH_TASK_WORKING_DIR",
    "AZ_BATCH_TASK_DIR",
];

/// The Docker runtime and its settings.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: String,
    sshd_listen_address: Option<String>,
    readiness_timeout_secs: u32,
    registries: Vec<ContainerRegistry>,
}

impl Default for DockerRuntime {
    fn default() -> Self {
        DockerRuntime {
            docker: "docker".to_string(),
            sshd_listen_address: None,
            readiness_timeout_secs: 300,
            registries: Vec::new(),
        }
    }
}

fn make() -> Box<dyn ContainerRuntime> {
    Box::new(DockerRuntime::default())
}

inventory::submit! {
    RuntimeRegistration { name: NAME, factory: make }
}

/// Forces this crate's registration into the final binary (call it, or use any item of the
/// crate, from a binary that selects runtimes by name).
pub fn link() {}

impl DockerRuntime {
    /// The runtime with default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// The `docker` executable on the nodes (default `docker` from `PATH`).
    pub fn docker(mut self, path: impl Into<String>) -> Self {
        self.docker = path.into();
        self
    }

    /// Binds the containers' sshd to this fixed address (default: the node's own address in
    /// `$AZ_BATCH_HOST_LIST`, found on the node by [`node_address_script`]).
    pub fn sshd_listen_address(mut self, addr: impl Into<String>) -> Self {
        self.sshd_listen_address = Some(addr.into());
        self
    }

    /// How long the application waits for every node's sshd (default 300 s).
    pub fn readiness_timeout_secs(mut self, secs: u32) -> Self {
        self.readiness_timeout_secs = secs;
        self
    }

    /// A private registry for native pools' `containerConfiguration`.
    pub fn registry(mut self, registry: ContainerRegistry) -> Self {
        self.registries.push(registry);
        self
    }
}

/// The deterministic name of a task's container: `shipyard-<job>-<task>`.
pub fn container_name(job_id: &str, task_id: &str) -> String {
    format!("shipyard-{job_id}-{task_id}")
}

fn unsupported(field: Field, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::unsupported(NAME, field, reason)
}

fn user_shell_words(command: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), command.into()]
}

impl DockerRuntime {
    /// `docker run` options shared by both pool kinds (user options, `--shm-size`).
    pub(crate) fn common_run_options(&self, job: &JobSpec, task: &TaskSpec) -> Vec<String> {
        let mut opts: Vec<String> = task.additional_docker_run_options.clone();
        if let Some(s) = job.shm_size(task) {
            opts.push(format!("{}{s}", flags::SHM_SIZE));
        }
        opts
    }

    pub(crate) fn labels(job_id: &str, task_id: &str, mi: bool) -> Vec<String> {
        let mut v = vec![
            flags::LABEL.to_string(),
            format!("{LABEL_JOB}={job_id}"),
            flags::LABEL.to_string(),
            format!("{LABEL_TASK}={task_id}"),
        ];
        if mi {
            v.push(flags::LABEL.to_string());
            v.push(format!("{LABEL_ROLE}={ROLE_MPI_NODE}"));
        }
        v
    }

    /// The MPI (or plain) application line of a multi-instance task, POSIX sh.
    pub(crate) fn mi_application_line(
        &self,
        job: &JobSpec,
        task: &TaskSpec,
        at: &Field,
    ) -> Result<String, RuntimeError> {
        let mi = task
            .multi_instance
            .as_ref()
            .ok_or_else(|| unsupported(at.key("multi_instance"), "not a multi-instance task"))?;
        let command = task.command.as_deref().unwrap_or_default();
        let app = match &mi.mpi {
            Some(m) => {
                let env = job.environment(task);
                let ctx = mpi::LaunchContext::new(at, &env, job.infiniband(task))
                    .ssh_port(SSHD_PORT)
                    .run_as_root(true);
                // Host keys are checked: every node's sshd serves the job key pair, pinned in
                // the job's known_hosts (these override the launcher's defaults).
                let req = mpi::launch_request(m, command, ctx)?
                    .ssh_option("StrictHostKeyChecking", "yes")
                    .ssh_option(
                        "UserKnownHostsFile",
                        format!("{}/{}", ssh::CONTAINER_SSH_DIR, ssh::KNOWN_HOSTS_FILE),
                    );
                mpi::render_sh(&req, at)?
            }
            None => command.to_string(),
        };
        let mut parts = vec![format!(
            "{{ {}; }} || exit 1",
            wait_for_sshd_script(self.readiness_timeout_secs)
        )];
        if let Some(pre) = &mi.pre_execution_command {
            parts.push(pre.clone());
        }
        parts.push(app);
        Ok(parts.join("; "))
    }

    pub(crate) fn base_task(
        &self,
        job: &JobSpec,
        task: &TaskSpec,
        index: usize,
        at: &Field,
    ) -> Result<TaskAddParameter, RuntimeError> {
        batch::task_base(job, task, index, pool_admin(), at)
    }
}

impl ContainerRuntime for DockerRuntime {
    fn name(&self) -> &str {
        NAME
    }

    fn plan(&self, job: &JobSpec, pool: &PoolFacts) -> Result<JobPlan, RuntimeError> {
        let job = &*job.expanded()?;
        validate::job_against_pool(job, pool)?;
        let windows = pool.os == OsFamily::Windows;
        if windows && !pool.native_containers {
            return Err(unsupported(
                Field::pool().key("native_containers"),
                "Windows pools need Batch container support (native)",
            ));
        }
        let tasks = plan_tasks(job, pool, |cx| self.plan_task(cx))?;
        let any_mi = job.any_multi_instance();
        tracing::debug!(
            job = %job.id,
            pool = %pool.pool_id,
            native = pool.native_containers,
            tasks = tasks.len(),
            multi_instance = any_mi,
            "planned docker job"
        );
        Ok(JobPlan {
            runtime: NAME.to_string(),
            pool: self.pool_needs(job, pool),
            job: self.job_needs(job, pool),
            tasks,
        })
    }
}

impl DockerRuntime {
    /// Plans task `index` for the pool's kind (Windows, native Linux, non-native Linux).
    fn plan_task(&self, cx: &TaskContext<'_>) -> Result<TaskAddParameter, RuntimeError> {
        let (task, pool, at) = (cx.task, cx.pool, &cx.at);
        let windows = pool.os == OsFamily::Windows;
        let msmpi = task
            .multi_instance
            .as_ref()
            .and_then(|mi| mi.mpi.as_ref())
            .is_some_and(|m| m.runtime == MpiRuntime::MsMpi);
        if msmpi && !windows {
            return Err(unsupported(
                mpi::mpi_field(at).key("runtime"),
                "msmpi needs a Windows pool",
            ));
        }
        if windows {
            self.plan_windows_task(cx)
        } else if pool.native_containers {
            self.plan_native_linux_task(cx)
        } else {
            self.plan_non_native_task(cx)
        }
    }
}

#[cfg(test)]
mod tests;
