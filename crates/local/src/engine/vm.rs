//! VM-like nodes: pools without `containerConfiguration` (Batch Shipyard's non-native mode).
//!
//! Each pool is a [`shipyard_vm_node::VmPool`]: a network, mount and UTS namespace per node on
//! a shipyard bridge, each node with its own dockerd. Tasks run as host processes inside the
//! node's namespaces (`VmNode::command`, `DOCKER_HOST` set to the node's engine), with the
//! engine's node root bind-mounted at the common path [`NODE_ROOT_DIR`]. The node engines use
//! the pool's registry as their Docker Hub mirror, and the images of [`PoolSetup::images`]
//! are in every node's engine when the pool is made (`VmPoolBuilder::images`: the persistent
//! image cache under the state directory, pushed and pulled once per set of host image IDs),
//! so the non-native job preparation's `docker pull <image>` is a real pull from that
//! registry that finds every layer present, and needs no network.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use shipyard_vm_node::{Binaries, VmNode, VmPool};
use tokio_util::sync::CancellationToken;

use super::error::{EngineError, Result};
use super::node::{sleep_for, NodeKind, NodeRef, PoolSetup, RunEnd, RunSpec, NODE_ROOT_DIR};

/// util-linux `setpriv`: runs a task as its user inside the node's namespaces.
const SETPRIV: &str = "setpriv";

/// Where VM-like pools keep their state.
#[derive(Debug, Clone)]
pub struct VmNodesOptions {
    /// Pool records, node roots and engine data (`shipyard_vm_node::DEFAULT_STATE_DIR`).
    pub state_dir: PathBuf,
    /// The node engines' exec roots (`shipyard_vm_node::DEFAULT_RUN_DIR`; keep it short).
    pub run_dir: PathBuf,
    /// The programs to run.
    pub binaries: Binaries,
}

impl Default for VmNodesOptions {
    fn default() -> Self {
        VmNodesOptions {
            state_dir: shipyard_vm_node::DEFAULT_STATE_DIR.into(),
            run_dir: shipyard_vm_node::DEFAULT_RUN_DIR.into(),
            binaries: Binaries::default(),
        }
    }
}

struct VmPoolEntry {
    /// Locked around the pool's blocking operations (adding and removing nodes); taken when
    /// the pool is removed.
    pool: Mutex<Option<VmPool>>,
    /// The pool's nodes, each with the engine node id that holds it (`None`: free).
    nodes: Mutex<Vec<(VmNode, Option<String>)>>,
    /// Engine nodes being created that have no VM node yet (those added at once by a resize
    /// are made together).
    waiting: std::sync::atomic::AtomicUsize,
}

/// Counts an engine node in [`VmPoolEntry::waiting`] while it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl VmPoolEntry {
    /// Gives a free VM node to engine node `id`.
    fn assign_free(&self, id: &str) -> Option<VmNode> {
        let mut nodes = guard(&self.nodes);
        let (vm, a) = nodes.iter_mut().find(|(_, a)| a.is_none())?;
        *a = Some(id.to_string());
        Some(vm.clone())
    }
}

/// The VM-like node kind.
pub struct VmNodes {
    opts: VmNodesOptions,
    /// By pool network name.
    pools: Mutex<HashMap<String, Arc<VmPoolEntry>>>,
}

impl std::fmt::Debug for VmNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmNodes")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn vm_err(context: impl Into<String>, source: shipyard_vm_node::VmNodeError) -> EngineError {
    EngineError::VmNode {
        context: context.into(),
        source,
    }
}

fn joined<T>(r: std::result::Result<Result<T>, tokio::task::JoinError>, what: &str) -> Result<T> {
    r.unwrap_or_else(|e| Err(EngineError::invalid(what, format!("worker failed: {e}"))))
}

