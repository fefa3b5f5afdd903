//! One node: its identity, its engine, and processes run inside it.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::cmd::Binaries;
use crate::error::{Result, VmNodeError};
use crate::pool::{log_tail, ns_files};
use crate::state::{NodeRecord, ProcRef};

#[derive(Debug)]
pub(crate) struct NodeShared {
    pub bins: Binaries,
    pub pool_id: String,
    pub node_root_dir: PathBuf,
}

/// `GET /_ping` on a Docker socket answers `OK`.
pub(crate) fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    s.read_to_string(&mut buf).is_ok() && buf.starts_with("HTTP/1.") && buf.ends_with("OK")
}

/// A node's engine state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeHealth {
    /// dockerd runs and answers.
    Ready,
    /// dockerd is gone or does not answer: the node is unusable.
    Unusable {
        /// Why.
        reason: String,
    },
}

/// One VM-like node of a [`VmPool`](crate::VmPool).
#[derive(Debug, Clone)]
pub struct VmNode {
    name: String,
    address: Ipv4Addr,
    netns: String,
    dir: PathBuf,
    mnt: PathBuf,
    uts: PathBuf,
    dockerd: Option<ProcRef>,
    shared: Arc<NodeShared>,
}

impl VmNode {
    pub(crate) fn new(rec: &NodeRecord, pool_dir: &Path, shared: Arc<NodeShared>) -> VmNode {
        let (mnt, uts) = ns_files(pool_dir, &rec.name);
        VmNode {
            name: rec.name.clone(),
            address: rec.address.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
            netns: rec.netns.clone(),
            dir: rec.dir.clone(),
            mnt,
            uts,
            dockerd: rec.dockerd,
            shared,
        }
    }

    /// The node's name, also its hostname and its name in every node's /etc/hosts (`node-0`).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The node's address on the pool's bridge.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }
    /// The network namespace (`/var/run/netns/<this>`).
    pub fn netns(&self) -> &str {
        &self.netns
    }
    /// The node root as the host sees it (`<state>/pools/<id>/node-N/root`).
    pub fn root_on_host(&self) -> PathBuf {
        self.dir.join("root")
    }
    /// The node root as processes on the node see it (`AZ_BATCH_NODE_ROOT_DIR`), the same path
    /// on every node.
    pub fn root_dir(&self) -> &Path {
        &self.shared.node_root_dir
    }
    /// The engine's socket path (reachable from the host too).
    pub fn docker_socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }
    /// `DOCKER_HOST` for the node's engine (`unix://…`).
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.docker_socket().display())
    }
    /// dockerd's log file.
    pub fn engine_log(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    fn scope(&self) -> String {
        format!("{} of pool {}", self.name, self.shared.pool_id)
    }

    /// Whether the node's dockerd runs and answers.
    pub fn health(&self) -> NodeHealth {
        if !self.dockerd.is_some_and(|p| p.alive()) {
            return NodeHealth::Unusable {
                reason: format!("dockerd exited; log: {}", log_tail(&self.engine_log())),
            };
        }
        if !ping(&self.docker_socket()) {
            return NodeHealth::Unusable {
                reason: format!(
                    "dockerd does not answer on {}",
                    self.docker_socket().display()
                ),
            };
        }
        NodeHealth::Ready
    }

    /// `Ok` when [`health`](Self::health) is ready, else [`VmNodeError::EngineDead`].
    pub fn ensure_ready(&self) -> Result<()> {
        match self.health() {
            NodeHealth::Ready => Ok(()),
            NodeHealth::Unusable { reason } => Err(VmNodeError::EngineDead {
                scope: self.scope(),
                reason,
            }),
        }
    }

    /// The pid of the node's dockerd.
    pub fn engine_pid(&self) -> Option<u32> {
        self.dockerd.map(|p| p.pid)
    }

    /// A command that runs `program` inside the node (network, mount and UTS namespaces) with
    /// `DOCKER_HOST` set to the node's engine.
    pub fn command(&self, program: impl Into<OsString>) -> NodeCommand {
        NodeCommand {
            node: self.clone(),
            program: program.into(),
            args: Vec::new(),
            env: vec![("DOCKER_HOST".into(), self.docker_host().into())],
            env_clear: false,
            cwd: None,
        }
    }
}

