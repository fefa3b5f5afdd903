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
//!   `/run/sshd`, generate an ed25519 host key if missing (images carry none), start `sshd -p 23`
//!   (it daemonizes, so the command returns as Batch requires);
//! - application: `/bin/bash -c '<wait for every node's sshd>; <pre_execution_command>; <mpi line>'`.
//!
//! # Non-native pools (shipyard drives Docker on the nodes)
//!
//! - coordination: a detached `docker run -d --net=host` of the image running sshd on port 23
//!   (or the user's coordination command), named `shipyard-<job>-<task>` ([`container_name`]),
//!   labelled `shipyard.job=<job>`, with the node root directory mounted, the task environment
//!   (an env file), `--shm-size`, RDMA devices and unlimited memlock for InfiniBand, `--gpus`,
//!   the user's run options and the job's key directory mounted read-only at `/root/.ssh`;
//! - application (master only): `docker exec` into that container of a script that waits
//!   (bounded) until every node's sshd accepts connections, naming the nodes that never came up,
//!   then runs the pre-execution command and the launcher line built by `shipyard-mpi-launch`
//!   from `$AZ_BATCH_HOST_LIST`;
//! - cleanup: the job release task removes every container labelled `shipyard.job=<job>` and
//!   the key directory; the job preparation task (which Batch requires for release to run)
//!   writes the key files and pulls the images. `auto_complete` sets
//!   `onAllTasksComplete=terminatejob`, which triggers the release.
//!
//! Several multi-instance tasks per job work: container names include the task id, and a
//! coordination command first removes the finished sshd containers of earlier tasks on its node
//! (label `shipyard.role=mpi-node`; the pool runs one task per node, so they are finished),
//! which would otherwise hold port 23.

#![warn(missing_docs)]

use std::collections::BTreeSet;

use shipyard_runtime::batch::{
    self, pool_admin, ContainerConfiguration, ContainerRegistry, ContainerType,
    ContainerWorkingDirectory, EnvironmentSetting, JobPreparationTask, JobReleaseTask,
    MultiInstanceSettings, OnAllTasksComplete, TaskAddParameter, TaskConstraints,
    TaskContainerSettings, TaskDependencies, TaskIdRange,
};
use shipyard_runtime::registry::RuntimeRegistration;
use shipyard_runtime::shell::{bash_c, quote, quote_expanding};
use shipyard_runtime::ssh::{self, CONTAINER_SSH_DIR, SSHD_PORT};
use shipyard_runtime::{
    mpi, ContainerRuntime, JobNeeds, JobPlan, JobSpec, MpiRuntime, OsFamily, PoolFacts, PoolNeeds,
    RuntimeError, TaskSpec, WorkingDir,
};

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

    /// Binds the containers' sshd to this address only (default: all addresses). Useful when
    /// several "nodes" share one host in tests.
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

/// The script that starts sshd on port 23 in a container: creates `/run/sshd`, generates an
/// ed25519 host key if missing, then runs sshd (`foreground` keeps it as the container's main
/// process; otherwise it daemonizes and the script returns).
pub fn sshd_script(listen_address: Option<&str>, foreground: bool) -> String {
    let key = "/etc/ssh/ssh_host_ed25519_key";
    let mut sshd = vec![
        "/usr/sbin/sshd".to_string(),
        "-p".to_string(),
        SSHD_PORT.to_string(),
        "-h".to_string(),
        key.to_string(),
    ];
    if foreground {
        sshd.insert(1, "-D".to_string());
        sshd.insert(2, "-e".to_string());
    }
    if let Some(a) = listen_address {
        sshd.push("-o".into());
        sshd.push(format!("ListenAddress={a}"));
    }
    format!(
        "mkdir -p /run/sshd && {{ test -s {key} || ssh-keygen -q -t ed25519 -N '' -f {key}; }} && {}{}",
        if foreground { "exec " } else { "" },
        shipyard_runtime::shell::join(&sshd)
    )
}

