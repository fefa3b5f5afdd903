//! The `ch-run` wrapping of one rank (or of one plain task).
//!
//! **Moves to `shipyard-mpi-launch`.** This module is the one place that renders the
//! Charliecloud wrapper. Once mpi-launch's container-wrapper enum (`ContainerWrapper`, after
//! branch b1's rename of `ContainerRuntime`) gains a `Charliecloud` kind rendering
//! `ch-run [--join-ct N] -b SRC:DST [-c DIR] [--set-env=K=V] IMAGE -- program args` from
//! [`Word`](shipyard_mpi_launch::Word)s, [`ChRun::rank_argv`] is replaced by
//! `LaunchRequest::container(Container::new(ContainerWrapper::Charliecloud, image)...)` and this
//! file goes away.
//!
//! Until then the launcher's program is a small POSIX-sh script per rank, because
//! mpi-launch's program arguments are literals and the bind sources, the working directory and
//! the image under `$AZ_BATCH_NODE_SHARED_DIR` are only known on the node:
//!
//! ```text
//! /bin/sh -c 'exec ch-run [--join-ct="..."] -b "$AZ_BATCH_NODE_ROOT_DIR" [-c "$AZ_BATCH_TASK_WORKING_DIR"]
//!             [--env-no-expand --set-env="NAME=$NAME" ...] IMAGE -- "$@"' shipyard-ch-run PROGRAM ARGS...
//! ```
//!
//! The variables it reads are forwarded to every rank by the launcher ([`ChRun::forwarded`]).

use shipyard_runtime::shell::{quote, quote_expanding};

/// The name `$0` of the per-rank script (shown by `ps` and in shell error messages).
pub const SCRIPT_NAME: &str = "shipyard-ch-run";

/// The variable holding the node's root directory, bound into every container at the same path.
pub const ROOT_VAR: &str = "AZ_BATCH_NODE_ROOT_DIR";

/// The task's working directory variable (the container's `-c` directory).
pub const WORKDIR_VAR: &str = "AZ_BATCH_TASK_WORKING_DIR";

/// One `ch-run` invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChRun {
    /// The `ch-run` executable.
    pub binary: String,
    /// The image directory: a literal path, or a path starting with a `$VAR` expanded on the node.
    pub image: String,
    /// Join the node's ranks in one container (`--join-ct` from the launcher's local size).
    pub join: bool,
    /// Start in `$AZ_BATCH_TASK_WORKING_DIR` (`-c`).
    pub cd_task_dir: bool,
    /// Variables set in the container with `--set-env` (their values read on the node).
    pub set_env: Vec<String>,
    /// Raw options placed before the image.
    pub options: Vec<String>,
}

impl ChRun {
    /// The per-rank script (see the module docs).
    pub fn script(&self) -> String {
        let mut w = vec!["exec".to_string(), quote(&self.binary)];
        if self.join {
            // Open MPI exports OMPI_COMM_WORLD_LOCAL_SIZE, hydra (MPICH, Intel MPI)
            // MPI_LOCALNRANKS; ch-run 0.31 reads only the former and SLURM's variables itself.
            w.push(
                "--join-ct=\"${OMPI_COMM_WORLD_LOCAL_SIZE:-${MPI_LOCALNRANKS:-1}}\"".to_string(),
            );
        }
        w.push("-b".into());
        w.push(quote_expanding(&format!("${ROOT_VAR}")));
        if self.cd_task_dir {
            w.push("-c".into());
            w.push(quote_expanding(&format!("${WORKDIR_VAR}")));
        }
        if !self.set_env.is_empty() {
            w.push("--env-no-expand".into());
            for name in &self.set_env {
                w.push(format!("--set-env=\"{name}=${{{name}}}\""));
            }
        }
        w.extend(self.options.iter().map(|o| quote(o)));
        w.push(quote_expanding(&self.image));
        w.push("--".into());
        w.push("\"$@\"".into());
        w.join(" ")
    }

    /// The argv each rank runs: `/bin/sh -c <script> shipyard-ch-run <program...>`.
    pub fn rank_argv(&self, program: &[String]) -> Vec<String> {
        let mut v = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            self.script(),
            SCRIPT_NAME.to_string(),
        ];
        v.extend(program.iter().cloned());
        v
    }

    /// The variables the script reads, which the launcher must forward to remote ranks.
    pub fn forwarded(&self) -> Vec<String> {
        let mut v = vec!["USER".to_string(), ROOT_VAR.to_string()];
        if self.cd_task_dir {
            v.push(WORKDIR_VAR.into());
        }
        if let Some(var) = self.image.strip_prefix('$') {
            let name: String = var
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            v.push(name);
        }
        for n in &self.set_env {
            if !v.contains(n) {
                v.push(n.clone());
            }
        }
        v
    }
}
