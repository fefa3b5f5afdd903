//! Who owns a run: the process (pid, start time, pid namespace) and the host (machine id and
//! boot id). Docker labels and job records carry it, so the sweep and the reconciliation of
//! records judge a run dead only when its owner is provably gone.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::docker::labels;

/// The process and host that run a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunOwner {
    /// Process id.
    pub pid: u32,
    /// Start time of the process (field 22 of `/proc/<pid>/stat`), telling a recycled pid apart.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// Pid namespace (`pid:[inode]`).
    #[serde(default)]
    pub pid_ns: Option<String>,
    /// Host identity, `<machine-id>/<boot-id>`: a pid means nothing on another host or boot.
    #[serde(default)]
    pub host: Option<String>,
}

/// What can be seen of a pid from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PidProbe {
    /// `/proc/<pid>` is readable: the process exists and started at this time.
    Visible(u64),
    /// The process exists but `/proc/<pid>` cannot be read (`hidepid`, or kill answers EPERM).
    Invisible,
    /// No such process.
    Gone,
}

/// Probes `pid`: `/proc` first, then `kill(pid, 0)` (ESRCH is the only proof of absence).
pub(crate) fn probe_pid(pid: u32) -> PidProbe {
    if let Some(start) = pid_start_time(pid) {
        return PidProbe::Visible(start);
    }
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return PidProbe::Gone;
    };
    match rustix::process::test_kill_process(p) {
        Err(rustix::io::Errno::SRCH) => PidProbe::Gone,
        // Exists (Ok), or exists and is not ours to signal (EPERM), or unknown: alive.
        _ => PidProbe::Invisible,
    }
}

/// The start time of a process (field 22 of `/proc/<pid>/stat`), if it can be read.
pub(crate) fn pid_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// This process's pid namespace (`pid:[inode]`), if readable.
pub(crate) fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|p| p.display().to_string())
}

/// This host's identity: `/etc/machine-id` and `/proc/sys/kernel/random/boot_id`.
pub(crate) fn host_id() -> Option<String> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let machine = read("/etc/machine-id").or_else(|| read("/var/lib/dbus/machine-id"));
    let boot = read("/proc/sys/kernel/random/boot_id");
    match (machine, boot) {
        (None, None) => None,
        (m, b) => Some(format!(
            "{}/{}",
            m.unwrap_or_else(|| "-".into()),
            b.unwrap_or_else(|| "-".into())
        )),
    }
}

impl RunOwner {
    /// This process on this host.
    pub fn current() -> Self {
        let pid = std::process::id();
        RunOwner {
            pid,
            pid_start: pid_start_time(pid),
            pid_ns: pid_namespace(),
            host: host_id(),
        }
    }

    /// The owner recorded in Docker labels, if they name a pid.
    pub(crate) fn from_labels(l: &HashMap<String, String>) -> Option<Self> {
        Some(RunOwner {
            pid: l.get(labels::PID)?.parse().ok()?,
            pid_start: l.get(labels::PID_START).and_then(|s| s.parse().ok()),
            pid_ns: l.get(labels::PID_NS).cloned(),
            host: l.get(labels::HOST).cloned(),
        })
    }

    /// Whether the owner may still be running. Only provable death counts: another host or
    /// boot, another pid namespace, or an invisible pid are all judged alive.
    pub fn alive(&self) -> bool {
        self.alive_with(host_id().as_deref(), pid_namespace().as_deref(), probe_pid)
    }

    pub(crate) fn alive_with(
        &self,
        our_host: Option<&str>,
        our_ns: Option<&str>,
        probe: impl Fn(u32) -> PidProbe,
    ) -> bool {
        if let (Some(theirs), Some(ours)) = (self.host.as_deref(), our_host) {
            if theirs != ours {
                return true;
            }
        }
        if let (Some(theirs), Some(ours)) = (self.pid_ns.as_deref(), our_ns) {
            if theirs != ours {
                return true;
            }
        }
        match (probe(self.pid), self.pid_start) {
            (PidProbe::Gone, _) => false,
            (PidProbe::Invisible, _) => true,
            (PidProbe::Visible(now), Some(rec)) => now == rec,
            (PidProbe::Visible(_), None) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pid: u32, start: Option<u64>, host: Option<&str>) -> RunOwner {
        RunOwner {
            pid,
            pid_start: start,
            pid_ns: None,
            host: host.map(str::to_owned),
        }
    }

    #[test]
    fn invisible_pid_is_alive_gone_pid_is_dead() {
        let o = owner(4242, Some(7), Some("m/b"));
        assert!(o.alive_with(Some("m/b"), None, |_| PidProbe::Invisible));
        assert!(!o.alive_with(Some("m/b"), None, |_| PidProbe::Gone));
        assert!(o.alive_with(Some("m/b"), None, |_| PidProbe::Visible(7)));
        assert!(
            !o.alive_with(Some("m/b"), None, |_| PidProbe::Visible(8)),
            "a recycled pid is not the owner"
        );
    }

    #[test]
    fn another_host_or_boot_is_never_judged_dead() {
        let o = owner(4242, Some(7), Some("other-machine/b"));
        assert!(o.alive_with(Some("m/b"), None, |_| PidProbe::Gone));
        let rebooted = owner(4242, Some(7), Some("m/old-boot"));
        assert!(rebooted.alive_with(Some("m/b"), None, |_| PidProbe::Gone));
    }

    #[test]
    fn probe_sees_self_and_a_reaped_child_is_gone() {
        let me = std::process::id();
        assert!(matches!(probe_pid(me), PidProbe::Visible(_)));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        assert_eq!(probe_pid(pid), PidProbe::Gone);
        assert!(RunOwner::current().alive());
        let h = host_id().expect("this host has a boot id");
        assert!(h.contains('/'), "{h}");
    }
}
