//! Batch resource files: downloading a task's `resourceFiles` before it runs.

use std::path::{Component, Path, PathBuf};

use shipyard_batch_api::models::{url_for_log, ResourceFile};

use crate::client::BlobClient;
use crate::error::{Result, StorageError};
use crate::location::SasUrl;

/// The default mode Batch gives a downloaded file on Linux when `fileMode` is not set.
pub const DEFAULT_FILE_MODE: u32 = 0o770;

/// Turns an `autoStorageContainerName` into a container URL that can read and list (the Batch
/// account's auto-storage account). [`crate::StorageAccount`] implements it with a read+list
/// SAS valid for an hour (or its ready token).
pub trait AutoStorage {
    /// The URL (with SAS) of container `name`.
    fn container_url(&self, name: &str) -> Result<SasUrl>;
}

impl AutoStorage for crate::sas::StorageAccount {
    fn container_url(&self, name: &str) -> Result<SasUrl> {
        let options = crate::sas::SasOptions {
            protocol: Some(self.sas_protocol()),
            ..crate::sas::SasOptions::new(
                crate::sas::SasPermissions::READ_LIST,
                std::time::Duration::from_secs(3600),
            )
        };
        crate::sas::StorageAccount::container_url(self, name, &options)
    }
}

/// One downloaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedFile {
    /// Where it was written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Joins a relative path onto `base`, refusing absolute paths and `..` that would leave it.
pub(crate) fn join_inside(base: &Path, relative: &str) -> Option<PathBuf> {
    let mut out = base.to_path_buf();
    for c in Path::new(relative).components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Parses an octal `fileMode` such as `0755` or `755`.
pub fn parse_file_mode(mode: &str) -> Option<u32> {
    let m = u32::from_str_radix(mode.trim(), 8).ok()?;
    (m <= 0o7777).then_some(m)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| StorageError::io("setting the mode of", path, e))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<()> {
    Ok(())
}

fn invalid(index: usize, reason: impl Into<String>) -> StorageError {
    StorageError::InvalidResourceFile {
        index,
        reason: reason.into(),
    }
}

/// Where each resource file comes from, once its three mutually exclusive sources are checked.
enum Source {
    Http(SasUrl),
    Container(SasUrl),
}

fn source_of(
    index: usize,
    file: &ResourceFile,
    auto_storage: Option<&dyn AutoStorage>,
) -> Result<Source> {
    let wrap = |url: &str, e: StorageError| StorageError::ResourceFile {
        url: url_for_log(url),
        source: Box::new(e),
    };
    match (
        file.http_url.as_deref(),
        file.storage_container_url.as_deref(),
        file.auto_storage_container_name.as_deref(),
    ) {
        (Some(u), None, None) => SasUrl::parse(u).map(Source::Http).map_err(|e| wrap(u, e)),
        (None, Some(u), None) => SasUrl::parse(u)
            .map(Source::Container)
            .map_err(|e| wrap(u, e)),
        (None, None, Some(name)) => {
            let resolver = auto_storage.ok_or_else(|| {
                invalid(
                    index,
                    format!("autoStorageContainerName {name} needs an auto-storage account, and none is configured"),
                )
            })?;
            resolver.container_url(name).map(Source::Container)
        }
        _ => Err(invalid(
            index,
            "exactly one of httpUrl, storageContainerUrl and autoStorageContainerName must be set",
        )),
    }
}

/// Downloads `files` into `task_dir` as Batch does before a task runs:
///
/// - `httpUrl`: GET of the URL into `filePath` (required, relative to `task_dir`);
/// - `storageContainerUrl` / `autoStorageContainerName` (resolved by `auto_storage`): every
///   blob whose name starts with `blobPrefix`, each to `filePath/<blob name>` (`filePath` is an
///   optional directory; the blob's own `/`-separated path is kept);
/// - `fileMode` (octal, default 0770) applied on Unix.
///
/// `filePath` and blob names may not leave `task_dir`. A failure names the resource file's URL
/// with its SAS removed ([`StorageError::ResourceFile`] or [`StorageError::InvalidResourceFile`]):
/// the engine reports it as a preProcessingError.
pub async fn fetch_resource_files(
    client: &BlobClient,
    files: &[ResourceFile],
    task_dir: &Path,
    auto_storage: Option<&dyn AutoStorage>,
) -> Result<Vec<FetchedFile>> {
    let mut fetched = Vec::new();
    for (index, file) in files.iter().enumerate() {
        let mode = match file.file_mode.as_deref() {
            Some(m) => parse_file_mode(m)
                .ok_or_else(|| invalid(index, format!("fileMode {m} is not an octal mode")))?,
            None => DEFAULT_FILE_MODE,
        };
        let before = fetched.len();
        match source_of(index, file, auto_storage)? {
            Source::Http(url) => {
                let rel = file
                    .file_path
                    .as_deref()
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| invalid(index, "filePath is required with httpUrl"))?;
                let dest = join_inside(task_dir, rel).ok_or_else(|| {
                    invalid(index, format!("filePath {rel} leaves the task directory"))
                })?;
                let bytes = client.download_to_file(&url, &dest).await.map_err(|e| {
                    StorageError::ResourceFile {
                        url: url.redacted(),
                        source: Box::new(e),
                    }
                })?;
                fetched.push(FetchedFile { path: dest, bytes });
            }
            Source::Container(url) => {
                let dir = match file.file_path.as_deref() {
                    Some(p) => join_inside(task_dir, p).ok_or_else(|| {
                        invalid(index, format!("filePath {p} leaves the task directory"))
                    })?,
                    None => task_dir.to_path_buf(),
                };
                fetch_container(
                    client,
                    &url,
                    file.blob_prefix.as_deref(),
                    &dir,
                    &mut fetched,
                )
                .await
                .map_err(|e| match e {
                    e @ StorageError::ResourceFile { .. } => e,
                    e => StorageError::ResourceFile {
                        url: url.redacted(),
                        source: Box::new(e),
                    },
                })?;
            }
        }
        for f in &fetched[before..] {
            set_mode(&f.path, mode)?;
        }
    }
    Ok(fetched)
}

