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

/// Batch resource files for a list of the domain's resource files; `None` when there are none
/// (Batch omits the property).
pub fn resource_files(files: &[crate::domain::ResourceFileSpec]) -> Option<Vec<ResourceFile>> {
    (!files.is_empty()).then(|| {
        files
            .iter()
            .map(|f| ResourceFile {
                http_url: Some(f.http_url.clone()),
                file_path: Some(f.file_path.clone()),
                file_mode: f.file_mode.clone(),
                ..Default::default()
            })
            .collect()
    })
}
