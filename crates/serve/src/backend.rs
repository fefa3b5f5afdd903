//! The [`Backend`] trait: what `shipyard serve` asks of whatever runs the work.
//!
//! Its methods are exactly those of the local engine's contract
//! (`shipyard_local::engine::Engine`); the server does all protocol work (auth, validation,
//! OData, paging, ETags, errors) and the backend only keeps state and runs tasks. Async methods
//! return boxed futures so the trait stays object-safe without extra dependencies.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use shipyard_batch_api::models::{
    CloudJob, CloudPool, CloudTask, ComputeNode, JobAddParameter, JobPatchParameter,
    JobPreparationAndReleaseTaskExecutionInformation, NodeFile, PoolAddParameter,
    PoolPatchParameter, PoolResizeParameter, ServiceFault, SubtaskInformation, TaskAddParameter,
    TaskAddResult, TaskCountsResult,
};

/// A boxed, `Send` future borrowed from the backend.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A file the backend holds on disk; the server streams it and answers `ocp-range`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    /// Where the bytes are.
    pub path: PathBuf,
    /// Length in bytes.
    pub len: u64,
    /// Last modification time.
    pub modified: time::OffsetDateTime,
}

/// A backend failure, carrying the Batch error code the server answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// 404, 409 or 400: a refusal with a Batch error code.
    #[error(transparent)]
    Service(#[from] ServiceFault),
    /// 500: the backend failed.
    #[error("internal error: {message}")]
    Internal {
        /// What failed.
        message: String,
    },
}

impl BackendError {
    /// A 404 with `code` for `id`.
    pub fn not_found(code: &'static str, id: impl Into<String>) -> Self {
        ServiceFault::not_found(code, id).into()
    }

    /// A 409 with `code` for `id`.
    pub fn conflict(code: &'static str, id: impl Into<String>) -> Self {
        ServiceFault::conflict(code, id).into()
    }

    /// The Batch error code.
    pub fn batch_code(&self) -> &str {
        match self {
            BackendError::Service(f) => f.code(),
            BackendError::Internal { .. } => "InternalError",
        }
    }

    /// The HTTP status the server answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            BackendError::Service(f) => f.http_status(),
            BackendError::Internal { .. } => 500,
        }
    }
}

/// Result of a backend call.
pub type BackendResult<T> = Result<T, BackendError>;

/// The state and execution behind `shipyard serve`. Implementations must be cheap to share
/// (`Send + Sync`); the server holds one in an `Arc`.
///
/// Semantics the server relies on: `add_*` fail with `Conflict` (`PoolExists`, `JobExists`)
/// and create nothing on failure; `add_tasks` answers one [`TaskAddResult`] per task (in input
/// order; a task that fails creates nothing); `delete_pool`/`delete_job` return once the
/// object is in state `deleting`, after which it disappears (`NotFound`).
pub trait Backend: Send + Sync {
    /// Creates a pool (and its nodes).
    fn add_pool(&self, p: PoolAddParameter) -> BoxFuture<'_, BackendResult<()>>;
    /// A pool.
    fn get_pool(&self, id: &str) -> BackendResult<CloudPool>;
    /// All pools.
    fn list_pools(&self) -> BackendResult<Vec<CloudPool>>;
    /// Starts deleting a pool.
    fn delete_pool<'a>(&'a self, id: &'a str) -> BoxFuture<'a, BackendResult<()>>;
    /// Resizes a pool.
    fn resize_pool<'a>(
        &'a self,
        id: &'a str,
        r: PoolResizeParameter,
    ) -> BoxFuture<'a, BackendResult<()>>;
    /// Patches a pool's properties.
    fn patch_pool(&self, id: &str, p: PoolPatchParameter) -> BackendResult<()>;
    /// A pool's nodes.
    fn list_nodes(&self, pool: &str) -> BackendResult<Vec<ComputeNode>>;
    /// One node.
    fn get_node(&self, pool: &str, node: &str) -> BackendResult<ComputeNode>;
    /// Files on a node.
    fn list_node_files(
        &self,
        pool: &str,
        node: &str,
        recursive: bool,
    ) -> BackendResult<Vec<NodeFile>>;
    /// One file on a node.
    fn node_file(&self, pool: &str, node: &str, path: &str) -> BackendResult<FileContent>;
    /// Creates a job.
    fn add_job(&self, j: JobAddParameter) -> BoxFuture<'_, BackendResult<()>>;
    /// A job.
    fn get_job(&self, id: &str) -> BackendResult<CloudJob>;
    /// All jobs.
    fn list_jobs(&self) -> BackendResult<Vec<CloudJob>>;
    /// Patches a job.
    fn patch_job<'a>(
        &'a self,
        id: &'a str,
        p: JobPatchParameter,
    ) -> BoxFuture<'a, BackendResult<()>>;
    /// Terminates a job.
    fn terminate_job<'a>(
        &'a self,
        id: &'a str,
        reason: Option<String>,
    ) -> BoxFuture<'a, BackendResult<()>>;
    /// Starts deleting a job.
    fn delete_job<'a>(&'a self, id: &'a str) -> BoxFuture<'a, BackendResult<()>>;
    /// Task counts of a job.
    fn task_counts(&self, job: &str) -> BackendResult<TaskCountsResult>;
    /// Job preparation/release task status per node.
    fn prep_release_status(
        &self,
        job: &str,
    ) -> BackendResult<Vec<JobPreparationAndReleaseTaskExecutionInformation>>;
    /// Adds tasks (one result per task, input order).
    fn add_tasks<'a>(
        &'a self,
        job: &'a str,
        tasks: Vec<TaskAddParameter>,
    ) -> BoxFuture<'a, BackendResult<Vec<TaskAddResult>>>;
    /// A task.
    fn get_task(&self, job: &str, task: &str) -> BackendResult<CloudTask>;
    /// A job's tasks.
    fn list_tasks(&self, job: &str) -> BackendResult<Vec<CloudTask>>;
    /// A job's tasks whose ids sort after `after`, in id order; at most `limit` of them when
    /// given (the server passes it only when no `$filter` may skip tasks). What a page of
    /// `Task_List` needs; the default filters [`Backend::list_tasks`], backends that keep
    /// tasks ordered answer without copying the rest.
    fn list_tasks_after(
        &self,
        job: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> BackendResult<Vec<CloudTask>> {
        let mut tasks = self.list_tasks(job)?;
        tasks.retain(|t| after.is_none_or(|a| t.id.as_deref().unwrap_or_default() > a));
        tasks.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        if let Some(n) = limit {
            tasks.truncate(n);
        }
        Ok(tasks)
    }
    /// Subtasks of a multi-instance task.
    fn list_subtasks(&self, job: &str, task: &str) -> BackendResult<Vec<SubtaskInformation>>;
    /// Terminates a task.
    fn terminate_task<'a>(
        &'a self,
        job: &'a str,
        task: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>>;
    /// Deletes a task.
    fn delete_task<'a>(&'a self, job: &'a str, task: &'a str) -> BoxFuture<'a, BackendResult<()>>;
    /// Files of a task.
    fn list_task_files(
        &self,
        job: &str,
        task: &str,
        recursive: bool,
    ) -> BackendResult<Vec<NodeFile>>;
    /// One file of a task (path relative to the task directory, e.g. `stdout.txt`).
    fn task_file(&self, job: &str, task: &str, path: &str) -> BackendResult<FileContent>;
}
