//! Node kinds: how a pool's nodes are made and how a task process runs on one.
//!
//! [`NodeKind`] is the seam: the container-pool kind ([`ContainerNodes`]) makes each node a
//! long-lived holder container on a per-pool bridge network and runs every task in a fresh
//! container of its image joined to the holder's network namespace. VM-like nodes (network
//! namespaces with their own dockerd, crate `shipyard-vm-node`) implement the same trait.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkingConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    InspectNetworkOptions, KillContainerOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::agent::{self, Agent};
use super::error::{EngineError, Result};
use super::pool_net::{self, PoolBridge, PoolNets, ADDRESS_LABEL};
use crate::cmdline::RunOptions;
use crate::docker::split_image;
use shipyard_runtime::registry_auth::{login_for, registry_of, RegistryLogin};

/// Where the node root is mounted inside every node and task container (Batch's path).
pub const NODE_ROOT_DIR: &str = "/mnt/batch/tasks";

/// Docker labels on everything the engine creates.
pub mod labels {
    /// Present (value `1`) on every object of the engine.
    pub const ENGINE: &str = "shipyard.engine";
    /// The state directory's id (so several engines on one host keep apart).
    pub const INSTANCE: &str = "shipyard.engine.instance";
    /// Pool id.
    pub const POOL: &str = "shipyard.engine.pool";
    /// Node id (holder containers and task containers).
    pub const NODE: &str = "shipyard.engine.node";
    /// `job/task` of a task container.
    pub const TASK: &str = "shipyard.engine.task";
    /// The instance, on spare kept containers made ahead of multi-instance tasks.
    pub const SPARE: &str = "shipyard.engine.spare";
    /// The engine's state directory (canonical): containers and networks whose directory is
    /// gone belong to no engine any more, and the next engine to open removes them.
    pub const STATE_DIR: &str = "shipyard.engine.state-dir";
    /// The host and mount namespace the engine ran in ([`host`]): a state directory is only
    /// known gone where its engine could see it.
    pub const HOST: &str = "shipyard.engine.host";

    /// This process's machine id and mount namespace, the value of [`HOST`].
    pub fn host() -> &'static str {
        static HOST_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        HOST_ID.get_or_init(|| {
            let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
            let mnt = std::fs::read_link("/proc/self/ns/mnt")
                .map(|l| l.display().to_string())
                .unwrap_or_default();
            format!("{}/{mnt}", machine.trim())
        })
    }
}

/// A node as the node kind sees it.
#[derive(Debug, Clone)]
pub struct NodeRef {
    /// Pool id.
    pub pool: String,
    /// Node id (also the hostname).
    pub id: String,
    /// The pool's network name.
    pub network: String,
    /// The holder container's name.
    pub holder: String,
    /// Node root on the host (mounted at [`NODE_ROOT_DIR`]).
    pub root: PathBuf,
    /// Image of the holder.
    pub image: String,
    /// Labels for everything made for this node.
    pub labels: HashMap<String, String>,
    /// The pool's `containerConfiguration.containerRegistries` as logins (`Debug` redacts
    /// the passwords): images of those registries are pulled with them.
    pub registries: Vec<RegistryLogin>,
}

/// One process to run on a node.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Container name (unique).
    pub name: String,
    /// Image.
    pub image: String,
    /// Command (already split).
    pub argv: Vec<String>,
    /// `NAME=value` environment.
    pub env: Vec<String>,
    /// Working directory inside the container (`None`: the image's).
    pub working_dir: Option<String>,
    /// `user[:group]`, `None` = image default.
    pub user: Option<String>,
    /// Parsed containerRunOptions.
    pub run: RunOptions,
    /// Host file for stdout.
    pub stdout: PathBuf,
    /// Host file for stderr.
    pub stderr: PathBuf,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Stop after this long.
    pub timeout: Option<Duration>,
    /// Keep the container running after the command (the command agent, or `sleep infinity`
    /// for a non-root user, as its main process; the command is started in it): multi-instance
    /// subtasks.
    pub keep: bool,
    /// The login to pull `image` with when it is missing: the task's
    /// `containerSettings.registry`, else the pool's registry of the image (`None`: anonymous).
    pub registry: Option<RegistryLogin>,
    /// A task without container settings: it runs on the node itself, as on a Batch VM. On a
    /// container pool that is in the node's holder (so what a start task installs is
    /// there for later host tasks); `image` and `run` are then not used.
    pub on_node: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Exited with this code.
    Exited(i64),
    /// `timeout` passed; the process was killed.
    TimedOut,
    /// Cancelled (terminate); the process was killed.
    Cancelled,
}

/// What a node kind gets to make a pool.
#[derive(Debug, Clone, Default)]
pub struct PoolSetup {
    /// Pool id.
    pub pool: String,
    /// The pool's network name (the key of the pool in the node kind).
    pub network: String,
    /// Labels for everything made for the pool.
    pub labels: HashMap<String, String>,
    /// Nodes the pool is made with (VM-like pools grow and shrink later through `create_node`/`remove_node`).
    pub nodes: usize,
    /// Images the nodes must be able to pull (`containerImageNames`, plus the engine's
    /// `mirror_images` for VM-like pools).
    pub images: Vec<String>,
}

