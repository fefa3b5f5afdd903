//! Submitting shipyard job plans to an Azure Batch endpoint, beside `shipyard-local` (which
//! runs the same plans on this machine).
//!
//! A [`Submission`] holds the pool to create when it is missing and each job's
//! [`JobSubmission`] (built from a `shipyard_runtime::JobPlan`). A [`Submitter`] over a
//! [`BatchClient`](shipyard_batch_api::BatchClient):
//!
//! - [`Submitter::submit`]: creates the pool when missing, adds each job and its task
//!   collections, then sets `onAllTasksComplete` (a `Job_Patch`, so Batch does not complete the
//!   still empty job);
//! - [`Submitter::watch`]: a `Stream` of [`SubmitEvent`]s (task state changes, new output lines,
//!   prep/start task failures, unusable nodes, pool resize errors, tasks blocked forever by a
//!   failed dependency), failing within one poll when the tasks can never finish, and after
//!   [`SubmitOptions::timeout`] (24 h by default);
//! - [`Submitter::run`]: both, terminating the jobs it created on failure, timeout or
//!   [`Submitter::cancel_token`] (so their release tasks run) and saying so in the error;
//! - [`Submission::requests`]: the requests a submission sends, for `--dry-run`, as
//!   [`shipyard_batch_api::request`] describes them (the client sends exactly those).
//!
//! Output about Batch resources goes through [`redact`] so no SSH key is ever printed.
//!
//! ```no_run
//! # async fn demo(client: shipyard_batch_api::BatchClient, plan: shipyard_runtime::JobPlan)
//! # -> Result<(), shipyard_submit::SubmitError> {
//! use shipyard_submit::{Submission, SubmitOptions, Submitter};
//! let submission = Submission::new("mpipool").plan("hello", &plan)?;
//! let outcome = Submitter::new(client, SubmitOptions::default()).run(&submission, None).await?;
//! std::process::exit(outcome.exit_code());
//! # }
//! ```
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod blocked;
mod error;
mod events;
mod follow;
pub mod redact;
mod submission;
mod submitter;
mod watch;

pub use error::{Result, SubmitError};
pub use events::{EventSender, OutputStream, SubmitEvent};
pub use follow::{follow_task_file, wait_pool_deleted};
pub use submission::{JobSubmission, Submission};
pub use submitter::{
    RunOutcome, SubmitOptions, Submitted, SubmittedJob, Submitter, DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT, TERMINATE_REASON,
};
pub use tokio_util::sync::CancellationToken;
