//! The per-run SSH client key pair: generated in-process, written with mode 0600 into a private
//! temporary directory, bind-mounted read-only into the nodes, deleted afterwards.
//!
//! The private key never reaches logs, `Debug` output, argv or the container image.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{LocalError, Result};

/// Where the files appear inside the containers.
pub mod layout {
    /// The client's private key (master node only).
    pub const PRIVATE_KEY: &str = "/root/.ssh/id_ed25519";
    /// The ssh client configuration (master node only): port 23, no host-key prompts.
    pub const CLIENT_CONFIG: &str = "/root/.ssh/config";
    /// `authorized_keys` (every node).
    pub const AUTHORIZED_KEYS: &str = "/root/.ssh/authorized_keys";
    /// The port the coordination command's sshd listens on.
    pub const SSHD_PORT: u16 = 23;
}

/// Prefix of the private directories (under the system temp dir) holding a run's keys.
pub(crate) const KEY_DIR_PREFIX: &str = "shipyard-keys-";

/// A run's key pair on disk. Dropping it deletes the directory.
pub struct RunKeys {
    dir: PathBuf,
    public_openssh: String,
}

impl std::fmt::Debug for RunKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunKeys")
            .field("dir", &self.dir)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LocalError::io(path, e))?;
    f.write_all(contents).map_err(|e| LocalError::io(path, e))
}

/// The ssh client configuration mounted on the master.
pub fn client_config() -> String {
    format!(
        "Host *\n  Port {port}\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  \
         StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n  \
         LogLevel ERROR\n  ConnectTimeout 10\n",
        port = layout::SSHD_PORT,
        key = layout::PRIVATE_KEY,
    )
}

impl RunKeys {
    /// Generates a fresh ed25519 pair for run `run_id` and writes it under `base`
    /// (normally [`std::env::temp_dir`]).
    pub fn generate(base: &Path, run_id: &str) -> Result<Self> {
        let mut rng = rand::rngs::OsRng;
        let mut key = ssh_key::PrivateKey::random(&mut rng, ssh_key::Algorithm::Ed25519)
            .map_err(|e| LocalError::Keys(format!("generating an ed25519 key: {e}")))?;
        key.set_comment(format!("shipyard-run-{run_id}"));
        let private = key
            .to_openssh(ssh_key::LineEnding::LF)
            .map_err(|e| LocalError::Keys(format!("encoding the private key: {e}")))?;
        let public_openssh = key
            .public_key()
            .to_openssh()
            .map_err(|e| LocalError::Keys(format!("encoding the public key: {e}")))?;
        let dir = base.join(format!("{KEY_DIR_PREFIX}{run_id}"));
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| LocalError::io(&dir, e))?;
        let keys = RunKeys {
            dir,
            public_openssh,
        };
        // From here on, dropping `keys` removes the directory.
        write_private(&keys.private_key_path(), private.as_bytes())?;
        write_private(
            &keys.authorized_keys_path(),
            format!("{}\n", keys.public_openssh).as_bytes(),
        )?;
        write_private(&keys.client_config_path(), client_config().as_bytes())?;
        write_private(
            &keys.dir.join("id_ed25519.pub"),
            format!("{}\n", keys.public_openssh).as_bytes(),
        )?;
        write_private(
            &keys.dir.join("owner.pid"),
            std::process::id().to_string().as_bytes(),
        )?;
        Ok(keys)
    }

    /// The private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Host path of the private key file.
    pub fn private_key_path(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// Host path of `authorized_keys`.
    pub fn authorized_keys_path(&self) -> PathBuf {
        self.dir.join("authorized_keys")
    }

    /// Host path of the ssh client configuration.
    pub fn client_config_path(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// The public key in OpenSSH format.
    pub fn public_key(&self) -> &str {
        &self.public_openssh
    }

    /// Read-only bind specs (`host:container:ro`) for a node: `authorized_keys` everywhere, the
    /// private key and client configuration only where `master` (or the job asks for all).
    pub fn binds(&self, master: bool, mount: &KeyMount) -> Vec<String> {
        let ro = |host: PathBuf, ctr: &str| format!("{}:{ctr}:ro", host.display());
        match mount {
            KeyMount::RootSsh => {
                let mut b = vec![ro(self.authorized_keys_path(), layout::AUTHORIZED_KEYS)];
                if master {
                    b.push(ro(self.private_key_path(), layout::PRIVATE_KEY));
                    b.push(ro(self.client_config_path(), layout::CLIENT_CONFIG));
                }
                b
            }
            KeyMount::Directory(dir) => {
                use shipyard_runtime::ssh as rs;
                let at = |f: &str| format!("{dir}/{f}");
                let private = if master {
                    self.private_key_path()
                } else {
                    // The native coordination installs all four files; a node that launches
                    // nothing gets an empty private key.
                    PathBuf::from("/dev/null")
                };
                vec![
                    ro(self.authorized_keys_path(), &at(rs::AUTHORIZED_KEYS_FILE)),
                    ro(self.dir.join("id_ed25519.pub"), &at(rs::PUBLIC_KEY_FILE)),
                    ro(self.client_config_path(), &at(rs::CLIENT_CONFIG_FILE)),
                    ro(private, &at(rs::PRIVATE_KEY_FILE)),
                ]
            }
        }
    }
}

/// Where a node sees the run's key files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KeyMount {
    /// Directly in `/root/.ssh` ([`layout`]); the coordination command only starts sshd.
    #[default]
    RootSsh,
    /// As the files of the docker runtime's key directory (`id_ed25519`, `id_ed25519.pub`,
    /// `authorized_keys`, `config`) in this container directory, from which a native plan's
    /// coordination command installs them into `/root/.ssh`.
    Directory(String),
}

impl Drop for RunKeys {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not delete the run's key directory");
            }
        }
    }
}

/// Removes key directories under `base` whose owning process is gone. Returns how many.
pub(crate) fn sweep_key_dirs(base: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut removed = 0;
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(KEY_DIR_PREFIX) {
            continue;
        }
        let pid = std::fs::read_to_string(entry.path().join("owner.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let alive = pid.is_some_and(crate::sweep::pid_alive);
        if !alive && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_private_and_deleted_on_drop() {
        let base = tempfile::tempdir().unwrap();
        let keys = RunKeys::generate(base.path(), "r1").unwrap();
        let dir = keys.dir().to_path_buf();
        for p in [
            keys.private_key_path(),
            keys.authorized_keys_path(),
            keys.client_config_path(),
        ] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let dmode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        let private = std::fs::read_to_string(keys.private_key_path()).unwrap();
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(keys.public_key().starts_with("ssh-ed25519 "));
        let auth = std::fs::read_to_string(keys.authorized_keys_path()).unwrap();
        assert_eq!(auth.trim(), keys.public_key());
        let dbg = format!("{keys:?}");
        assert!(!dbg.contains("PRIVATE KEY") && dbg.contains("redacted"));
        assert_eq!(keys.binds(false, &KeyMount::RootSsh).len(), 1);
        assert!(keys
            .binds(true, &KeyMount::RootSsh)
            .iter()
            .all(|b| b.ends_with(":ro")));
        let d = KeyMount::Directory("/k".into());
        let worker = keys.binds(false, &d);
        assert!(
            worker.contains(&"/dev/null:/k/id_ed25519:ro".to_string()),
            "{worker:?}"
        );
        let master = keys.binds(true, &d);
        assert!(master
            .iter()
            .any(|b| b.ends_with("/id_ed25519:/k/id_ed25519:ro")));
        drop(keys);
        assert!(!dir.exists());
    }
}
