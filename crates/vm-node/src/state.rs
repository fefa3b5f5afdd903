//! What a pool created, recorded on disk before it is created, so that teardown and
//! [`sweep`](crate::sweep) remove exactly that.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, VmNodeError};

/// A process, identified by pid and its start time (so a reused pid is not mistaken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcRef {
    pub pid: u32,
    pub start: u64,
}

impl ProcRef {
    /// This process.
    pub fn current() -> ProcRef {
        let pid = std::process::id();
        ProcRef {
            pid,
            start: proc_start(pid).unwrap_or(0),
        }
    }

    /// The process `pid`, if it exists.
    pub fn of(pid: u32) -> Option<ProcRef> {
        proc_start(pid).map(|start| ProcRef { pid, start })
    }

    /// True while the process runs (not exited, not a zombie, same start time).
    pub fn alive(&self) -> bool {
        match proc_stat(self.pid) {
            Some((state, start)) => state != 'Z' && state != 'X' && start == self.start,
            None => false,
        }
    }
}

/// (state, start time in clock ticks) from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 of stat is the start time; `rest` starts at field 3.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn proc_start(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, s)| s)
}

/// One node's resources.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    pub name: String,
    pub netns: String,
    pub veth: String,
    pub address: String,
    pub dir: PathBuf,
    pub exec_root: PathBuf,
    pub dockerd: Option<ProcRef>,
}

/// One pool's resources.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PoolRecord {
    pub id: String,
    pub owner: ProcRef,
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    pub subnet_claim: Option<PathBuf>,
    pub bridge: Option<String>,
    /// The iptables rule spec (after `FORWARD`), present once inserted.
    pub forward_rule: Option<Vec<String>>,
    pub ns_dir_mounted: bool,
    pub registries: Vec<ProcRef>,
    pub nodes: Vec<NodeRecord>,
    /// The pool's user file in an image cache entry (`cache/<key>/users/<id>`).
    #[serde(default)]
    pub cache_user: Option<PathBuf>,
    /// The dockerd building a cache template, while it runs.
    #[serde(default)]
    pub template_dockerd: Option<ProcRef>,
}

impl PoolRecord {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("pool.json")
    }

    pub fn scope(&self) -> String {
        format!("pool {}", self.id)
    }

    /// Writes the record atomically.
    pub fn save(&self) -> Result<()> {
        let path = Self::path(&self.dir);
        let tmp = self.dir.join("pool.json.tmp");
        let body = serde_json::to_vec_pretty(self).map_err(|source| VmNodeError::State {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, body)
            .map_err(|e| VmNodeError::io(&self.scope(), "writing", &tmp, e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| VmNodeError::io(&self.scope(), "renaming", &path, e))
    }

    pub fn load(dir: &Path) -> Result<PoolRecord> {
        let path = Self::path(dir);
        let body =
            std::fs::read(&path).map_err(|e| VmNodeError::io("sweep", "reading", &path, e))?;
        serde_json::from_slice(&body).map_err(|source| VmNodeError::State { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(ProcRef::current().alive());
        let Ok(mut child) = std::process::Command::new("true").spawn() else {
            panic!("spawn true")
        };
        let r = ProcRef::of(child.id());
        assert!(child.wait().is_ok());
        assert!(r.is_none_or(|r| !r.alive()));
        let fake = ProcRef {
            start: ProcRef::current().start + 1,
            ..ProcRef::current()
        };
        assert!(
            !fake.alive(),
            "a different start time is a different process"
        );
    }
}
