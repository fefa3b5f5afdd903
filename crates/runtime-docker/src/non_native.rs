//! Non-native pools: shipyard drives Docker on the nodes (`docker run` per task; for
//! multi-instance tasks a detached sshd container per node and `docker exec` of the launcher).

use shipyard_runtime::batch::{self, MultiInstanceSettings, TaskAddParameter};
use shipyard_runtime::plan::TaskContext;
use shipyard_runtime::shell::{bash_c, join, quote, quote_expanding};
use shipyard_runtime::ssh::{self, CONTAINER_SSH_DIR};
use shipyard_runtime::{
    validate, vmsize, Field, JobSpec, MultiInstanceSpec, RuntimeError, TaskSpec, WorkingDir,
};

use crate::node_scripts::{node_address_script, SSHD_ADDRESS_VAR};
use crate::{
    container_name, flags, sshd_script, user_shell_words, DockerRuntime, BATCH_ENV_PATTERN,
    ENV_FILE, EXEC_FORWARDED_ENV, INFINIBAND_DEVICES, LABEL_JOB, LABEL_ROLE, ROLE_MPI_NODE,
};

impl DockerRuntime {
    /// `docker run` argv of a non-native task (without the program).
    pub(crate) fn non_native_run_argv(
        &self,
        job: &JobSpec,
        task: &TaskSpec,
        task_id: &str,
    ) -> Vec<String> {
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

    pub(crate) fn plan_non_native_task(
        &self,
        cx: &TaskContext<'_>,
    ) -> Result<TaskAddParameter, RuntimeError> {
        let (job, task, index, pool, at) = (cx.job, cx.task, cx.index, cx.pool, &cx.at);
        let run = self.docker_run(job, task, &job.task_id(index));
        let mut t = self.base_task(job, task, index, at)?;
        match &task.multi_instance {
            None => {
                let program = task
                    .command
                    .as_deref()
                    .map(user_shell_words)
                    .unwrap_or_default();
                let line = format!(
                    "{}; {}; {} & wait $!",
                    run.prologue(),
                    stop_on_term(&run.docker, &run.name),
                    run.argv(&program).trim_end()
                );
                t.command_line = bash_c(&line);
            }
            Some(mi) => {
                t.command_line = bash_c(&self.exec_line(job, task, at, &run.name)?);
                t.multi_instance_settings = Some(MultiInstanceSettings {
                    number_of_instances: Some(validate::instances(mi, pool, at)?),
                    coordination_command_line: bash_c(&self.coordination_line(job, mi, run)),
                    common_resource_files: batch::resource_files(&mi.resource_files),
                });
            }
        }
        Ok(t)
    }

    /// The `docker run` of a non-native task, in parts.
    fn docker_run(&self, job: &JobSpec, task: &TaskSpec, task_id: &str) -> DockerRun {
        let env = job.environment(task);
        let mut pattern = vec![BATCH_ENV_PATTERN.to_string()];
        pattern.extend(env.keys().cloned());
        let env_file = format!("$AZ_BATCH_TASK_WORKING_DIR/{ENV_FILE}");
        let dump_env = format!(
            "(umask 077; env | grep -E {} > {} || true)",
            quote(&format!("^({})=", pattern.join("|"))),
            quote_expanding(&env_file)
        );
        let mut dynamic = vec![format!("\"${{{MOUNTS_VAR}[@]}}\"")];
        if task.default_working_dir == WorkingDir::Batch {
            dynamic.push(flags::WORKDIR.into());
            dynamic.push(quote_expanding("$AZ_BATCH_TASK_WORKING_DIR"));
        }
        dynamic.push(flags::ENV_FILE.into());
        dynamic.push(quote_expanding(&env_file));
        DockerRun {
            mounts: match partition_key_mount(job, task) {
                Some(m) => format!("{}; {m}", mounts_script()),
                None => mounts_script(),
            },
            docker: quote(&self.docker),
            name: container_name(&job.id, task_id),
            image: task.image.clone(),
            dump_env,
            static_argv: self.non_native_run_argv(job, task, task_id),
            dynamic,
        }
    }

    /// The coordination command of a multi-instance task: a detached sshd container (or the
    /// user's coordination command) with the job's key directory mounted, after removing the
    /// finished node containers of earlier tasks.
    fn coordination_line(
        &self,
        job: &JobSpec,
        mi: &MultiInstanceSpec,
        mut run: DockerRun,
    ) -> String {
        let key_dir = format!(
            "{}:{CONTAINER_SSH_DIR}:ro",
            ssh::node_key_dir_shell(&job.id)
        );
        run.dynamic.push(flags::VOLUME.into());
        run.dynamic.push(quote_expanding(&key_dir));
        let mut address = String::new();
        let program = match &mi.coordination_command {
            Some(c) => user_shell_words(c),
            None => {
                if self.sshd_listen_address.is_none() {
                    // this node's address, found on the node, handed to the container's sshd
                    address = format!("{}; ", node_address_script());
                    run.dynamic.push(flags::ENV.into());
                    run.dynamic.push(quote_expanding(&format!(
                        "{SSHD_ADDRESS_VAR}=${SSHD_ADDRESS_VAR}"
                    )));
                }
                vec![
                    "/bin/bash".into(),
                    "-c".into(),
                    sshd_script(self.sshd_listen_address.as_deref(), true),
                ]
            }
        };
        let docker = &run.docker;
        // Only this job's node containers (of its earlier, finished tasks): other jobs'
        // containers on the node are none of this task's business.
        let role = quote(&format!("label={LABEL_ROLE}={ROLE_MPI_NODE}"));
        let this_job = quote(&format!("label={LABEL_JOB}={}", job.id));
        format!(
            "{prologue_rm}; {docker} ps -aq --filter {this_job} --filter {role} | xargs -r {docker} rm -f -v >/dev/null; \
{dump_env}; {mounts}; {address}{argv} >/dev/null",
            prologue_rm = run.remove_previous(),
            dump_env = run.dump_env,
            mounts = run.mounts,
            argv = run.argv(&program),
        )
    }

    /// The application command of a multi-instance task: `docker exec` of the launcher line
    /// into the master's node container.
    fn exec_line(
        &self,
        job: &JobSpec,
        task: &TaskSpec,
        at: &Field,
        name: &str,
    ) -> Result<String, RuntimeError> {
        let mut exec = vec![quote(&self.docker), "exec".into()];
        for v in EXEC_FORWARDED_ENV {
            exec.push(flags::ENV.into());
            exec.push((*v).into());
        }
        exec.push(flags::WORKDIR.into());
        exec.push(quote_expanding("$AZ_BATCH_TASK_WORKING_DIR"));
        exec.push(quote(name));
        exec.push("/bin/bash".into());
        exec.push("-c".into());
        exec.push(quote(&self.mi_application_line(job, task, at)?));
        Ok(format!(
            "{}; {} & wait $!",
            stop_on_term(&quote(&self.docker), name),
            exec.join(" ")
        ))
    }
}

/// Bash statements making the task's shell stop container `name` when Batch terminates the
/// task (SIGTERM; also INT and HUP) and exit 143. The docker CLI runs in the background while
/// the shell waits for it: killing the CLI alone would leave the container (or the `docker
/// exec` in it) running.
fn stop_on_term(docker: &str, name: &str) -> String {
    format!(
        "shipyard_stop() {{ {docker} rm -f -v {n} >/dev/null 2>&1; exit 143; }}; trap shipyard_stop TERM INT HUP",
        n = quote(name)
    )
}

/// The bash array holding a non-native container's bind mounts.
const MOUNTS_VAR: &str = "shipyard_mounts";

/// Bash statements filling [`MOUNTS_VAR`] with the directories a task's container may see, at
/// their node paths: its task directory (working directory and env file included), the
/// multi-instance shared directory when it lies elsewhere, and the job preparation's working
/// directory read-only. Never the node root or shared directory, which hold other jobs' tasks
/// and keys.
pub(crate) fn mounts_script() -> String {
    format!(
        "{v}=(-v \"$AZ_BATCH_TASK_DIR:$AZ_BATCH_TASK_DIR\"); \
case \"$AZ_BATCH_TASK_SHARED_DIR\" in ''|\"$AZ_BATCH_TASK_DIR\"|\"$AZ_BATCH_TASK_DIR\"/*) ;; \
*) {v}+=(-v \"$AZ_BATCH_TASK_SHARED_DIR:$AZ_BATCH_TASK_SHARED_DIR\");; esac; \
if [ -n \"$AZ_BATCH_JOB_PREP_WORKING_DIR\" ]; then \
{v}+=(-v \"$AZ_BATCH_JOB_PREP_WORKING_DIR:$AZ_BATCH_JOB_PREP_WORKING_DIR:ro\"); fi",
        v = MOUNTS_VAR
    )
}

/// For an MPI task on SR-IOV InfiniBand whose launcher reads UCX's partition key
/// ([`vmsize::uses_partition_key`]): a bash statement adding the key file node preparation
/// wrote ([`vmsize::ucx_ib_pkey_path`]) to [`MOUNTS_VAR`], read-only at its node path, when
/// the node has it. Only that file: the startup directory holds the node's other state.
pub(crate) fn partition_key_mount(job: &JobSpec, task: &TaskSpec) -> Option<String> {
    let mpi = task.multi_instance.as_ref()?.mpi.as_ref()?;
    if !job.infiniband(task) || !vmsize::uses_partition_key(mpi.runtime, mpi.rdma) {
        return None;
    }
    let f = vmsize::ucx_ib_pkey_path();
    Some(format!(
        "if [ -f \"{f}\" ]; then {MOUNTS_VAR}+=(-v \"{f}:{f}:ro\"); fi"
    ))
}

/// A non-native task's `docker run`, rendered in parts: the static argv is quoted word by
/// word, the dynamic words hold shell expansions and are already rendered.
struct DockerRun {
    mounts: String,
    docker: String,
    name: String,
    image: String,
    dump_env: String,
    static_argv: Vec<String>,
    dynamic: Vec<String>,
}

impl DockerRun {
    /// `set -e; docker rm -f -v <name> ...`: removes a container left by an earlier attempt.
    fn remove_previous(&self) -> String {
        format!(
            "set -e; {docker} rm -f -v {n} >/dev/null 2>&1 || true",
            docker = self.docker,
            n = quote(&self.name)
        )
    }

    /// Removal of an earlier container, then the environment dump and the mounts.
    fn prologue(&self) -> String {
        format!(
            "{}; {}; {}",
            self.remove_previous(),
            self.dump_env,
            self.mounts
        )
    }

    /// `docker run ... <image> <program>`.
    fn argv(&self, program: &[String]) -> String {
        format!(
            "{} {} {} {}",
            join(&self.static_argv),
            self.dynamic.join(" "),
            quote(&self.image),
            join(program)
        )
    }
}
