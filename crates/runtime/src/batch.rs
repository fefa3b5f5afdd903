//! The Azure Batch model values a plan is made of: re-exported from
//! [`shipyard_batch_api::models`] (camelCase on the wire, optional fields omitted when unset).

pub use shipyard_batch_api::models::{
    AutoUserScope, AutoUserSpecification, ContainerConfiguration, ContainerRegistry, ContainerType,
    ContainerWorkingDirectory, ElevationLevel, EnvironmentSetting, ImageReference, JobAddParameter,
    JobPreparationTask, JobReleaseTask, MultiInstanceSettings, OnAllTasksComplete,
    PoolAddParameter, PoolInformation, ResourceFile, StartTask, TaskAddParameter, TaskConstraints,
    TaskContainerSettings, TaskDependencies, TaskIdRange, UserIdentity,
    VirtualMachineConfiguration,
};

/// The pool-scope administrator auto user (root on Linux): what container tasks run as.
pub fn pool_admin() -> UserIdentity {
    UserIdentity::auto_user(AutoUserScope::Pool, ElevationLevel::Admin)
}