/// The node-kind seam.
pub trait NodeKind: Send + Sync + 'static {
    /// Creates the pool's network (and, for VM-like nodes, the nodes themselves).
    fn create_pool<'a>(&'a self, setup: &'a PoolSetup) -> BoxFuture<'a, Result<()>>;
    /// Removes the pool's network (after its nodes).
    fn remove_pool<'a>(&'a self, network: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Starts a node; returns its address.
    fn create_node<'a>(&'a self, node: &'a NodeRef) -> BoxFuture<'a, Result<String>>;
    /// Removes a node and every container running on it.
    fn remove_node<'a>(&'a self, node: &'a NodeRef) -> BoxFuture<'a, Result<()>>;
    /// Whether the node is still up.
    fn node_alive<'a>(&'a self, node: &'a NodeRef) -> BoxFuture<'a, bool>;
    /// Runs `spec` on `node` to its end (or, with `keep`, starts it and runs its command in it).
    fn run<'a>(
        &'a self,
        node: &'a NodeRef,
        spec: &'a RunSpec,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunEnd>>;
    /// Runs `argv` in a kept container made by [`NodeKind::run`] with `keep` (on `node`).
    fn exec<'a>(
        &'a self,
        node: &'a NodeRef,
        spec: &'a RunSpec,
        argv: Vec<String>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunEnd>>;
    /// Removes a task container (ignores one that is gone).
    fn remove_container<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Ends every process of the kept containers `names` (a multi-instance task's, whose
    /// task has ended) and returns once they are gone, before their removal: daemons a
    /// coordination command started (sshd) share the node's network, and the next task on
    /// the node must find its ports free. The default does nothing.
    fn end_kept<'a>(&'a self, _names: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    /// Removes every container carrying all the `(label, value)` pairs of `labels` (callers
    /// name their engine's instance among them: another engine of the host may have a pool
    /// or node of the same name).
    fn remove_labelled<'a>(&'a self, labels: &'a [(&'a str, &'a str)])
        -> BoxFuture<'a, Result<()>>;
    /// Starts making, at once, the kept container that [`NodeKind::run`] of `spec` (with
    /// `keep`) will want on `node`, so that it is made while the task's job preparation runs
    /// on the node. Only a container whose bind sources all exist already may be made this
    /// early (a source the preparation creates would otherwise be made a directory by
    /// Docker). The default does nothing.
    fn make_ready(&self, _node: &NodeRef, _spec: &RunSpec) {}
    /// Removes what engines whose state directory is gone left behind (their engine can
    /// never open again to remove it). The default does nothing.
    fn sweep_abandoned(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Container-pool nodes on the host's Docker engine.
#[derive(Clone, Debug)]
pub struct ContainerNodes {
    docker: Docker,
    /// Images seen present (one inspect per image, not per task).
    present: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Kept containers made ahead of multi-instance tasks.
    spares: std::sync::Arc<std::sync::Mutex<Spares>>,
    /// The command agents of the holders and kept containers this engine made, by container
    /// name (see [`agent`]).
    agents: std::sync::Arc<std::sync::Mutex<HashMap<String, Agent>>>,
    /// The container a kept task container's name stands for, when the task took a spare
    /// (which keeps its own name: a rename is a daemon round trip per node).
    aliases: std::sync::Arc<std::sync::Mutex<HashMap<String, String>>>,
    /// Whether an image's default user is root, by image (one inspect per image).
    image_root: std::sync::Arc<std::sync::Mutex<HashMap<String, bool>>>,
    /// Whether the Docker engine remaps user namespaces (container root is then not the
    /// owner of the agents' files).
    userns: std::sync::Arc<tokio::sync::OnceCell<bool>>,
    /// The pools' networks (bridges of the engine's own, or Docker networks).
    nets: std::sync::Arc<PoolNets>,
}

/// A spare being made (its name once it runs, `None` when making it failed or it was called
/// off before it was made).
type Spare = futures::future::Shared<BoxFuture<'static, Option<String>>>;

/// One spare of a node: the container key it is made for, the spare, and its controls.
struct SpareEntry {
    key: String,
    made: Spare,
    /// Makes it now, before its grace ends (a task wants it).
    wake: std::sync::Arc<tokio::sync::Notify>,
    /// Calls it off if it has not been made yet (its node is going, or a newer key won).
    off: CancellationToken,
}

impl SpareEntry {
    /// Called off, then awaited: its name if it had already been made.
    async fn call_off(self) -> Option<String> {
        self.off.cancel();
        self.made.await
    }
}

/// How long a spare waits, after the container it replaces went, before it is made. A pool
/// deleted right after its last task ended (a `run` that made the pool) then makes none; a
/// task that wants the spare meanwhile has it made at once.
const SPARE_GRACE: Duration = Duration::from_millis(400);

/// How long the task of a container that comes back on a node has run before the next spare
/// for it is made (a task that ends sooner has it made after its end, as the first time). A
/// job on an idle pool then has the machine to itself, and a longer task's successor finds
/// its containers ready.
const SPARE_AHEAD_AFTER: Duration = Duration::from_secs(2);

/// Spare kept containers by holder, each for the container key it was made for.
#[derive(Default)]
struct Spares {
    ready: HashMap<String, Vec<SpareEntry>>,
    /// Holders being removed: no more spares for them.
    gone: std::collections::HashSet<String>,
    /// Kept task containers by name: when one is removed (its task ended), a spare for the
    /// same container is made, off the task's time.
    kept: HashMap<String, (NodeRef, RunSpec, String)>,
    /// Container keys each holder has run a kept container of: a key that comes back has
    /// its next spare made while its task runs, once it has run [`SPARE_AHEAD_AFTER`].
    seen: HashMap<String, std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Spares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spares")
            .field("nodes", &self.ready.len())
            .finish_non_exhaustive()
    }
}

/// Container keys a node keeps a spare for.
const SPARE_KEYS: usize = 2;

/// Numbers spare containers apart.
static SPARES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl ContainerNodes {
    /// Uses the given Docker connection.
    pub fn new(docker: Docker) -> Self {
        ContainerNodes {
            docker,
            present: Default::default(),
            spares: Default::default(),
            agents: Default::default(),
            image_root: Default::default(),
            userns: Default::default(),
            aliases: Default::default(),
            nets: std::sync::Arc::new(PoolNets::detect()),
        }
    }

    /// Connects to the local Docker engine (as [`Engine::open`](super::Engine::open) does).
    pub fn connect_local() -> Result<Self> {
        Docker::connect_with_local_defaults()
            .map(Self::new)
            .map_err(|e| EngineError::docker("connecting to the Docker engine", e))
    }

    /// Makes new pools Docker networks (as where the engine's own bridges cannot work, see
    /// [`NETWORK_ENV`](super::NETWORK_ENV)), whatever this machine allows.
    pub fn docker_networks(mut self) -> Self {
        self.nets = std::sync::Arc::new(PoolNets::docker());
        self
    }

    /// The bridge of `node`'s pool network, if the pool has one. One that an earlier engine
    /// made has its running holders' addresses read back from their labels.
    async fn pool_bridge(&self, node: &NodeRef) -> Result<Option<std::sync::Arc<PoolBridge>>> {
        let Some(bridge) = self.nets.find(&node.network) else {
            return Ok(None);
        };
        bridge
            .adopted
            .get_or_try_init(|| self.adopt_holders(&bridge, node))
            .await?;
        Ok(Some(bridge))
    }

    /// Records the running holders of `node`'s pool (an earlier engine's of this state
    /// directory: same instance) on `bridge`.
    async fn adopt_holders(&self, bridge: &PoolBridge, node: &NodeRef) -> Result<()> {
        let pool = &node.pool;
        let mut wanted = vec![
            format!("{}={pool}", labels::POOL),
            ADDRESS_LABEL.to_string(),
        ];
        wanted.extend(
            node.labels
                .get(labels::INSTANCE)
                .map(|i| format!("{}={i}", labels::INSTANCE)),
        );
        let filters = HashMap::from([("label".to_string(), wanted)]);
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .filters(&filters)
            .build();
        let found =
            self.docker.list_containers(Some(opts)).await.map_err(|e| {
                EngineError::docker(format!("listing the holders of pool {pool}"), e)
            })?;
        for c in found {
            let l = c.labels.unwrap_or_default();
            let (Some(name), Some(node), Some(last)) = (
                c.names
                    .and_then(|n| n.first().map(|n| n.trim_start_matches('/').to_string())),
                l.get(labels::NODE).and_then(|n| n.rsplit('/').next()),
                l.get(ADDRESS_LABEL).and_then(|a| bridge.last_of(a)),
            ) else {
                continue;
            };
            // The node's own file bound there, else Docker's (a holder made with a sandbox).
            let hosts = self
                .docker
                .inspect_container(&name, None::<InspectContainerOptions>)
                .await
                .ok()
                .and_then(|i| {
                    let bound = i.mounts.unwrap_or_default().into_iter().find_map(|m| {
                        (m.destination.as_deref() == Some("/etc/hosts"))
                            .then_some(m.source)
                            .flatten()
                    });
                    bound.or(i.hosts_path).filter(|p| !p.is_empty())
                })
                .map(PathBuf::from);
            bridge.adopt(&name, node, last, hosts);
        }
        Ok(())
    }

    /// Makes and starts the holder of `node`: on the pool's bridge (started without a network,
    /// then given its veth and address) or on the pool's Docker network. Returns its address.
    async fn make_holder(
        &self,
        node: &NodeRef,
        bridge: Option<&std::sync::Arc<PoolBridge>>,
    ) -> Result<String> {
        let mut labels = node.labels.clone();
        let mut host = HostConfig {
            init: Some(true),
            network_mode: Some(node.network.clone()),
            binds: Some(vec![format!("{}:{NODE_ROOT_DIR}", node.root.display())]),
            ..Default::default()
        };
        let mut networking_config = Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                node.network.clone(),
                EndpointSettings {
                    aliases: Some(vec![node.id.clone()]),
                    ..Default::default()
                },
            )])),
        });
        let mut network_disabled = None;
        if let Some(b) = bridge {
            let addr = b.allocate(&node.holder, &node.id)?;
            labels.insert(ADDRESS_LABEL.to_string(), addr.to_string());
            // No Docker sandbox: runc makes the namespace (see the `pool_net` module docs).
            host.network_mode = Some("none".into());
            network_disabled = Some(true);
            networking_config = None;
            let etc = pool_net::prepare_etc(&node.root)
                .map_err(|e| EngineError::io("writing the /etc files of node", &node.root, e))?;
            host.mounts = Some(etc);
        }
        let mut body = ContainerCreateBody {
            network_disabled,
            image: Some(node.image.clone()),
            hostname: Some(node.id.clone()),
            entrypoint: Some(vec!["sleep".into(), "infinity".into()]),
            cmd: Some(vec![]),
            labels: Some(labels),
            host_config: Some(host),
            networking_config,
            ..Default::default()
        };
        self.with_agent(node, &node.holder, &mut body).await?;
        let opts = CreateContainerOptionsBuilder::new()
            .name(&node.holder)
            .build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| {
                EngineError::docker(
                    format!("creating node {} of pool {}", node.id, node.pool),
                    e,
                )
            })?;
        self.docker
            .start_container(&node.holder, None::<StartContainerOptions>)
            .await
            .map_err(|e| EngineError::docker(format!("starting node {}", node.id), e))?;
        let c = self
            .docker
            .inspect_container(&node.holder, None::<InspectContainerOptions>)
            .await
            .map_err(|e| EngineError::docker(format!("inspecting node {}", node.id), e))?;
        if let Some(b) = bridge {
            let pid = c
                .state
                .as_ref()
                .and_then(|s| s.pid)
                .filter(|p| *p > 0)
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| {
                    EngineError::invalid("node", format!("node {} has no process", node.id))
                })?;
            // The PID is the holder's only while it runs: checked before its namespace is
            // given the veth, and after.
            let id = c.id.clone().unwrap_or_default();
            let still = || {
                in_cgroup_of(pid, &id).then_some(()).ok_or_else(|| {
                    EngineError::invalid(
                        "node",
                        format!("node {}: its holder stopped as it started", node.id),
                    )
                })
            };
            still()?;
            let hosts = pool_net::etc_dir(&node.root).join("hosts");
            let addr = b.attach(&node.holder, pid, Some(hosts)).await?;
            still()?;
            return Ok(addr);
        }
        Ok(c.network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&node.network))
            .and_then(|e| e.ip_address)
            .unwrap_or_default())
    }

    /// The container that `name` (a task container's name) is.
    fn container_of(&self, name: &str) -> String {
        self.aliases
            .lock()
            .ok()
            .and_then(|a| a.get(name).cloned())
            .unwrap_or_else(|| name.to_string())
    }

    /// Whether a container of `body` runs as root on the host too: its user (or else its
    /// image's) is root, and Docker does not remap user namespaces.
    async fn runs_as_root(&self, body: &ContainerCreateBody) -> bool {
        let user_root = match (body.user.as_deref(), body.image.as_deref()) {
            (Some(u), _) => agent::is_root(Some(u)),
            (None, Some(image)) => self.image_is_root(image).await,
            (None, None) => false,
        };
        let remapped = self
            .userns
            .get_or_init(|| async {
                self.docker.info().await.is_ok_and(|i| {
                    i.security_options
                        .unwrap_or_default()
                        .iter()
                        .any(|o| o.contains("name=userns"))
                })
            })
            .await;
        user_root && !remapped
    }

    /// Whether `image`'s default user is root (`false` when it cannot be inspected).
    async fn image_is_root(&self, image: &str) -> bool {
        let known = self
            .image_root
            .lock()
            .ok()
            .and_then(|m| m.get(image).copied());
        match known {
            Some(root) => root,
            None => self.inspect_image(image).await.unwrap_or(false),
        }
    }

    /// Inspects `image` and records what the engine keeps of it (present, default user root
    /// or not); `None` when it is not there.
    async fn inspect_image(&self, image: &str) -> Option<bool> {
        let i = self.docker.inspect_image(image).await.ok()?;
        let user = i.config.and_then(|c| c.user).filter(|u| !u.is_empty());
        let root = agent::is_root(user.as_deref());
        if let Ok(mut p) = self.present.lock() {
            p.insert(image.to_string());
        }
        if let Ok(mut m) = self.image_root.lock() {
            m.insert(image.to_string(), root);
        }
        Some(root)
    }

    /// Gives `body` (of container `name` on `node`, its image present) a command agent as its
    /// main process, its directory bind-mounted into it alone, when it runs as root (the
    /// agent's files are root's); else it keeps `sleep infinity`.
    async fn with_agent(
        &self,
        node: &NodeRef,
        name: &str,
        body: &mut ContainerCreateBody,
    ) -> Result<()> {
        // The agent's files are the engine's: only an engine running as root keeps them out of
        // reach of a task's non-root user.
        if !rustix::process::geteuid().is_root() || !self.runs_as_root(body).await {
            return Ok(());
        }
        let a = Agent::new(
            &node.root,
            if name == node.holder {
                agent::HOLDER
            } else {
                name
            },
        );
        a.prepare()
            .map_err(|e| EngineError::io("preparing the command agent of", name, e))?;
        body.entrypoint = Some(a.entrypoint());
        body.cmd = Some(vec![]);
        if let Some(h) = body.host_config.as_mut() {
            h.binds.get_or_insert_with(Vec::new).push(a.bind());
        }
        if let Ok(mut m) = self.agents.lock() {
            m.insert(name.to_string(), a);
        }
        Ok(())
    }

    /// The agent that takes commands for `container` (of `node`), once it is up: one this
    /// engine made, or a holder's made by an earlier engine.
    async fn agent_of(&self, container: &str, node: &NodeRef) -> Option<Agent> {
        let known = self.agents.lock().ok()?.get(container).cloned();
        match known {
            Some(a) => {
                if a.wait_up(Duration::from_secs(10)).await {
                    return Some(a);
                }
                // It never will: later commands go by exec without waiting.
                if let Ok(mut m) = self.agents.lock() {
                    m.remove(container);
                }
                None
            }
            None if container == node.holder => {
                let a = Agent::new(&node.root, agent::HOLDER);
                (a.is_up() == Some(true)).then_some(a)
            }
            None => None,
        }
    }

    /// Makes `image` present: pulled (with `login` when given) unless it already is.
    async fn ensure_image(&self, image: &str, login: Option<&RegistryLogin>) -> Result<()> {
        if self.present.lock().is_ok_and(|p| p.contains(image))
            || self.inspect_image(image).await.is_some()
        {
            return Ok(());
        }
        let failed = |message: String| EngineError::ImagePull {
            image: image.to_string(),
            registry: login.map_or_else(|| registry_of(image).to_string(), |l| l.server.clone()),
            username: login.map(|l| l.username.clone()),
            message: match login {
                Some(l) if !l.password.is_empty() => message.replace(&l.password, "<redacted>"),
                _ => message,
            },
        };
        let result = match login {
            Some(l) => crate::docker::Engine {
                docker: self.docker.clone(),
            }
            .pull_image(image, l)
            .await
            .map_err(failed),
            None => {
                let (name, tag) = split_image(image);
                let opts = CreateImageOptionsBuilder::new()
                    .from_image(name)
                    .tag(tag)
                    .build();
                let mut s = self.docker.create_image(Some(opts), None, None);
                let mut r = Ok(());
                while let Some(item) = s.next().await {
                    let message = match item {
                        Ok(info) => info.error_detail.and_then(|d| d.message),
                        Err(BollardError::DockerResponseServerError { message, .. }) => {
                            Some(message)
                        }
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(m) = message {
                        r = Err(failed(m));
                        break;
                    }
                }
                r
            }
        };
        if result.is_ok() {
            if let Ok(mut p) = self.present.lock() {
                p.insert(image.to_string());
            }
        }
        result
    }

    /// The container of `spec` on `node`. `spare`: the kept container made ahead of its task
    /// (no task environment or task label: the exec of each command brings its environment).
    fn body_of(node: &NodeRef, spec: &RunSpec, spare: bool) -> ContainerCreateBody {
        let mut env = if spare { vec![] } else { spec.env.clone() };
        env.extend(spec.run.env.iter().cloned());
        let mut binds = vec![format!("{}:{NODE_ROOT_DIR}", node.root.display())];
        binds.extend(spec.run.binds.iter().cloned());
        let etc = pool_net::etc_mounts(&node.root, &spec.run.binds);
        let host = HostConfig {
            init: Some(spec.keep || spec.run.init),
            binds: Some(binds),
            mounts: (!etc.is_empty()).then_some(etc),
            network_mode: Some(format!("container:{}", node.holder)),
            privileged: Some(spec.run.privileged),
            shm_size: spec.run.shm_size,
            ipc_mode: spec.run.ipc.clone(),
            cap_add: (!spec.run.cap_add.is_empty()).then(|| spec.run.cap_add.clone()),
            security_opt: (!spec.run.security_opt.is_empty())
                .then(|| spec.run.security_opt.clone()),
            ..Default::default()
        };
        let mut labels = if spare {
            let mut l = node.labels.clone();
            let instance = l.get(labels::INSTANCE).cloned().unwrap_or_default();
            l.insert(labels::SPARE.into(), instance);
            l
        } else {
            spec.labels.clone()
        };
        labels.extend(spec.run.labels.iter().cloned());
        let (entrypoint, cmd) = if spec.keep {
            (
                Some(vec!["sleep".to_string(), "infinity".to_string()]),
                Some(vec![]),
            )
        } else {
            (None, Some(spec.argv.clone()))
        };
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint,
            cmd,
            env: Some(env),
            working_dir: if spare {
                None
            } else {
                spec.working_dir.clone()
            },
            user: spec.run.user.clone().or_else(|| spec.user.clone()),
            labels: Some(labels),
            host_config: Some(host),
            ..Default::default()
        }
    }

    async fn create(&self, node: &NodeRef, spec: &RunSpec) -> Result<()> {
        let mut body = Self::body_of(node, spec, false);
        if spec.keep {
            self.ensure_image(&spec.image, spec.registry.as_ref())
                .await?;
            self.with_agent(node, &spec.name, &mut body).await?;
        }
        self.create_named(&spec.name, spec, body).await
    }

    async fn create_named(
        &self,
        name: &str,
        spec: &RunSpec,
        body: ContainerCreateBody,
    ) -> Result<()> {
        self.ensure_image(&spec.image, spec.registry.as_ref())
            .await?;
        let opts = CreateContainerOptionsBuilder::new().name(name).build();
        let mut made = self
            .docker
            .create_container(Some(opts.clone()), body.clone())
            .await;
        if matches!(
            made,
            Err(BollardError::DockerResponseServerError {
                status_code: 404,
                ..
            })
        ) {
            // The image went away since it was seen (removed by someone): pull it again.
            if let Ok(mut p) = self.present.lock() {
                p.remove(&spec.image);
            }
            // Its user may have changed with it.
            if let Ok(mut r) = self.image_root.lock() {
                r.remove(&spec.image);
            }
            self.ensure_image(&spec.image, spec.registry.as_ref())
                .await?;
            made = self.docker.create_container(Some(opts), body).await;
        }
        made.map_err(|e| {
            EngineError::docker(
                format!("creating container {name} of image {}", spec.image),
                e,
            )
        })?;
        Ok(())
    }

    /// What a spare for `spec` must match: its whole container (labels sorted).
    fn spare_key(node: &NodeRef, spec: &RunSpec) -> String {
        let mut body = Self::body_of(node, spec, true);
        let labels: std::collections::BTreeMap<String, String> =
            body.labels.take().unwrap_or_default().into_iter().collect();
        serde_json::to_string(&(labels, body)).unwrap_or_default()
    }

    /// Takes the spare made for `key` on `holder`, if any, and waits until it runs.
    async fn take_spare(&self, holder: &str, key: &str) -> Option<String> {
        let entry = {
            let mut s = self.spares.lock().ok()?;
            let v = s.ready.get_mut(holder)?;
            let i = v.iter().position(|e| e.key == key)?;
            v.remove(i)
        };
        entry.wake.notify_one();
        entry.made.await
    }

    /// Starts making a spare kept container for `key` on `node` (one per key, at most
    /// [`SPARE_KEYS`] keys per node), for the next multi-instance task that needs the same
    /// container. It is fresh: no command has run in it when a task takes it.
    fn make_spare(&self, node: &NodeRef, spec: &RunSpec, key: String, now: bool) {
        let Ok(mut s) = self.spares.lock() else {
            return;
        };
        if s.gone.contains(&node.holder) {
            return;
        }
        let v = s.ready.entry(node.holder.clone()).or_default();
        if let Some(e) = v.iter().find(|e| e.key == key) {
            if now {
                e.wake.notify_one();
            }
            return;
        }
        if v.len() >= SPARE_KEYS {
            let old = v.remove(0);
            let me = self.clone();
            tokio::spawn(async move {
                if let Some(name) = old.call_off().await {
                    let _ = me.remove_container(&name).await;
                }
            });
        }
        let n = SPARES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{}-spare-{:x}.{n}", node.holder, std::process::id());
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let off = CancellationToken::new();
        let (me, node, spec) = (self.clone(), node.clone(), spec.clone());
        let (woken, called_off) = (wake.clone(), off.clone());
        let made = tokio::spawn(async move {
            let grace = if now { Duration::ZERO } else { SPARE_GRACE };
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = woken.notified() => {}
                () = called_off.cancelled() => {}
            }
            // A source gone meanwhile (the job's cleanup) would be made a directory by Docker.
            if called_off.is_cancelled() || !bind_sources_exist(&spec.run.binds) {
                return None;
            }
            let mut body = Self::body_of(&node, &spec, true);
            let began = std::time::Instant::now();
            let up = async {
                me.ensure_image(&spec.image, spec.registry.as_ref()).await?;
                me.with_agent(&node, &name, &mut body).await?;
                me.create_named(&name, &spec, body).await?;
                me.docker
                    .start_container(&name, None::<StartContainerOptions>)
                    .await
                    .map_err(|e| EngineError::docker(format!("starting spare {name}"), e))
            };
            match up.await {
                Ok(()) => {
                    tracing::debug!(container = %name, ms = began.elapsed().as_millis() as u64, "spare kept container made");
                    Some(name)
                }
                Err(e) => {
                    tracing::debug!(container = %name, error = %e, "no spare container");
                    let _ = me.remove_container(&name).await;
                    None
                }
            }
        });
        let made: BoxFuture<'static, Option<String>> =
            Box::pin(async move { made.await.ok().flatten() });
        v.push(SpareEntry {
            key,
            made: made.shared(),
            wake,
            off,
        });
    }

    /// No more spares on `holder`: those not made yet are called off, those made are removed.
    async fn drop_spares(&self, holder: &str) -> Result<()> {
        let pending = match self.spares.lock() {
            Ok(mut s) => {
                s.gone.insert(holder.to_string());
                s.seen.remove(holder);
                s.ready.remove(holder).unwrap_or_default()
            }
            Err(_) => vec![],
        };
        let removed = pending.into_iter().map(|e| async move {
            match e.call_off().await {
                Some(name) => self.remove_container(&name).await,
                None => Ok(()),
            }
        });
        futures::future::try_join_all(removed).await.map(|_| ())
    }

    /// A kept container for `spec` (a spare made for the same container when there is one,
    /// which `spec.name` then stands for; else made now), then its command in it. When the task's
    /// container is removed, a spare for the next such task is made.
    async fn run_kept(
        &self,
        node: &NodeRef,
        spec: &RunSpec,
        cancel: CancellationToken,
    ) -> Result<RunEnd> {
        let key = Self::spare_key(node, spec);
        let began = std::time::Instant::now();
        let spare = self.take_spare(&node.holder, &key).await;
        let ready = spare.is_some();
        if let Some(spare) = spare {
            // The task's container keeps the spare's name (no rename round trip).
            if let Ok(mut a) = self.aliases.lock() {
                a.insert(spec.name.clone(), spare);
            }
        } else {
            self.create(node, spec).await?;
            self.docker
                .start_container(&spec.name, None::<StartContainerOptions>)
                .await
                .map_err(|e| EngineError::docker(format!("starting container {}", spec.name), e))?;
        }
        tracing::debug!(
            container = %spec.name,
            spare = ready,
            ms = began.elapsed().as_millis() as u64,
            "kept container running"
        );
        let again = self.spares.lock().is_ok_and(|mut s| {
            !s.seen
                .entry(node.holder.clone())
                .or_default()
                .insert(key.clone())
        });
        if let Ok(mut s) = self.spares.lock() {
            s.kept
                .insert(spec.name.clone(), (node.clone(), spec.clone(), key.clone()));
        }
        if again {
            // Not at once: the task's start (sshd, mpirun's launch on every node) would share
            // the CPU with the spare's making. A task that ends sooner has it made when its
            // container is removed, as the first time (or, if the timer fires while the
            // container is being ended, then).
            let (me, node, spec) = (self.clone(), node.clone(), spec.clone());
            tokio::spawn(async move {
                tokio::time::sleep(SPARE_AHEAD_AFTER).await;
                let running = me
                    .spares
                    .lock()
                    .is_ok_and(|s| s.kept.contains_key(&spec.name));
                if running {
                    me.make_spare(&node, &spec, key, true);
                }
            });
        }
        self.exec_in(
            &self.container_of(&spec.name),
            node,
            spec,
            spec.argv.clone(),
            cancel,
            false,
        )
        .await
    }

    /// Runs `argv` in `container` (through its command agent when it has one that can run it,
    /// else by `docker exec`) with `spec`'s environment, directory, user, output
    /// files and limit. A timeout or cancel kills the container, or with `on_node` (`container`
    /// is a node's holder) only the exec's own processes.
    async fn exec_in(
        &self,
        container: &str,
        node: &NodeRef,
        spec: &RunSpec,
        argv: Vec<String>,
        cancel: CancellationToken,
        on_node: bool,
    ) -> Result<RunEnd> {
        let what = || format!("running a command in {container}");
        let began = std::time::Instant::now();
        let mut env = spec.env.clone();
        env.extend(spec.run.env.iter().cloned());
        let user = spec.run.user.clone().or_else(|| spec.user.clone());
        if let Some(end) = self
            .by_agent(
                container,
                node,
                spec,
                (&env, user.as_deref(), &argv),
                &cancel,
                on_node,
            )
            .await
        {
            tracing::debug!(
                container,
                task = %spec.name,
                ms = began.elapsed().as_millis() as u64,
                "agent command ended"
            );
            return end;
        }
        let created = self
            .docker
            .create_exec(
                container,
                bollard::models::ExecConfig {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(argv),
                    env: Some(env),
                    working_dir: spec.working_dir.clone(),
                    user,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| EngineError::docker(what(), e))?;
        let started = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| EngineError::docker(what(), e))?;
        let stop = || async {
            if on_node {
                self.stop_exec(container, &created.id).await;
            } else {
                self.kill(container).await;
            }
        };
        let run = async {
            if let bollard::exec::StartExecResults::Attached { mut output, .. } = started {
                write_stream(&mut output, &spec.stdout, &spec.stderr).await;
            }
        };
        let sleep = sleep_for(spec.timeout);
        tokio::select! {
            _ = run => {}
            _ = sleep => { stop().await; return Ok(RunEnd::TimedOut) }
            _ = cancel.cancelled() => { stop().await; return Ok(RunEnd::Cancelled) }
        }
        let inspect = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| EngineError::docker(what(), e))?;
        tracing::debug!(
            container,
            task = %spec.name,
            ms = began.elapsed().as_millis() as u64,
            "exec ended"
        );
        Ok(RunEnd::Exited(inspect.exit_code.unwrap_or(137)))
    }

    /// Runs `argv` (with environment `env`, as `user`) through the command agent of
    /// `container`, as [`Self::exec_in`] would by exec; `None` when the agent cannot (no agent,
    /// not up, or a command it could not give what an exec would), and nothing ran.
    async fn by_agent(
        &self,
        container: &str,
        node: &NodeRef,
        spec: &RunSpec,
        (env, user, argv): (&[String], Option<&str>, &[String]),
        cancel: &CancellationToken,
        on_node: bool,
    ) -> Option<Result<RunEnd>> {
        let out = Agent::inside(&node.root, &spec.stdout)?;
        let err = Agent::inside(&node.root, &spec.stderr)?;
        if !agent::is_root(user) || !agent::shell_names(env) || argv.is_empty() {
            return None;
        }
        let a = self.agent_of(container, node).await?;
        let script =
            |req: &str| agent::script(req, &out, &err, env, spec.working_dir.as_deref(), argv);
        match a.start(script).await {
            Ok(running) => Some(
                self.await_agent(container, spec, running, cancel.clone(), on_node)
                    .await,
            ),
            Err(e) if e.may_have_run() => {
                let (dir, source) = e.into_parts();
                Some(Err(EngineError::io(
                    "waiting for a command of the command agent in",
                    dir,
                    source,
                )))
            }
            Err(e) => {
                tracing::debug!(container, error = %e, "by exec instead");
                None
            }
        }
    }

    /// Waits for a command the agent of `container` runs; a timeout or cancel kills the
    /// container, or with `on_node` (a holder) the command's own processes.
    async fn await_agent(
        &self,
        container: &str,
        spec: &RunSpec,
        mut running: agent::Running,
        cancel: CancellationToken,
        on_node: bool,
    ) -> Result<RunEnd> {
        let opts = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut gone = self.docker.wait_container(container, Some(opts));
        let dir = running.dir().to_path_buf();
        let stop = || async {
            if on_node {
                self.stop_agent_command(container, &dir).await;
            } else {
                self.kill(container).await;
            }
        };
        let sleep = sleep_for(spec.timeout);
        let end = tokio::select! {
            code = running.exit_code() => match code {
                Some(code) => Some(code),
                // Its subshell went without a code; the command, in a session of its own, may
                // still run in the holder, where later tasks would meet it.
                None => {
                    if on_node {
                        self.stop_agent_command(container, &dir).await;
                    }
                    Some(137)
                }
            },
            _ = gone.next() => None,
            _ = sleep => { stop().await; return Ok(RunEnd::TimedOut) }
            _ = cancel.cancelled() => { stop().await; return Ok(RunEnd::Cancelled) }
        };
        let code = match end {
            Some(code) => code,
            // The container stopped: the code if it made it out, else killed.
            None => tokio::time::timeout(Duration::from_millis(200), running.exit_code())
                .await
                .ok()
                .flatten()
                .unwrap_or(137),
        };
        Ok(RunEnd::Exited(code))
    }

    /// Stops the command of the agent request in `dir` on holder `container`, and everything
    /// it started (see [`Self::stop_exec`]).
    async fn stop_agent_command(&self, container: &str, dir: &Path) {
        // The script writes its PID first: wait up to a second for it.
        let mut inner = None;
        for _ in 0..20 {
            inner =
                agent::read_regular(&dir.join("pid")).and_then(|p| p.trim().parse::<i32>().ok());
            if inner.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let main = self.main_pid(container).await;
        match (inner, main) {
            (Some(inner), Some(m)) => match agent::host_pid(inner, &descendants(m)) {
                Some(p) if p != m => kill_tree(p, m),
                _ => tracing::debug!(container, inner, "the agent's command already ended"),
            },
            _ => tracing::warn!(container, "the agent's command is unknown: not stopped"),
        }
    }

    /// The host PID of `container`'s main process (its init), when it runs.
    async fn main_pid(&self, container: &str) -> Option<i32> {
        self.docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.pid)
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 1)
    }

    /// Stops exec `exec` in `container` (a node's holder) and everything it started, leaving
    /// the holder running: only processes in the holder's PID namespace, never its main one.
    async fn stop_exec(&self, container: &str, exec: &str) {
        // Docker reports the PID once the process runs: wait up to a second for it, unless
        // the exec ended meanwhile.
        let mut pid = None;
        for _ in 0..10 {
            match self.docker.inspect_exec(exec).await {
                Ok(i) if i.running == Some(false) && i.pid.unwrap_or(0) <= 1 => return,
                Ok(i) if i.pid.unwrap_or(0) > 1 => {
                    pid = i.pid;
                    break;
                }
                Ok(_) => {}
                Err(_) => return,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let main = self.main_pid(container).await;
        let pid = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1);
        match (pid, main) {
            (Some(p), Some(m)) if p != m => kill_tree(p, m),
            _ => tracing::warn!(
                container,
                exec,
                "the exec's process is unknown: not stopped"
            ),
        }
    }

    async fn start_logged(&self, spec: &RunSpec) -> Result<tokio::task::JoinHandle<()>> {
        self.docker
            .start_container(&spec.name, None::<StartContainerOptions>)
            .await
            .map_err(|e| EngineError::docker(format!("starting container {}", spec.name), e))?;
        let docker = self.docker.clone();
        let (name, out, err) = (spec.name.clone(), spec.stdout.clone(), spec.stderr.clone());
        Ok(tokio::spawn(async move {
            let opts = LogsOptionsBuilder::new()
                .follow(true)
                .stdout(true)
                .stderr(true)
                .build();
            let mut s = docker.logs(&name, Some(opts));
            write_stream(&mut s, &out, &err).await;
        }))
    }

    async fn wait(
        &self,
        name: &str,
        timeout: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Result<RunEnd> {
        let opts = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut waiter = self.docker.wait_container(name, Some(opts));
        let sleep = sleep_for(timeout);
        tokio::select! {
            r = waiter.next() => match r {
                Some(Ok(w)) => Ok(RunEnd::Exited(w.status_code)),
                Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(RunEnd::Exited(code)),
                Some(Err(e)) => Err(EngineError::docker(format!("waiting for container {name}"), e)),
                None => Ok(RunEnd::Exited(self.exit_code(name).await)),
            },
            _ = sleep => { self.kill(name).await; Ok(RunEnd::TimedOut) }
            _ = cancel.cancelled() => { self.kill(name).await; Ok(RunEnd::Cancelled) }
        }
    }

    async fn exit_code(&self, name: &str) -> i64 {
        match self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c.state.and_then(|s| s.exit_code).unwrap_or(137),
            Err(_) => 137,
        }
    }

    /// Ends every process of container `name` now and waits until they are gone: SIGKILL
    /// to its init (the PID namespace's processes die with it, and the kernel finishes
    /// them before the init counts as exited), through a pidfd of the very process Docker
    /// names, after checking it is in the container's cgroup. Otherwise (a daemon whose
    /// PIDs are not this host's) `docker kill` and a wait until the container stops.
    async fn end_now(&self, name: &str) {
        let c = self.container_of(name);
        match self
            .docker
            .inspect_container(&c, None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                if state.running != Some(true) {
                    return;
                }
                let pid = state
                    .pid
                    .and_then(|p| i32::try_from(p).ok())
                    .filter(|p| *p > 1);
                if let (Some(pid), Some(id)) = (pid, info.id.as_deref()) {
                    match end_process(pid, id, END_WAIT).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::debug!(container = %c, pid, error = %e, "no pidfd kill")
                        }
                    }
                }
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return,
            // Not known to be stopped: kill it the daemon's way.
            Err(e) => tracing::debug!(container = %c, error = %e, "inspect before the kill"),
        }
        self.kill(&c).await;
        let opts = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut waiter = self.docker.wait_container(&c, Some(opts));
        let _ = tokio::time::timeout(END_WAIT, waiter.next()).await;
    }

    async fn kill(&self, name: &str) {
        let opts = KillContainerOptionsBuilder::new().signal("KILL").build();
        if let Err(e) = self.docker.kill_container(name, Some(opts)).await {
            tracing::debug!(container = name, error = %e, "kill failed");
        }
    }
}

