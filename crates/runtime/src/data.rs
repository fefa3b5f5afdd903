//! Task data in Azure Storage: `input_data.azure_storage` → Batch resource files
//! (`storageContainerUrl` + `blobPrefix`), `output_data.azure_storage` → Batch `outputFiles`.
//!
//! Container URLs carry a SAS signed from `credentials.storage`; the runtime never sees keys:
//! the caller passes a [`ContainerUrls`] (the CLI's, over `shipyard_storage::StorageAccount::
//! container_url`), and [`attach_data`] sets the values on a finished [`JobPlan`].

use serde::{Deserialize, Serialize};

use crate::batch::{
    OutputFile, OutputFileBlobContainerDestination, OutputFileDestination,
    OutputFileUploadCondition, OutputFileUploadOptions, ResourceFile,
};
use crate::domain::JobSpec;
use crate::error::{Field, RuntimeError};
use crate::plan::JobPlan;

/// `input_data`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputData {
    /// Blobs downloaded before the task (job level: by the job preparation task, per node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub azure_storage: Vec<StorageInput>,
}

/// One `input_data.azure_storage` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageInput {
    /// The `credentials.storage` link name.
    pub storage_account_settings: String,
    /// `container` or `container/virtual/dir` (the blob prefix).
    pub remote_path: String,
    /// Where the blobs land, relative to the task's working directory (default: there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_path: Option<String>,
    /// Not supported by Batch resource files beyond a prefix: must be empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Not supported by Batch resource files: must be empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// `output_data`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputData {
    /// Files uploaded by Batch when the task ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub azure_storage: Vec<StorageOutput>,
}

/// One `output_data.azure_storage` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageOutput {
    /// The `credentials.storage` link name.
    pub storage_account_settings: String,
    /// `container` or `container/virtual/dir`.
    pub remote_path: String,
    /// The directory uploaded (default `$AZ_BATCH_TASK_DIR`, as Batch Shipyard);
    /// `$AZ_BATCH_TASK_WORKING_DIR/...` and `$AZ_BATCH_TASK_DIR/...` are mapped onto Batch's
    /// task-relative patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_path: Option<String>,
    /// File patterns below `local_path` (default every file, `**/*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Batch output files cannot exclude: must be empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// `tasksuccess` (default), `taskfailure` or `taskcompletion`.
    #[serde(default)]
    pub condition: UploadCondition,
}

/// When outputs are uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadCondition {
    /// Exit code 0 (Batch Shipyard's default).
    #[default]
    TaskSuccess,
    /// Non-zero exit code.
    TaskFailure,
    /// Always.
    TaskCompletion,
}

/// What a container URL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and list (resource files).
    Read,
    /// Create and write (output files).
    Write,
}

/// Signs container URLs; the CLI implements it over `credentials.storage`.
pub trait ContainerUrls {
    /// `https://<account>.blob.core.windows.net/<container>?<sas>` for the storage link `link`.
    /// The error names what is missing (an unknown link, a SAS without the permission).
    fn container_url(&self, link: &str, container: &str, access: Access) -> Result<String, String>;
}

fn split_remote(remote: &str) -> (&str, Option<&str>) {
    let r = remote.trim_matches('/');
    match r.split_once('/') {
        Some((c, p)) if !p.is_empty() => (c, Some(p)),
        Some((c, _)) => (c, None),
        None => (r, None),
    }
}

/// A Batch file pattern for `local_path` (relative to the task working directory).
fn local_dir(local: Option<&str>) -> String {
    let l = local.unwrap_or("$AZ_BATCH_TASK_DIR").trim_end_matches('/');
    for (var, rel) in [
        ("$AZ_BATCH_TASK_WORKING_DIR", ""),
        ("${AZ_BATCH_TASK_WORKING_DIR}", ""),
        ("$AZ_BATCH_TASK_DIR", ".."),
        ("${AZ_BATCH_TASK_DIR}", ".."),
    ] {
        if let Some(rest) = l.strip_prefix(var) {
            let rest = rest.trim_start_matches('/');
            return match (rel, rest) {
                ("", r) => r.to_string(),
                (p, "") => p.to_string(),
                (p, r) => format!("{p}/{r}"),
            };
        }
    }
    l.to_string()
}

