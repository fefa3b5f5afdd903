//! The Azure Batch model values a plan is made of.
//!
//! These mirror the Batch REST definitions of the same names (api-version 2024-07-01.20.0):
//! camelCase on the wire, optional fields omitted when unset. Only the fields a runtime sets are
//! modelled; the JSON is exactly what `Pool_Add`, `Job_Add` and `Task_Add` accept.

use serde::{Deserialize, Serialize};

/// `EnvironmentSetting`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentSetting {
    /// Variable name.
    pub name: String,
    /// Value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl EnvironmentSetting {
    /// `name=value`.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        EnvironmentSetting {
            name: name.into(),
            value: Some(value.into()),
        }
    }
}

/// `ResourceFile` (the `httpUrl` form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceFile {
    /// URL to download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_url: Option<String>,
    /// Blob container URL (download a whole container or prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_container_url: Option<String>,
    /// Destination relative to the task directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_path: Option<String>,
    /// Octal mode (Linux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<String>,
}

/// `ElevationLevel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElevationLevel {
    /// Non-administrative.
    NonAdmin,
    /// Administrator (root).
    Admin,
}

/// `AutoUserScope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoUserScope {
    /// A user per task.
    Task,
    /// The pool-wide auto user (shares its home and keys across tasks).
    Pool,
}

/// `AutoUserSpecification`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoUserSpecification {
    /// Scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<AutoUserScope>,
    /// Elevation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elevation_level: Option<ElevationLevel>,
}

/// `UserIdentity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserIdentity {
    /// A named user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The auto user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_user: Option<AutoUserSpecification>,
}

impl UserIdentity {
    /// The pool-scope administrator auto user (root on Linux).
    pub fn pool_admin() -> Self {
        UserIdentity {
            username: None,
            auto_user: Some(AutoUserSpecification {
                scope: Some(AutoUserScope::Pool),
                elevation_level: Some(ElevationLevel::Admin),
            }),
        }
    }
}

/// `ContainerRegistry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRegistry {
    /// Registry host; Docker Hub when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_server: Option<String>,
    /// User name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password (a secret: never logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `ContainerWorkingDirectory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerWorkingDirectory {
    /// `$AZ_BATCH_TASK_WORKING_DIR`.
    TaskWorkingDirectory,
    /// The image's `WORKDIR`.
    ContainerImageDefault,
}

/// `TaskContainerSettings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskContainerSettings {
    /// Extra `docker create` options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_run_options: Option<String>,
    /// The image.
    pub image_name: String,
    /// Private registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<ContainerRegistry>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<ContainerWorkingDirectory>,
}

/// `MultiInstanceSettings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultiInstanceSettings {
    /// Number of nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_instances: Option<i32>,
    /// Run on every node before the application command (must return).
    pub coordination_command_line: String,
    /// Files downloaded on every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_resource_files: Option<Vec<ResourceFile>>,
}

/// `TaskConstraints`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskConstraints {
    /// ISO 8601 duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wall_clock_time: Option<String>,
    /// ISO 8601 duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_time: Option<String>,
    /// Retries (-1 = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_task_retry_count: Option<i32>,
}

/// `TaskIdRange` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskIdRange {
    /// First id.
    pub start: i32,
    /// Last id.
    pub end: i32,
}

/// `TaskDependencies`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDependencies {
    /// Task ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ids: Option<Vec<String>>,
    /// Ranges of integer ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id_ranges: Option<Vec<TaskIdRange>>,
}

/// `TaskAddParameter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskAddParameter {
    /// Task id.
    pub id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The command (not run in a shell by Batch).
    pub command_line: String,
    /// Container settings (native pools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_settings: Option<TaskContainerSettings>,
    /// Files for the task (the primary only, for multi-instance tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_files: Option<Vec<ResourceFile>>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_settings: Option<Vec<EnvironmentSetting>>,
    /// Constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<TaskConstraints>,
    /// Slots the task takes (1 for multi-instance tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_slots: Option<i32>,
    /// Identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_identity: Option<UserIdentity>,
    /// Multi-instance settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_instance_settings: Option<MultiInstanceSettings>,
    /// Dependencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<TaskDependencies>,
}

/// `ContainerType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerType {
    /// Docker-compatible runtime.
    DockerCompatible,
    /// CRI runtime.
    CriCompatible,
}

/// `ContainerConfiguration` (pool).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerConfiguration {
    /// Runtime type.
    #[serde(rename = "type")]
    pub container_type: ContainerType,
    /// Images prefetched on every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image_names: Option<Vec<String>>,
    /// Registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_registries: Option<Vec<ContainerRegistry>>,
}

/// `StartTask`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartTask {
    /// Command.
    pub command_line: String,
    /// Files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_files: Option<Vec<ResourceFile>>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_settings: Option<Vec<EnvironmentSetting>>,
    /// Identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_identity: Option<UserIdentity>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_task_retry_count: Option<i32>,
    /// Wait before scheduling tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_success: Option<bool>,
}

/// `JobPreparationTask`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobPreparationTask {
    /// Id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Command.
    pub command_line: String,
    /// Files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_files: Option<Vec<ResourceFile>>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_settings: Option<Vec<EnvironmentSetting>>,
    /// Constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<TaskConstraints>,
    /// Tasks wait for its success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_success: Option<bool>,
    /// Identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_identity: Option<UserIdentity>,
    /// Rerun after a reboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_on_node_reboot_after_success: Option<bool>,
}

/// `JobReleaseTask`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobReleaseTask {
    /// Id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Command.
    pub command_line: String,
    /// Environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_settings: Option<Vec<EnvironmentSetting>>,
    /// ISO 8601 duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wall_clock_time: Option<String>,
    /// Identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_identity: Option<UserIdentity>,
}

/// `OnAllTasksComplete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnAllTasksComplete {
    /// Keep the job active.
    NoAction,
    /// Terminate the job (runs the job release task).
    TerminateJob,
}