async fn write_stream<S>(s: &mut S, out: &std::path::Path, err: &std::path::Path)
where
    S: futures::Stream<Item = std::result::Result<bollard::container::LogOutput, BollardError>>
        + Unpin,
{
    let (Ok(mut o), Ok(mut e)) = (
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .await,
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(err)
            .await,
    ) else {
        tracing::warn!(file = %out.display(), "cannot open output files");
        return;
    };
    while let Some(item) = s.next().await {
        let r = match item {
            Ok(bollard::container::LogOutput::StdErr { message }) => e.write_all(&message).await,
            Ok(bollard::container::LogOutput::StdOut { message })
            | Ok(bollard::container::LogOutput::Console { message }) => o.write_all(&message).await,
            Ok(_) => Ok(()),
            Err(_) => break,
        };
        if let Err(err) = r {
            tracing::warn!(file = %out.display(), error = %err, "writing task output");
            break;
        }
    }
    let _ = o.flush().await;
    let _ = e.flush().await;
}

impl NodeKind for ContainerNodes {
    fn create_pool<'a>(&'a self, setup: &'a PoolSetup) -> BoxFuture<'a, Result<()>> {
        let (pool, network, labels) = (&setup.pool, &setup.network, &setup.labels);
        Box::pin(async move {
            // Kept from an earlier engine (a restart): reuse it.
            if self
                .docker
                .inspect_network(network, None::<InspectNetworkOptions>)
                .await
                .is_ok()
            {
                return Ok(());
            }
            if self.nets.uses_bridges() {
                return self.nets.create(network, labels).await.map(|_| ());
            }
            // On a free /24 of 10.213-214.x.x, like the per-run backend's networks: the
            // runtimes' default subnet pattern (`10.*`, Batch's VNets) then covers the nodes,
            // so the job's sshd trust (`from="10.*"`) and pinned host keys hold here too.
            crate::docker::Engine {
                docker: self.docker.clone(),
            }
            .create_network(network, labels)
            .await
            .map(|_| ())
            .map_err(|e| EngineError::Network {
                pool: pool.clone(),
                network: network.clone(),
                source: Box::new(e),
            })
        })
    }

