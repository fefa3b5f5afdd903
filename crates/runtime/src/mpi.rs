//! From a task's `multi_instance.mpi` settings to a [`shipyard_mpi_launch::LaunchRequest`]
//! (shared by the built-in runtimes).

use std::collections::BTreeMap;

use shipyard_mpi_launch::{default_env, Flavor, Hosts, LaunchRequest, Ppn, Word};

use crate::domain::{MpiRuntime, MpiSpec, ProcessesPerNode};
use crate::error::{Field, RuntimeError};
use shipyard_mpi_launch::shell::split_plain;

/// The launcher flavour of a configured MPI runtime.
pub fn flavor(runtime: MpiRuntime) -> Flavor {
    match runtime {
        MpiRuntime::OpenMpi => Flavor::OpenMpi,
        MpiRuntime::IntelMpi | MpiRuntime::IntelMpiOfa => Flavor::IntelMpi,
        MpiRuntime::Mpich | MpiRuntime::Mvapich => Flavor::Mpich,
        MpiRuntime::MsMpi => Flavor::MsMpi,
    }
}

/// The program and arguments every rank runs for `command`: its words when it is a plain word
/// list, otherwise `shell -c <command>` (so `$VAR`, pipes and redirections work per rank).
pub fn program_words(command: &str, shell: &str) -> Vec<String> {
    split_plain(command)
        .unwrap_or_else(|| vec![shell.to_string(), "-c".to_string(), command.to_string()])
}

/// What a launch needs besides the `mpi` settings.
#[derive(Debug, Clone, Copy)]
pub struct LaunchContext<'a> {
    /// The task, for errors (`job.tasks[0]`): they name its `multi_instance.mpi` settings or
    /// its `command`.
    pub task: &'a Field,
    /// The remote sshd port when not 22 (23 in shipyard's containers).
    pub ssh_port: Option<u16>,
    /// The launcher runs as root (Open MPI needs `--allow-run-as-root`).
    pub run_as_root: bool,
    /// The task's environment (job and task variables). A variable the launcher would set by
    /// default (Intel MPI's `I_MPI_FABRICS`, `FI_PROVIDER`, ...) keeps the user's value.
    pub user_env: &'a BTreeMap<String, String>,
    /// The task uses InfiniBand: Intel MPI gets `FI_PROVIDER=mlx` unless the user set one.
    pub infiniband: bool,
}

/// A launch request for `mpi` running `command` on the Batch host list (`$AZ_BATCH_HOST_LIST`),
/// reaching the other nodes' sshd on `ctx.ssh_port` (when the flavour uses ssh).
pub fn launch_request(
    mpi: &MpiSpec,
    command: &str,
    ctx: LaunchContext<'_>,
) -> Result<LaunchRequest, RuntimeError> {
    let field = mpi_field(ctx.task);
    let flavor = flavor(mpi.runtime);
    let ppn = match &mpi.processes_per_node {
        None => Ppn::Count(1),
        Some(ProcessesPerNode::Count(n)) => Ppn::Count(*n),
        Some(ProcessesPerNode::Command(c)) if c.trim() == "nproc" => Ppn::AllCores,
        Some(ProcessesPerNode::Command(c)) => {
            return Err(RuntimeError::Mpi {
                field: field.key("processes_per_node"),
                reason: format!(
                    "`{c}` is not supported: use a count or `nproc` (one rank per core)"
                ),
            })
        }
    };
    let shell = if flavor == Flavor::MsMpi {
        "cmd"
    } else {
        "/bin/sh"
    };
    let words = if flavor == Flavor::MsMpi {
        split_plain(command).ok_or_else(|| RuntimeError::Mpi {
            field: ctx.task.key("command"),
            reason: "an MS-MPI command must be a plain word list".into(),
        })?
    } else {
        program_words(command, shell)
    };
    let mut req = LaunchRequest::new(flavor)
        .hosts(Hosts::batch())
        .ppn(ppn)
        .run_as_root(ctx.run_as_root)
        .extra_options(mpi.options.iter().cloned())
        .program(words[0].clone())
        .args(words[1..].iter().cloned());
    if let Some(exe) = &mpi.executable_path {
        req = req.launcher(exe.clone());
    }
    if flavor.uses_ssh() {
        if let Some(port) = ctx.ssh_port {
            req = req.ssh_port(port);
        }
    }
    // Never overwrite the user's value of a variable the launcher sets by default (Batch
    // Shipyard issue #339): pass it through from the task's environment instead.
    for (name, _) in default_env(flavor) {
        if ctx.user_env.contains_key(name) {
            req = req.env(name, Word::var(name));
        }
    }
    if ctx.infiniband && flavor == Flavor::IntelMpi && !ctx.user_env.contains_key("FI_PROVIDER") {
        req = req.env("FI_PROVIDER", "mlx");
    }
    Ok(req)
}

