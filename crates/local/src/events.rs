//! Progress events sent to the caller while a job runs.

use std::net::Ipv4Addr;

use crate::docker::OutputStream;
use crate::store::{JobState, TaskState};

/// One thing that happened. Sent on the channel given to [`crate::LocalBackend::run_spec`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The run began.
    JobStarted {
        /// Job id.
        job: String,
        /// This run's uuid (the `shipyard.run` label).
        run_id: String,
        /// Number of tasks.
        tasks: usize,
    },
    /// A task changed state.
    TaskState {
        /// Task id.
        task: String,
        /// New state.
        state: TaskState,
        /// Attempt number (0 = first try).
        attempt: u32,
        /// Exit code, once completed.
        exit_code: Option<i64>,
        /// Failure description, once failed.
        failure: Option<String>,
    },
    /// A node container is up.
    NodeStarted {
        /// Task id.
        task: String,
        /// Node id (the container's hostname).
        node: String,
        /// Its address on the task's network (multi-instance tasks).
        ip: Option<Ipv4Addr>,
    },
    /// Every node's sshd answers; the application starts on the master.
    NodesReady {
        /// Task id.
        task: String,
        /// Number of nodes.
        nodes: usize,
    },
    /// A line of output (only when [`crate::LocalOptions::stream_output`] is set).
    Output {
        /// Task id.
        task: String,
        /// Node the line came from.
        node: String,
        /// `true` for the coordination command, `false` for the application.
        coordination: bool,
        /// Which stream.
        stream: OutputStream,
        /// The line, without its newline.
        line: String,
    },
    /// A failed task will be retried.
    TaskRetry {
        /// Task id.
        task: String,
        /// The attempt about to start.
        attempt: u32,
        /// Why the previous attempt failed.
        reason: String,
    },
    /// The run finished and everything it created was removed.
    JobFinished {
        /// Job id.
        job: String,
        /// Final job state.
        state: JobState,
    },
}

/// The sending half of the event channel.
pub type EventSender = tokio::sync::mpsc::UnboundedSender<Event>;

/// Optional event sink.
#[derive(Debug, Clone, Default)]
pub(crate) struct Events(pub(crate) Option<EventSender>);

impl Events {
    pub(crate) fn emit(&self, e: Event) {
        if let Some(tx) = &self.0 {
            // A closed receiver only means nobody listens any more.
            let _ = tx.send(e);
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.0.as_ref().is_some_and(|tx| !tx.is_closed())
    }
}