    fn remove_pool<'a>(&'a self, network: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.nets.remove(network).await;
            match self.docker.remove_network(network).await {
                Ok(())
                | Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(()),
                Err(e) => Err(EngineError::docker(
                    format!("removing network {network}"),
                    e,
                )),
            }
        })
    }

    fn create_node<'a>(&'a self, node: &'a NodeRef) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            if let Ok(mut s) = self.spares.lock() {
                s.gone.remove(&node.holder);
            }
            let login = login_for(&node.registries, &node.image);
            self.ensure_image(&node.image, login).await?;
            let bridge = self.pool_bridge(node).await?;
            let made = self.make_holder(node, bridge.as_ref()).await;
            if made.is_err() {
                if let Some(b) = &bridge {
                    b.release(&node.holder);
                }
            }
            made
        })
    }

    fn remove_node<'a>(&'a self, node: &'a NodeRef) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // All at once: the spares, the node's task containers and its holder (the
            // containers that share the holder's network keep it until they go).
            let value = format!("{}/{}", node.pool, node.id);
            let mut of_node = vec![(labels::NODE, value.as_str())];
            of_node.extend(
                node.labels
                    .get(labels::INSTANCE)
                    .map(|i| (labels::INSTANCE, i.as_str())),
            );
            let removed = futures::future::try_join3(
                self.drop_spares(&node.holder),
                self.remove_labelled(&of_node),
                self.remove_container(&node.holder),
            )
            .await
            .map(|_| ());
            if let Some(b) = self.nets.find(&node.network) {
                b.release(&node.holder);
            }
            // Every agent of the node, also those of containers removed by id.
            let dir = agent::node_dir(&node.root);
            if let Ok(mut m) = self.agents.lock() {
                m.retain(|_, a| !a.is_under(&dir));
            }
            // The node's /etc files only once its containers are gone (a node that lives on
            // keeps them for its next containers).
            let etc = removed.is_ok().then(|| pool_net::etc_dir(&node.root));
            for (dir, what) in std::iter::once((dir, "agent directories left"))
                .chain(etc.map(|d| (d, "node /etc files left")))
            {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::debug!(dir = %dir.display(), error = %e, "{what}");
                    }
                }
            }
            removed
        })
    }

    fn node_alive<'a>(&'a self, node: &'a NodeRef) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            matches!(
                self.docker.inspect_container(&node.holder, None::<InspectContainerOptions>).await,
                Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true)
            )
        })
    }

    fn run<'a>(
        &'a self,
        node: &'a NodeRef,
        spec: &'a RunSpec,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunEnd>> {
        Box::pin(async move {
            if spec.keep {
                return self.run_kept(node, spec, cancel).await;
            }
            if spec.on_node {
                return self
                    .exec_in(&node.holder, node, spec, spec.argv.clone(), cancel, true)
                    .await;
            }
            self.create(node, spec).await?;
            let logs = self.start_logged(spec).await?;
            let end = self.wait(&spec.name, spec.timeout, &cancel).await;
            let _ = logs.await;
            end
        })
    }

    fn exec<'a>(
        &'a self,
        node: &'a NodeRef,
        spec: &'a RunSpec,
        argv: Vec<String>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunEnd>> {
        Box::pin(async move {
            let container = self.container_of(&spec.name);
            self.exec_in(&container, node, spec, argv, cancel, false)
                .await
        })
    }

    fn remove_container<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let kept = self
                .spares
                .lock()
                .ok()
                .and_then(|mut s| s.kept.remove(name));
            if let Some((node, spec, key)) = kept {
                self.make_spare(&node, &spec, key, false);
            }
            let name = &self
                .aliases
                .lock()
                .ok()
                .and_then(|mut a| a.remove(name))
                .unwrap_or_else(|| name.to_string());
            let agent = self.agents.lock().ok().and_then(|mut m| m.remove(name));
            let opts = RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            let removed = self.docker.remove_container(name, Some(opts)).await;
            if let Some(a) = agent {
                a.remove();
            }
            match removed {
                Ok(())
                | Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(()),
                Err(BollardError::DockerResponseServerError {
                    status_code: 409, ..
                }) => Ok(()),
                Err(e) => Err(EngineError::docker(format!("removing container {name}"), e)),
            }
        })
    }

    fn end_kept<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            futures::future::join_all(names.iter().map(|n| self.end_now(n))).await;
        })
    }

    fn make_ready(&self, node: &NodeRef, spec: &RunSpec) {
        if !spec.keep || spec.on_node || !bind_sources_exist(&spec.run.binds) {
            return;
        }
        self.make_spare(node, spec, Self::spare_key(node, spec), true);
    }

    fn sweep_abandoned(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Gone, not merely unreadable (another user's, or a path this process cannot see).
            let gone = |labels: Option<&HashMap<String, String>>| {
                labels
                    .and_then(|l| l.get(labels::STATE_DIR))
                    .filter(|d| {
                        std::fs::symlink_metadata(d)
                            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
                    })
                    .cloned()
            };
            // Only what engines of this host and mount namespace made.
            let filters = HashMap::from([(
                "label".to_string(),
                vec![
                    format!("{}=1", labels::ENGINE),
                    labels::STATE_DIR.to_string(),
                    format!("{}={}", labels::HOST, labels::host()),
                ],
            )]);
            let opts = bollard::query_parameters::ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build();
            let containers = self
                .docker
                .list_containers(Some(opts))
                .await
                .unwrap_or_default();
            let opts = bollard::query_parameters::ListNetworksOptionsBuilder::new()
                .filters(&filters)
                .build();
            let networks = self
                .docker
                .list_networks(Some(opts))
                .await
                .unwrap_or_default();
            // Containers first: a network goes once nothing is attached to it.
            let targets = containers
                .iter()
                .filter_map(|c| Some((gone(c.labels.as_ref())?, false, c.id.clone()?)))
                .chain(
                    networks
                        .iter()
                        .filter_map(|n| Some((gone(n.labels.as_ref())?, true, n.name.clone()?))),
                );
            let mut swept = std::collections::BTreeSet::new();
            for (dir, network, name) in targets {
                let removed = if network {
                    self.remove_pool(&name).await
                } else {
                    self.remove_container(&name).await
                };
                if let Err(e) = removed {
                    tracing::warn!(name, error = %e, "removing what an abandoned engine left");
                }
                swept.insert(dir);
            }
            for dir in swept {
                tracing::info!(state_dir = %dir, "removed the containers and networks of an engine whose state directory is gone");
            }
            self.nets.sweep().await;
        })
    }

    fn remove_labelled<'a>(
        &'a self,
        labels: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let filters = HashMap::from([("label".to_string(), wanted.clone())]);
            let opts = bollard::query_parameters::ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build();
            let list = self.docker.list_containers(Some(opts)).await.map_err(|e| {
                EngineError::docker(format!("listing containers {}", wanted.join(",")), e)
            })?;
            let ids: Vec<String> = list.into_iter().filter_map(|c| c.id).collect();
            futures::future::try_join_all(ids.iter().map(|id| self.remove_container(id)))
                .await
                .map(|_| ())
        })
    }
}

