//! The engine's errors, each with the Batch error code and HTTP status it maps to.

use std::path::PathBuf;

/// An error of the local engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No such pool, job, task, node or file.
    #[error("{code}: {id} does not exist")]
    NotFound {
        /// Batch code: `PoolNotFound`, `JobNotFound`, `TaskNotFound`, `NodeNotFound`, `FileNotFound`.
        code: &'static str,
        /// What was looked up.
        id: String,
    },
    /// The object exists or is in a state that forbids the operation.
    #[error("{code}: {id}")]
    Conflict {
        /// Batch code: `PoolExists`, `JobExists`, `TaskExists`, `PoolBeingDeleted`, `JobCompleted`, ...
        code: &'static str,
        /// The object concerned.
        id: String,
    },
    /// A request value the service would reject.
    #[error("{code}: {property}: {reason}")]
    Invalid {
        /// Batch code, e.g. `InvalidPropertyValue`.
        code: &'static str,
        /// The property, as a JSON path.
        property: String,
        /// Why.
        reason: String,
    },
    /// A Docker call failed.
    #[error("docker: {context}: {source}")]
    Docker {
        /// What the engine was doing.
        context: String,
        /// The Docker error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The state store failed.
    #[error("state store {path}: {context}: {message}")]
    Store {
        /// The store file.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// The store's message.
        message: String,
    },
    /// A VM-like node operation failed.
    #[error("{context}: {source}")]
    VmNode {
        /// What the engine was doing.
        context: String,
        /// The node kind's error.
        #[source]
        source: shipyard_vm_node::VmNodeError,
    },
    /// A file or directory operation failed.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    /// The Batch error code for the response body.
    pub fn batch_code(&self) -> &str {
        match self {
            EngineError::NotFound { code, .. }
            | EngineError::Conflict { code, .. }
            | EngineError::Invalid { code, .. } => code,
            _ => "InternalError",
        }
    }

    /// The HTTP status the service answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            EngineError::NotFound { .. } => 404,
            EngineError::Conflict { .. } => 409,
            EngineError::Invalid { .. } => 400,
            _ => 500,
        }
    }

    pub(crate) fn not_found(code: &'static str, id: impl Into<String>) -> Self {
        EngineError::NotFound {
            code,
            id: id.into(),
        }
    }

    pub(crate) fn conflict(code: &'static str, id: impl Into<String>) -> Self {
        EngineError::Conflict {
            code,
            id: id.into(),
        }
    }

    pub(crate) fn invalid(property: impl Into<String>, reason: impl Into<String>) -> Self {
        EngineError::Invalid {
            code: "InvalidPropertyValue",
            property: property.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn docker(context: impl Into<String>, source: bollard::errors::Error) -> Self {
        EngineError::Docker {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        EngineError::Io {
            context,
            path: path.into(),
            source,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