fn join_pattern(dir: &str, pattern: &str) -> String {
    if dir.is_empty() {
        pattern.to_string()
    } else {
        format!("{dir}/{pattern}")
    }
}

fn url(
    urls: &dyn ContainerUrls,
    at: &Field,
    link: &str,
    container: &str,
    access: Access,
) -> Result<String, RuntimeError> {
    urls.container_url(link, container, access)
        .map_err(|reason| RuntimeError::invalid(at.key("storage_account_settings"), reason))
}

/// Batch resource files of `inputs` (`at` is the `input_data` field, for errors).
pub fn resource_files(
    inputs: &InputData,
    at: &Field,
    urls: &dyn ContainerUrls,
) -> Result<Vec<ResourceFile>, RuntimeError> {
    let mut out = Vec::new();
    for (i, inp) in inputs.azure_storage.iter().enumerate() {
        let eat = at.key("azure_storage").index(i);
        if !inp.include.is_empty() || !inp.exclude.is_empty() {
            return Err(RuntimeError::invalid(
                eat.key(if inp.include.is_empty() {
                    "exclude"
                } else {
                    "include"
                }),
                "Batch downloads a container or a blob prefix: put the prefix in remote_path",
            ));
        }
        let (container, prefix) = split_remote(&inp.remote_path);
        out.push(ResourceFile {
            storage_container_url: Some(url(
                urls,
                &eat,
                &inp.storage_account_settings,
                container,
                Access::Read,
            )?),
            blob_prefix: prefix.map(str::to_string),
            file_path: inp
                .local_path
                .as_deref()
                .map(|l| local_dir(Some(l)))
                .filter(|l| !l.is_empty()),
            ..Default::default()
        });
    }
    Ok(out)
}

/// Batch output files of `outputs` (`at` is the `output_data` field, for errors).
pub fn output_files(
    outputs: &OutputData,
    at: &Field,
    urls: &dyn ContainerUrls,
) -> Result<Vec<OutputFile>, RuntimeError> {
    let mut out = Vec::new();
    for (i, o) in outputs.azure_storage.iter().enumerate() {
        let eat = at.key("azure_storage").index(i);
        if !o.exclude.is_empty() {
            return Err(RuntimeError::invalid(
                eat.key("exclude"),
                "Batch output files cannot exclude files: narrow `include` instead",
            ));
        }
        let (container, prefix) = split_remote(&o.remote_path);
        let container_url = url(
            urls,
            &eat,
            &o.storage_account_settings,
            container,
            Access::Write,
        )?;
        let dir = local_dir(o.local_path.as_deref());
        let default = ["**/*".to_string()];
        let patterns = if o.include.is_empty() {
            &default[..]
        } else {
            &o.include[..]
        };
        for p in patterns {
            out.push(OutputFile {
                file_pattern: join_pattern(&dir, p),
                destination: OutputFileDestination {
                    container: Some(OutputFileBlobContainerDestination {
                        path: prefix.map(str::to_string),
                        container_url: container_url.clone(),
                        ..Default::default()
                    }),
                },
                upload_options: OutputFileUploadOptions {
                    upload_condition: match o.condition {
                        UploadCondition::TaskSuccess => OutputFileUploadCondition::TaskSuccess,
                        UploadCondition::TaskFailure => OutputFileUploadCondition::TaskFailure,
                        UploadCondition::TaskCompletion => {
                            OutputFileUploadCondition::TaskCompletion
                        }
                    },
                },
            });
        }
    }
    Ok(out)
}

