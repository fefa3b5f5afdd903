//! The `ch-run` wrapping of a task, as a [`shipyard_mpi_launch::Container`] of kind
//! [`ContainerWrapper::Charliecloud`]: mpi-launch renders it, after the host launcher for MPI
//! tasks (one `ch-run` per rank, no shell in between) or alone for other tasks:
//!
//! ```text
//! ch-run [--join | --join-ct=PPN] -b "$AZ_BATCH_NODE_ROOT_DIR":"$AZ_BATCH_NODE_ROOT_DIR"
//!        [-c "$AZ_BATCH_TASK_WORKING_DIR"] [--env-no-expand --set-env=NAME="$NAME" ...]
//!        IMAGE_DIR -- program args
//! ```
//!
//! The run-time values (`$AZ_BATCH_*`, the task's variables) are expanded once, by the shell
//! running the task's command line on the first node; the paths are the same on every node of
//! a multi-instance task.

use shipyard_mpi_launch::{Container, ContainerWrapper, Deferred, Part, Word};

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
    /// Join the node's ranks in one container (see [`Container::join`]).
    pub join: bool,
    /// Start in `$AZ_BATCH_TASK_WORKING_DIR` (`-c`).
    pub cd_task_dir: bool,
    /// Variables set in the container with `--set-env` (their values read on the node).
    pub set_env: Vec<String>,
}

/// `$NAME/rest` as a word (the variable expanded at run time), anything else as a literal.
pub fn path_word(path: &str) -> Word {
    let Some(var) = path.strip_prefix('$') else {
        return Word::lit(path);
    };
    let name: String = var
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    Word::concat([
        Part::Deferred(Deferred::Var(name.clone())),
        Part::Lit(var[name.len()..].to_string()),
    ])
}

impl ChRun {
    /// The wrapper mpi-launch renders.
    pub fn container(&self) -> Container {
        let mut c = Container::new(ContainerWrapper::Charliecloud, path_word(&self.image))
            .program(self.binary.clone())
            .join(self.join)
            .bind(Word::var(ROOT_VAR), Word::var(ROOT_VAR));
        if self.cd_task_dir {
            c = c.pwd(Word::var(WORKDIR_VAR));
        }
        for name in &self.set_env {
            c = c.env(name.clone(), Word::var(name.clone()));
        }
        c
    }

    /// The variables the launcher forwards to remote ranks: `USER` (which `ch-run` needs),
    /// the `AZ_BATCH_*` paths the line uses and the task's variables (so that the program
    /// sees them outside `ch-run` too, e.g. in a `/bin/sh -c` command).
    pub fn forwarded(&self) -> Vec<String> {
        let mut v = vec!["USER".to_string(), ROOT_VAR.to_string()];
        if self.cd_task_dir {
            v.push(WORKDIR_VAR.into());
        }
        for p in path_word(&self.image).parts() {
            if let Part::Deferred(Deferred::Var(name)) = p {
                v.push(name.clone());
            }
        }
        for n in &self.set_env {
            if !v.contains(n) {
                v.push(n.clone());
            }
        }
        v
    }
}