impl VmNodes {
    /// A node kind with these options (nothing is created until a pool is added).
    pub fn new(opts: VmNodesOptions) -> Self {
        VmNodes {
            opts,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// Removes VM-like pools left by engines whose process died.
    pub async fn sweep(&self) {
        let (dir, bins) = (self.opts.state_dir.clone(), self.opts.binaries.clone());
        match tokio::task::spawn_blocking(move || shipyard_vm_node::sweep(&dir, &bins)).await {
            Ok(Ok(r)) if !r.removed.is_empty() => {
                tracing::info!(removed = ?r.removed, "swept VM-like pools of dead engines")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "sweeping VM-like pools"),
            _ => {}
        }
    }

    fn entry(&self, network: &str) -> Option<Arc<VmPoolEntry>> {
        guard(&self.pools).get(network).cloned()
    }

    fn vm_node(&self, node: &NodeRef) -> Result<VmNode> {
        let entry = self
            .entry(&node.network)
            .ok_or_else(|| EngineError::not_found("NodeNotFound", &node.id))?;
        let nodes = guard(&entry.nodes);
        nodes
            .iter()
            .find(|(_, a)| a.as_deref() == Some(node.id.as_str()))
            .map(|(vm, _)| vm.clone())
            .ok_or_else(|| EngineError::not_found("NodeNotFound", &node.id))
    }

    /// Adds as many VM nodes to the pool of `entry` as engine nodes wait for one (none when
    /// enough became free meanwhile).
    async fn add_vm_nodes(&self, entry: &Arc<VmPoolEntry>, node: &NodeRef) -> Result<()> {
        let (entry, pool_id) = (entry.clone(), node.pool.clone());
        let added = tokio::task::spawn_blocking(move || {
            let mut pool = guard(&entry.pool);
            let free = guard(&entry.nodes)
                .iter()
                .filter(|(_, a)| a.is_none())
                .count();
            let want = entry
                .waiting
                .load(std::sync::atomic::Ordering::SeqCst)
                .saturating_sub(free);
            if want == 0 {
                return Ok(());
            }
            let Some(pool) = pool.as_mut() else {
                return Err(EngineError::invalid(
                    "pool",
                    format!("pool {pool_id} is being removed"),
                ));
            };
            let new = pool
                .add_nodes(want)
                .map_err(|e| vm_err(format!("adding a node to pool {pool_id}"), e))?;
            guard(&entry.nodes).extend(new.into_iter().map(|vm| (vm, None)));
            Ok(())
        })
        .await;
        joined(added, "node")
    }

    async fn process(
        &self,
        node: &NodeRef,
        spec: &RunSpec,
        argv: &[String],
        cancel: &CancellationToken,
    ) -> Result<RunEnd> {
        let vm = self.vm_node(node)?;
        let Some((prog, args)) = argv.split_first() else {
            return Err(EngineError::invalid(
                "commandLine",
                "the command line is empty",
            ));
        };
        let user = spec.run.user.clone().or_else(|| spec.user.clone());
        // nsenter needs root to enter the namespaces, so a task's user is taken inside them
        // (util-linux `setpriv`), not by the nsenter process.
        let mut inner: Vec<String> = Vec::new();
        if let Some(u) = &user {
            let (uid, gid) = u.split_once(':').unwrap_or((u.as_str(), u.as_str()));
            if uid.parse::<u32>().is_err() || gid.parse::<u32>().is_err() {
                return Err(EngineError::invalid(
                    "userIdentity",
                    format!("{u} is not uid:gid"),
                ));
            }
            inner.extend([
                SETPRIV.to_string(),
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "--".into(),
            ]);
        }
        // nsenter opens its --wd before entering the mount namespace, so the working
        // directory (a path of the node's view) is entered by `env --chdir` inside it.
        if let Some(wd) = &spec.working_dir {
            inner.extend(["env".into(), format!("--chdir={wd}"), "--".into()]);
        }
        inner.push(prog.clone());
        let mut cmd = vm
            .command(&inner[0])
            .args(&inner[1..])
            .args(args)
            .env_clear();
        let mut has_home = false;
        for kv in spec.env.iter().chain(spec.run.env.iter()) {
            if let Some((k, v)) = kv.split_once('=') {
                has_home |= k == "HOME";
                cmd = cmd.env(k, v);
            }
        }
        if !has_home {
            let home = match (&user, &spec.working_dir) {
                (Some(_), Some(wd)) => wd.clone(),
                _ => "/root".to_string(),
            };
            cmd = cmd.env("HOME", home);
        }
        let mut tc = cmd.into_tokio();
        let open = |p: &std::path::Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| EngineError::io("opening task output", p, e))
        };
        tc.stdout(Stdio::from(open(&spec.stdout)?))
            .stderr(Stdio::from(open(&spec.stderr)?));
        let mut child = tc.spawn().map_err(|e| {
            EngineError::io(
                "starting a task process via",
                &self.opts.binaries.nsenter,
                e,
            )
        })?;
        let pgid = child.id();
        let sleep = sleep_for(spec.timeout);
        let end = tokio::select! {
            s = child.wait() => {
                let s = s.map_err(|e| EngineError::io("waiting for a task process via", &self.opts.binaries.nsenter, e))?;
                return Ok(RunEnd::Exited(s.code().map_or_else(|| 128 + i64::from(s.signal().unwrap_or(9)), i64::from)));
            }
            _ = sleep => RunEnd::TimedOut,
            _ = cancel.cancelled() => RunEnd::Cancelled,
        };
        if let Some(pgid) = pgid {
            let _ = tokio::process::Command::new(&self.opts.binaries.kill)
                .args(["-KILL", "--", &format!("-{pgid}")])
                .output()
                .await;
        }
        let _ = child.wait().await;
        Ok(end)
    }
}

