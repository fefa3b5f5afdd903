//! Constructors for the common required-field combinations, and small wire helpers.
//!
//! Everything optional stays `None`; fill it in with struct-update syntax:
//! `TaskAddParameter { required_slots: Some(1), ..TaskAddParameter::new("t", "cmd") }`.

use std::time::Duration;

use super::*;

impl PoolAddParameter {
    /// A pool with its required `id` and `vmSize`.
    pub fn new(id: impl Into<String>, vm_size: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            vm_size: vm_size.into(),
            ..Self::default()
        }
    }
}

impl VirtualMachineConfiguration {
    /// A VM configuration from an image and the matching node agent SKU
    /// (e.g. `batch.node.ubuntu 22.04`).
    pub fn new(image_reference: ImageReference, node_agent_sku_id: impl Into<String>) -> Self {
        Self {
            image_reference,
            node_agent_sku_id: node_agent_sku_id.into(),
            ..Self::default()
        }
    }
}

impl ImageReference {
    /// A marketplace image; `version` `latest` picks the newest.
    pub fn marketplace(
        publisher: impl Into<String>,
        offer: impl Into<String>,
        sku: impl Into<String>,
        version: impl Into<String>,
    ) -> Self {
        Self {
            publisher: Some(publisher.into()),
            offer: Some(offer.into()),
            sku: Some(sku.into()),
            version: Some(version.into()),
            ..Self::default()
        }
    }
}

impl ContainerConfiguration {
    /// A Docker-compatible container configuration prefetching `images`.
    pub fn docker<I, S>(images: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: Vec<String> = images.into_iter().map(Into::into).collect();
        Self {
            r#type: ContainerType::DockerCompatible,
            container_image_names: (!names.is_empty()).then_some(names),
            container_registries: None,
        }
    }
}

impl JobAddParameter {
    /// A job running on the existing pool `pool_id`.
    pub fn new(id: impl Into<String>, pool_id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            pool_info: PoolInformation::pool(pool_id),
            ..Self::default()
        }
    }
}

impl PoolInformation {
    /// Refers to an existing pool.
    pub fn pool(pool_id: impl Into<String>) -> Self {
        Self {
            pool_id: Some(pool_id.into()),
            auto_pool_specification: None,
        }
    }
}

impl TaskAddParameter {
    /// A task with its required `id` and `commandLine`.
    pub fn new(id: impl Into<String>, command_line: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            command_line: command_line.into(),
            ..Self::default()
        }
    }
}

impl TaskAddCollectionParameter {
    /// A collection body. The service accepts at most 100 tasks per request.
    pub fn new(tasks: Vec<TaskAddParameter>) -> Self {
        Self { value: tasks }
    }
}

impl MultiInstanceSettings {
    /// Multi-instance settings for `instances` nodes running `coordination_command_line` on
    /// every node before the primary runs the task's command line.
    pub fn new(instances: i32, coordination_command_line: impl Into<String>) -> Self {
        Self {
            number_of_instances: Some(instances),
            coordination_command_line: coordination_command_line.into(),
            common_resource_files: None,
        }
    }
}

impl TaskContainerSettings {
    /// Runs the task in `image_name`.
    pub fn new(image_name: impl Into<String>) -> Self {
        Self {
            image_name: image_name.into(),
            ..Self::default()
        }
    }
}

impl ResourceFile {
    /// A file downloaded from `http_url` (which may carry a SAS token) to `file_path`,
    /// relative to the task's working directory.
    pub fn from_http_url(http_url: impl Into<String>, file_path: impl Into<String>) -> Self {
        Self {
            http_url: Some(http_url.into()),
            file_path: Some(file_path.into()),
            ..Self::default()
        }
    }

    /// All blobs of a storage container (URL with read and list permissions).
    pub fn from_container_url(storage_container_url: impl Into<String>) -> Self {
        Self {
            storage_container_url: Some(storage_container_url.into()),
            ..Self::default()
        }
    }
}

impl EnvironmentSetting {
    /// `name=value`.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: Some(value.into()),
        }
    }
}

impl MetadataItem {
    /// A name-value pair.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

impl UserIdentity {
    /// Runs as the auto-user with the given scope and elevation.
    pub fn auto_user(scope: AutoUserScope, elevation_level: ElevationLevel) -> Self {
        Self {
            username: None,
            auto_user: Some(AutoUserSpecification {
                scope: Some(scope),
                elevation_level: Some(elevation_level),
            }),
        }
    }

    /// Runs as a named user account of the pool.
    pub fn user(name: impl Into<String>) -> Self {
        Self {
            username: Some(name.into()),
            auto_user: None,
        }
    }
}

impl TaskIdRange {
    /// The inclusive range `start..=end` of integer task ids.
    pub fn new(start: i32, end: i32) -> Self {
        Self { start, end }
    }
}

impl TaskDependencies {
    /// Depends on the tasks with these ids.
    pub fn on_tasks<I, S>(ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            task_ids: Some(ids.into_iter().map(Into::into).collect()),
            task_id_ranges: None,
        }
    }
}

