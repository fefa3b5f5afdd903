//! Local backend: run shipyard jobs on this machine with Docker containers as nodes.
//!
//! A job runs the way Azure Batch runs it on a *native* container pool:
//!
//! - each multi-instance task gets a private bridge network on a free /24 and one long-lived
//!   container per instance (`sleep infinity` under `--init`, hostname = node id, fixed
//!   address, every node in every `/etc/hosts`), all started at once;
//! - the Batch environment (`AZ_BATCH_HOST_LIST`, `AZ_BATCH_MASTER_NODE`,
//!   `AZ_BATCH_TASK_SHARED_DIR` on a volume all nodes share, …) is set in each node;
//! - the coordination command runs on every node, then — once every node's sshd answers on
//!   port 23 — the application command runs on the master; its exit code is the task's;
//! - a per-run ed25519 client key is generated in-process, mounted read-only and deleted after;
//! - output lands in `<state>/jobs/<job>/tasks/<task>/stdout.txt` (coordination output in
//!   `…/nodes/<node>/`), state and times in an embedded store (redb);
//! - everything created carries `shipyard.*` labels and is removed after success, failure,
//!   cancellation, or — for runs whose process died — by [`LocalBackend::sweep`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), shipyard_local::LocalError> {
//! use shipyard_local::{LocalJob, LocalBackend, LocalOptions, MultiInstance, LocalTask};
//!
//! let backend = LocalBackend::connect(LocalOptions::default()).await?;
//! let mut task = LocalTask::new(
//!     "hello",
//!     "shipyard/mpi:bookworm",
//!     "/bin/bash -c 'mpirun.openmpi --allow-run-as-root -np 2 --host $AZ_BATCH_HOST_LIST hostname'",
//! );
//! task.multi_instance = Some(MultiInstance {
//!     number_of_instances: 2,
//!     coordination_command_line: "/bin/bash -c 'mkdir -p /run/sshd; ssh-keygen -A; /usr/sbin/sshd -p 23'".into(),
//! });
//! let job = LocalJob {
//!     id: "demo".into(),
//!     tasks: vec![task],
//!     uses_task_dependencies: false,
//!     on_all_tasks_complete: Default::default(),
//!     on_task_failure: Default::default(),
//!     max_parallel_tasks: None,
//! };
//! let outcome = backend.run_spec(job, None).await?;
//! std::process::exit(outcome.exit_code());
//! # }
//! ```
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod backend;
pub mod cmdline;
pub mod convert;
mod docker;
pub mod engine;
pub mod env;
mod error;
mod events;
mod follow;
mod job_run;
pub mod keys;
mod owner;
mod private;
mod recorder;
pub mod spec;
pub mod store;
mod sweep;
mod task;

pub use backend::{JobOutcome, LocalBackend, LocalOptions, STORE_FILE};
pub use docker::{labels, OutputStream};
pub use engine::{Engine, EngineError, EngineOptions, FileContent};
pub use error::{LocalError, Result};
pub use events::{Event, EventSender};
pub use follow::follow_task_file;
pub use owner::RunOwner;
pub use spec::{
    LocalJob, LocalTask, MultiInstance, OnAllTasksComplete, OnTaskFailure, TaskDependencies,
    TaskIdRange,
};
pub use store::{JobRecord, JobState, Store, TaskRecord, TaskResult, TaskState};
pub use sweep::SweepReport;
pub use tokio_util::sync::CancellationToken;
