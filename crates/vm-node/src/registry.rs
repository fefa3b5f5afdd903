//! A pool-local image registry (Debian's `docker-registry`, distribution 2.x).
//!
//! The host's dockerd pushes only to loopback without TLS (it cannot be reconfigured here),
//! while a node's namespace reaches the host only through the bridge. So two registry
//! processes serve one storage directory: a push side on `127.0.0.1:P` and a pull side on the
//! bridge gateway `a.b.c.1:Q`, which the node engines trust with `--insecure-registry`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{describe, Binaries};
use crate::error::{Result, VmNodeError};
use crate::state::{PoolRecord, ProcRef};

/// The pool's registry: where the host pushes and where nodes pull.
#[derive(Debug)]
pub struct Registry {
    push: SocketAddr,
    pull: SocketAddr,
    procs: Vec<ProcRef>,
    children: Vec<Child>,
}

impl Registry {
    /// `127.0.0.1:P`, for the host's `docker push`.
    pub fn push_address(&self) -> SocketAddr {
        self.push
    }
    /// `gateway:Q`, for the nodes' `docker pull`.
    pub fn pull_address(&self) -> SocketAddr {
        self.pull
    }
    pub(crate) fn procs(&self) -> Vec<ProcRef> {
        self.procs.clone()
    }
    pub(crate) fn take_children(&mut self) -> Vec<Child> {
        std::mem::take(&mut self.children)
    }
}

fn free_port(ip: Ipv4Addr, scope: &str) -> Result<SocketAddr> {
    let l = TcpListener::bind((ip, 0))
        .map_err(|e| VmNodeError::io(scope, "binding a port on", ip.to_string(), e))?;
    l.local_addr()
        .map_err(|e| VmNodeError::io(scope, "binding a port on", ip.to_string(), e))
}

fn spawn(
    bins: &Binaries,
    dir: &Path,
    storage: &Path,
    addr: SocketAddr,
    scope: &str,
) -> Result<Child> {
    let config = dir.join(format!("registry-{}.yml", addr.port()));
    let body = format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        storage.display()
    );
    std::fs::write(&config, body).map_err(|e| VmNodeError::io(scope, "writing", &config, e))?;
    let log_path = dir.join(format!("registry-{}.log", addr.port()));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| VmNodeError::io(scope, "creating", &log_path, e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| VmNodeError::io(scope, "opening", &log_path, e))?;
    let mut cmd = Command::new(&bins.registry);
    cmd.arg("serve").arg(&config);
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    cmd.spawn().map_err(|source| VmNodeError::Spawn {
        scope: scope.to_string(),
        command: describe(&cmd),
        source,
    })
}

/// Starts both sides and waits until they accept connections. `storage` is the registry's
/// storage (default: `registry/storage` in the pool's directory).
pub(crate) fn start(
    rec: &PoolRecord,
    bins: &Binaries,
    gateway: Ipv4Addr,
    storage: Option<&Path>,
) -> Result<Registry> {
    let scope = rec.scope();
    let dir = rec.dir.join("registry");
    let storage = storage.map_or_else(|| dir.join("storage"), Path::to_path_buf);
    std::fs::create_dir_all(&dir).map_err(|e| VmNodeError::io(&scope, "creating", &dir, e))?;
    std::fs::create_dir_all(&storage)
        .map_err(|e| VmNodeError::io(&scope, "creating", &storage, e))?;
    let push = free_port(Ipv4Addr::LOCALHOST, &scope)?;
    let pull = free_port(gateway, &scope)?;
    let mut reg = Registry {
        push,
        pull,
        procs: Vec::new(),
        children: Vec::new(),
    };
    for addr in [push, pull] {
        let child = spawn(bins, &dir, &storage, addr, &scope)?;
        reg.procs.extend(ProcRef::of(child.id()));
        reg.children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for addr in [push, pull] {
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline || !reg.procs.iter().all(ProcRef::alive) {
                // The caller records nothing yet: stop what was started here.
                for c in reg.children.iter_mut() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                let log = crate::pool::log_tail(&dir.join(format!("registry-{}.log", addr.port())));
                return Err(VmNodeError::Command {
                    scope,
                    command: format!("{} serve (on {addr})", bins.registry.display()),
                    status: "not listening after 10 s".into(),
                    stderr: log,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    tracing::info!(pool = rec.id, %push, %pull, "registry ready");
    Ok(reg)
}
