//! Every key Batch Shipyard documents for `credentials.yaml`, `config.yaml`, `pool.yaml` and
//! `jobs.yaml` (its `schemas/*.yaml` and `docs/1[1-4]-*.md`), with what shipyard does with it.
//!
//! Patterns: `.` separates keys, `[]` is any list element, `*` any mapping key chosen by the
//! user (a storage link name, a registry server, a variable name). A disposition given to a
//! key covers everything below it unless a longer pattern says otherwise.

/// What shipyard does with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Copied under the same name with the same meaning.
    Same,
    /// Translated by code: renamed, converted or derived (see the translator).
    Special,
    /// Ignored with a warning naming the reason.
    Warned(&'static str),
    /// An error naming the reason: running without it would change the result.
    Refused(&'static str),
}

use Disposition::{Refused, Same, Special, Warned};

const KEYVAULT: &str =
    "Azure Key Vault references are not supported; put the value in the file or the environment";
const CERT_AUTH: &str = "shipyard signs in to Entra ID with a client secret only (certificate and user/password sign-in are not supported)";
const MONITORING: &str = "monitoring (Prometheus, Grafana, Batch Insights, Application Insights) is not part of shipyard";
const STORAGE_STATE: &str = "shipyard keeps no state in Azure Storage tables/queues";
const FS: &str = "remote file systems and shared volumes (Azure Files, blobfuse, GlusterFS, BeeOND, NFS) are not supported";
const FEDERATION: &str =
    "federations are not supported; the constraints have no effect on a single pool";
const SINGULARITY_LOGIN: &str = "Singularity registry logins are not supported yet (pulls of private Singularity images fail); Docker registries are (credentials.docker_registry)";
const ARM: &str =
    "shipyard talks to the Batch data plane only and cannot create Azure (ARM) resources";
const INGRESS: &str = "data ingress with blobxfer/scp/rsync (global_resources.files, input_data.azure_batch) is not supported; use resource_files or input_data.azure_storage";

/// The catalogue: (pattern, disposition).
pub const CATALOGUE: &[(&str, Disposition)] = &[
    // ---- credentials.yaml
    ("credentials", Special),
    ("credentials.batch", Special),
    ("credentials.batch.account_service_url", Special),
    ("credentials.batch.account_key", Special),
    ("credentials.batch.account_key_keyvault_secret_id", Refused(KEYVAULT)),
    ("credentials.batch.aad", Special),
    ("credentials.batch.aad.directory_id", Special),
    ("credentials.batch.aad.application_id", Special),
    ("credentials.batch.aad.auth_key", Special),
    ("credentials.batch.aad.authority_url", Special),
    ("credentials.batch.aad.endpoint", Warned("shipyard always requests tokens for https://batch.core.windows.net/")),
    ("credentials.batch.aad.rsa_private_key_pem", Refused(CERT_AUTH)),
    ("credentials.batch.aad.x509_cert_sha1_thumbprint", Refused(CERT_AUTH)),
    ("credentials.batch.aad.user", Refused(CERT_AUTH)),
    ("credentials.batch.aad.password", Refused(CERT_AUTH)),
    ("credentials.batch.aad.token_cache", Warned("shipyard does not cache tokens on disk")),
    ("credentials.batch.test_cluster", Refused("Batch Shipyard's test clusters are not supported")),
    ("credentials.batch.resource_group", Warned("only the management plane uses it, which shipyard does not call")),
    ("credentials.batch.application_insights", Warned(MONITORING)),
    ("credentials.aad", Special),
    ("credentials.aad.directory_id", Special),
    ("credentials.aad.application_id", Special),
    ("credentials.aad.auth_key", Special),
    ("credentials.aad.authority_url", Special),
    ("credentials.aad.rsa_private_key_pem", Refused(CERT_AUTH)),
    ("credentials.aad.x509_cert_sha1_thumbprint", Refused(CERT_AUTH)),
    ("credentials.aad.user", Refused(CERT_AUTH)),
    ("credentials.aad.password", Refused(CERT_AUTH)),
    ("credentials.storage", Same),
    ("credentials.storage.aad", Refused("storage is reached with an account key or SAS only")),
    ("credentials.storage.*", Same),
    ("credentials.storage.*.account", Same),
    ("credentials.storage.*.account_key", Special),
    ("credentials.storage.*.account_key_keyvault_secret_id", Refused(KEYVAULT)),
    ("credentials.storage.*.endpoint", Same),
    ("credentials.storage.*.resource_group", Warned("only the management plane uses it")),
    ("credentials.docker_registry", Same),
    ("credentials.docker_registry.*", Special),
    ("credentials.docker_registry.*.username", Same),
    ("credentials.docker_registry.*.password", Special),
    ("credentials.docker_registry.*.password_keyvault_secret_id", Refused(KEYVAULT)),
    ("credentials.singularity_registry", Warned(SINGULARITY_LOGIN)),
    ("credentials.singularity_registry.*", Warned(SINGULARITY_LOGIN)),
    ("credentials.singularity_registry.*.username", Warned(SINGULARITY_LOGIN)),
    ("credentials.singularity_registry.*.password", Warned(SINGULARITY_LOGIN)),
    ("credentials.singularity_registry.*.password_keyvault_secret_id", Warned(SINGULARITY_LOGIN)),
    ("credentials.management", Warned(ARM)),
    ("credentials.keyvault", Refused(KEYVAULT)),
    ("credentials.monitoring", Warned(MONITORING)),
    ("credentials.slurm", Warned("Slurm clusters on Batch are not supported")),
    // ---- config.yaml
    ("batch_shipyard", Special),
    ("batch_shipyard.storage_account_settings", Warned(STORAGE_STATE)),
    ("batch_shipyard.storage_entity_prefix", Warned(STORAGE_STATE)),
    ("batch_shipyard.generated_sas_expiry_days", Warned("shipyard signs the SAS URLs it generates for 7 days; the domain has no setting for it")),
    ("batch_shipyard.autogenerated_task_id", Special),
    ("batch_shipyard.autogenerated_task_id.prefix", Special),
    ("batch_shipyard.autogenerated_task_id.zfill_width", Special),
    ("batch_shipyard.encryption", Refused("credential encryption with a PFX certificate is not supported; keep secrets in the environment")),
    ("batch_shipyard.fallback_registry", Warned("images are pulled from their own registry only")),
    ("batch_shipyard.delay_docker_image_preload", Warned("images are pulled by the job preparation task, not preloaded by the start task")),
    ("batch_shipyard.store_timing_metrics", Warned(STORAGE_STATE)),
    ("batch_shipyard.use_shipyard_docker_image", Warned("shipyard runs no helper image on the nodes")),
    ("data_replication", Warned("peer-to-peer image replication is not supported; each node pulls its images")),
    ("global_resources", Special),
    ("global_resources.docker_images", Special),
    ("global_resources.singularity_images", Special),
    ("global_resources.singularity_images.unsigned", Special),
    ("global_resources.singularity_images.unsigned[].image", Special),
    ("global_resources.singularity_images.unsigned[].encryption", Refused("encrypted Singularity images are not supported")),
    ("global_resources.singularity_images.signed", Refused("signed Singularity image verification is not supported")),
    ("global_resources.additional_registries", Special),
    ("global_resources.additional_registries.docker", Special),
    ("global_resources.additional_registries.singularity", Warned(SINGULARITY_LOGIN)),
    ("global_resources.volumes", Special),
    ("global_resources.volumes.data_volumes", Special),
    ("global_resources.volumes.data_volumes.*", Special),
    ("global_resources.volumes.data_volumes.*.host_path", Special),
    ("global_resources.volumes.data_volumes.*.container_path", Special),
    ("global_resources.volumes.data_volumes.*.bind_options", Special),
    ("global_resources.volumes.shared_data_volumes", Refused(FS)),
    ("global_resources.files", Refused(INGRESS)),
    // ---- pool.yaml
    ("pool_specification", Special),
    ("pool_specification.id", Same),
    ("pool_specification.vm_size", Same),
    ("pool_specification.vm_count", Special),
    ("pool_specification.vm_count.dedicated", Special),
    ("pool_specification.vm_count.low_priority", Special),
    ("pool_specification.max_tasks_per_node", Special),
    ("pool_specification.task_slots_per_node", Same),
    ("pool_specification.inter_node_communication_enabled", Same),
    ("pool_specification.vm_configuration", Special),
    ("pool_specification.vm_configuration.platform_image", Special),
    ("pool_specification.vm_configuration.platform_image.publisher", Special),
    ("pool_specification.vm_configuration.platform_image.offer", Special),
    ("pool_specification.vm_configuration.platform_image.sku", Special),
    ("pool_specification.vm_configuration.platform_image.version", Special),
    ("pool_specification.vm_configuration.platform_image.native", Special),
    ("pool_specification.vm_configuration.platform_image.license_type", Warned("Azure Hybrid Benefit licensing is not set by shipyard")),
    ("pool_specification.vm_configuration.custom_image", Special),
    ("pool_specification.vm_configuration.custom_image.arm_image_id", Special),
    ("pool_specification.vm_configuration.custom_image.node_agent", Special),
    ("pool_specification.vm_configuration.custom_image.native", Special),
    ("pool_specification.vm_configuration.custom_image.license_type", Warned("Azure Hybrid Benefit licensing is not set by shipyard")),
    ("pool_specification.resize_timeout", Special),
    ("pool_specification.node_fill_type", Same),
    ("pool_specification.autoscale", Refused("autoscale pools are not supported; give a fixed vm_count")),
    ("pool_specification.per_job_auto_scratch", Refused(FS)),
    ("pool_specification.reboot_on_start_task_failed", Warned("shipyard does not reboot nodes whose start task failed; `shipyard pool nodes` shows them")),
    ("pool_specification.attempt_recovery_on_unusable", Warned("shipyard does not reboot unusable nodes")),
    ("pool_specification.upload_diagnostics_logs_on_unusable", Warned("diagnostic logs are not uploaded to storage")),
    ("pool_specification.block_until_all_global_resources_loaded", Warned("images are pulled by the job preparation task, not at pool start")),
    ("pool_specification.transfer_files_on_pool_creation", Warned(INGRESS)),
    ("pool_specification.input_data", Refused("pool-level input_data is not supported: move it to each job's input_data (the job preparation task downloads it on every node)")),
    ("pool_specification.input_data.azure_storage", Special),
    ("pool_specification.input_data.azure_storage[].storage_account_settings", Special),
    ("pool_specification.input_data.azure_storage[].remote_path", Special),
    ("pool_specification.input_data.azure_storage[].local_path", Special),
    ("pool_specification.input_data.azure_storage[].is_file_share", Refused("Azure Files shares are not supported as input; use a blob container")),
    ("pool_specification.input_data.azure_storage[].include", Special),
    ("pool_specification.input_data.azure_storage[].exclude", Special),
    ("pool_specification.input_data.azure_storage[].blobxfer_extra_options", Warned("blobxfer is not used; Batch resource files download the blobs")),
    ("pool_specification.input_data.azure_batch", Refused(INGRESS)),
    ("pool_specification.resource_files", Special),
    ("pool_specification.resource_files[].blob_source", Special),
    ("pool_specification.resource_files[].file_path", Special),
    ("pool_specification.resource_files[].file_mode", Special),
    ("pool_specification.ssh", Same),
    ("pool_specification.ssh.username", Same),
    ("pool_specification.ssh.expiry_days", Same),
    ("pool_specification.ssh.ssh_public_key", Same),
    ("pool_specification.ssh.ssh_public_key_data", Same),
    ("pool_specification.ssh.ssh_private_key", Warned("`shipyard pool ssh` uses your own ssh key and agent")),
    ("pool_specification.ssh.generate_docker_tunnel_script", Warned("no docker tunnel script is generated")),
    ("pool_specification.ssh.generated_file_export_path", Warned("no ssh files are exported")),
    ("pool_specification.ssh.hpn_server_swap", Warned("the node's sshd is not replaced")),
    ("pool_specification.ssh.allow_docker_access", Warned("node users are not added to the docker group")),
    ("pool_specification.rdp", Warned("RDP users on Windows nodes are not created")),
    ("pool_specification.remote_access_control", Refused("inbound NAT rules cannot be set by shipyard; ignoring allow/deny would open access you closed")),
    ("pool_specification.virtual_network", Special),
    ("pool_specification.virtual_network.arm_subnet_id", Special),
    ("pool_specification.virtual_network.name", Refused(ARM)),
    ("pool_specification.virtual_network.resource_group", Refused(ARM)),
    ("pool_specification.virtual_network.create_nonexistant", Refused(ARM)),
    ("pool_specification.virtual_network.address_space", Refused(ARM)),
    ("pool_specification.virtual_network.subnet", Refused(ARM)),
    ("pool_specification.public_ips", Refused(ARM)),
    ("pool_specification.certificates", Refused("pool certificates are retired by Azure Batch; use Key Vault VM extensions")),
    ("pool_specification.gpu", Warned("the GPU driver comes with the image (microsoft-dsvm/ubuntu-hpc has it)")),
    ("pool_specification.additional_node_prep", Same),
    ("pool_specification.additional_node_prep.commands", Same),
    ("pool_specification.additional_node_prep.commands.pre", Same),
    ("pool_specification.additional_node_prep.commands.post", Same),
    ("pool_specification.additional_node_prep.environment_variables", Special),
    ("pool_specification.additional_node_prep.environment_variables_keyvault_secret_id", Refused(KEYVAULT)),
    ("pool_specification.batch_insights_enabled", Warned(MONITORING)),
    ("pool_specification.prometheus", Warned(MONITORING)),
    ("pool_specification.container_runtimes", Same),
    ("pool_specification.container_runtimes.install", Same),
    ("pool_specification.container_runtimes.default", Same),
    // ---- jobs.yaml, job level
    ("job_specifications", Special),
    ("job_specifications[].id", Same),
    ("job_specifications[].auto_complete", Same),
    ("job_specifications[].environment_variables", Special),
    ("job_specifications[].environment_variables_keyvault_secret_id", Refused(KEYVAULT)),
    ("job_specifications[].max_task_retries", Same),
    ("job_specifications[].max_wall_time", Special),
    ("job_specifications[].retention_time", Special),
    ("job_specifications[].priority", Same),
    ("job_specifications[].user_identity", Special),
    ("job_specifications[].user_identity.default_pool_admin", Special),
    ("job_specifications[].user_identity.specific_user", Special),
    ("job_specifications[].user_identity.specific_user.uid", Special),
    ("job_specifications[].user_identity.specific_user.gid", Special),
    ("job_specifications[].auto_pool", Refused("auto pools are not supported; shipyard creates the pool of pool.yaml")),
    ("job_specifications[].recurrence", Refused("job schedules (recurrence) are not supported")),
    ("job_specifications[].allow_run_on_missing_image", Warned("every image a task uses is pulled by the job preparation task")),
    ("job_specifications[].remove_container_after_exit", Same),
    ("job_specifications[].shm_size", Same),
    ("job_specifications[].infiniband", Special),
    ("job_specifications[].gpus", Special),
    ("job_specifications[].exit_conditions", Special),
    ("job_specifications[].exit_conditions.default", Special),
    ("job_specifications[].exit_conditions.default.exit_options", Special),
    ("job_specifications[].exit_conditions.default.exit_options.job_action", Special),
    ("job_specifications[].exit_conditions.default.exit_options.dependency_action", Special),
    ("job_specifications[].data_volumes", Special),
    ("job_specifications[].shared_data_volumes", Refused(FS)),
    ("job_specifications[].auto_scratch", Refused(FS)),
    ("job_specifications[].job_preparation", Same),
    ("job_specifications[].job_preparation.command", Same),
    ("job_specifications[].job_release", Same),
    ("job_specifications[].job_release.command", Same),
    ("job_specifications[].input_data", Same),
    ("job_specifications[].input_data.azure_storage", Same),
    ("job_specifications[].input_data.azure_storage[].storage_account_settings", Same),
    ("job_specifications[].input_data.azure_storage[].remote_path", Same),
    ("job_specifications[].input_data.azure_storage[].local_path", Same),
    ("job_specifications[].input_data.azure_storage[].is_file_share", Refused("Azure Files shares are not supported as input; use a blob container")),
    ("job_specifications[].input_data.azure_storage[].include", Same),
    ("job_specifications[].input_data.azure_storage[].exclude", Same),
    ("job_specifications[].input_data.azure_storage[].blobxfer_extra_options", Warned("blobxfer is not used; Batch resource files download the blobs")),
    ("job_specifications[].input_data.azure_batch", Refused(INGRESS)),
    ("job_specifications[].default_working_dir", Special),
    ("job_specifications[].restrict_default_bind_mounts", Special),
    ("job_specifications[].force_enable_task_dependencies", Warned("shipyard enables task dependencies whenever a task has depends_on or depends_on_range")),
    ("job_specifications[].autogenerated_task_id", Special),
    ("job_specifications[].autogenerated_task_id.prefix", Special),
    ("job_specifications[].autogenerated_task_id.zfill_width", Special),
    ("job_specifications[].federation_constraints", Warned(FEDERATION)),
    ("job_specifications[].merge_task", Special),
    // ---- jobs.yaml, task level (merge_task shares these)
    ("job_specifications[].tasks", Special),
    ("job_specifications[].tasks[].id", Same),
    ("job_specifications[].tasks[].docker_image", Special),
    ("job_specifications[].tasks[].singularity_image", Special),
    ("job_specifications[].tasks[].singularity_execution", Same),
    ("job_specifications[].tasks[].singularity_execution.cmd", Same),
    ("job_specifications[].tasks[].singularity_execution.elevated", Same),
    ("job_specifications[].tasks[].additional_singularity_options", Same),
    ("job_specifications[].tasks[].additional_docker_run_options", Same),
    ("job_specifications[].tasks[].name", Warned("shipyard names containers itself (Batch Shipyard ignored `name` for multi-instance tasks too)")),
    ("job_specifications[].tasks[].labels", Special),
    ("job_specifications[].tasks[].ports", Special),
    ("job_specifications[].tasks[].entrypoint", Special),
    ("job_specifications[].tasks[].environment_variables", Special),
    ("job_specifications[].tasks[].environment_variables_keyvault_secret_id", Refused(KEYVAULT)),
    ("job_specifications[].tasks[].data_volumes", Special),
    ("job_specifications[].tasks[].shared_data_volumes", Refused(FS)),
    ("job_specifications[].tasks[].resource_files", Special),
    ("job_specifications[].tasks[].resource_files[].blob_source", Special),
    ("job_specifications[].tasks[].resource_files[].file_path", Special),
    ("job_specifications[].tasks[].resource_files[].file_mode", Special),
    ("job_specifications[].tasks[].input_data", Same),
    ("job_specifications[].tasks[].input_data.azure_storage", Same),
    ("job_specifications[].tasks[].input_data.azure_storage[].storage_account_settings", Same),
    ("job_specifications[].tasks[].input_data.azure_storage[].remote_path", Same),
    ("job_specifications[].tasks[].input_data.azure_storage[].local_path", Same),
    ("job_specifications[].tasks[].input_data.azure_storage[].is_file_share", Refused("Azure Files shares are not supported as input; use a blob container")),
    ("job_specifications[].tasks[].input_data.azure_storage[].include", Same),
    ("job_specifications[].tasks[].input_data.azure_storage[].exclude", Same),
    ("job_specifications[].tasks[].input_data.azure_storage[].blobxfer_extra_options", Warned("blobxfer is not used; Batch resource files download the blobs")),
    ("job_specifications[].tasks[].input_data.azure_batch", Refused(INGRESS)),
    ("job_specifications[].tasks[].output_data", Same),
    ("job_specifications[].tasks[].output_data.azure_storage", Same),
    ("job_specifications[].tasks[].output_data.azure_storage[].storage_account_settings", Same),
    ("job_specifications[].tasks[].output_data.azure_storage[].remote_path", Same),
    ("job_specifications[].tasks[].output_data.azure_storage[].local_path", Same),
    ("job_specifications[].tasks[].output_data.azure_storage[].condition", Same),
    ("job_specifications[].tasks[].output_data.azure_storage[].include", Same),
    ("job_specifications[].tasks[].output_data.azure_storage[].exclude", Same),
    ("job_specifications[].tasks[].output_data.azure_storage[].is_file_share", Refused("Azure Files shares are not supported as output; use a blob container")),
    ("job_specifications[].tasks[].output_data.azure_storage[].blobxfer_extra_options", Warned("blobxfer is not used; Batch output files upload the results")),
    ("job_specifications[].tasks[].default_working_dir", Same),
    ("job_specifications[].tasks[].remove_container_after_exit", Same),
    ("job_specifications[].tasks[].shm_size", Same),
    ("job_specifications[].tasks[].infiniband", Same),
    ("job_specifications[].tasks[].gpus", Special),
    ("job_specifications[].tasks[].gpu", Special),
    ("job_specifications[].tasks[].depends_on", Same),
    ("job_specifications[].tasks[].depends_on_range", Same),
    ("job_specifications[].tasks[].max_task_retries", Same),
    ("job_specifications[].tasks[].max_wall_time", Special),
    ("job_specifications[].tasks[].retention_time", Special),
    ("job_specifications[].tasks[].exit_conditions", Special),
    ("job_specifications[].tasks[].exit_conditions.default", Special),
    ("job_specifications[].tasks[].exit_conditions.default.exit_options", Special),
    ("job_specifications[].tasks[].exit_conditions.default.exit_options.job_action", Special),
    ("job_specifications[].tasks[].exit_conditions.default.exit_options.dependency_action", Special),
    ("job_specifications[].tasks[].command", Same),
    ("job_specifications[].tasks[].multi_instance", Special),
    ("job_specifications[].tasks[].multi_instance.num_instances", Special),
    ("job_specifications[].tasks[].multi_instance.coordination_command", Same),
    ("job_specifications[].tasks[].multi_instance.pre_execution_command", Same),
    ("job_specifications[].tasks[].multi_instance.resource_files", Special),
    ("job_specifications[].tasks[].multi_instance.resource_files[].blob_source", Special),
    ("job_specifications[].tasks[].multi_instance.resource_files[].file_path", Special),
    ("job_specifications[].tasks[].multi_instance.resource_files[].file_mode", Special),
    ("job_specifications[].tasks[].multi_instance.mpi", Special),
    ("job_specifications[].tasks[].multi_instance.mpi.runtime", Special),
    ("job_specifications[].tasks[].multi_instance.mpi.options", Special),
    ("job_specifications[].tasks[].multi_instance.mpi.processes_per_node", Same),
    ("job_specifications[].tasks[].multi_instance.mpi.executable_path", Same),
    ("job_specifications[].tasks[].task_factory", Special),
    ("job_specifications[].tasks[].task_factory.parametric_sweep", Same),
    ("job_specifications[].tasks[].task_factory.parametric_sweep.product", Same),
    ("job_specifications[].tasks[].task_factory.parametric_sweep.product[].start", Same),
    ("job_specifications[].tasks[].task_factory.parametric_sweep.product[].stop", Same),
    ("job_specifications[].tasks[].task_factory.parametric_sweep.product[].step", Same),
    ("job_specifications[].tasks[].task_factory.parametric_sweep.product_iterables", Same),
    ("job_specifications[].tasks[].task_factory.parametric_sweep.combinations", Same),
    ("job_specifications[].tasks[].task_factory.parametric_sweep.combinations.iterable", Same),
    ("job_specifications[].tasks[].task_factory.parametric_sweep.combinations.length", Same),
    ("job_specifications[].tasks[].task_factory.parametric_sweep.combinations.replacement", Same),
    ("job_specifications[].tasks[].task_factory.parametric_sweep.permutations", Same),
    ("job_specifications[].tasks[].task_factory.parametric_sweep.permutations.iterable", Same),
    ("job_specifications[].tasks[].task_factory.parametric_sweep.permutations.length", Same),
    ("job_specifications[].tasks[].task_factory.parametric_sweep.zip", Same),
    ("job_specifications[].tasks[].task_factory.random", Same),
    ("job_specifications[].tasks[].task_factory.random.generate", Same),
    ("job_specifications[].tasks[].task_factory.random.seed", Same),
    ("job_specifications[].tasks[].task_factory.random.integer", Same),
    ("job_specifications[].tasks[].task_factory.random.integer.start", Same),
    ("job_specifications[].tasks[].task_factory.random.integer.stop", Same),
    ("job_specifications[].tasks[].task_factory.random.integer.step", Same),
    ("job_specifications[].tasks[].task_factory.random.distribution", Same),
    ("job_specifications[].tasks[].task_factory.random.distribution.*", Same),
    ("job_specifications[].tasks[].task_factory.repeat", Same),
    ("job_specifications[].tasks[].task_factory.autogenerated_task_id", Special),
    ("job_specifications[].tasks[].task_factory.autogenerated_task_id.prefix", Special),
    ("job_specifications[].tasks[].task_factory.autogenerated_task_id.zfill_width", Special),
    ("job_specifications[].tasks[].task_factory.file", Refused("the `file` task factory lists storage containers; generate the tasks with parametric_sweep or write them out")),
    ("job_specifications[].tasks[].task_factory.custom", Refused("the `custom` task factory imports a Python module; shipyard does not run Python")),
];

/// The disposition of `pattern`, when catalogued.
pub fn lookup(pattern: &str) -> Option<Disposition> {
    CATALOGUE
        .iter()
        .find(|(p, _)| *p == pattern)
        .map(|(_, d)| *d)
}

/// Known keys directly below `parent` (`""` for the top level), without wildcards.
pub fn children(parent: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (p, _) in CATALOGUE {
        let rest = if parent.is_empty() {
            Some(*p)
        } else {
            p.strip_prefix(parent).and_then(|r| r.strip_prefix('.'))
        };
        if let Some(rest) = rest {
            if !rest.is_empty() && !rest.contains(['.', '[']) && rest != "*" && !out.contains(&rest)
            {
                out.push(rest);
            }
        }
    }
    out
}

/// The pattern of `key` below `parent`: the literal key when catalogued, else the parent's `*`.
pub fn child_pattern(parent: &str, key: &str) -> Option<String> {
    let join = |k: &str| {
        if parent.is_empty() {
            k.to_string()
        } else {
            format!("{parent}.{k}")
        }
    };
    let literal = join(key);
    if lookup(&literal).is_some() {
        return Some(literal);
    }
    let wild = join("*");
    lookup(&wild).map(|_| wild)
}

/// The pattern a `merge_task` key uses: merge_task takes the keys of a task.
pub fn merge_task_as_task(pattern: &str) -> String {
    pattern.replacen(
        "job_specifications[].merge_task",
        "job_specifications[].tasks[]",
        1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_has_catalogued_parents() {
        for (p, _) in CATALOGUE {
            let mut parent = p.to_string();
            while let Some(i) = parent.rfind(['.', '[']) {
                parent.truncate(i);
                let parent_pattern = parent.trim_end_matches("[]");
                assert!(
                    lookup(parent_pattern).is_some() || parent_pattern.is_empty(),
                    "{p}: parent {parent_pattern} missing"
                );
            }
        }
    }

    #[test]
    fn children_and_wildcards() {
        assert!(children("credentials.batch.aad").contains(&"directory_id"));
        assert_eq!(
            child_pattern("credentials.storage", "mystorage").as_deref(),
            Some("credentials.storage.*")
        );
        assert_eq!(
            child_pattern("credentials.storage", "aad").as_deref(),
            Some("credentials.storage.aad")
        );
        assert_eq!(child_pattern("pool_specification", "vm_sise"), None);
    }
}
