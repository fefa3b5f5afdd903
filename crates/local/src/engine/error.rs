//! The engine's errors, each with the Batch error code and HTTP status it maps to.

use std::path::PathBuf;

use shipyard_batch_api::models::ServiceFault;

/// An error of the local engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A refusal with a Batch error code (not found, conflict, invalid value).
    #[error(transparent)]
    Service(#[from] ServiceFault),
    /// A Docker call failed.
    #[error("docker: {context}: {source}")]
    Docker {
        /// What the engine was doing.
        context: String,
        /// The Docker error.
        #[source]
        source: bollard::errors::Error,
    },
    /// An image could not be pulled (never holds a password).
    #[error("pulling image {image} from registry {registry} {}: {message}", as_user(.username))]
    ImagePull {
        /// The image reference.
        image: String,
        /// The registry server it is pulled from.
        registry: String,
        /// The user of the login used, `None` when pulled without credentials.
        username: Option<String>,
        /// Docker's message (with any password scrubbed).
        message: String,
    },
    /// A container pool's network could not be made.
    #[error("creating network {network} of pool {pool}: {source}")]
    Network {
        /// Pool id.
        pool: String,
        /// Network name.
        network: String,
        /// The backend's error (no free subnet, Docker).
        #[source]
        source: Box<crate::error::LocalError>,
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
            EngineError::Service(f) => f.code(),
            _ => "InternalError",
        }
    }

    /// The HTTP status the service answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            EngineError::Service(f) => f.http_status(),
            _ => 500,
        }
    }

    pub(crate) fn not_found(code: &'static str, id: impl Into<String>) -> Self {
        ServiceFault::not_found(code, id).into()
    }

    pub(crate) fn conflict(code: &'static str, id: impl Into<String>) -> Self {
        ServiceFault::conflict(code, id).into()
    }

    pub(crate) fn invalid(property: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceFault::invalid(property, reason).into()
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

fn as_user(u: &Option<String>) -> String {
    match u {
        Some(u) => format!("as user {u}"),
        None => "without credentials".into(),
    }
}

/// The engine's result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
