//! The external programs the crate runs, and one way of running them.

use std::ffi::OsStr;
use std::path::PathBuf;
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
    /// `dockerd`.
    pub dockerd: PathBuf,
    /// The `docker` CLI (image save/load/pull/push).
    pub docker: PathBuf,
    /// `kill` (signals to processes that are not this process's children).
    pub kill: PathBuf,
    /// Debian's `docker-registry` (distribution 2.x).
    pub registry: PathBuf,
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
            dockerd: "dockerd".into(),
            docker: "docker".into(),
            kill: "kill".into(),
            registry: "docker-registry".into(),
        }
    }
}

impl Binaries {
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
