//! The persistent image cache of VM-like pools (`<state dir>/cache/<key>/`).
//!
//! A pool built with [`VmPoolBuilder::images`](crate::VmPoolBuilder::images) gets those images
//! from the host's engine into every node before the node engines start, without a push or a
//! pull per pool:
//!
//! - An entry is keyed by the images' mirror paths and host image IDs and the dockerd binary
//!   (path, size, mtime): a rebuilt host image (new ID) or another dockerd is another entry.
//! - `registry/` is the storage of the pool registries of every pool using the entry: the
//!   images are pushed there once per entry, not once per pool.
//! - `template/docker/` is a dockerd data root that pulled the images from that registry once
//!   (as the node engines do, through the Docker Hub mirror), so docker's distribution
//!   metadata knows every layer. Each node's data root starts from it before its dockerd
//!   starts: `image/` (the small metadata) copied, `overlay2/` copied except the layers'
//!   `diff/` directories, which are read-only bind mounts of the template's made inside the
//!   node's mount namespace (so they vanish with the node, and a node's dockerd cannot change
//!   them: containers write to their own upper directories, and dockerd unmounts a layer's
//!   mounts before removing it). A node's `docker pull` of a cached image is a real pull from
//!   the registry that finds every layer present ("Image is up to date").
//! - `users/<pool id>` names each pool using the entry (with its owner process); teardown
//!   removes the pool's file. Entries beyond the newest [`DEFAULT_CACHE_KEEP`] (by last use)
//!   are removed when a pool is made, except entries a live pool uses or another process holds
//!   locked (`lock`, created exclusively by whoever builds, seeds from or evicts the entry,
//!   with its process; a lock of a dead process is broken).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::cmd::{run, run_cmd, Binaries};
use crate::error::{Result, VmNodeError};
use crate::state::ProcRef;

/// How many cache entries (image sets) are kept by default.
pub const DEFAULT_CACHE_KEEP: usize = 3;

/// The repository path a Docker Hub image has on a mirror (`library/` for official images);
/// `None` for images of another registry (a mirror does not serve those).
pub fn mirror_path(image: &str) -> Option<String> {
    let first = image.split('/').next().unwrap_or_default();
    let has_registry =
        image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry {
        None
    } else if image.contains('/') {
        Some(image.to_string())
    } else {
        Some(format!("library/{image}"))
    }
}

/// `(repository, tag)` of a mirror path (`latest` when it has none); `None` for digests.
fn repo_tag(path: &str) -> Option<(&str, &str)> {
    if path.contains('@') {
        return None;
    }
    let slash = path.rfind('/').map_or(0, |i| i + 1);
    match path[slash..].rfind(':') {
        Some(i) => Some((&path[..slash + i], &path[slash + i + 1..])),
        None => Some((path, "latest")),
    }
}

/// One image of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
pub(crate) struct CachedImage {
    /// As given (what node tasks pull).
    pub image: String,
    /// Its path on the mirror (`library/alpine:3`).
    pub mirror: String,
    /// The host's image ID (`sha256:…`).
    pub id: String,
}

/// What an entry holds (`key.json`); compared in full on every hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub(crate) struct CacheKey {
    pub images: Vec<CachedImage>,
    pub dockerd: String,
}