impl OutputFile {
    /// Uploads files matching `file_pattern` to the blob container `container_url` (with a SAS
    /// token granting write access) under `path`, when `condition` holds.
    pub fn to_container(
        file_pattern: impl Into<String>,
        container_url: impl Into<String>,
        path: Option<String>,
        condition: OutputFileUploadCondition,
    ) -> Self {
        Self {
            file_pattern: file_pattern.into(),
            destination: OutputFileDestination {
                container: Some(OutputFileBlobContainerDestination {
                    path,
                    container_url: container_url.into(),
                    identity_reference: None,
                    upload_headers: None,
                }),
            },
            upload_options: OutputFileUploadOptions {
                upload_condition: condition,
            },
        }
    }
}

impl BatchError {
    /// The error message text, if any.
    pub fn message_text(&self) -> Option<&str> {
        self.message.as_ref().and_then(|m| m.value.as_deref())
    }

    /// The value of the detail with `key` (e.g. `Reason`), if any.
    pub fn detail(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .flatten()
            .find(|d| d.key.as_deref() == Some(key))
            .and_then(|d| d.value.as_deref())
    }
}

/// Renders a duration as the ISO 8601 text the Batch API uses (`PT1H30M`, `PT0.5S`, `PT0S`).
pub fn duration_to_iso8601(d: Duration) -> String {
    let total = d.as_secs();
    let (days, rem) = (total / 86_400, total % 86_400);
    let (hours, rem) = (rem / 3_600, rem % 3_600);
    let (minutes, seconds) = (rem / 60, rem % 60);
    let nanos = d.subsec_nanos();
    let mut out = String::from("P");
    if days > 0 {
        out.push_str(&format!("{days}D"));
    }
    if hours == 0 && minutes == 0 && seconds == 0 && nanos == 0 {
        if days == 0 {
            out.push_str("T0S");
        }
        return out;
    }
    out.push('T');
    if hours > 0 {
        out.push_str(&format!("{hours}H"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}M"));
    }
    if seconds > 0 || nanos > 0 {
        if nanos > 0 {
            let frac = format!("{nanos:09}");
            out.push_str(&format!("{seconds}.{}S", frac.trim_end_matches('0')));
        } else {
            out.push_str(&format!("{seconds}S"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_render_as_iso8601() {
        assert_eq!(duration_to_iso8601(Duration::ZERO), "PT0S");
        assert_eq!(duration_to_iso8601(Duration::from_secs(90 * 60)), "PT1H30M");
        assert_eq!(duration_to_iso8601(Duration::from_secs(86_400)), "P1D");
        assert_eq!(duration_to_iso8601(Duration::from_secs(86_405)), "P1DT5S");
        assert_eq!(duration_to_iso8601(Duration::from_millis(1500)), "PT1.5S");
    }

    #[test]
    fn constructors_fill_required_fields_only() {
        let job = JobAddParameter::new("job-1", "pool-1");
        let json = serde_json::to_value(&job).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"id": "job-1", "poolInfo": {"poolId": "pool-1"}})
        );
        let pool = PoolAddParameter {
            enable_inter_node_communication: Some(true),
            virtual_machine_configuration: Some(VirtualMachineConfiguration {
                container_configuration: Some(ContainerConfiguration::docker(["img:1"])),
                ..VirtualMachineConfiguration::new(
                    ImageReference::marketplace("canonical", "ubuntu", "22_04-lts", "latest"),
                    "batch.node.ubuntu 22.04",
                )
            }),
            ..PoolAddParameter::new("p", "standard_hb120rs_v3")
        };
        let json = serde_json::to_value(&pool).expect("serializes");
        assert_eq!(
            json["virtualMachineConfiguration"]["nodeAgentSKUId"],
            "batch.node.ubuntu 22.04"
        );
        assert_eq!(
            json["virtualMachineConfiguration"]["containerConfiguration"],
            serde_json::json!({"type": "dockerCompatible", "containerImageNames": ["img:1"]})
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let reg = ContainerRegistry {
            password: Some("hunter2".into()),
            username: Some("me".into()),
            ..ContainerRegistry::default()
        };
        let dbg = format!("{reg:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("me"), "{dbg}");
        let user = UserAccount {
            linux_user_configuration: Some(LinuxUserConfiguration {
                ssh_private_key: Some("-----BEGIN OPENSSH PRIVATE KEY-----".into()),
                ..LinuxUserConfiguration::default()
            }),
            ..UserAccount::default()
        };
        let dbg = format!("{user:?}");
        assert!(!dbg.contains("OPENSSH"), "{dbg}");
        let file = ResourceFile::from_http_url("https://a.blob/c/f?sv=1&sig=SECRET", "f");
        let dbg = format!("{file:?}");
        assert!(!dbg.contains("SECRET"), "{dbg}");
        assert!(dbg.contains("https://a.blob/c/f"), "{dbg}");
    }
}