/// Sets the storage data of `job` (expanded, see [`JobSpec::expanded`]) on its `plan`: each
/// task's `input_data` as resource files and `output_data` as output files, and the job's
/// `input_data` as resource files of the job preparation task (created, doing nothing else,
/// when the plan has none).
pub fn attach_data(
    plan: &mut JobPlan,
    job: &JobSpec,
    urls: &dyn ContainerUrls,
) -> Result<(), RuntimeError> {
    let at = Field::job(&job.id);
    for (i, task) in job.tasks.iter().enumerate() {
        if task.input_data.is_none() && task.output_data.is_none() {
            continue;
        }
        let id = job.task_id(i);
        let tat = at.key("tasks").index(i);
        let Some(t) = plan.tasks.iter_mut().find(|t| t.id == id) else {
            return Err(RuntimeError::invalid(
                tat,
                "the plan has no task of this id",
            ));
        };
        if let Some(inp) = &task.input_data {
            let files = resource_files(inp, &tat.key("input_data"), urls)?;
            t.resource_files.get_or_insert_with(Vec::new).extend(files);
        }
        if let Some(o) = &task.output_data {
            let files = output_files(o, &tat.key("output_data"), urls)?;
            t.output_files.get_or_insert_with(Vec::new).extend(files);
        }
    }
    if let Some(inp) = &job.input_data {
        let files = resource_files(inp, &at.key("input_data"), urls)?;
        if !files.is_empty() {
            let prep = plan.job.job_preparation_task.get_or_insert_with(|| {
                crate::batch::JobPreparationTask {
                    command_line: "/bin/true".into(),
                    ..Default::default()
                }
            });
            prep.resource_files
                .get_or_insert_with(Vec::new)
                .extend(files);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;
    impl ContainerUrls for Fake {
        fn container_url(&self, link: &str, c: &str, a: Access) -> Result<String, String> {
            if link != "mystorage" {
                return Err(format!("no storage link `{link}` in credentials.storage"));
            }
            let sp = if a == Access::Write { "rcwl" } else { "rl" };
            Ok(format!(
                "https://acct.blob.core.windows.net/{c}?sp={sp}&sig=x"
            ))
        }
    }

    #[test]
    fn inputs_and_outputs_become_batch_files() {
        let o = OutputData {
            azure_storage: vec![StorageOutput {
                storage_account_settings: "mystorage".into(),
                remote_path: "output/openfoam".into(),
                local_path: Some("$AZ_BATCH_TASK_WORKING_DIR/postProcessing".into()),
                include: vec![],
                exclude: vec![],
                condition: UploadCondition::TaskCompletion,
            }],
        };
        let at = Field::job("j").key("tasks").index(0).key("output_data");
        let files = serde_json::to_value(output_files(&o, &at, &Fake).unwrap()).unwrap();
        assert_eq!(
            files,
            serde_json::json!([{
                "filePattern": "postProcessing/**/*",
                "destination": {"container": {
                    "path": "openfoam",
                    "containerUrl": "https://acct.blob.core.windows.net/output?sp=rcwl&sig=x"
                }},
                "uploadOptions": {"uploadCondition": "taskcompletion"}
            }])
        );
        assert_eq!(local_dir(None), "..");
        assert_eq!(
            local_dir(Some("$AZ_BATCH_TASK_DIR/stdout.txt")),
            "../stdout.txt"
        );
        let i = InputData {
            azure_storage: vec![StorageInput {
                storage_account_settings: "mystorage".into(),
                remote_path: "data/case1/".into(),
                local_path: Some("$AZ_BATCH_TASK_WORKING_DIR/case".into()),
                include: vec![],
                exclude: vec![],
            }],
        };
        let at = Field::job("j").key("input_data");
        let rf = serde_json::to_value(resource_files(&i, &at, &Fake).unwrap()).unwrap();
        assert_eq!(
            rf,
            serde_json::json!([{
                "storageContainerUrl": "https://acct.blob.core.windows.net/data?sp=rl&sig=x",
                "blobPrefix": "case1",
                "filePath": "case"
            }])
        );
        let mut bad = i.clone();
        bad.azure_storage[0].storage_account_settings = "other".into();
        let e = resource_files(&bad, &at, &Fake).unwrap_err().to_string();
        assert!(
            e.contains("job.input_data.azure_storage[0].storage_account_settings"),
            "{e}"
        );
        assert!(e.contains("no storage link `other`"), "{e}");
        let mut bad = o.clone();
        bad.azure_storage[0].exclude = vec!["*.tmp".into()];
        let at = Field::job("j").key("tasks").index(0).key("output_data");
        let e = output_files(&bad, &at, &Fake).unwrap_err().to_string();
        assert!(e.contains("output_data.azure_storage[0].exclude"), "{e}");
    }
}
