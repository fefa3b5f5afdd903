//! The external programs the crate runs, and one way of running them.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::error::{Result, VmNodeError};

/// Paths (or names looked up in `PATH`) of the programs the crate runs. Override any of them
/// with the `VmPoolBuilder::binaries` builder method, e.g. to use a dockerd from a different
/// package.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Binaries {
    /// iproute2's `ip`.
    pub ip: PathBuf,
    /// util-linux `nsenter`.
    pub nsenter: PathBuf,
    /// util-linux `unshare`.
    pub unshare: PathBuf,
    /// util-linux `mount`.
    pub mount: PathBuf,
    /// util-linux `umount`.
    pub umount: PathBuf,
    /// `iptables`.
    pub iptables: PathBuf,
    /// `iptables-restore` (a bridge's rules, inserted and deleted all at once).
    pub iptables_restore: PathBuf,
    /// `dockerd`.
    pub dockerd: PathBuf,
    /// The `docker` CLI (image save/load/pull/push).
    pub docker: PathBuf,
    /// `kill` (signals to processes that are not this process's children).
    pub kill: PathBuf,
    /// Debian's `docker-registry` (distribution 2.x).
    pub registry: PathBuf,
    /// coreutils `cp` (seeding node data roots from the image cache).
    pub cp: PathBuf,
}

impl Default for Binaries {
    fn default() -> Self {
        Binaries {
            ip: "ip".into(),
            nsenter: "nsenter".into(),
            unshare: "unshare".into(),
            mount: "mount".into(),
            umount: "umount".into(),
            iptables: "iptables".into(),
            iptables_restore: "iptables-restore".into(),
            dockerd: "dockerd".into(),
            docker: "docker".into(),
            kill: "kill".into(),
            registry: "docker-registry".into(),
            cp: "cp".into(),
        }
    }
}

/// Whether `program` is an executable file: as a path when it has a `/`, else on `PATH`.
pub fn is_executable(program: &Path) -> bool {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        })
    };
    if program.components().count() > 1 {
        return executable(program);
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| executable(&d.join(program))))
}

impl Binaries {
    /// Every program, with the Debian package that ships it.
    pub fn programs(&self) -> [(&Path, &'static str); 12] {
        [
            (&self.ip, "iproute2"),
            (&self.nsenter, "util-linux"),
            (&self.unshare, "util-linux"),
            (&self.mount, "mount"),
            (&self.umount, "mount"),
            (&self.iptables, "iptables"),
            (&self.iptables_restore, "iptables"),
            (&self.dockerd, "docker.io"),
            (&self.docker, "docker.io"),
            (&self.kill, "procps"),
            (&self.registry, "docker-registry"),
            (&self.cp, "coreutils"),
        ]
        .map(|(p, pkg)| (p.as_path(), pkg))
    }

    /// The programs that cannot be run here (see [`is_executable`]), with their packages.
    pub fn missing(&self) -> Vec<(&Path, &'static str)> {
        self.programs()
            .into_iter()
            .filter(|(p, _)| !is_executable(p))
            .collect()
    }

    /// Sets the `ip` binary.
    pub fn ip(mut self, p: impl Into<PathBuf>) -> Self {
        self.ip = p.into();
        self
    }
    /// Sets the `nsenter` binary.
    pub fn nsenter(mut self, p: impl Into<PathBuf>) -> Self {
        self.nsenter = p.into();
        self
    }
    /// Sets the `unshare` binary.
    pub fn unshare(mut self, p: impl Into<PathBuf>) -> Self {
        self.unshare = p.into();
        self
    }
    /// Sets the `iptables` binary.
    pub fn iptables(mut self, p: impl Into<PathBuf>) -> Self {
        self.iptables = p.into();
        self
    }
    /// Sets the `dockerd` binary.
    pub fn dockerd(mut self, p: impl Into<PathBuf>) -> Self {
        self.dockerd = p.into();
        self
    }
    /// Sets the `docker` CLI binary.
    pub fn docker(mut self, p: impl Into<PathBuf>) -> Self {
        self.docker = p.into();
        self
    }
    /// Sets the `docker-registry` binary.
    pub fn registry(mut self, p: impl Into<PathBuf>) -> Self {
        self.registry = p.into();
        self
    }
}

/// The command line of `cmd`, for error messages and logs.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub(crate) fn status_text(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(c) => format!("exit code {c}"),
        None => "killed by a signal".to_string(),
    }
}

/// Runs `program args…` to completion; a non-zero exit is a [`VmNodeError::Command`].
pub(crate) fn run<I, S>(scope: &str, program: &PathBuf, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_cmd(scope, &mut cmd)
}

/// Runs a prepared command to completion; a non-zero exit is a [`VmNodeError::Command`].
pub(crate) fn run_cmd(scope: &str, cmd: &mut Command) -> Result<Output> {
    let command = describe(cmd);
    tracing::debug!(scope, command, "running");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| VmNodeError::Spawn {
            scope: scope.to_string(),
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(VmNodeError::Command {
            scope: scope.to_string(),
            command,
            status: status_text(out.status),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Runs a cleanup command; failures are logged, not returned (teardown goes on).
pub(crate) fn run_quiet<I, S>(scope: &str, program: &PathBuf, args: I) -> bool
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    match run(scope, program, args) {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(error = %e, "cleanup step failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_is_not_there_is_missing_with_its_package() {
        let b = Binaries::default().ip("/nonexistent/ip").dockerd("/bin/sh");
        let missing = b.missing();
        assert!(
            missing.contains(&(Path::new("/nonexistent/ip"), "iproute2")),
            "{missing:?}"
        );
        assert!(!missing.iter().any(|(p, _)| *p == Path::new("/bin/sh")));
        assert!(is_executable(Path::new("sh")), "sh is on PATH");
        let plain = std::env::temp_dir().join(format!("vm-node-plain-{}", std::process::id()));
        std::fs::write(&plain, "not a program").expect("write");
        assert!(!is_executable(&plain), "a 0644 file is not a program");
        let _ = std::fs::remove_file(&plain);
    }
}