/// A process to run inside a node; see [`VmNode::command`].
#[derive(Debug)]
pub struct NodeCommand {
    node: VmNode,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_clear: bool,
    cwd: Option<PathBuf>,
}

impl NodeCommand {
    /// Adds an argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }
    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
    /// Sets an environment variable (e.g. `AZ_BATCH_*`).
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Starts from an empty environment (plus `DOCKER_HOST` and what [`env`](Self::env) sets).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }
    /// The working directory as the node sees it (entered after the mount namespace).
    pub fn current_dir(mut self, p: impl Into<PathBuf>) -> Self {
        self.cwd = Some(p.into());
        self
    }

    /// The `tokio` command (`nsenter … -- program args…`), in its own process group, stdin
    /// closed.
    pub fn into_tokio(self) -> tokio::process::Command {
        let bins = &self.node.shared.bins;
        let mut cmd = tokio::process::Command::new(&bins.nsenter);
        cmd.arg(format!("--net=/var/run/netns/{}", self.node.netns))
            .arg(format!("--mount={}", self.node.mnt.display()))
            .arg(format!("--uts={}", self.node.uts.display()));
        if let Some(cwd) = &self.cwd {
            cmd.arg(format!("--wd={}", cwd.display()));
        }
        cmd.arg("--").arg(&self.program).args(&self.args);
        if self.env_clear {
            cmd.env_clear();
        }
        if self.env_clear && !self.env.iter().any(|(k, _)| k == "PATH") {
            cmd.env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null()).process_group(0).kill_on_drop(true);
        cmd
    }

    /// Starts the process with stdout and stderr captured.
    pub fn spawn(self) -> Result<NodeProcess> {
        let scope = self.node.scope();
        let kill = self.node.shared.bins.kill.clone();
        let command = format!("{} {:?}", self.program.to_string_lossy(), self.args);
        let mut cmd = self.into_tokio();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| VmNodeError::Spawn {
            scope: scope.clone(),
            command,
            source,
        })?;
        let killer = NodeKiller {
            pgid: child.id(),
            kill,
            scope,
        };
        Ok(NodeProcess {
            child: Some(child),
            killer,
        })
    }

    /// Runs the process to completion and returns its exit code and output.
    pub async fn output(self) -> Result<NodeOutput> {
        self.spawn()?.wait().await
    }
}

/// The result of a process run on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOutput {
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

impl NodeOutput {
    /// Standard output as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Standard error as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A running process on a node.
#[derive(Debug)]
pub struct NodeProcess {
    child: Option<tokio::process::Child>,
    killer: NodeKiller,
}

/// Kills a [`NodeProcess`]'s whole process group; usable while another task awaits
/// [`NodeProcess::wait`].
#[derive(Debug, Clone)]
pub struct NodeKiller {
    pgid: Option<u32>,
    kill: PathBuf,
    scope: String,
}

impl NodeKiller {
    /// Sends SIGKILL to the process group.
    pub async fn kill(&self) -> Result<()> {
        let Some(pgid) = self.pgid else { return Ok(()) };
        let mut cmd = std::process::Command::new(&self.kill);
        cmd.args(["-KILL", "--", &format!("-{pgid}")]);
        let scope = self.scope.clone();
        tokio::task::spawn_blocking(move || crate::cmd::run_cmd(&scope, &mut cmd).map(|_| ()))
            .await
            .unwrap_or(Ok(()))
    }
}

impl NodeProcess {
    /// The process id (also its process group id).
    pub fn id(&self) -> Option<u32> {
        self.killer.pgid
    }
    /// A handle that kills the process group.
    pub fn killer(&self) -> NodeKiller {
        self.killer.clone()
    }
    /// Waits for the exit and collects the output.
    pub async fn wait(&mut self) -> Result<NodeOutput> {
        let scope = self.killer.scope.clone();
        let Some(child) = self.child.take() else {
            return Err(VmNodeError::InvalidConfig {
                field: "NodeProcess",
                reason: "already waited for".into(),
            });
        };
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| VmNodeError::Spawn {
                scope,
                command: "waiting for the process".into(),
                source,
            })?;
        Ok(NodeOutput {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}