impl NodeKind for VmNodes {
    fn create_pool<'a>(&'a self, setup: &'a PoolSetup) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if self.entry(&setup.network).is_some() {
                return Ok(());
            }
            if setup.nodes == 0 {
                return Err(EngineError::invalid(
                    "targetDedicatedNodes",
                    "a pool of VM-like nodes is made with its nodes; it cannot start empty",
                ));
            }
            let builder = VmPool::builder()
                .nodes(setup.nodes)
                .state_dir(&self.opts.state_dir)
                .run_dir(&self.opts.run_dir)
                .node_root_dir(NODE_ROOT_DIR)
                .binaries(self.opts.binaries.clone())
                .registry(true)
                .registry_mirror(true)
                .images(setup.images.iter().cloned());
            let pool_id = setup.pool.clone();
            let pool = tokio::task::spawn_blocking(move || {
                builder
                    .create()
                    .map_err(|e| vm_err(format!("creating the nodes of pool {pool_id}"), e))
            })
            .await;
            let pool = joined(pool, "pool")?;
            tracing::info!(
                pool = setup.pool,
                times = ?pool.creation_times(),
                "VM-like nodes ready"
            );
            let nodes = pool.nodes().iter().map(|vm| (vm.clone(), None)).collect();
            let entry = VmPoolEntry {
                nodes: Mutex::new(nodes),
                pool: Mutex::new(Some(pool)),
                waiting: Default::default(),
            };
            guard(&self.pools).insert(setup.network.clone(), Arc::new(entry));
            Ok(())
        })
    }

    fn remove_pool<'a>(&'a self, network: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(entry) = guard(&self.pools).remove(network) else {
                return Ok(());
            };
            // Waits (off the runtime) for a node being added or removed.
            tokio::task::spawn_blocking(move || {
                let pool = guard(&entry.pool).take();
                if let Some(pool) = pool {
                    pool.delete();
                }
            })
            .await
            .map_err(|e| EngineError::invalid("pool", format!("removal failed: {e}")))?;
            Ok(())
        })
    }

    fn create_node<'a>(&'a self, node: &'a NodeRef) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let entry = self.entry(&node.network).ok_or_else(|| {
                EngineError::invalid("pool", format!("pool {} has no VM-like nodes", node.pool))
            })?;
            // A node beyond those the pool was made with (resize) is added to it first.
            let vm = {
                let _waiting = Waiting::new(&entry.waiting);
                loop {
                    if let Some(vm) = entry.assign_free(&node.id) {
                        break vm;
                    }
                    self.add_vm_nodes(&entry, node).await?;
                }
            };
            // The engine's node root becomes the node's root at the common path.
            let out = vm
                .command(&self.opts.binaries.mount)
                .arg("--bind")
                .arg(&node.root)
                .arg(NODE_ROOT_DIR)
                .output()
                .await
                .map_err(|e| vm_err(format!("mounting the root of node {}", node.id), e))?;
            if out.code != Some(0) {
                return Err(EngineError::invalid(
                    "node",
                    format!(
                        "mounting {} at {NODE_ROOT_DIR} on node {}: {}",
                        node.root.display(),
                        node.id,
                        out.stderr_text().trim()
                    ),
                ));
            }
            Ok(vm.address().to_string())
        })
    }

    /// Removes the node's VM node from its pool: its dockerd, what runs in it, its
    /// namespaces, veth and directories (the pool's other nodes stop naming it). Deleting a
    /// whole pool needs only [`NodeKind::remove_pool`], which removes every node at once.
    fn remove_node<'a>(&'a self, node: &'a NodeRef) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(entry) = self.entry(&node.network) else {
                return Ok(());
            };
            let vm = {
                let mut nodes = guard(&entry.nodes);
                let i = nodes
                    .iter()
                    .position(|(_, a)| a.as_deref() == Some(node.id.as_str()));
                i.map(|i| nodes.remove(i).0)
            };
            let Some(vm) = vm else { return Ok(()) };
            let id = node.id.clone();
            let removed = tokio::task::spawn_blocking(move || match guard(&entry.pool).as_mut() {
                Some(pool) => pool
                    .remove_node(vm.name())
                    .map_err(|e| vm_err(format!("removing node {id}"), e)),
                None => Ok(()),
            })
            .await;
            joined(removed, "node")
        })
    }

    fn node_alive<'a>(&'a self, node: &'a NodeRef) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let Ok(vm) = self.vm_node(node) else {
                return false;
            };
            tokio::task::spawn_blocking(move || vm.ensure_ready().is_ok())
                .await
                .unwrap_or(false)
        })
    }

    fn run<'a>(
        &'a self,
        node: &'a NodeRef,
        spec: &'a RunSpec,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunEnd>> {
        Box::pin(async move { self.process(node, spec, &spec.argv, &cancel).await })
    }

    fn exec<'a>(
        &'a self,
        node: &'a NodeRef,
        spec: &'a RunSpec,
        argv: Vec<String>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunEnd>> {
        Box::pin(async move { self.process(node, spec, &argv, &cancel).await })
    }

    fn remove_container<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<()>> {
        // Tasks on VM-like nodes are processes, not containers of the host's engine.
        Box::pin(async { Ok(()) })
    }

    fn remove_labelled<'a>(
        &'a self,
        _labels: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}
