//! What a submission reports while it runs.

use shipyard_batch_api::models::{CloudTask, TaskState};

/// Which output file a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// `stdout.txt`.
    Stdout,
    /// `stderr.txt`.
    Stderr,
}

impl OutputStream {
    /// The file in the task directory.
    pub fn file_name(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout.txt",
            OutputStream::Stderr => "stderr.txt",
        }
    }
}

/// One thing that happened to a submission.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SubmitEvent {
    /// The pool did not exist and is being created.
    PoolCreating {
        /// Pool id.
        pool: String,
    },
    /// A job and its tasks were added (`existed`: tasks were added to an existing job).
    JobAdded {
        /// Job id.
        job: String,
        /// Tasks added.
        tasks: usize,
        /// The job was already there.
        existed: bool,
    },
    /// A task changed state.
    TaskState {
        /// Job id.
        job: String,
        /// Task id.
        task: String,
        /// New state.
        state: TaskState,
        /// Node it runs on (the master, for a multi-instance task).
        node: Option<String>,
        /// Exit code, once completed.
        exit_code: Option<i32>,
        /// Batch's failure message, once failed.
        failure: Option<String>,
    },
    /// A new line of a task's output (only with [`crate::SubmitOptions::stream_output`]).
    Output {
        /// Job id.
        job: String,
        /// Task id.
        task: String,
        /// Which file.
        stream: OutputStream,
        /// The line, without its newline.
        line: String,
    },
    /// Completed tasks over all jobs.
    Progress {
        /// Completed.
        completed: usize,
        /// Submitted.
        total: usize,
    },
    /// Every task of a job completed.
    JobCompleted {
        /// Job id.
        job: String,
        /// Its tasks as Batch last reported them.
        tasks: Vec<CloudTask>,
    },
    /// The job preparation task failed on a node (the watch fails next).
    JobPreparationFailed {
        /// Job id.
        job: String,
        /// Node id.
        node: String,
        /// Exit code, if it ran.
        exit_code: Option<i32>,
        /// Batch's failure message.
        failure: Option<String>,
    },
    /// The start task failed on a node (the watch fails next).
    StartTaskFailed {
        /// Pool id.
        pool: String,
        /// Node id.
        node: String,
        /// Exit code, if Batch reports one.
        exit_code: Option<i32>,
        /// Batch's failure message.
        failure: Option<String>,
    },
    /// A node became unusable (the watch fails next).
    NodeUnusable {
        /// Pool id.
        pool: String,
        /// Node id.
        node: String,
        /// Its state.
        state: String,
        /// The node's errors as Batch reports them (`code: message`, `; `-separated).
        reason: Option<String>,
    },
    /// The pool reported a resize error (the watch fails next when the pool has no nodes).
    PoolResizeError {
        /// Pool id.
        pool: String,
        /// Batch's code.
        code: String,
        /// Batch's message.
        message: String,
    },
    /// Tasks of a job can never run: each waits on a failed dependency whose
    /// `dependencyAction` is `block` (the watch fails next).
    TasksBlocked {
        /// Job id.
        job: String,
        /// The unfinished tasks that wait forever.
        blocked: Vec<String>,
        /// The failed tasks they wait on.
        failed: Vec<String>,
    },
    /// shipyard terminated a job (failure, timeout or interrupt) so its release task runs.
    JobTerminated {
        /// Job id.
        job: String,
        /// Why.
        reason: String,
    },
}

/// Where [`crate::Submitter::run`] sends events.
pub type EventSender = tokio::sync::mpsc::UnboundedSender<SubmitEvent>;