/// The coordination script of a native multi-instance task (runs inside the container):
/// installs the job's key files into `/root/.ssh` and starts sshd on port 23, daemonized.
pub fn native_coordination_script(job_id: &str, listen_address: Option<&str>) -> String {
    let dir = ssh::node_key_dir_shell(job_id);
    format!(
        "set -e; mkdir -p {ssh_dir} && chmod 700 {ssh_dir} && for f in {files}; do install -m 600 {src}/$f {ssh_dir}/$f; done; {sshd}",
        ssh_dir = CONTAINER_SSH_DIR,
        files = [
            ssh::PRIVATE_KEY_FILE,
            ssh::PUBLIC_KEY_FILE,
            ssh::AUTHORIZED_KEYS_FILE,
            ssh::CLIENT_CONFIG_FILE
        ]
        .join(" "),
        src = quote_expanding(&dir),
        sshd = sshd_script(listen_address, false),
    )
}

/// A bash snippet waiting until every host of `$AZ_BATCH_HOST_LIST` accepts TCP connections on
/// port 23, for at most `timeout_secs`; on timeout it prints the hosts that never came up and
/// exits 1.
pub fn wait_for_sshd_script(timeout_secs: u32) -> String {
    format!(
        "shipyard_hosts=$(printf %s \"$AZ_BATCH_HOST_LIST\" | tr , \" \"); \
if [ -z \"$shipyard_hosts\" ]; then echo \"shipyard: AZ_BATCH_HOST_LIST is empty\" >&2; exit 1; fi; \
shipyard_deadline=$((SECONDS + {timeout_secs})); \
while :; do shipyard_down=; \
for h in $shipyard_hosts; do timeout 3 bash -c \"exec 3<>/dev/tcp/$h/{SSHD_PORT}\" 2>/dev/null || shipyard_down=\"$shipyard_down $h\"; done; \
[ -z \"$shipyard_down\" ] && break; \
if [ $SECONDS -ge $shipyard_deadline ]; then echo \"shipyard: sshd on port {SSHD_PORT} did not accept connections within {timeout_secs}s on:$shipyard_down\" >&2; exit 1; fi; \
sleep 1; done"
    )
}

fn env_settings(job: &JobSpec, task: &TaskSpec) -> Option<Vec<EnvironmentSetting>> {
    let env = job.environment(task);
    (!env.is_empty()).then(|| {
        env.into_iter()
            .map(|(k, v)| EnvironmentSetting::new(k, v))
            .collect()
    })
}

fn constraints(job: &JobSpec, task: &TaskSpec) -> Option<TaskConstraints> {
    let c = TaskConstraints {
        max_wall_clock_time: task.max_wall_time.clone(),
        retention_time: None,
        max_task_retry_count: job.max_task_retries(task),
    };
    (c != TaskConstraints::default()).then_some(c)
}