impl CacheKey {
    /// The images of `images` a mirror can serve, with their host image IDs.
    pub fn resolve(scope: &str, bins: &Binaries, images: &[String]) -> Result<Option<CacheKey>> {
        let mut wanted: Vec<(String, String)> = Vec::new();
        for image in images {
            match mirror_path(image).filter(|p| repo_tag(p).is_some()) {
                Some(m) => wanted.push((image.clone(), m)),
                None => tracing::warn!(
                    image,
                    "not a tagged Docker Hub image: the pool registry cannot mirror it"
                ),
            }
        }
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(None);
        }
        let mut args = vec!["image", "inspect", "-f", "{{.Id}}"];
        args.extend(wanted.iter().map(|(i, _)| i.as_str()));
        let out = run(scope, &bins.docker, &args)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let ids: Vec<&str> = text.split_whitespace().collect();
        if ids.len() != wanted.len() {
            return Err(VmNodeError::InvalidConfig {
                field: "images",
                reason: format!("docker image inspect gave {} ids for {wanted:?}", ids.len()),
            });
        }
        let mut images: Vec<CachedImage> = wanted
            .into_iter()
            .zip(ids)
            .map(|((image, mirror), id)| CachedImage {
                image,
                mirror,
                id: id.to_string(),
            })
            .collect();
        images.sort();
        Ok(Some(CacheKey {
            images,
            dockerd: binary_identity(&bins.dockerd),
        }))
    }

    /// The entry's directory name (16 hex digits).
    pub fn name(&self) -> String {
        let mut h = std::hash::DefaultHasher::new();
        self.hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

/// `path size mtime` of a program (its canonical path when found on `PATH`).
fn binary_identity(program: &Path) -> String {
    let found = if program.components().count() > 1 {
        Some(program.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .find(|c| c.is_file())
        })
    };
    let Some(path) = found.and_then(|p| p.canonicalize().ok()) else {
        return program.display().to_string();
    };
    let meta = std::fs::metadata(&path).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    format!("{} {size} {mtime}", path.display())
}

/// A pool's use of an entry, holding its lock until [`release`](Self::release).
#[derive(Debug)]
pub(crate) struct CacheEntry {
    pub key: CacheKey,
    pub dir: PathBuf,
    lock: Option<EntryLock>,
}

/// An entry's lock: the file `lock`, created exclusively, naming its holder; removed on drop.
#[derive(Debug)]
struct EntryLock {
    path: PathBuf,
}

/// How long [`EntryLock::acquire`] waits for another builder of the same entry.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

impl EntryLock {
    /// Takes the lock at `path` (its directory created as needed); with `wait`, polls while a
    /// live holder has it, else returns `None` at once.
    fn acquire(scope: &str, path: &Path, wait: bool) -> Result<Option<EntryLock>> {
        let started = std::time::Instant::now();
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    let body = serde_json::to_vec(&ProcRef::current()).unwrap_or_default();
                    std::io::Write::write_all(&mut f, &body)
                        .map_err(|e| VmNodeError::io(scope, "writing", path, e))?;
                    return Ok(Some(EntryLock {
                        path: path.to_path_buf(),
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // The entry was evicted (renamed away) meanwhile: make it again.
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| VmNodeError::io(scope, "creating", dir, e))?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read(path)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<ProcRef>(&b).ok());
                    let age = std::fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    let stale = match holder {
                        Some(p) => !p.alive(),
                        // Created but not written yet, unless long ago.
                        None => age > std::time::Duration::from_secs(10),
                    };
                    if stale {
                        tracing::info!(scope, lock = %path.display(), "breaking a stale cache lock");
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                    if !wait {
                        return Ok(None);
                    }
                    if started.elapsed() > LOCK_WAIT {
                        return Err(VmNodeError::io(
                            scope,
                            "waiting for",
                            path,
                            std::io::Error::from(std::io::ErrorKind::TimedOut),
                        ));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(VmNodeError::io(scope, "creating", path, e)),
            }
        }
    }
}

impl Drop for EntryLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Who uses an entry (`users/<pool id>`).
#[derive(Debug, Serialize, Deserialize)]
struct CacheUser {
    owner: ProcRef,
}

impl CacheEntry {
    /// The entry directory `<state>/cache/<name>` and its user file for `pool_id`.
    pub fn paths(state_dir: &Path, key: &CacheKey, pool_id: &str) -> (PathBuf, PathBuf) {
        let dir = state_dir.join("cache").join(key.name());
        let user = dir.join("users").join(pool_id);
        (dir, user)
    }

