//! Task output and state are private to the user: directories this crate creates are 0700 and
//! its files 0600, set explicitly so that the umask does not matter.

use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{LocalError, Result};

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Creates `path` and its missing parents; every directory created here is made 0700
/// (existing ones are left as they are).
pub(crate) fn create_dir_all(path: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut p = Some(path);
    while let Some(dir) = p {
        if dir.as_os_str().is_empty() || dir.is_dir() {
            break;
        }
        missing.push(dir);
        p = dir.parent();
    }
    for dir in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
            Ok(()) => std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
                .map_err(|e| LocalError::io(dir, e))?,
            // Another task created it meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(LocalError::io(dir, e)),
        }
    }
    Ok(())
}

/// Creates (or truncates) `path` as a 0600 file.
pub(crate) fn create_file(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| LocalError::io(path, e))?;
    // A file that existed before keeps its mode through open(): set it.
    f.set_permissions(Permissions::from_mode(FILE_MODE))
        .map_err(|e| LocalError::io(path, e))?;
    Ok(f)
}

/// Makes an existing file 0600 (files created by libraries, e.g. the redb store).
pub(crate) fn restrict_file(path: &Path) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.permissions().mode() & 0o777 != FILE_MODE {
        if let Err(e) = std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE)) {
            tracing::warn!(path = %path.display(), error = %e, "could not make the file private");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn dirs_0700_files_0600_whatever_the_umask() {
        let base = tempfile::tempdir().expect("tempdir");
        // A permissive umask: the modes must not depend on it. (Process-wide, but the
        // other tests of this crate create nothing whose mode they check.)
        let old = rustix::process::umask(rustix::fs::Mode::empty());
        let leaf = base.path().join("state/jobs/j/tasks/t");
        let r = create_dir_all(&leaf);
        let f = create_file(&leaf.join("stdout.txt"));
        std::fs::write(base.path().join("db"), b"x").expect("write");
        restrict_file(&base.path().join("db"));
        rustix::process::umask(old);
        r.expect("dirs");
        drop(f.expect("file"));
        for d in [
            "state",
            "state/jobs",
            "state/jobs/j",
            "state/jobs/j/tasks",
            "state/jobs/j/tasks/t",
        ] {
            assert_eq!(mode(&base.path().join(d)), 0o700, "{d}");
        }
        assert_eq!(mode(&leaf.join("stdout.txt")), 0o600);
        assert_eq!(mode(&base.path().join("db")), 0o600);
        // An existing world-readable file is made private when recreated.
        let old_file = base.path().join("old.txt");
        std::fs::write(&old_file, b"x").expect("write");
        std::fs::set_permissions(&old_file, Permissions::from_mode(0o644)).expect("chmod");
        drop(create_file(&old_file).expect("recreate"));
        assert_eq!(mode(&old_file), 0o600);
    }
}
