//! Non-native pools: shipyard drives Docker on the nodes (`docker run` per task; for
//! multi-instance tasks a detached sshd container per node and `docker exec` of the launcher).

use shipyard_runtime::batch::{self, MultiInstanceSettings, TaskAddParameter};
use shipyard_runtime::shell::{bash_c, join, quote, quote_expanding};
use shipyard_runtime::ssh::{self, CONTAINER_SSH_DIR};
use shipyard_runtime::{
    validate, Field, JobSpec, MultiInstanceSpec, PoolFacts, RuntimeError, TaskSpec, WorkingDir,
};

use crate::{
    container_name, flags, sshd_script, user_shell_words, DockerRuntime, BATCH_ENV_PATTERN,
    ENV_FILE, EXEC_FORWARDED_ENV, INFINIBAND_DEVICES, LABEL_ROLE, ROLE_MPI_NODE,
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
        job: &JobSpec,
        task: &TaskSpec,
        index: usize,
        pool: &PoolFacts,
        at: &Field,
    ) -> Result<TaskAddParameter, RuntimeError> {
        let run = self.docker_run(job, task, &job.task_id(index));
        let mut t = self.base_task(job, task, index, at)?;
        match &task.multi_instance {
            None => {
                let program = task
                    .command
                    .as_deref()
                    .map(user_shell_words)
                    .unwrap_or_default();
                let line = format!("{}; exec {}", run.prologue(), run.argv(&program));
                t.command_line = bash_c(line.trim_end());
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
        DockerRun {
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
        let program = match &mi.coordination_command {
            Some(c) => user_shell_words(c),
            None => vec![
                "/bin/bash".into(),
                "-c".into(),
                sshd_script(self.sshd_listen_address.as_deref(), true),
            ],
        };
        let docker = &run.docker;
        let role = quote(&format!("label={LABEL_ROLE}={ROLE_MPI_NODE}"));
        format!(
            "{prologue_rm}; {docker} ps -aq --filter {role} | xargs -r {docker} rm -f -v >/dev/null; \
{dump_env}; {argv} >/dev/null",
            prologue_rm = run.remove_previous(),
            dump_env = run.dump_env,
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
        Ok(format!("exec {}", exec.join(" ")))
    }
}

/// A non-native task's `docker run`, rendered in parts: the static argv is quoted word by
/// word, the dynamic words hold shell expansions and are already rendered.
struct DockerRun {
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

    /// Removal of an earlier container, then the environment dump.
    fn prologue(&self) -> String {
        format!("{}; {}", self.remove_previous(), self.dump_env)
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
