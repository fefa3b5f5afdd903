//! The crate's error type. Every URL in a message has its query (which may be a SAS token)
//! replaced by `<redacted>`; no variant ever holds a signature or an account key.

use std::path::PathBuf;

/// What went wrong talking to Blob Storage or applying Batch's file semantics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A URL that does not parse or cannot address a container/blob.
    #[error("invalid storage URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, query redacted.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The account key is not valid base64 (the key itself is never shown).
    #[error("the storage account key for account {account} is not valid base64")]
    InvalidAccountKey {
        /// The storage account name.
        account: String,
    },
    /// A ready-made SAS token that is not one.
    #[error("invalid SAS token: {reason}")]
    InvalidSasToken {
        /// Why it was refused.
        reason: &'static str,
    },
    /// The service answered with an HTTP error status.
    #[error("{method} {url} failed: HTTP {status}{}{}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default(), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Http {
        /// The request method.
        method: &'static str,
        /// The URL, query redacted.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The storage error code (`x-ms-error-code` or the body's `<Code>`).
        code: Option<String>,
        /// The first line of the service's message, if any.
        message: Option<String>,
    },
    /// The request could not be sent or its response not read (connection, timeout).
    #[error("{method} {url}: {source}")]
    Transport {
        /// The request method.
        method: &'static str,
        /// The URL, query redacted.
        url: String,
        /// The transport error, with its URL removed.
        #[source]
        source: reqwest::Error,
    },
    /// A List Blobs response that is not the documented XML.
    #[error("listing blobs at {url}: unexpected response: {reason}")]
    InvalidListing {
        /// The URL, query redacted.
        url: String,
        /// What was wrong with the XML.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done (`creating`, `reading`, …).
        action: &'static str,
        /// The local path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A resource file whose fields cannot be used (the engine reports a preProcessingError).
    #[error("resource file {index}: {reason}")]
    InvalidResourceFile {
        /// Its position in the task's list.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A resource file that could not be fetched (the engine reports a preProcessingError).
    #[error("resource file {url} could not be fetched: {source}")]
    ResourceFile {
        /// The file's URL (or container URL), query redacted.
        url: String,
        /// The underlying failure.
        #[source]
        source: Box<StorageError>,
    },
    /// An output file specification that cannot be used (the engine reports a fileUploadError).
    #[error("output file {pattern}: {reason}")]
    InvalidOutputFile {
        /// The output file's `filePattern`.
        pattern: String,
        /// What is wrong.
        reason: String,
    },
    /// An output file that could not be uploaded (the engine reports a fileUploadError).
    #[error("uploading {} to {url} failed: {source}", file.display())]
    Upload {
        /// The local file.
        file: PathBuf,
        /// The blob URL, query redacted.
        url: String,
        /// The underlying failure.
        #[source]
        source: Box<StorageError>,
    },
}

impl StorageError {
    /// The URL (query redacted) this error names, if any.
    pub fn url(&self) -> Option<&str> {
        match self {
            StorageError::InvalidUrl { url, .. }
            | StorageError::Http { url, .. }
            | StorageError::Transport { url, .. }
            | StorageError::InvalidListing { url, .. }
            | StorageError::ResourceFile { url, .. }
            | StorageError::Upload { url, .. } => Some(url),
            _ => None,
        }
    }

    /// The HTTP status, when the service answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            StorageError::Http { status, .. } => Some(*status),
            StorageError::ResourceFile { source, .. } | StorageError::Upload { source, .. } => {
                source.status()
            }
            _ => None,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        StorageError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