    /// Opens (creating) the entry, waits for its lock and registers `user`.
    pub fn open(scope: &str, key: CacheKey, dir: PathBuf, user: &Path) -> Result<CacheEntry> {
        let lock = EntryLock::acquire(scope, &dir.join("lock"), true)?;
        let users = dir.join("users");
        std::fs::create_dir_all(&users)
            .map_err(|e| VmNodeError::io(scope, "creating", &users, e))?;
        let body = serde_json::to_vec(&CacheUser {
            owner: ProcRef::current(),
        })
        .map_err(|source| VmNodeError::State {
            path: user.to_path_buf(),
            source,
        })?;
        std::fs::write(user, body).map_err(|e| VmNodeError::io(scope, "writing", user, e))?;
        let used = dir.join("used");
        std::fs::write(&used, b"").map_err(|e| VmNodeError::io(scope, "writing", &used, e))?;
        Ok(CacheEntry { key, dir, lock })
    }

    pub fn registry_storage(&self) -> PathBuf {
        self.dir.join("registry")
    }
    pub fn template(&self) -> PathBuf {
        self.dir.join("template")
    }
    pub fn template_root(&self) -> PathBuf {
        self.template().join("docker")
    }

    /// Whether the template is complete for this key and the registry holds every tag.
    pub fn ready(&self) -> bool {
        let Ok(body) = std::fs::read(self.template().join("ready")) else {
            return false;
        };
        if serde_json::from_slice::<CacheKey>(&body).ok().as_ref() != Some(&self.key) {
            return false;
        }
        self.key.images.iter().all(|i| {
            repo_tag(&i.mirror).is_some_and(|(repo, tag)| {
                self.registry_storage()
                    .join("docker/registry/v2/repositories")
                    .join(repo)
                    .join("_manifests/tags")
                    .join(tag)
                    .is_dir()
            })
        })
    }

    /// Marks the template complete.
    pub fn mark_ready(&self, scope: &str) -> Result<()> {
        let path = self.template().join("ready");
        let body = serde_json::to_vec_pretty(&self.key).map_err(|source| VmNodeError::State {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, body).map_err(|e| VmNodeError::io(scope, "writing", &path, e))
    }

    /// Removes a partial template before it is built again.
    pub fn clear_template(&self, scope: &str) -> Result<()> {
        let t = self.template();
        match std::fs::remove_dir_all(&t) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(VmNodeError::io(scope, "removing", &t, e)),
        }
        std::fs::create_dir_all(&t).map_err(|e| VmNodeError::io(scope, "creating", &t, e))
    }

    /// Lets other pools build, copy or evict the entry.
    pub fn release(&mut self) {
        self.lock = None;
    }
}

/// The layers of a seeded data root: (template `diff/`, the node's empty `diff/`).
pub(crate) type LayerMounts = Vec<(PathBuf, PathBuf)>;

/// Seeds a node's data root (`data_root`, not yet existing) from the template: `image/`
/// copied; `overlay2/` copied except each layer's `diff/`, left empty for
/// [`mount_layers`]. Returns those layers. A template of another storage driver is copied
/// whole (reflinked where the filesystem can).
pub(crate) fn seed_data_root(
    scope: &str,
    bins: &Binaries,
    template: &Path,
    data_root: &Path,
) -> Result<LayerMounts> {
    let cp = |from: &mut dyn Iterator<Item = PathBuf>, to: &Path| {
        let mut cmd = Command::new(&bins.cp);
        cmd.args(["-a", "--reflink=auto"]).args(from).arg(to);
        run_cmd(scope, &mut cmd).map(|_| ())
    };
    let layers_from = template.join("overlay2");
    if !layers_from.is_dir() {
        // Another storage driver: a full copy of the (stopped) template engine's data root.
        tracing::info!(
            scope,
            "the cache template is not overlay2: copying it whole"
        );
        if let Some(parent) = data_root.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| VmNodeError::io(scope, "creating", parent, e))?;
        }
        cp(&mut std::iter::once(template.to_path_buf()), data_root)?;
        return Ok(Vec::new());
    }
    let layers_to = data_root.join("overlay2");
    std::fs::create_dir_all(&layers_to)
        .map_err(|e| VmNodeError::io(scope, "creating", &layers_to, e))?;
    cp(&mut std::iter::once(template.join("image")), data_root)?;
    let read = |d: &Path| -> Result<Vec<std::fs::DirEntry>> {
        let entries = std::fs::read_dir(d).map_err(|e| VmNodeError::io(scope, "reading", d, e))?;
        Ok(entries.flatten().collect())
    };
    let mut mounts = Vec::new();
    for layer in read(&layers_from)? {
        let to = layers_to.join(layer.file_name());
        if layer.file_name() == "l" || !layer.path().is_dir() {
            cp(&mut std::iter::once(layer.path()), &layers_to)?;
            continue;
        }
        std::fs::create_dir(&to).map_err(|e| VmNodeError::io(scope, "creating", &to, e))?;
        let (diff, rest): (Vec<_>, Vec<_>) = read(&layer.path())?
            .into_iter()
            .partition(|c| c.file_name() == "diff");
        if !rest.is_empty() {
            cp(&mut rest.iter().map(std::fs::DirEntry::path), &to)?;
        }
        for d in diff {
            let target = to.join("diff");
            std::fs::create_dir(&target)
                .map_err(|e| VmNodeError::io(scope, "creating", &target, e))?;
            mounts.push((d.path(), target));
        }
    }
    Ok(mounts)
}

