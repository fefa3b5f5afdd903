//! The crate's error type.

use std::fmt;
use std::time::Duration;

/// One `key`/`value` detail of a Batch error body (`BatchErrorDetail`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorDetail {
    /// The detail's key, e.g. `Reason`.
    #[serde(default)]
    pub key: Option<String>,
    /// The detail's value.
    #[serde(default)]
    pub value: Option<String>,
}

/// The service's answer to a failed call: HTTP status plus the decoded `BatchError` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// HTTP status code (0 when the error came from a per-task result of `addtaskcollection`).
    pub status: u16,
    /// Batch error code, e.g. `PoolExists`, `AuthenticationFailed`.
    pub code: Option<String>,
    /// Human readable message from `message.value`.
    pub message: Option<String>,
    /// `values[]` of the error body.
    pub details: Vec<ErrorDetail>,
    /// Server-side `request-id` response header.
    pub request_id: Option<String>,
    /// `client-request-id` this client sent (and the service echoed).
    pub client_request_id: Option<String>,
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {}", message.lines().next().unwrap_or_default())?;
        }
        for d in &self.details {
            write!(
                f,
                " [{}={}]",
                d.key.as_deref().unwrap_or(""),
                d.value.as_deref().unwrap_or("")
            )?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " (request-id {id}")?;
            if let Some(cid) = &self.client_request_id {
                write!(f, ", client-request-id {cid}")?;
            }
            write!(f, ")")?;
        } else if let Some(cid) = &self.client_request_id {
            write!(f, " (client-request-id {cid})")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong talking to Azure Batch.
///
/// Neither the account key nor a bearer token ever appears in this type's `Debug` or `Display`
/// output: the variants only carry data that came back from the service or describes the call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The service answered with a non-success status (see [`ServiceError`]).
    #[error("{method} {path}: {error}")]
    Service {
        /// HTTP method of the failed call.
        method: String,
        /// URL path of the failed call.
        path: String,
        /// Status, code, message, details and request ids.
        error: Box<ServiceError>,
    },
    /// A connection-level failure (refused, reset, closed without a reply).
    #[error("{method} {path}: transport error: {message}")]
    Transport {
        /// HTTP method.
        method: String,
        /// URL path.
        path: String,
        /// Description of the failure.
        message: String,
    },
    /// The per-request timeout elapsed.
    #[error("{method} {path}: no reply within {timeout:?}")]
    Timeout {
        /// HTTP method.
        method: String,
        /// URL path.
        path: String,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// A response body did not match the expected model.
    #[error("{context}: cannot decode response: {message}")]
    Decode {
        /// What was being decoded (operation and path).
        context: String,
        /// Decoder message including the JSON path of the bad field.
        message: String,
    },
    /// A request model could not be serialized.
    #[error("cannot serialize {what}: {message}")]
    Serialize {
        /// What was being serialized.
        what: String,
        /// Serializer message.
        message: String,
    },
    /// Bad client configuration (endpoint URL, key, authority, …).
    #[error("invalid configuration `{field}`: {message}")]
    Config {
        /// The offending setting.
        field: String,
        /// Why it is invalid.
        message: String,
    },
    /// The token endpoint refused to issue a token or answered garbage.
    #[error("token request to {endpoint} failed: {message}")]
    Token {
        /// Token endpoint URL (never contains the secret).
        endpoint: String,
        /// Status and error text returned (never the secret).
        message: String,
    },
    /// A single task is larger than the request body limit on its own.
    #[error("task `{task_id}` serializes to {size} bytes, over the {limit} byte request limit")]
    TaskTooLarge {
        /// The task id.
        task_id: String,
        /// Serialized size in bytes.
        size: usize,
        /// The configured body limit.
        limit: usize,
    },
    /// Local file I/O failed (file downloads).
    #[error("{path}: {source}")]
    Io {
        /// The local file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A wait helper gave up.
    #[error("timed out after {waited:?} waiting for {what} (last seen: {last_seen})")]
    WaitTimeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// The last observed state.
        last_seen: String,
    },
    /// A wait helper stopped early: the awaited state can no longer be reached (e.g. a node
    /// whose start task failed).
    #[error("stopped waiting for {what}: {reason}")]
    WaitFailed {
        /// What was awaited.
        what: String,
        /// What was seen that ends the wait.
        reason: String,
    },
    /// The retry budget (attempts or total time) ran out; carries the last error.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The error of the last attempt.
        last: Box<BatchError>,
    },
}

impl BatchError {
    /// The service error, if this is one (also looks through [`BatchError::RetriesExhausted`]).
    pub fn service(&self) -> Option<&ServiceError> {
        match self {
            BatchError::Service { error, .. } => Some(error.as_ref()),
            BatchError::RetriesExhausted { last, .. } => last.service(),
            _ => None,
        }
    }

    /// HTTP status of a service error.
    pub fn status(&self) -> Option<u16> {
        self.service().map(|e| e.status)
    }

    /// Batch error code of a service error (`PoolNotFound`, …).
    pub fn code(&self) -> Option<&str> {
        self.service().and_then(|e| e.code.as_deref())
    }

    /// Server `request-id` of a service error.
    pub fn request_id(&self) -> Option<&str> {
        self.service().and_then(|e| e.request_id.as_deref())
    }

    /// True for a 404 answer.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// Shorthand result type.
pub type Result<T, E = BatchError> = std::result::Result<T, E>;
