//! Errors of a submission and of watching it.

use shipyard_batch_api::BatchError;
use shipyard_runtime::RuntimeError;

/// Why a submission or its watch failed. Every variant names the job, task or node it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// A Batch call failed.
    #[error("{action}")]
    Batch {
        /// What was being done (`adding job `hello``).
        action: String,
        /// The service's or transport's error.
        #[source]
        source: BatchError,
    },
    /// A local file operation failed (a private temporary file of a download).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A followed task completed without the file.
    #[error("task {job}/{task} completed without a file `{file}`")]
    MissingTaskFile {
        /// Job id.
        job: String,
        /// Task id.
        task: String,
        /// The file followed.
        file: String,
    },
    /// A deleted pool still exists after the wait.
    #[error("pool `{pool}` is still being deleted after {secs}s")]
    PoolStillDeleting {
        /// Pool id.
        pool: String,
        /// How long was waited.
        secs: u64,
    },
    /// The plan could not be turned into requests (SSH key generation, serialization).
    #[error("job `{job}`: {source}")]
    Plan {
        /// Job id.
        job: String,
        /// The domain's error.
        #[source]
        source: RuntimeError,
    },
    /// Some tasks of a job's collection were refused.
    #[error("job `{job}`: {failed} of {total} tasks could not be added: {details}")]
    TasksRejected {
        /// Job id.
        job: String,
        /// Tasks refused.
        failed: usize,
        /// Tasks submitted.
        total: usize,
        /// The first few `task: error` pairs.
        details: String,
    },
    /// The job exists (a finished run's, or another's) and sets `onAllTasksComplete`, so its
    /// tasks cannot be added to it.
    #[error("job `{job}` already exists; delete it, or resubmit with recreate (`--recreate`) to delete a finished job first")]
    JobExists {
        /// Job id.
        job: String,
    },
    /// Recreate was asked for, but the job is still active (it may be another run's).
    #[error("job `{job}` is {state}, not finished; terminate it first (`jobs term {job}`)")]
    JobActive {
        /// Job id.
        job: String,
        /// Its state.
        state: String,
    },
    /// The job preparation task failed on a node: the job's tasks can never run there.
    #[error(
        "job `{job}`: the job preparation task failed on node `{node}` (pool `{pool}`) with exit code {}{}{}",
        exit_code_text(*exit_code), failure_text(failure), stderr_text(stderr_tail)
    )]
    JobPreparationFailed {
        /// Job id.
        job: String,
        /// Pool id.
        pool: String,
        /// Node id.
        node: String,
        /// The prep task's exit code, if it ran.
        exit_code: Option<i32>,
        /// Batch's failure message (e.g. a resource file or container pull error).
        failure: Option<String>,
        /// The last lines of the prep task's `stderr.txt` on that node, when it could be read.
        stderr_tail: Option<Box<str>>,
    },
    /// The pool's start task failed on a node (the node is `starttaskfailed`).
    #[error(
        "pool `{pool}`: the start task failed on node `{node}` with exit code {}{}",
        exit_code_text(*exit_code), failure_text(failure)
    )]
    StartTaskFailed {
        /// Pool id.
        pool: String,
        /// Node id.
        node: String,
        /// The start task's exit code, if Batch reports one.
        exit_code: Option<i32>,
        /// Batch's failure message.
        failure: Option<String>,
    },
    /// A node of the pool became unusable (or its state is unknown to Batch).
    #[error(
        "pool `{pool}`: node `{node}` is {state}{}; tasks cannot run on it",
        reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
    )]
    NodeUnusable {
        /// Pool id.
        pool: String,
        /// Node id.
        node: String,
        /// Its state (`unusable`, `unknown`).
        state: String,
        /// The node's errors as Batch reports them (`code: message`, `; `-separated).
        reason: Option<String>,
    },
    /// The pool could not allocate its nodes.
    #[error("pool `{pool}`: resize error {code}: {message}")]
    PoolResizeFailed {
        /// Pool id.
        pool: String,
        /// Batch's error code (`AllocationFailed`, `AccountCoreQuotaReached`, ...).
        code: String,
        /// Batch's message.
        message: String,
    },
    /// Every unfinished task of a job waits on a failed dependency that blocks its dependents
    /// (`dependencyAction` = `block`, Batch's default for a failure): the job cannot progress.
    #[error(
        "job `{job}`: task(s) {} can never run: dependency {} failed and blocks its dependents (dependencyAction block)",
        blocked.join(", "), failed.join(", ")
    )]
    DependencyBlocked {
        /// Job id.
        job: String,
        /// The tasks that wait forever.
        blocked: Vec<String>,
        /// The failed tasks they wait on.
        failed: Vec<String>,
    },
    /// The overall timeout elapsed before every task completed.
    #[error("timed out after {}s with {completed}/{total} tasks completed", timeout.as_secs())]
    TimedOut {
        /// The timeout.
        timeout: std::time::Duration,
        /// Tasks completed.
        completed: usize,
        /// Tasks submitted.
        total: usize,
    },
    /// The submission or run failed and shipyard terminated the jobs it had created, so their
    /// job release tasks run and nodes are cleaned up.
    #[error("{source}; terminated job(s) {} so their job release tasks run", terminated.join(", "))]
    Aborted {
        /// The jobs terminated.
        terminated: Vec<String>,
        /// Why.
        source: Box<SubmitError>,
    },
    /// The run was cancelled (Ctrl-C, SIGTERM, [`crate::Submitter::cancel_token`]).
    #[error("cancelled")]
    Cancelled,
}

fn exit_code_text(code: Option<i32>) -> String {
    code.map_or_else(|| "unknown".to_string(), |c| c.to_string())
}

fn stderr_text(tail: &Option<Box<str>>) -> String {
    tail.as_deref()
        .map(|t| format!("; its stderr ends:\n{t}"))
        .unwrap_or_default()
}

fn failure_text(failure: &Option<String>) -> String {
    failure
        .as_deref()
        .map(|f| format!(" ({f})"))
        .unwrap_or_default()
}

impl SubmitError {
    pub(crate) fn batch(action: impl Into<String>, source: BatchError) -> Self {
        SubmitError::Batch {
            action: action.into(),
            source,
        }
    }

    /// The Batch error code of a failed call (`JobExists`, `PoolExists`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            SubmitError::Batch { source, .. } => source.code(),
            SubmitError::Aborted { source, .. } => source.code(),
            SubmitError::JobExists { .. } => Some("JobExists"),
            _ => None,
        }
    }
}

/// Shorthand.
pub type Result<T, E = SubmitError> = std::result::Result<T, E>;
