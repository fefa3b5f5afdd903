//! Batch output files: uploading a task's `outputFiles` after it ran.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use shipyard_batch_api::models::{OutputFile, OutputFileUploadCondition};

use crate::client::BlobClient;
use crate::error::{Result, StorageError};
use crate::location::SasUrl;

/// How the task process ended, for `uploadCondition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcome {
    /// It exited with code 0.
    Success,
    /// It exited non-zero (or could not run).
    Failure,
}

impl TaskOutcome {
    /// `Success` for exit code 0, `Failure` otherwise.
    pub fn from_exit_code(code: i32) -> TaskOutcome {
        if code == 0 {
            TaskOutcome::Success
        } else {
            TaskOutcome::Failure
        }
    }
}

/// Whether `condition` asks for an upload after `outcome`; `None` for an unknown condition.
pub fn should_upload(condition: &OutputFileUploadCondition, outcome: TaskOutcome) -> Option<bool> {
    match condition {
        OutputFileUploadCondition::TaskSuccess => Some(outcome == TaskOutcome::Success),
        OutputFileUploadCondition::TaskFailure => Some(outcome == TaskOutcome::Failure),
        OutputFileUploadCondition::TaskCompletion => Some(true),
        _ => None,
    }
}

fn has_wildcard(segment: &str) -> bool {
    segment.contains(['*', '?', '['])
}

/// A `filePattern` resolved against a working directory: the literal directory it starts in,
/// and the glob of the rest (`None` for a pattern naming one file).
#[derive(Debug)]
pub struct FilePattern {
    base: PathBuf,
    glob: Option<GlobMatcher>,
}

impl FilePattern {
    /// Splits `pattern` (absolute, or relative to `working_dir`) at its first segment with a
    /// wildcard (`*`, `**`, `?`, `[...]`). `*` and `?` do not cross `/`; `**` matches any
    /// number of directories.
    pub fn new(pattern: &str, working_dir: &Path) -> Result<FilePattern> {
        let invalid = |reason: String| StorageError::InvalidOutputFile {
            pattern: pattern.to_string(),
            reason,
        };
        if pattern.trim().is_empty() {
            return Err(invalid("the pattern is empty".to_string()));
        }
        let normalized = pattern.replace('\\', "/");
        let segments: Vec<&str> = normalized.split('/').collect();
        let first_wild = segments.iter().position(|s| has_wildcard(s));
        let literal = &segments[..first_wild.unwrap_or(segments.len())];
        let mut base = working_dir.to_path_buf();
        let literal_path = literal.join("/");
        if normalized.starts_with('/') {
            base = PathBuf::from("/");
        }
        for s in literal.iter().filter(|s| !s.is_empty() && **s != ".") {
            base.push(s);
        }
        let glob = match first_wild {
            None if literal_path.ends_with('/') => {
                return Err(invalid(
                    "the pattern names a directory, not files".to_string(),
                ))
            }
            None => None,
            Some(i) => {
                let rest = segments[i..].join("/");
                let g = globset::GlobBuilder::new(&rest)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| invalid(e.to_string()))?;
                Some(Glob::compile_matcher(&g))
            }
        };
        Ok(FilePattern { base, glob })
    }

    /// Whether the pattern has wildcards (then `path` is a virtual directory).
    pub fn is_wildcard(&self) -> bool {
        self.glob.is_some()
    }

    /// The matching files, each with its path relative to the pattern's literal directory
    /// (`/`-separated), sorted. A single-file pattern yields its file if it exists.
    pub fn matches(&self) -> Result<Vec<(PathBuf, String)>> {
        let Some(glob) = &self.glob else {
            let name = self
                .base
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Ok(if self.base.is_file() {
                vec![(self.base.clone(), name)]
            } else {
                vec![]
            });
        };
        let mut out = Vec::new();
        if self.base.is_dir() {
            walk(&self.base, "", &mut |path, rel| {
                if glob.is_match(rel) {
                    out.push((path.to_path_buf(), rel.to_string()));
                }
            })?;
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }
}

fn walk(dir: &Path, rel: &str, found: &mut dyn FnMut(&Path, &str)) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("listing", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child_rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let path = entry.path();
        // Follows symlinks, as a task's files are read through them.
        if path.is_dir() {
            walk(&path, &child_rel, found)?;
        } else if path.is_file() {
            found(&path, &child_rel);
        }
    }
    Ok(())
}

/// The blob name of a matched file: for a wildcard pattern `path` is a virtual directory put
/// before the file's path relative to the pattern's literal directory; for a single file `path`
/// is the blob name. Without `path`, the relative path (wildcards) or the file name is used.
pub fn blob_name(path: Option<&str>, wildcard: bool, relative: &str) -> String {
    match path.map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) {
        Some(p) if wildcard => format!("{p}/{relative}"),
        Some(p) => p.to_string(),
        None => relative.to_string(),
    }
}

/// One uploaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedFile {
    /// The local file.
    pub file: PathBuf,
    /// The blob name in the destination container.
    pub blob: String,
    /// The bytes uploaded.
    pub bytes: u64,
}