async fn fetch_container(
    client: &BlobClient,
    container: &SasUrl,
    prefix: Option<&str>,
    dir: &Path,
    fetched: &mut Vec<FetchedFile>,
) -> Result<()> {
    for blob in client.list_blobs(container, prefix, None).await? {
        // A blob name ending in '/' is a directory marker (Data Lake); nothing to download.
        if blob.name.ends_with('/') {
            continue;
        }
        let dest = join_inside(dir, &blob.name).ok_or_else(|| StorageError::InvalidUrl {
            url: container.redacted(),
            reason: format!("blob name {} would leave the task directory", blob.name),
        })?;
        let url = container.blob(&blob.name)?;
        let bytes =
            client
                .download_to_file(&url, &dest)
                .await
                .map_err(|e| StorageError::ResourceFile {
                    url: url.redacted(),
                    source: Box::new(e),
                })?;
        fetched.push(FetchedFile { path: dest, bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_inside_refuses_escapes() {
        let base = Path::new("/t/wd");
        assert_eq!(join_inside(base, "a/./b"), Some(PathBuf::from("/t/wd/a/b")));
        assert_eq!(join_inside(base, "../x"), None);
        assert_eq!(join_inside(base, "/etc/passwd"), None);
        assert_eq!(join_inside(base, "a/../../x"), None);
    }

    #[test]
    fn file_modes_are_octal() {
        assert_eq!(parse_file_mode("0755"), Some(0o755));
        assert_eq!(parse_file_mode("644"), Some(0o644));
        assert_eq!(parse_file_mode("0899"), None);
        assert_eq!(parse_file_mode("77777"), None);
    }

    #[tokio::test]
    async fn sources_must_be_exactly_one() -> Result<()> {
        let client = BlobClient::new()?;
        let dir = std::env::temp_dir();
        let both = ResourceFile {
            http_url: Some("http://127.0.0.1:9/x".into()),
            storage_container_url: Some("http://127.0.0.1:9/c?sig=s".into()),
            ..Default::default()
        };
        let e = fetch_resource_files(&client, &[both], &dir, None)
            .await
            .err();
        assert!(
            matches!(e, Some(StorageError::InvalidResourceFile { index: 0, .. })),
            "{e:?}"
        );
        let auto = ResourceFile {
            auto_storage_container_name: Some("data".into()),
            ..Default::default()
        };
        let e = fetch_resource_files(&client, &[auto], &dir, None)
            .await
            .err();
        assert!(e.is_some_and(|e| e.to_string().contains("autoStorageContainerName data")));
        Ok(())
    }
}