fn depends_on(task: &TaskSpec, field: &str) -> Result<Option<TaskDependencies>, RuntimeError> {
    let ranges = match task.depends_on_range {
        None => None,
        Some([s, e]) => {
            let conv = |v: u32| {
                i32::try_from(v).map_err(|_| RuntimeError::Invalid {
                    field: format!("{field}.depends_on_range"),
                    reason: format!("{v} is larger than a Batch task id range allows"),
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

fn unsupported(field: impl Into<String>, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Unsupported {
        runtime: NAME.to_string(),
        field: field.into(),
        reason: reason.into(),
    }
}

fn user_shell_words(command: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), command.into()]
}

impl DockerRuntime {
    /// `docker run` options shared by both pool kinds (user options, `--shm-size`).
    fn common_run_options(&self, job: &JobSpec, task: &TaskSpec) -> Vec<String> {
        let mut opts: Vec<String> = task.additional_docker_run_options.clone();
        if let Some(s) = job.shm_size(task) {
            opts.push(format!("{}{s}", flags::SHM_SIZE));
        }
        opts
    }

    fn labels(job_id: &str, task_id: &str, mi: bool) -> Vec<String> {
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
    fn mi_application_line(
        &self,
        job: &JobSpec,
        task: &TaskSpec,
        tpath: &str,
    ) -> Result<String, RuntimeError> {
        let mi = task.multi_instance.as_ref().ok_or_else(|| {
            unsupported(
                format!("{tpath}.multi_instance"),
                "not a multi-instance task",
            )
        })?;
        let command = task.command.as_deref().unwrap_or_default();
        let app = match &mi.mpi {
            Some(m) => {
                let field = format!("{tpath}.multi_instance.mpi");
                let env = job.environment(task);
                let ctx = mpi::LaunchContext {
                    field: &field,
                    ssh_port: Some(SSHD_PORT),
                    run_as_root: true,
                    user_env: &env,
                    infiniband: job.infiniband(task),
                };
                let req = mpi::launch_request(m, command, ctx)?;
                mpi::render_sh(&req, &field)?
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

    fn plan_native_linux_task(
        &self,
        job: &JobSpec,
        task: &TaskSpec,
        index: usize,
        pool: &PoolFacts,
        tpath: &str,
    ) -> Result<TaskAddParameter, RuntimeError> {
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
            container_run_options: Some(shipyard_runtime::shell::join(&opts)),
            image_name: task.image.clone(),
            working_directory: Some(match task.default_working_dir {
                WorkingDir::Batch => ContainerWorkingDirectory::TaskWorkingDirectory,
                WorkingDir::Container => ContainerWorkingDirectory::ContainerImageDefault,
            }),
            ..Default::default()
        };
        let mut t = self.base_task(job, task, index, tpath)?;
        t.container_settings = Some(container_settings);
        match &task.multi_instance {
            None => {
                let command = task
                    .command
                    .as_deref()
                    .ok_or_else(|| RuntimeError::Invalid {
                        field: format!("{tpath}.command"),
                        reason: "a task on a native container pool needs a command".into(),
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
                t.command_line = bash_c(&self.mi_application_line(job, task, tpath)?);
                t.multi_instance_settings = Some(MultiInstanceSettings {
                    number_of_instances: Some(instances(mi, pool, tpath)?),
                    coordination_command_line: coordination,
                    common_resource_files: batch::resource_files(&mi.resource_files),
                });
            }
        }
        Ok(t)
    }

    fn base_task(
        &self,
        job: &JobSpec,
        task: &TaskSpec,
        index: usize,
        tpath: &str,
    ) -> Result<TaskAddParameter, RuntimeError> {
        Ok(TaskAddParameter {
            id: job.task_id(index),
            command_line: String::new(),
            resource_files: batch::resource_files(&task.resource_files),
            environment_settings: env_settings(job, task),
            constraints: constraints(job, task),
            user_identity: Some(pool_admin()),
            depends_on: depends_on(task, tpath)?,
            ..Default::default()
        })
    }

    /// `docker run` argv of a non-native task (without the program).
    fn non_native_run_argv(&self, job: &JobSpec, task: &TaskSpec, task_id: &str) -> Vec<String> {
        let mi = task.multi_instance.is_some();
        let mut argv = vec![self.docker.clone(), "run".to_string()];
        if mi {
            argv.push(flags::DETACH.into());
            argv.push(flags::NET_HOST.into());
        } else if job.remove_container_after_exit(task) {
            argv.push(flags::RM.into());
        }
        argv.push(flags::NAME.into());
        argv.push(container_name(&job.id, task_id));
        argv.extend(Self::labels(&job.id, task_id, mi));
        argv.extend(self.common_run_options(job, task));
        if job.infiniband(task) {
            argv.push(flags::MEMLOCK_UNLIMITED.into());
            argv.extend(
                INFINIBAND_DEVICES
                    .iter()
                    .map(|d| format!("{}{d}", flags::DEVICE)),
            );
        }
        if let Some(g) = job.gpus(task) {
            argv.push(format!("{}{g}", flags::GPUS));
        }
        argv
    }

    fn plan_non_native_task(
        &self,
        job: &JobSpec,
        task: &TaskSpec,
        index: usize,
        pool: &PoolFacts,
        tpath: &str,
    ) -> Result<TaskAddParameter, RuntimeError> {
        let task_id = job.task_id(index);
        let name = container_name(&job.id, &task_id);
        let env = job.environment(task);
        let mut pattern = vec![BATCH_ENV_PATTERN.to_string()];
        pattern.extend(env.keys().cloned());
        let env_file = format!("$AZ_BATCH_TASK_WORKING_DIR/{ENV_FILE}");
        let dump_env = format!(
            "(umask 077; env | grep -E {} > {} || true)",
            quote(&format!("^({})=", pattern.join("|"))),
            quote_expanding(&env_file)
        );
        // Everything after the static argv holds shell expansions: render those words apart.
        let static_argv = self.non_native_run_argv(job, task, &task_id);
        let mut dynamic = vec![
            flags::VOLUME.to_string(),
            quote_expanding("$AZ_BATCH_NODE_ROOT_DIR:$AZ_BATCH_NODE_ROOT_DIR"),
        ];
        if task.default_working_dir == WorkingDir::Batch {
            dynamic.push(flags::WORKDIR.into());
            dynamic.push(quote_expanding("$AZ_BATCH_TASK_WORKING_DIR"));
        }
        dynamic.push(flags::ENV_FILE.into());
        dynamic.push(quote_expanding(&env_file));
        let docker = quote(&self.docker);
        let mut t = self.base_task(job, task, index, tpath)?;
        match &task.multi_instance {
            None => {
                let program = task
                    .command
                    .as_deref()
                    .map(user_shell_words)
                    .unwrap_or_default();
                let line = format!(
                    "set -e; {docker} rm -f -v {n} >/dev/null 2>&1 || true; {dump_env}; exec {} {} {} {}",
                    shipyard_runtime::shell::join(&static_argv),
                    dynamic.join(" "),
                    quote(&task.image),
                    shipyard_runtime::shell::join(&program),
                    n = quote(&name),
                );
                t.command_line = bash_c(line.trim_end());
            }
            Some(mi) => {
                let key_dir = format!(
                    "{}:{CONTAINER_SSH_DIR}:ro",
                    ssh::node_key_dir_shell(&job.id)
                );
                dynamic.push(flags::VOLUME.into());
                dynamic.push(quote_expanding(&key_dir));
                let program = match &mi.coordination_command {
                    Some(c) => user_shell_words(c),
                    None => vec![
                        "/bin/bash".into(),
                        "-c".into(),
                        sshd_script(self.sshd_listen_address.as_deref(), true),
                    ],
                };
                let role = format!("label={LABEL_ROLE}={ROLE_MPI_NODE}");
                let coordination = format!(
                    "set -e; {docker} rm -f -v {n} >/dev/null 2>&1 || true; \
{docker} ps -aq --filter {role} | xargs -r {docker} rm -f -v >/dev/null; \
{dump_env}; {} {} {} {} >/dev/null",
                    shipyard_runtime::shell::join(&static_argv),
                    dynamic.join(" "),
                    quote(&task.image),
                    shipyard_runtime::shell::join(&program),
                    n = quote(&name),
                    role = quote(&role),
                );
                let mut exec = vec![docker.clone(), "exec".into()];
                for v in EXEC_FORWARDED_ENV {
                    exec.push(flags::ENV.into());
                    exec.push((*v).into());
                }
                exec.push(flags::WORKDIR.into());
                exec.push(quote_expanding("$AZ_BATCH_TASK_WORKING_DIR"));
                exec.push(quote(&name));
                exec.push("/bin/bash".into());
                exec.push("-c".into());
                exec.push(quote(&self.mi_application_line(job, task, tpath)?));
                t.command_line = bash_c(&format!("exec {}", exec.join(" ")));
                t.multi_instance_settings = Some(MultiInstanceSettings {
                    number_of_instances: Some(instances(mi, pool, tpath)?),
                    coordination_command_line: bash_c(&coordination),
                    common_resource_files: batch::resource_files(&mi.resource_files),
                });
            }
        }
        Ok(t)
    }

    fn plan_windows_task(
        &self,
        job: &JobSpec,
        task: &TaskSpec,
        index: usize,
        pool: &PoolFacts,
        tpath: &str,
    ) -> Result<TaskAddParameter, RuntimeError> {
        let mut opts = self.common_run_options(job, task);
        if job.remove_container_after_exit(task) {
            opts.insert(0, flags::RM.to_string());
        }
        let task_id = job.task_id(index);
        opts.extend(Self::labels(&job.id, &task_id, false));
        let mut t = self.base_task(job, task, index, tpath)?;
        t.container_settings = Some(TaskContainerSettings {
            container_run_options: Some(shipyard_runtime::shell::join(&opts)),
            image_name: task.image.clone(),
            working_directory: Some(match task.default_working_dir {
                WorkingDir::Batch => ContainerWorkingDirectory::TaskWorkingDirectory,
                WorkingDir::Container => ContainerWorkingDirectory::ContainerImageDefault,
            }),
            ..Default::default()
        });
        let command = task
            .command
            .as_deref()
            .ok_or_else(|| RuntimeError::Invalid {
                field: format!("{tpath}.command"),
                reason: "a task on a Windows pool needs a command".into(),
            })?;
        match &task.multi_instance {
            None => t.command_line = format!("cmd /c {command}"),
            Some(mi) => {
                let line = match &mi.mpi {
                    Some(m) if m.runtime == MpiRuntime::MsMpi => {
                        let field = format!("{tpath}.multi_instance.mpi");
                        let env = job.environment(task);
                        let ctx = mpi::LaunchContext {
                            field: &field,
                            ssh_port: None,
                            run_as_root: false,
                            user_env: &env,
                            infiniband: false,
                        };
                        let req = mpi::launch_request(m, command, ctx)?;
                        mpi::render_cmd(&req, &field)?
                    }
                    Some(m) => {
                        return Err(unsupported(
                            format!("{tpath}.multi_instance.mpi.runtime"),
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
                    number_of_instances: Some(instances(mi, pool, tpath)?),
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

/// The default coordination command on Windows: start MS-MPI's SMPD daemon in the background.
pub const MSMPI_COORDINATION: &str = "cmd /c start cmd /c \"\"%MSMPI_BIN%\\smpd.exe\"\" -d";

fn instances(
    mi: &shipyard_runtime::MultiInstanceSpec,
    pool: &PoolFacts,
    tpath: &str,
) -> Result<i32, RuntimeError> {
    let n = mi.num_instances.resolve(pool.node_count);
    if n > pool.node_count {
        return Err(RuntimeError::Invalid {
            field: format!("{tpath}.multi_instance.num_instances"),
            reason: format!(
                "{n} instances but pool `{}` has {} nodes",
                pool.pool_id, pool.node_count
            ),
        });
    }
    i32::try_from(n).map_err(|_| RuntimeError::Invalid {
        field: format!("{tpath}.multi_instance.num_instances"),
        reason: format!("{n} is too large"),
    })
}

/// The job preparation script of a non-native or native Linux job: writes the SSH key files
/// from the task's environment (when `keys`), then pulls missing images (when `pull`).
fn preparation_script(
    job: &JobSpec,
    pool: &PoolFacts,
    docker: &str,
    images: &[String],
    keys: bool,
) -> String {
    let mut parts = vec!["set -e".to_string()];
    if keys {
        let dir = quote_expanding(&ssh::node_key_dir_shell(&job.id));
        let config_lines: Vec<String> = ssh::client_config(&pool.subnet_pattern)
            .lines()
            .map(quote)
            .collect();
        parts.push(format!(
            "umask 077; mkdir -p {dir}; chmod 700 {dir}; \
printf '%s\\n' \"${priv_env}\" > {dir}/{priv_file}; \
printf '%s\\n' \"${pub_env}\" > {dir}/{pub_file}; \
cp {dir}/{pub_file} {dir}/{ak}; \
printf '%s\\n' {config} > {dir}/{cfg}; \
chmod 600 {dir}/*",
            priv_env = ssh::PRIVATE_KEY_ENV,
            pub_env = ssh::PUBLIC_KEY_ENV,
            priv_file = ssh::PRIVATE_KEY_FILE,
            pub_file = ssh::PUBLIC_KEY_FILE,
            ak = ssh::AUTHORIZED_KEYS_FILE,
            cfg = ssh::CLIENT_CONFIG_FILE,
            config = config_lines.join(" "),
        ));
    }
    let docker = quote(docker);
    for image in images {
        let i = quote(image);
        parts.push(format!(
            "{docker} image inspect {i} >/dev/null 2>&1 || {docker} pull {i}"
        ));
    }
    if let Some(user) = &job.job_preparation {
        parts.push(user.command.clone());
    }
    parts.join("; ")
}

impl ContainerRuntime for DockerRuntime {
    fn name(&self) -> &str {
        NAME
    }

    fn plan(&self, job: &JobSpec, pool: &PoolFacts) -> Result<JobPlan, RuntimeError> {
        job.validate()?;
        pool.validate()?;
        let windows = pool.os == OsFamily::Windows;
        if windows && !pool.native_containers {
            return Err(unsupported(
                "pool.native_containers",
                "Windows pools need Batch container support (native)",
            ));
        }
        let mut tasks = Vec::with_capacity(job.tasks.len());
        let mut images: Vec<String> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut any_mi = false;
        for (i, task) in job.tasks.iter().enumerate() {
            let tpath = format!("job.tasks[{i}]");
            if seen.insert(task.image.clone()) {
                images.push(task.image.clone());
            }
            if let Some(mi) = &task.multi_instance {
                any_mi = true;
                if !windows
                    && mi
                        .mpi
                        .as_ref()
                        .is_some_and(|m| m.runtime == MpiRuntime::MsMpi)
                {
                    return Err(unsupported(
                        format!("{tpath}.multi_instance.mpi.runtime"),
                        "msmpi needs a Windows pool",
                    ));
                }
            }
            let t = if windows {
                self.plan_windows_task(job, task, i, pool, &tpath)?
            } else if pool.native_containers {
                self.plan_native_linux_task(job, task, i, pool, &tpath)?
            } else {
                self.plan_non_native_task(job, task, i, pool, &tpath)?
            };
            tasks.push(t);
        }

        let mut pool_needs = PoolNeeds {
            enable_inter_node_communication: any_mi,
            images: images.clone(),
            ..Default::default()
        };
        let mut job_needs = JobNeeds {
            on_all_tasks_complete: job
                .auto_complete
                .then_some(OnAllTasksComplete::TerminateJob),
            uses_task_dependencies: job.uses_task_dependencies(),
            ..Default::default()
        };
        let keys = any_mi && !windows;
        if pool.native_containers {
            pool_needs.container_configuration = Some(ContainerConfiguration {
                r#type: ContainerType::DockerCompatible,
                container_image_names: Some(images.clone()),
                container_registries: (!self.registries.is_empty())
                    .then(|| self.registries.clone()),
            });
        } else {
            // sshd containers use host networking: one task per node avoids port 23 clashes.
            if any_mi {
                pool_needs.task_slots_per_node = Some(1);
            }
        }
        let user_release = job.job_release.as_ref().map(|c| c.command.clone());
        if windows {
            if let Some(p) = &job.job_preparation {
                job_needs.job_preparation_task = Some(JobPreparationTask {
                    command_line: format!("cmd /c {}", p.command),
                    wait_for_success: Some(true),
                    user_identity: Some(pool_admin()),
                    ..Default::default()
                });
            }
            if let Some(r) = &user_release {
                job_needs.job_release_task = Some(JobReleaseTask {
                    command_line: format!("cmd /c {r}"),
                    user_identity: Some(pool_admin()),
                    ..Default::default()
                });
            }
        } else {
            let pull: &[String] = if pool.native_containers { &[] } else { &images };
            if keys || !pull.is_empty() || job.job_preparation.is_some() {
                job_needs.job_preparation_task = Some(JobPreparationTask {
                    command_line: bash_c(&preparation_script(job, pool, &self.docker, pull, keys)),
                    wait_for_success: Some(true),
                    user_identity: Some(pool_admin()),
                    ..Default::default()
                });
                job_needs.needs_ssh_key = keys;
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
            if let Some(r) = &user_release {
                release.push("set -e".into());
                release.push(r.clone());
            }
            if release.len() > 1 {
                job_needs.job_release_task = Some(JobReleaseTask {
                    command_line: bash_c(&release.join("; ")),
                    user_identity: Some(pool_admin()),
                    ..Default::default()
                });
                if job_needs.job_preparation_task.is_none() {
                    // Batch runs the release task only on nodes where a preparation task ran.
                    job_needs.job_preparation_task = Some(JobPreparationTask {
                        command_line: "/bin/true".into(),
                        wait_for_success: Some(false),
                        user_identity: Some(pool_admin()),
                        ..Default::default()
                    });
                }
            }
        }
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
            pool: pool_needs,
            job: job_needs,
            tasks,
        })
    }
}

#[cfg(test)]
mod tests;
