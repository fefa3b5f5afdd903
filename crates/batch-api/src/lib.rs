//! Azure Batch data-plane REST models and client.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shipyard_batch_api::BatchError> {
//! use shipyard_batch_api::{BatchClient, SharedKeyCredential};
//! let cred = SharedKeyCredential::new("myaccount", "bXlrZXk=")?;
//! let client = BatchClient::new("https://myaccount.westus.batch.azure.com", cred)?;
//! # Ok(()) }
//! ```
//!
//! - [`BatchClient`] signs every call (Shared Key via [`SharedKeyCredential`], or Entra ID
//!   bearer tokens via a [`TokenSource`] such as [`ClientSecretCredential`]), sends the
//!   api-version, `client-request-id`, `ocp-date`, and retries transient failures only where
//!   repeating is safe (see [`RetryPolicy`]). A retry that finds the work of an earlier attempt
//!   whose reply was lost counts as success: a create answered `…Exists`
//!   ([`Created::already_existed`]), a delete answered 404 or `…BeingDeleted`.
//! - Downloads ([`BatchClient::download_task_file`]) stream to disk and resume with
//!   `ocp-range` after an interruption or a stall.
//! - Wait helpers ([`WaitOptions`]) poll task, job, pool and node states, and stop early when
//!   the state can no longer be reached (a node whose start task failed).
//! - List operations return `futures::Stream`s that follow `odata.nextLink`.
//! - [`BatchClient::add_task_collection`] submits any number of tasks in ≤ 100-task,
//!   < 1 MB chunks, concurrently, and reports a per-task [`TaskAddOutcome`].
//! - Every call is built from a pure description in [`request`] (method, path, query, body
//!   definition, body) and sent exactly as described; `--dry-run` prints the same
//!   descriptions.
//! - The models are the `shipyard-batch-models` crate (serde only), re-exported as [`models`].
//! - Errors are [`BatchError`]; they never contain the key or a token.

#![warn(missing_docs)]

pub mod auth;
mod client;
pub mod error;
mod ops;
mod paging;
pub mod request;
mod task_collection;
mod wait;

/// The Batch REST models (the `shipyard-batch-models` crate).
pub use shipyard_batch_models as models;
pub use shipyard_batch_models::{Secret, API_VERSION};

pub use auth::{AccessToken, ClientSecretCredential, Credential, SharedKeyCredential, TokenSource};
pub use client::{BatchClient, ClientOptions, RetryPolicy, JSON_CONTENT_TYPE};
pub use error::{BatchError, ErrorDetail, Result, ServiceError};
pub use ops::{ByteRange, Created, Downloaded};
pub use paging::collect_all;
pub use request::{ListOptions, MAX_TASKS_PER_REQUEST, MAX_TASK_COLLECTION_BYTES};
pub use task_collection::{TaskAddOutcome, TaskCollectionReport};
pub use wait::WaitOptions;