/// The `multi_instance.mpi` field of `task`.
pub fn mpi_field(task: &Field) -> Field {
    task.key("multi_instance").key("mpi")
}

/// Builds `req` and renders its POSIX-sh line; errors name the `mpi` settings of `task`.
pub fn render_sh(req: &LaunchRequest, task: &Field) -> Result<String, RuntimeError> {
    req.build()
        .map(|p| p.render_sh())
        .map_err(|e| RuntimeError::Mpi {
            field: mpi_field(task),
            reason: e.to_string(),
        })
}

/// Builds `req` and renders its cmd.exe line (MS-MPI); errors name the `mpi` settings of
/// `task`.
pub fn render_cmd(req: &LaunchRequest, task: &Field) -> Result<String, RuntimeError> {
    req.build()
        .and_then(|p| p.render_cmd())
        .map_err(|e| RuntimeError::Mpi {
            field: mpi_field(task),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_commands_run_as_words_others_in_a_shell() {
        assert_eq!(
            program_words("/app -x 'a b'", "/bin/sh"),
            vec!["/app", "-x", "a b"]
        );
        assert_eq!(
            program_words("echo $X", "/bin/sh"),
            vec!["/bin/sh", "-c", "echo $X"]
        );
    }

    #[test]
    fn user_values_of_launcher_defaults_win() {
        let mpi = MpiSpec {
            runtime: MpiRuntime::IntelMpi,
            options: vec![],
            processes_per_node: Some(ProcessesPerNode::Count(1)),
            executable_path: None,
        };
        let mut env = BTreeMap::new();
        let task = Field::job("j").key("tasks").index(0);
        fn ctx<'a>(env: &'a BTreeMap<String, String>, task: &'a Field) -> LaunchContext<'a> {
            LaunchContext {
                task,
                ssh_port: Some(23),
                run_as_root: true,
                user_env: env,
                infiniband: true,
            }
        }
        let line = render_sh(
            &launch_request(&mpi, "/app", ctx(&env, &task)).unwrap(),
            &task,
        )
        .unwrap();
        assert!(line.contains("FI_PROVIDER=mlx"), "{line}");
        assert!(line.contains("I_MPI_FABRICS=shm:ofi"), "{line}");
        env.insert("FI_PROVIDER".to_string(), "verbs".to_string());
        env.insert("I_MPI_FABRICS".to_string(), "ofi".to_string());
        let line = render_sh(
            &launch_request(&mpi, "/app", ctx(&env, &task)).unwrap(),
            &task,
        )
        .unwrap();
        assert!(line.contains("FI_PROVIDER=\"${FI_PROVIDER}\""), "{line}");
        assert!(
            line.contains("I_MPI_FABRICS=\"${I_MPI_FABRICS}\""),
            "{line}"
        );
        assert!(!line.contains("mlx") && !line.contains("shm:ofi"), "{line}");
    }

    #[test]
    fn unsupported_ppn_command_names_the_field() {
        let mpi = MpiSpec {
            runtime: MpiRuntime::Mpich,
            options: vec![],
            processes_per_node: Some(ProcessesPerNode::Command("nvidia-smi -L | wc -l".into())),
            executable_path: None,
        };
        let env = BTreeMap::new();
        let task = Field::job("j").key("tasks").index(0);
        let ctx = LaunchContext {
            task: &task,
            ssh_port: None,
            run_as_root: false,
            user_env: &env,
            infiniband: false,
        };
        let e = launch_request(&mpi, "/app", ctx).unwrap_err().to_string();
        assert!(
            e.contains("job.tasks[0].multi_instance.mpi.processes_per_node"),
            "{e}"
        );
    }
}
