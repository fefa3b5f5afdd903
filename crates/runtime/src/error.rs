//! The crate's error type, and the typed location of a bad value ([`Field`]).
//!
//! A [`Field`] is a [`Scope`] (a job, or the pool) plus a [`FieldPath`] of key/index
//! [`Segment`]s inside it, so a caller maps an error back to its configuration file without
//! parsing the message. It renders as `job.tasks[2].multi_instance.num_instances` or
//! `pool.node_count`.

use std::fmt;
use std::path::PathBuf;

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A table key (`tasks`, `num_instances`, an environment variable's name).
    Key(String),
    /// An array index.
    Index(usize),
}

/// A path of keys and indexes inside a [`Scope`], e.g. `tasks[2].multi_instance`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The empty path (the scope itself).
    pub fn root() -> FieldPath {
        FieldPath(Vec::new())
    }

    /// This path followed by key `k`.
    pub fn key(&self, k: impl Into<String>) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Segment::Key(k.into()));
        p
    }

    /// This path followed by index `i`.
    pub fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Segment::Index(i));
        p
    }

    /// This path followed by every segment of `rest`.
    pub fn join(&self, rest: &FieldPath) -> FieldPath {
        let mut p = self.clone();
        p.0.extend(rest.0.iter().cloned());
        p
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// True for the empty path.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<Segment>> for FieldPath {
    fn from(segments: Vec<Segment>) -> FieldPath {
        FieldPath(segments)
    }
}

impl fmt::Display for FieldPath {
    /// `tasks[2].multi_instance` (no leading dot).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Segment::Key(k) if i == 0 => f.write_str(k)?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// What a [`FieldPath`] is relative to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The job with this id ([`JobSpec`](crate::JobSpec) fields).
    Job(String),
    /// The pool: [`PoolSpec`](crate::pool::PoolSpec) keys, or [`PoolFacts`](crate::PoolFacts)
    /// field names in errors of runtimes, which only see the facts
    /// ([`PoolSpec::field_of_fact`](crate::pool::PoolSpec::field_of_fact) maps those).
    Pool,
    /// The credentials (`credentials.docker_registry`, `credentials.storage`).
    Credentials,
}

/// The location of a value: a scope and a path inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Field {
    /// The job or the pool.
    pub scope: Scope,
    /// The path inside it.
    pub path: FieldPath,
}

impl Field {
    /// Job `id` itself.
    pub fn job(id: impl Into<String>) -> Field {
        Field {
            scope: Scope::Job(id.into()),
            path: FieldPath::root(),
        }
    }

    /// The pool itself.
    pub fn pool() -> Field {
        Field {
            scope: Scope::Pool,
            path: FieldPath::root(),
        }
    }

    /// The credentials.
    pub fn credentials() -> Field {
        Field {
            scope: Scope::Credentials,
            path: FieldPath::root(),
        }
    }

    /// This field's key `k`.
    pub fn key(&self, k: impl Into<String>) -> Field {
        Field {
            scope: self.scope.clone(),
            path: self.path.key(k),
        }
    }

    /// This field's index `i`.
    pub fn index(&self, i: usize) -> Field {
        Field {
            scope: self.scope.clone(),
            path: self.path.index(i),
        }
    }
}

impl fmt::Display for Field {
    /// `job.tasks[0].command`, `pool.node_count`, `job` (the scope alone).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.scope {
            Scope::Job(_) => "job",
            Scope::Pool => "pool",
            Scope::Credentials => "credentials",
        })?;
        match self.path.segments().first() {
            None => Ok(()),
            Some(Segment::Index(_)) => write!(f, "{}", self.path),
            Some(Segment::Key(_)) => write!(f, ".{}", self.path),
        }
    }
}

/// Errors of the domain, of planning, of the registry and of plugins.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// A configuration value is invalid; `field` locates it, e.g.
    /// `job.tasks[2].multi_instance.num_instances`.
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        /// The bad field.
        field: Field,
        /// What is wrong with it.
        reason: String,
    },
    /// The runtime cannot run this task on this pool (e.g. Singularity on a native pool).
    #[error("runtime `{runtime}` cannot plan `{field}`: {reason}")]
    Unsupported {
        /// The runtime's name.
        runtime: String,
        /// The field that asks for the unsupported thing.
        field: Field,
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
        /// The task's `mpi` settings (or its command).
        field: Field,
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

impl RuntimeError {
    /// [`RuntimeError::Invalid`].
    pub fn invalid(field: Field, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// [`RuntimeError::Unsupported`] by runtime `runtime`.
    pub fn unsupported(
        runtime: impl Into<String>,
        field: Field,
        reason: impl Into<String>,
    ) -> RuntimeError {
        RuntimeError::Unsupported {
            runtime: runtime.into(),
            field,
            reason: reason.into(),
        }
    }

    /// The field the error is about, for the variants that have one.
    pub fn field(&self) -> Option<&Field> {
        match self {
            RuntimeError::Invalid { field, .. }
            | RuntimeError::Unsupported { field, .. }
            | RuntimeError::Mpi { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The message without the field: the reason of [`RuntimeError::Invalid`], the whole
    /// message otherwise.
    pub fn reason(&self) -> String {
        match self {
            RuntimeError::Invalid { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_render_like_config_paths() {
        let f = Field::job("j")
            .key("tasks")
            .index(2)
            .key("multi_instance")
            .key("num_instances");
        assert_eq!(f.to_string(), "job.tasks[2].multi_instance.num_instances");
        assert_eq!(f.path.to_string(), "tasks[2].multi_instance.num_instances");
        assert_eq!(f.scope, Scope::Job("j".into()));
        assert_eq!(
            Field::pool().key("node_count").to_string(),
            "pool.node_count"
        );
        assert_eq!(Field::job("j").to_string(), "job");
        assert_eq!(
            FieldPath::root().key("a").join(&FieldPath::root().index(1)),
            FieldPath::from(vec![Segment::Key("a".into()), Segment::Index(1)])
        );
        let e = RuntimeError::invalid(f.clone(), "too many");
        assert_eq!(e.field(), Some(&f));
        assert_eq!(e.reason(), "too many");
        assert_eq!(
            e.to_string(),
            "invalid `job.tasks[2].multi_instance.num_instances`: too many"
        );
    }
}
