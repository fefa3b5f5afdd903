//! Azure Blob Storage for shipyard, over SAS.
//!
//! - [`sas`]: service SAS (containers, blobs) and account SAS signed from an account name and
//!   key ([`AccountKey`], [`StorageAccount`]), or a ready [`SasToken`];
//! - [`BlobClient`]: List Blobs (prefix, marker paging), Get Blob streamed to a file, Put Blob,
//!   and Put Block + Put Block List above a size threshold, with retries;
//! - Batch file semantics: [`fetch_resource_files`] before a task and [`upload_output_files`]
//!   after it, over `shipyard_batch_api::models::{ResourceFile, OutputFile}`.
//!
//! No message, log line or `Debug` output of this crate contains a SAS signature or an account
//! key: URLs are shown with their query replaced by `<redacted>`.

mod client;
mod error;
mod location;
mod output_files;
mod resource_files;
pub mod sas;

pub use client::{BlobClient, BlobClientOptions, BlobItem, BlobPage};
pub use error::{Result, StorageError};
pub use location::SasUrl;
pub use output_files::{
    blob_name, should_upload, upload_output_files, FilePattern, TaskOutcome, UploadedFile,
};
pub use resource_files::{
    fetch_resource_files, parse_file_mode, AutoStorage, FetchedFile, DEFAULT_FILE_MODE,
};
pub use sas::{
    AccountKey, SasOptions, SasPermissions, SasProtocol, SasResource, SasToken, StorageAccount,
    StorageCredential, STORAGE_VERSION,
};
pub use shipyard_batch_api::Secret;
