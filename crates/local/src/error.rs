//! The crate's error type.

use std::path::PathBuf;

use shipyard_runtime::RuntimeError;

/// Everything that can go wrong while running a job locally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// The Docker engine could not be reached.
    #[error(
        "cannot reach the Docker engine ({detail}); is dockerd running? \
         (`docker info` should answer; `bash scripts/setup.sh` installs and starts it)"
    )]
    DockerUnavailable {
        /// What the client reported.
        detail: String,
    },
    /// The task's container image is not present in the local engine.
    #[error(
        "task `{task}`: image `{image}` is not present in the local Docker engine; build it with \
         `bash scripts/build-image.sh` (or `bash scripts/setup.sh`), or load it with `docker load`"
    )]
    ImageMissing {
        /// The task that needs the image.
        task: String,
        /// `containerSettings.imageName`.
        image: String,
    },
    /// A task image could not be pulled with the configured registry login.
    #[error(
        "task `{task}`: pulling image `{image}` from registry `{registry}` as user `{username}` \
         failed: {reason}"
    )]
    ImagePull {
        /// The task that needs the image.
        task: String,
        /// The image reference.
        image: String,
        /// The registry server.
        registry: String,
        /// The login's user name (never the password).
        username: String,
        /// The engine's message.
        reason: String,
    },
    /// A Docker API call failed.
    #[error("docker: {action}: {source}")]
    Docker {
        /// What we were doing (names the object).
        action: String,
        /// The client's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The job or task description is invalid.
    #[error("invalid job `{job}`: {field}: {reason}")]
    InvalidJob {
        /// The job id.
        job: String,
        /// The offending field (`tasks[3].dependsOn`, ...).
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A command line could not be split into arguments.
    #[error("{field}: cannot split command line: {reason}")]
    CommandLine {
        /// Which command line (`commandLine`, `multiInstanceSettings.coordinationCommandLine`, ...).
        field: String,
        /// Why.
        reason: String,
    },
    /// An unsupported or malformed `containerRunOptions` entry.
    #[error("containerSettings.containerRunOptions: {reason}")]
    RunOptions {
        /// Why.
        reason: String,
    },
    /// No free /24 subnet could be found for the job's network.
    #[error("no free private /24 subnet for network `{network}` (tried {tried} candidates)")]
    NoFreeSubnet {
        /// The network being created.
        network: String,
        /// How many candidates were tried.
        tried: usize,
    },
    /// Some node's sshd never answered.
    #[error(
        "task `{task}`: sshd on port {port} never answered within {secs}s on node(s): {nodes}"
    )]
    SshdTimeout {
        /// The task.
        task: String,
        /// The nodes that never came up (comma separated).
        nodes: String,
        /// The port probed.
        port: u16,
        /// The bound.
        secs: u64,
    },
    /// The coordination command failed on a node.
    #[error("task `{task}`: coordination command failed on node `{node}` with exit code {code}: {stderr}")]
    Coordination {
        /// The task.
        task: String,
        /// The node.
        node: String,
        /// Its exit code.
        code: i64,
        /// The tail of its stderr.
        stderr: String,
    },
    /// A node container stopped while the task was running.
    #[error(
        "task `{task}`: node `{node}` (container `{container}`) stopped while the task was running"
    )]
    NodeLost {
        /// The task.
        task: String,
        /// The node id.
        node: String,
        /// The container name.
        container: String,
    },
    /// The task ran longer than `constraints.maxWallClockTime`.
    #[error("task `{task}`: exceeded its maxWallClockTime of {secs}s")]
    WallClockExceeded {
        /// The task.
        task: String,
        /// The limit.
        secs: u64,
    },
    /// The run was cancelled (Ctrl-C, SIGTERM, or the caller's token).
    #[error("cancelled")]
    Cancelled,
    /// Generating or writing the per-run SSH keys failed.
    #[error("ssh keys: {0}")]
    Keys(#[source] RuntimeError),
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A job with this id exists: it is still running (Batch's `JobExists`), or it finished
    /// and a rerun was not asked for with [`crate::LocalOptions::recreate`].
    #[error(
        "JobExists: job `{job}` already exists{}",
        if *active { format!(" and its run {run_id} is active") } else { " (finished); rerun it with --recreate".to_string() }
    )]
    JobExists {
        /// The job id.
        job: String,
        /// Whether its run is still going.
        active: bool,
        /// The run that has it.
        run_id: String,
    },
    /// A task's output could not be written (e.g. the disk is full): the task fails, its
    /// output files are truncated.
    #[error("task `{task}`: its output is truncated: writing {path} failed ({source})")]
    OutputLost {
        /// The task id.
        task: String,
        /// The output file.
        path: PathBuf,
        /// The write error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded store failed.
    #[error("store {path}: {reason}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The container runtime refused to plan the job.
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    /// A planned task the local backend cannot run: it has no `containerSettings` (the backend
    /// runs container tasks only).
    #[error(
        "{field}: task `{task}` has no containerSettings; the local backend runs container tasks \
         only (plan for a native container pool)"
    )]
    NotAContainerTask {
        /// The task id.
        task: String,
        /// The missing field (`tasks[2].containerSettings`).
        field: String,
    },
}

impl LocalError {
    pub(crate) fn docker(action: impl Into<String>, source: bollard::errors::Error) -> Self {
        LocalError::Docker {
            action: action.into(),
            source,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LocalError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = LocalError> = std::result::Result<T, E>;
