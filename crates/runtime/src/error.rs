//! The crate's error type.

use std::path::PathBuf;

/// Errors of the domain, of planning, of the registry and of plugins.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// A configuration value is invalid; `field` is its path, e.g.
    /// `jobs[0].tasks[2].multi_instance.num_instances`.
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        /// Path of the bad field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The runtime cannot run this task on this pool (e.g. Singularity on a native pool).
    #[error("runtime `{runtime}` cannot plan `{field}`: {reason}")]
    Unsupported {
        /// The runtime's name.
        runtime: String,
        /// Path of the field that asks for the unsupported thing.
        field: String,
        /// Why.
        reason: String,
    },
    /// No runtime has this name.
    #[error("unknown container runtime `{name}`; known runtimes: {}", known.join(", "))]
    UnknownRuntime {
        /// The requested name.
        name: String,
        /// Names of the built-in and loaded plugin runtimes.
        known: Vec<String>,
    },
    /// Two runtimes claim the same name.
    #[error("a container runtime named `{name}` is already registered")]
    DuplicateRuntime {
        /// The clashing name.
        name: String,
    },
    /// A required executable is not installed.
    #[error("`{binary}` not found{}: {reason}", path.as_ref().map(|p| format!(" at {}", p.display())).unwrap_or_default())]
    MissingBinary {
        /// The executable's name (`singularity`, `apptainer`, `docker`).
        binary: String,
        /// The path that was checked, if any.
        path: Option<PathBuf>,
        /// Details (search path, permission).
        reason: String,
    },
    /// The MPI launcher line could not be built.
    #[error("cannot build the MPI command of `{field}`: {reason}")]
    Mpi {
        /// Path of the task's `mpi` settings.
        field: String,
        /// The launcher builder's message.
        reason: String,
    },
    /// Generating or writing SSH material failed.
    #[error("ssh key material: {0}")]
    Ssh(String),
    /// I/O on a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A plugin failed (see [`PluginError`](crate::plugin::PluginError)).
    #[error(transparent)]
    Plugin(#[from] crate::plugin::PluginError),
}