/// Whether the source of every bind (`SRC:DST[:OPTS]`) that names a host path exists (a named
/// volume is no path and counts as there).
/// How long [`ContainerNodes::end_now`] waits for a killed container's processes.
const END_WAIT: Duration = Duration::from_secs(10);

/// SIGKILLs process `pid`, when it is in the cgroup of container `id`, and waits (up to
/// `wait`) until it has exited. The pidfd pins the process: a PID reused meanwhile is never
/// signalled.
async fn end_process(pid: i32, id: &str, wait: Duration) -> std::io::Result<()> {
    use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
    let p = Pid::from_raw(pid).ok_or_else(|| std::io::Error::other("not a PID"))?;
    let fd = pidfd_open(p, PidfdFlags::empty())?;
    if !in_cgroup_of(pid, id) {
        return Err(std::io::Error::other("not in the container's cgroup"));
    }
    match pidfd_send_signal(&fd, Signal::KILL) {
        Ok(()) => {}
        // Exited meanwhile.
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    // A pidfd turns readable once its process has exited (a short blocking poll: SIGKILL
    // ends a process within milliseconds).
    tokio::task::spawn_blocking(move || {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let timeout = Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        loop {
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(0) => return Err(std::io::Error::other("still running after SIGKILL")),
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The directory `<root>.<what>` beside the node root `root` (engine files of the node that
/// its containers must not reach through the node root's bind).
pub(crate) fn beside_root(root: &Path, what: &str) -> PathBuf {
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    root.with_file_name(format!("{name}.{what}"))
}

/// Whether process `pid` is in the cgroup of the container whose id is `id` (a process of it).
fn in_cgroup_of(pid: impl std::fmt::Display, id: &str) -> bool {
    id.len() >= 12
        && std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(id))
}

fn bind_sources_exist(binds: &[String]) -> bool {
    binds.iter().all(|b| {
        let src = b.split(':').next().unwrap_or_default();
        !src.starts_with('/') || Path::new(src).exists()
    })
}

/// Kills process `root` (a host PID, as Docker reports an exec's) and every process it
/// started, found through `/proc`: a host task on a container node runs in the node's
/// holder, and stopping it must leave the holder running. Only processes in the PID namespace
/// of `main` (the holder's main process, itself spared) are touched, so a wrong or reused PID
/// can never reach the host's own processes. Two passes, so that a process forked while the
/// first one ran is found too.
fn kill_tree(root: i32, main: i32) {
    let mut killed = std::collections::HashSet::new();
    for _ in 0..2 {
        for pid in kill_targets(root, main) {
            if !killed.insert(pid) {
                continue;
            }
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                if let Err(e) = rustix::process::kill_process(p, rustix::process::Signal::KILL) {
                    tracing::debug!(pid, error = %e, "kill failed");
                }
            }
        }
    }
}

/// What [`kill_tree`] kills: `root` and its descendants that share `main`'s PID namespace,
/// without `main`, PID 1 or anything when `root` is not a process of that namespace.
fn kill_targets(root: i32, main: i32) -> Vec<i32> {
    let Some(ns) = pid_namespace(main) else {
        return vec![];
    };
    if root <= 1 || root == main || pid_namespace(root).as_ref() != Some(&ns) {
        return vec![];
    }
    descendants(root)
        .into_iter()
        .filter(|&p| p > 1 && p != main && pid_namespace(p).as_ref() == Some(&ns))
        .collect()
}

/// The PID namespace of process `pid` (the target of `/proc/PID/ns/pid`).
fn pid_namespace(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// `root` and its descendants, from the parent PIDs in `/proc/*/stat`.
fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(ppid) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parent_of)
        {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while let Some(&p) = out.get(i) {
        if let Some(c) = children.get(&p) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// The parent PID in a `/proc/PID/stat` line: `pid (comm) state ppid …`, where `comm` may
/// hold spaces and parentheses.
fn parent_of(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Sleeps `timeout`, or forever without one (a task's wall-clock limit).
pub(crate) async fn sleep_for(timeout: Option<Duration>) {
    match timeout {
        Some(t) => tokio::time::sleep(t).await,
        None => futures::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_is_made_early_only_when_its_bind_sources_exist() {
        let dir = tempfile::tempdir().unwrap();
        let there = format!("{}:/data:ro", dir.path().display());
        let missing = format!("{}/made-by-the-preparation:/x", dir.path().display());
        assert!(bind_sources_exist(&[]));
        assert!(bind_sources_exist(&[there.clone(), "cache:/cache".into()]));
        assert!(!bind_sources_exist(&[there, missing]));
    }

    #[test]
    fn the_parent_is_read_past_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parent_of("42 (bash) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parent_of("43 (my (odd) name) R 42 43 1 0"), Some(42));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn a_process_tree_is_found_and_killed_whole() {
        // sh → sleep (a child the exec'd command started): both must go.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 300 & wait"])
            .spawn()
            .expect("spawn sh");
        let root = i32::try_from(child.id()).expect("pid");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let tree = loop {
            let t = descendants(root);
            if t.len() >= 2 || std::time::Instant::now() > deadline {
                break t;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(tree.len(), 2, "sh and its sleep: {tree:?}");
        // Never PID 1, the spared main process, or a root that is not in its namespace.
        let me = i32::try_from(std::process::id()).expect("pid");
        assert!(kill_targets(0, me).is_empty());
        assert!(kill_targets(1, me).is_empty());
        assert!(kill_targets(me, me).is_empty());
        assert!(
            kill_targets(root, i32::MAX).is_empty(),
            "no such main process"
        );
        assert_eq!(kill_targets(root, me), tree);
        kill_tree(root, me);
        let status = child.wait().expect("wait sh");
        assert!(!status.success());
        let gone = |p: i32| !std::path::Path::new(&format!("/proc/{p}")).exists();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !gone(tree[1]) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The sleep was reparented (to init or a subreaper) and reaped there, or is a zombie.
        let state = std::fs::read_to_string(format!("/proc/{}/stat", tree[1])).unwrap_or_default();
        assert!(
            gone(tree[1]) || state.contains(") Z "),
            "sleep still runs: {state}"
        );
    }
}