/// Mounts each template layer read-only on the node's `diff/`, in the node's mount namespace
/// (`mnt`) only, so the mounts go with the node. Done once the node's dockerd answers: it
/// bind-mounts its data root onto itself at startup, which would hide earlier mounts. dockerd
/// unmounts everything under a layer before removing it (`docker rmi` on a node).
pub(crate) fn mount_layers(
    scope: &str,
    bins: &Binaries,
    mnt: &Path,
    mounts: &[(PathBuf, PathBuf)],
) -> Result<()> {
    for (from, to) in mounts {
        let mut cmd = Command::new(&bins.nsenter);
        cmd.arg(format!("--mount={}", mnt.display()))
            .arg("--")
            .arg(&bins.mount)
            .args(["--bind", "-o", "ro"])
            .arg(from)
            .arg(to);
        run_cmd(scope, &mut cmd)?;
    }
    Ok(())
}

/// Removes entries beyond the newest `keep` (by last use) that no live pool uses and no other
/// process holds locked; `current` is never removed. Returns the removed entry names.
pub(crate) fn evict(state_dir: &Path, keep: usize, current: &Path) -> Vec<String> {
    let root = state_dir.join("cache");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut by_use: BTreeMap<(SystemTime, String), PathBuf> = BTreeMap::new();
    for e in entries.flatten() {
        let dir = e.path();
        if !dir.is_dir() {
            continue;
        }
        if e.file_name().to_string_lossy().starts_with(".evicting-") {
            // Left by an eviction that did not finish.
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        let used = std::fs::metadata(dir.join("used"))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        by_use.insert((used, e.file_name().to_string_lossy().into_owned()), dir);
    }
    let mut removed = Vec::new();
    let count = by_use.len();
    // Oldest first; the newest `keep` stay.
    for ((_, name), dir) in by_use.into_iter().take(count.saturating_sub(keep)) {
        if dir == current || in_use(state_dir, &dir) {
            continue;
        }
        let Ok(Some(lock)) = EntryLock::acquire("image cache", &dir.join("lock"), false) else {
            continue;
        };
        if in_use(state_dir, &dir) {
            continue;
        }
        // Renamed away first, so a pool opening the entry meanwhile makes a new one.
        let gone = root.join(format!(".evicting-{name}-{}", std::process::id()));
        if std::fs::rename(&dir, &gone).is_err() {
            continue;
        }
        drop(lock);
        match std::fs::remove_dir_all(&gone) {
            Ok(()) => {
                tracing::info!(entry = name, "removed an image cache entry");
                removed.push(name);
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a cache entry")
            }
        }
    }
    removed
}

/// Whether a pool uses the entry: its owner lives or its pool directory (nodes not yet swept)
/// is still there. Other user files are removed.
fn in_use(state_dir: &Path, dir: &Path) -> bool {
    let Ok(users) = std::fs::read_dir(dir.join("users")) else {
        return false;
    };
    let mut live = false;
    for u in users.flatten() {
        let owner = std::fs::read(u.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<CacheUser>(&b).ok())
            .map(|c| c.owner);
        if owner.is_some_and(|o| o.alive()) || state_dir.join("pools").join(u.file_name()).exists()
        {
            live = true;
        } else {
            let _ = std::fs::remove_file(u.path());
        }
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_paths_of_hub_images_and_none_for_other_registries() {
        assert_eq!(
            mirror_path("shipyard/mpi:bookworm").as_deref(),
            Some("shipyard/mpi:bookworm")
        );
        assert_eq!(mirror_path("alpine:3").as_deref(), Some("library/alpine:3"));
        assert_eq!(mirror_path("ghcr.io/a/b:1"), None);
        assert_eq!(mirror_path("localhost:5000/a"), None);
    }

    #[test]
    fn repo_and_tag_of_mirror_paths() {
        assert_eq!(
            repo_tag("shipyard/mpi:bookworm"),
            Some(("shipyard/mpi", "bookworm"))
        );
        assert_eq!(
            repo_tag("library/alpine"),
            Some(("library/alpine", "latest"))
        );
        assert_eq!(repo_tag("library/alpine@sha256:00"), None);
    }

    #[test]
    fn a_key_names_its_images_and_engine_and_changes_with_an_image_id() {
        let key = |id: &str| CacheKey {
            images: vec![CachedImage {
                image: "alpine:3".into(),
                mirror: "library/alpine:3".into(),
                id: id.into(),
            }],
            dockerd: "/usr/sbin/dockerd 1 2".into(),
        };
        assert_eq!(key("sha256:aa").name(), key("sha256:aa").name());
        assert_ne!(key("sha256:aa").name(), key("sha256:bb").name());
        assert_eq!(key("sha256:aa").name().len(), 16);
    }

    #[test]
    fn a_held_lock_excludes_and_a_dead_holders_lock_is_broken() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let path = dir.path().join("entry/lock");
        let first = EntryLock::acquire("t", &path, false);
        assert!(matches!(first, Ok(Some(_))), "{first:?}");
        assert!(matches!(EntryLock::acquire("t", &path, false), Ok(None)));
        drop(first);
        assert!(!path.exists(), "released on drop");
        let dead = ProcRef {
            start: ProcRef::current().start + 1,
            ..ProcRef::current()
        };
        let body = serde_json::to_vec(&dead).unwrap_or_default();
        assert!(std::fs::write(&path, body).is_ok());
        assert!(matches!(EntryLock::acquire("t", &path, false), Ok(Some(_))));
    }

    #[test]
    fn eviction_keeps_the_newest_the_current_and_entries_in_use() {
        let Ok(state) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let root = state.path().join("cache");
        let mk = |name: &str, age_s: u64, user: Option<ProcRef>| {
            let d = root.join(name);
            assert!(std::fs::create_dir_all(d.join("users")).is_ok());
            let used = std::fs::File::create(d.join("used"));
            let Ok(used) = used else { panic!("used") };
            let t = SystemTime::now() - std::time::Duration::from_secs(age_s);
            assert!(used.set_modified(t).is_ok());
            if let Some(owner) = user {
                let body = serde_json::to_vec(&CacheUser { owner });
                let Ok(body) = body else { panic!("json") };
                assert!(std::fs::write(d.join("users/p"), body).is_ok());
            }
            d
        };
        let dead = ProcRef {
            start: ProcRef::current().start + 1,
            ..ProcRef::current()
        };
        mk("old-in-use", 500, Some(ProcRef::current()));
        mk("old-dead-user", 400, Some(dead));
        let current = mk("oldest-current", 600, None);
        mk("new1", 10, None);
        mk("new2", 5, None);
        let removed = evict(state.path(), 2, &current);
        assert_eq!(removed, vec!["old-dead-user".to_string()]);
        for kept in ["old-in-use", "oldest-current", "new1", "new2"] {
            assert!(root.join(kept).is_dir(), "{kept} was removed");
        }
    }
}
