//! Every model field that holds a secret (passwords, account and SAS keys, protected extension
//! settings, certificate data, SAS URLs) stays out of `Debug` output, including when the model
//! is nested in a larger request.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use shipyard_batch_models::*;

const SECRET: &str = "S3CRET-VALUE";
const SAS_URL: &str = "https://acct.blob.core.windows.net/c?sv=2024&sig=S3CRET-VALUE";

/// Parses `body` as `T`, checks the secret reached a field, and returns `T`'s `Debug`.
fn debug_of<T: DeserializeOwned + Serialize + std::fmt::Debug>(body: Value) -> String {
    let what = std::any::type_name::<T>();
    let value: T = serde_json::from_value(body).unwrap_or_else(|e| panic!("{what}: {e}"));
    // Unknown keys are ignored on input: prove the secret really landed in a field.
    let wire = serde_json::to_string(&value).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        wire.contains(SECRET),
        "{what}: the secret was not parsed: {wire}"
    );
    let dbg = format!("{value:?}");
    assert!(!dbg.contains(SECRET), "{what} leaks a secret: {dbg}");
    dbg
}

#[test]
fn secret_fields_are_redacted_in_debug() {
    let mount = "m";
    debug_of::<AzureBlobFileSystemConfiguration>(json!({
        "accountName": "a", "containerName": "c", "relativeMountPath": mount,
        "accountKey": SECRET,
    }));
    debug_of::<AzureBlobFileSystemConfiguration>(json!({
        "accountName": "a", "containerName": "c", "relativeMountPath": mount,
        "sasKey": SECRET,
    }));
    debug_of::<CIFSMountConfiguration>(json!({
        "username": "u", "source": "//s/share", "relativeMountPath": mount, "password": SECRET,
    }));
    let dbg = debug_of::<AzureFileShareConfiguration>(json!({
        "accountName": "a", "azureFileUrl": SAS_URL, "accountKey": SECRET,
        "relativeMountPath": mount,
    }));
    assert!(
        dbg.contains("https://acct.blob.core.windows.net/c"),
        "{dbg}"
    );
    debug_of::<VMExtension>(json!({
        "name": "e", "publisher": "p", "type": "t", "protectedSettings": {"key": SECRET},
    }));
    debug_of::<ContainerRegistry>(json!({"username": "u", "password": SECRET}));
    debug_of::<UserAccount>(json!({"name": "u", "password": SECRET}));
    debug_of::<ComputeNodeUser>(json!({"name": "u", "password": SECRET}));
    debug_of::<NodeUpdateUserParameter>(json!({"password": SECRET}));
    debug_of::<CertificateAddParameter>(json!({
        "thumbprint": "t", "thumbprintAlgorithm": "sha1", "data": SECRET, "password": SECRET,
    }));
    debug_of::<ResourceFile>(json!({"storageContainerUrl": SAS_URL}));
    debug_of::<OutputFileBlobContainerDestination>(json!({"containerUrl": SAS_URL}));
    debug_of::<UploadBatchServiceLogsConfiguration>(json!({
        "containerUrl": SAS_URL, "startTime": "2026-11-24T00:00:00Z",
    }));
}

#[test]
fn secrets_nested_in_requests_are_redacted() {
    let registry = json!({"registryServer": "r.io", "username": "u", "password": SECRET});
    let dbg = debug_of::<PoolAddParameter>(json!({
        "id": "p", "vmSize": "standard_d2s_v3",
        "virtualMachineConfiguration": {
            "imageReference": {"publisher": "p", "offer": "o", "sku": "s"},
            "nodeAgentSKUId": "batch.node.ubuntu 22.04",
            "containerConfiguration": {"type": "dockerCompatible", "containerRegistries": [registry]},
        },
        "startTask": {"commandLine": "x", "resourceFiles": [{"httpUrl": SAS_URL, "filePath": "f"}]},
        "userAccounts": [{"name": "u", "password": SECRET,
                          "linuxUserConfiguration": {"sshPrivateKey": SECRET}}],
        "mountConfiguration": [{"cifsMountConfiguration": {
            "username": "u", "source": "//s/x", "relativeMountPath": "m", "password": SECRET}}],
    }));
    assert!(
        dbg.contains("r.io"),
        "non-secret fields stay visible: {dbg}"
    );
    debug_of::<TaskAddParameter>(json!({
        "id": "t", "commandLine": "x",
        "containerSettings": {"imageName": "i", "registry": registry},
        "resourceFiles": [{"httpUrl": SAS_URL, "filePath": "f"}],
        "outputFiles": [{"filePattern": "*.txt",
            "destination": {"container": {"containerUrl": SAS_URL}},
            "uploadOptions": {"uploadCondition": "taskcompletion"}}],
    }));
}

#[test]
fn environment_values_are_redacted_but_names_stay_visible() {
    // shipyard's runtimes deliver the per-job SSH key in a job preparation task's environment.
    let dbg = debug_of::<JobAddParameter>(json!({
        "id": "j", "poolInfo": {"poolId": "p"},
        "jobPreparationTask": {"commandLine": "x", "environmentSettings": [
            {"name": "SHIPYARD_SSH_PRIVATE_KEY", "value": SECRET},
        ]},
        "commonEnvironmentSettings": [{"name": "STORAGE_KEY", "value": SECRET}],
    }));
    assert!(
        dbg.contains("SHIPYARD_SSH_PRIVATE_KEY"),
        "names stay visible: {dbg}"
    );
    assert!(dbg.contains("STORAGE_KEY"), "names stay visible: {dbg}");
    debug_of::<TaskAddParameter>(json!({
        "id": "t", "commandLine": "x",
        "environmentSettings": [{"name": "TOKEN", "value": SECRET}],
    }));
}
