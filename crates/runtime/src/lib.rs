//! Domain model, the [`ContainerRuntime`] trait, the runtime registry and dynamic runtime plugins.
//!
//! # Flow
//!
//! A [`JobSpec`] (from the CLI's TOML config, or built in code) and [`PoolFacts`] go into a
//! [`ContainerRuntime`] chosen by name ([`registry::get`]); out comes a [`JobPlan`] made of Batch
//! model values ([`batch`]): per task a `TaskAddParameter`, plus what the job
//! (preparation/release tasks, `onAllTasksComplete`) and the pool (container configuration,
//! start task, inter-node communication) need. Azure Batch and the local backend both run it.
//!
//! ```
//! use shipyard_runtime::{JobSpec, TaskSpec};
//! let job: JobSpec = toml::from_str(r#"
//!     id = "hello"
//!     [[tasks]]
//!     image = "shipyard/mpi:bookworm"
//!     command = "/opt/shipyard/bin/mpi-hello-openmpi"
//!     [tasks.multi_instance]
//!     num_instances = 3
//!     mpi = { runtime = "openmpi", processes_per_node = 2 }
//! "#).unwrap();
//! job.validate().unwrap();
//! assert_eq!(job.tasks[0].multi_instance.as_ref().unwrap().num_instances.resolve(8), 3);
//! # let _ = TaskSpec::new("img", "true");
//! ```
//!
//! # Runtimes
//!
//! Built-in runtimes register themselves with [`inventory`] ([`registry::RuntimeRegistration`]);
//! third parties ship a shared library implementing the C ABI of [`plugin`] and load it with
//! [`registry::load_plugin`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod batch;
pub mod data;
pub mod domain;
pub mod error;
pub mod factory;
pub mod mpi;
pub mod plan;
pub mod plugin;
pub mod pool;
pub mod registry;
pub mod registry_auth;
pub mod shell;
pub mod ssh;
pub mod validate;
pub mod vmsize;

pub use domain::{
    HostCommand, JobSpec, MpiRuntime, MpiSpec, MultiInstanceSpec, NumInstances, OsFamily,
    PoolCount, PoolFacts, ProcessesPerNode, ResourceFileSpec, TaskSpec, WorkingDir,
};
pub use error::{Field, FieldPath, RuntimeError, Scope, Segment};
pub use plan::{JobNeeds, JobPlan, PoolNeeds};
pub use pool::PoolSpec;

/// A container runtime: turns a job and facts about its pool into a [`JobPlan`].
///
/// Implementations are pure: no I/O, no Docker, so a plan can be rendered and checked anywhere.
pub trait ContainerRuntime: Send + Sync + std::fmt::Debug {
    /// The name the configuration selects it by (`docker`, `singularity`, ...).
    fn name(&self) -> &str;

    /// Plans `job` on a pool described by `pool`. The job is validated first
    /// ([`validate::job_against_pool`]); errors locate the offending field ([`Field`]:
    /// `job.tasks[2].multi_instance.num_instances`).
    fn plan(&self, job: &JobSpec, pool: &PoolFacts) -> Result<JobPlan, RuntimeError>;
}