/// Uploads `outputs` as Batch does after a task: for each output whose `uploadCondition`
/// matches `outcome`, every file its `filePattern` matches (relative to `working_dir`) goes to
/// `destination.container.containerUrl` under the name [`blob_name`] gives, with its
/// `uploadHeaders`. A pattern matching nothing uploads nothing.
///
/// Stops at the first failure: [`StorageError::Upload`] (naming the file and the blob URL with
/// its SAS removed) or [`StorageError::InvalidOutputFile`]; the engine reports either as a
/// fileUploadError.
pub async fn upload_output_files(
    client: &BlobClient,
    outputs: &[OutputFile],
    working_dir: &Path,
    outcome: TaskOutcome,
) -> Result<Vec<UploadedFile>> {
    let mut uploaded = Vec::new();
    for output in outputs {
        let invalid = |reason: String| StorageError::InvalidOutputFile {
            pattern: output.file_pattern.clone(),
            reason,
        };
        let condition = &output.upload_options.upload_condition;
        match should_upload(condition, outcome) {
            Some(true) => {}
            Some(false) => continue,
            None => return Err(invalid(format!("unknown uploadCondition {condition}"))),
        }
        let dest = output
            .destination
            .container
            .as_ref()
            .ok_or_else(|| invalid("destination.container is missing".to_string()))?;
        let container = SasUrl::parse(&dest.container_url)?;
        let headers: Vec<(String, String)> = dest
            .upload_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone().unwrap_or_default()))
            .collect();
        let pattern = FilePattern::new(&output.file_pattern, working_dir)?;
        for (file, relative) in pattern.matches()? {
            let blob = blob_name(dest.path.as_deref(), pattern.is_wildcard(), &relative);
            let url = container.blob(&blob)?;
            let bytes = client
                .upload_file(&url, &file, &headers)
                .await
                .map_err(|e| StorageError::Upload {
                    file: file.clone(),
                    url: url.redacted(),
                    source: Box::new(e),
                })?;
            tracing::debug!(file = %file.display(), url = %url, bytes, "uploaded output file");
            uploaded.push(UploadedFile { file, blob, bytes });
        }
    }
    Ok(uploaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> std::io::Result<tempfile::TempDir> {
        let d = tempfile::tempdir()?;
        for f in [
            "wd/out/a.txt",
            "wd/out/sub/b.txt",
            "wd/out/sub/deep/c.log",
            "wd/top.txt",
            "stdout.txt",
            "stderr.txt",
        ] {
            let p = d.path().join(f);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(p, f)?;
        }
        Ok(d)
    }

    fn rels(p: &FilePattern) -> Vec<String> {
        p.matches()
            .map(|v| v.into_iter().map(|(_, r)| r).collect())
            .unwrap_or_default()
    }

    #[test]
    fn globs_relative_to_the_literal_directory() -> anyhow::Result<()> {
        let d = tree()?;
        let wd = d.path().join("wd");
        let p = FilePattern::new("out/**/*.txt", &wd)?;
        assert!(p.is_wildcard());
        assert_eq!(rels(&p), ["a.txt", "sub/b.txt"]);
        assert_eq!(rels(&FilePattern::new("out/*", &wd)?), ["a.txt"]);
        assert_eq!(
            rels(&FilePattern::new("**/*", &wd)?),
            [
                "out/a.txt",
                "out/sub/b.txt",
                "out/sub/deep/c.log",
                "top.txt"
            ]
        );
        assert_eq!(
            rels(&FilePattern::new("out/sub/deep/?.log", &wd)?),
            ["c.log"]
        );
        assert_eq!(
            rels(&FilePattern::new("../std*.txt", &wd)?),
            ["stderr.txt", "stdout.txt"]
        );
        let abs = format!("{}/out/**", wd.display());
        assert_eq!(
            rels(&FilePattern::new(&abs, Path::new("/nowhere"))?),
            ["a.txt", "sub/b.txt", "sub/deep/c.log"]
        );
        assert!(rels(&FilePattern::new("missing/**/*", &wd)?).is_empty());
        Ok(())
    }

    #[test]
    fn a_single_file_pattern_is_not_a_wildcard() -> anyhow::Result<()> {
        let d = tree()?;
        let wd = d.path().join("wd");
        let p = FilePattern::new("out/sub/b.txt", &wd)?;
        assert!(!p.is_wildcard());
        assert_eq!(rels(&p), ["b.txt"]);
        assert!(rels(&FilePattern::new("out/none.txt", &wd)?).is_empty());
        assert!(FilePattern::new("out/", &wd).is_err());
        assert!(FilePattern::new("out/[", &wd).is_err());
        Ok(())
    }

    #[test]
    fn path_is_a_prefix_for_wildcards_and_the_name_for_a_file() {
        assert_eq!(
            blob_name(Some("logs/"), true, "sub/b.txt"),
            "logs/sub/b.txt"
        );
        assert_eq!(blob_name(None, true, "sub/b.txt"), "sub/b.txt");
        assert_eq!(
            blob_name(Some("results/final.txt"), false, "b.txt"),
            "results/final.txt"
        );
        assert_eq!(blob_name(None, false, "b.txt"), "b.txt");
        assert_eq!(blob_name(Some(""), false, "b.txt"), "b.txt");
    }

    #[test]
    fn upload_conditions() {
        use OutputFileUploadCondition as C;
        let (s, f) = (TaskOutcome::Success, TaskOutcome::Failure);
        assert_eq!(should_upload(&C::TaskSuccess, s), Some(true));
        assert_eq!(should_upload(&C::TaskSuccess, f), Some(false));
        assert_eq!(should_upload(&C::TaskFailure, f), Some(true));
        assert_eq!(should_upload(&C::TaskFailure, s), Some(false));
        assert_eq!(should_upload(&C::TaskCompletion, f), Some(true));
        assert_eq!(should_upload(&C::Unknown("x".into()), s), None);
        assert_eq!(TaskOutcome::from_exit_code(3), f);
    }
}
