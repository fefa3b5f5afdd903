//! Creating a pool of VM-like nodes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::{
    evict, mount_layers, seed_data_root, CacheEntry, CacheKey, LayerMounts, DEFAULT_CACHE_KEEP,
};
use crate::cmd::{describe, run, Binaries};
use crate::error::{Result, VmNodeError};
use crate::net::{claim_subnet, Subnet};
use crate::node::{ping, NodeShared, VmNode};
use crate::registry::{self, Registry};
use crate::state::{NodeRecord, PoolRecord, ProcRef};
use crate::teardown::{remove_node, stop_all, teardown};

/// Default directory for pool state (records, node roots, engine data).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/shipyard/vm-nodes";
/// Default directory for the engines' exec roots (kept short: socket paths are limited).
pub const DEFAULT_RUN_DIR: &str = "/run/shipyard-vm";
/// Default common path of every node's root (`AZ_BATCH_NODE_ROOT_DIR`), as on Batch VMs.
pub const DEFAULT_NODE_ROOT_DIR: &str = "/mnt/batch/tasks";
/// Most nodes one pool (one /24) can hold.
pub const MAX_NODES: usize = 250;

/// Configures and creates a [`VmPool`].
#[derive(Debug, Clone)]
pub struct VmPoolBuilder {
    nodes: usize,
    state_dir: PathBuf,
    run_dir: PathBuf,
    node_root_dir: PathBuf,
    subnet_base: [u8; 2],
    binaries: Binaries,
    registry: bool,
    registry_mirror: bool,
    engine_timeout: Duration,
    images: Vec<String>,
    cache_keep: usize,
}

/// How long each phase of [`VmPoolBuilder::create`] took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct CreationTimes {
    /// Subnet claim, bridge, forward rule.
    pub network: Duration,
    /// Resolving the image IDs and waiting for the cache entry's lock.
    pub cache_lookup: Duration,
    /// Starting the registry.
    pub registry: Duration,
    /// Every node's namespaces, veth, hostname and bind mounts.
    pub namespaces: Duration,
    /// On a cache miss: pushing the images into the entry's registry.
    pub push: Duration,
    /// On a cache miss: the template engine's start, pulls and stop.
    pub template: Duration,
    /// Seeding every node's data root from the template (metadata copied before its dockerd
    /// starts, layers mounted once it answers).
    pub seed: Duration,
    /// Starting every node's dockerd until all answer.
    pub engines: Duration,
    /// The whole creation.
    pub total: Duration,
    /// `None` without [`VmPoolBuilder::images`]; else whether the cache entry was complete.
    pub cache_hit: Option<bool>,
}

impl Default for VmPoolBuilder {
    fn default() -> Self {
        VmPoolBuilder {
            nodes: 1,
            state_dir: DEFAULT_STATE_DIR.into(),
            run_dir: DEFAULT_RUN_DIR.into(),
            node_root_dir: DEFAULT_NODE_ROOT_DIR.into(),
            subnet_base: [10, 213],
            binaries: Binaries::default(),
            registry: false,
            registry_mirror: false,
            engine_timeout: Duration::from_secs(30),
            images: Vec::new(),
            cache_keep: DEFAULT_CACHE_KEEP,
        }
    }
}

impl VmPoolBuilder {
    /// Number of nodes (1..=[`MAX_NODES`]).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }
    /// Where records, node roots and engine data live ([`DEFAULT_STATE_DIR`]).
    pub fn state_dir(mut self, p: impl Into<PathBuf>) -> Self {
        self.state_dir = p.into();
        self
    }
    /// Where the engines' exec roots live ([`DEFAULT_RUN_DIR`]).
    pub fn run_dir(mut self, p: impl Into<PathBuf>) -> Self {
        self.run_dir = p.into();
        self
    }
    /// The path every node sees its own root at ([`DEFAULT_NODE_ROOT_DIR`]).
    pub fn node_root_dir(mut self, p: impl Into<PathBuf>) -> Self {
        self.node_root_dir = p.into();
        self
    }
    /// The /16 the pool's /24 is picked from (default `10.213`).
    pub fn subnet_base(mut self, a: u8, b: u8) -> Self {
        self.subnet_base = [a, b];
        self
    }
    /// The programs to run.
    pub fn binaries(mut self, b: Binaries) -> Self {
        self.binaries = b;
        self
    }
    /// Start a pool-local image registry on the bridge (see [`VmPool::distribute_via_registry`]).
    pub fn registry(mut self, on: bool) -> Self {
        self.registry = on;
        self
    }
    /// With [`registry`](Self::registry): the node engines also use the pool's registry as
    /// their Docker Hub mirror (`--registry-mirror`), so a plain `docker pull name:tag` on a
    /// node is served by that registry when it holds the repository (pushed as
    /// `<push address>/name:tag`, `library/name:tag` for single-component names).
    pub fn registry_mirror(mut self, on: bool) -> Self {
        self.registry_mirror = on;
        self
    }
    /// How long to wait for each node's dockerd to answer (30 s).
    pub fn engine_timeout(mut self, d: Duration) -> Self {
        self.engine_timeout = d;
        self
    }

    /// Images of the host's engine that every node's engine holds when the pool is ready,
    /// as pulled from the pool registry (needs [`registry`](Self::registry) and
    /// [`registry_mirror`](Self::registry_mirror)): a node's `docker pull <image>` is a real
    /// pull that finds every layer present. They come from the persistent image cache under
    /// the state directory (`cache/`, see the crate docs): pushed and pulled once per set of
    /// host image IDs, then seeded into each new node's data root (the layers as read-only
    /// bind mounts in the node's mount namespace). Images a Docker Hub
    /// mirror cannot serve (other registries, digests) are skipped with a warning.
    pub fn images<I, S>(mut self, images: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.images = images.into_iter().map(Into::into).collect();
        self
    }
    /// How many image cache entries (sets of image IDs) to keep, by last use
    /// ([`DEFAULT_CACHE_KEEP`]); entries in use by live pools are never removed.
    pub fn cache_keep(mut self, n: usize) -> Self {
        self.cache_keep = n;
        self
    }

    fn validate(&self) -> Result<()> {
        if !(self.images.is_empty() || self.registry && self.registry_mirror) {
            return Err(VmNodeError::InvalidConfig {
                field: "images",
                reason: "cached images need registry(true) and registry_mirror(true)".into(),
            });
        }
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(VmNodeError::InvalidConfig {
                field: "nodes",
                reason: format!("{} is not in 1..={MAX_NODES}", self.nodes),
            });
        }
        for (field, p) in [
            ("state_dir", &self.state_dir),
            ("run_dir", &self.run_dir),
            ("node_root_dir", &self.node_root_dir),
        ] {
            if !p.is_absolute() {
                return Err(VmNodeError::InvalidConfig {
                    field,
                    reason: format!("{} is not an absolute path", p.display()),
                });
            }
        }
        Ok(())
    }

    /// Creates the pool: bridge, forward rule, namespaces, engines (started in parallel, each
    /// answering before this returns). On any failure everything created so far is removed.
    pub fn create(self) -> Result<VmPool> {
        self.validate()?;
        let started = Instant::now();
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let dir = self.state_dir.join("pools").join(&id);
        let scope = format!("pool {id}");
        std::fs::create_dir_all(&dir).map_err(|e| VmNodeError::io(&scope, "creating", &dir, e))?;
        let mut setup = Setup {
            b: &self,
            rec: PoolRecord {
                id: id.clone(),
                owner: ProcRef::current(),
                dir: dir.clone(),
                run_dir: self.run_dir.join(&id),
                subnet_claim: None,
                bridge: None,
                forward_rule: None,
                ns_dir_mounted: false,
                registries: Vec::new(),
                nodes: Vec::new(),
                cache_user: None,
                template_dockerd: None,
            },
            children: Vec::new(),
            registry: None,
            pull: None,
            times: CreationTimes::default(),
            layers: Vec::new(),
            from: 0,
            cache_key: None,
        };
        match setup.run() {
            Ok(subnet) => {
                let Setup {
                    rec,
                    children,
                    registry,
                    mut times,
                    cache_key,
                    ..
                } = setup;
                times.total = started.elapsed();
                let mut pool = VmPool::new(rec, children, registry, subnet, &self, times);
                pool.cache_key = cache_key;
                tracing::info!(
                    pool = id,
                    nodes = self.nodes,
                    secs = times.total.as_secs_f64(),
                    ?times,
                    "pool ready"
                );
                Ok(pool)
            }
            Err(e) => {
                tracing::warn!(pool = id, error = %e, "pool creation failed; removing what was created");
                teardown(&setup.rec, &self.binaries, &mut setup.children);
                Err(e)
            }
        }
    }
}

struct Setup<'a> {
    b: &'a VmPoolBuilder,
    rec: PoolRecord,
    children: Vec<Child>,
    registry: Option<Registry>,
    /// The registry's pull address (the node engines' insecure registry and mirror).
    pull: Option<std::net::SocketAddr>,
    times: CreationTimes,
    /// Per node from `from`, the cached layers to mount once its dockerd answers.
    layers: Vec<LayerMounts>,
    /// The first node this setup makes (0 for a new pool; the first new one when growing).
    from: usize,
    /// The image cache entry's key, once opened.
    cache_key: Option<CacheKey>,
}

/// Where one dockerd keeps its files.
struct EnginePaths {
    data_root: PathBuf,
    exec_root: PathBuf,
    pidfile: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    config: PathBuf,
}

impl Setup<'_> {
    fn scope(&self) -> String {
        self.rec.scope()
    }

    fn run(&mut self) -> Result<Subnet> {
        let bins = &self.b.binaries;
        let scope = self.scope();
        self.rec.save()?;
        let claims = self.b.state_dir.join("subnets");
        let t = Instant::now();
        let (subnet, claim) = claim_subnet(bins, self.b.subnet_base, &claims, &self.rec.id)?;
        self.rec.subnet_claim = Some(claim);
        self.bridge(subnet)?;
        self.times.network = t.elapsed();
        let t = Instant::now();
        let mut cache = self.open_cache()?;
        self.times.cache_lookup = t.elapsed();
        if self.b.registry {
            let t = Instant::now();
            let storage = cache.as_ref().map(CacheEntry::registry_storage);
            let mut reg = registry::start(&self.rec, bins, subnet.host(1), storage.as_deref())?;
            self.rec.registries = reg.procs();
            self.rec.save()?;
            self.pull = Some(reg.pull_address());
            self.children.extend(reg.take_children());
            self.registry = Some(reg);
            self.times.registry = t.elapsed();
        }
        let t = Instant::now();
        self.namespaces(subnet)?;
        self.times.namespaces = t.elapsed();
        if let Some(cache) = cache.as_mut() {
            self.seed_from_cache(cache)?;
            cache.release();
            let removed = evict(&self.b.state_dir, self.b.cache_keep, &cache.dir);
            if !removed.is_empty() {
                tracing::info!(scope, ?removed, "image cache entries evicted");
            }
        }
        let t = Instant::now();
        self.engines()?;
        self.times.engines = t.elapsed();
        self.mount_layers()?;
        tracing::debug!(scope, "all engines answer");
        Ok(subnet)
    }

    /// The cache entry of the builder's images (locked, this pool registered as a user).
    fn open_cache(&mut self) -> Result<Option<CacheEntry>> {
        if self.b.images.is_empty() {
            return Ok(None);
        }
        let scope = self.scope();
        let Some(key) = CacheKey::resolve(&scope, &self.b.binaries, &self.b.images)? else {
            return Ok(None);
        };
        let (dir, user) = CacheEntry::paths(&self.b.state_dir, &key, &self.rec.id);
        self.cache_key = Some(key.clone());
        self.rec.cache_user = Some(user.clone());
        self.rec.save()?;
        CacheEntry::open(&scope, key, dir, &user).map(Some)
    }

    /// Builds the entry's template when it is incomplete, then seeds every node's data root.
    fn seed_from_cache(&mut self, cache: &CacheEntry) -> Result<()> {
        let scope = self.scope();
        let hit = cache.ready();
        self.times.cache_hit = Some(hit);
        if !hit {
            tracing::info!(scope, entry = %cache.dir.display(), "image cache miss: building the entry");
            self.build_template(cache)?;
        }
        let t = Instant::now();
        let template = cache.template_root();
        let bins = &self.b.binaries;
        let nodes = &self.rec.nodes[self.from..];
        self.layers = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|n| {
                    let scope = format!("{} of {scope}", n.name);
                    let template = &template;
                    s.spawn(move || seed_data_root(&scope, bins, template, &n.dir.join("docker")))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(panicked("seeding"))))
                .collect::<Result<Vec<LayerMounts>>>()
        })?;
        self.times.seed = t.elapsed();
        Ok(())
    }

    /// Mounts the seeded layers into every node (after its dockerd answers).
    fn mount_layers(&mut self) -> Result<()> {
        let t = Instant::now();
        let scope = self.scope();
        let bins = &self.b.binaries;
        let (nodes, dir) = (&self.rec.nodes[self.from..], &self.rec.dir);
        let layers = &self.layers;
        std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .zip(layers)
                .map(|(n, mounts)| {
                    let scope = format!("{} of {scope}", n.name);
                    let (mnt, _) = ns_files(dir, &n.name);
                    s.spawn(move || mount_layers(&scope, bins, &mnt, mounts))
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().unwrap_or_else(|_| Err(panicked("mounting"))))
        })?;
        self.times.seed += t.elapsed();
        Ok(())
    }

    /// Pushes the images into the entry's registry, pulls them with a dockerd (in node-0's
    /// namespaces, as the node engines will) whose data root is the template, checks the image
    /// IDs and stops that dockerd.
    fn build_template(&mut self, cache: &CacheEntry) -> Result<()> {
        let scope = self.scope();
        let bins = self.b.binaries.clone();
        let Some(push_addr) = self.registry.as_ref().map(Registry::push_address) else {
            return Err(VmNodeError::InvalidConfig {
                field: "images",
                reason: format!("{scope} has no registry"),
            });
        };
        cache.clear_template(&scope)?;
        let t = Instant::now();
        for img in &cache.key.images {
            let target = format!("{push_addr}/{}", img.mirror);
            run(&scope, &bins.docker, ["tag", &img.id, &target])?;
            let pushed = run(&scope, &bins.docker, ["push", "-q", &target]);
            let untagged = run(&scope, &bins.docker, ["rmi", &target]);
            pushed?;
            untagged?;
        }
        self.times.push = t.elapsed();
        let t = Instant::now();
        let paths = EnginePaths {
            data_root: cache.template_root(),
            exec_root: self.rec.run_dir.join("t"),
            pidfile: self.rec.dir.join("template.pid"),
            socket: self.rec.dir.join("template.sock"),
            log: self.rec.dir.join("template.log"),
            config: self.rec.dir.join("template.json"),
        };
        mkdir(&scope, &paths.exec_root)?;
        let mut child = self.spawn_engine(0, &paths)?;
        let proc = ProcRef::of(child.id());
        self.rec.template_dockerd = proc;
        let pulled = self.rec.save().and_then(|()| {
            let deadline = Instant::now() + self.b.engine_timeout;
            while !ping(&paths.socket) {
                if proc.is_none_or(|p| !p.alive()) || Instant::now() > deadline {
                    return Err(VmNodeError::EngineDead {
                        scope: format!("the image cache engine of {scope}"),
                        reason: format!("not answering: {}", log_tail(&paths.log)),
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let host = format!("unix://{}", paths.socket.display());
            for img in &cache.key.images {
                run(
                    &scope,
                    &bins.docker,
                    ["-H", &host, "pull", "-q", &img.image],
                )?;
                let out = run(
                    &scope,
                    &bins.docker,
                    ["-H", &host, "image", "inspect", "-f", "{{.Id}}", &img.image],
                )?;
                let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if got != img.id {
                    return Err(VmNodeError::CacheMismatch {
                        scope: scope.clone(),
                        image: img.image.clone(),
                        ids: format!("has id {got}, the host's is {}", img.id),
                    });
                }
            }
            Ok(())
        });
        let procs: Vec<ProcRef> = proc.into_iter().collect();
        stop_all(&scope, &bins, &procs, std::slice::from_mut(&mut child));
        self.rec.template_dockerd = None;
        self.rec.save()?;
        pulled?;
        cache.mark_ready(&scope)?;
        self.times.template = t.elapsed();
        Ok(())
    }

    fn bridge(&mut self, subnet: Subnet) -> Result<()> {
        let bins = &self.b.binaries;
        let scope = self.scope();
        let br = format!("syb{}", self.rec.id);
        self.rec.bridge = Some(br.clone());
        self.rec.save()?;
        run(&scope, &bins.ip, ["link", "add", &br, "type", "bridge"])?;
        run(
            &scope,
            &bins.ip,
            ["addr", "add", &format!("{}/24", subnet.host(1)), "dev", &br],
        )?;
        run(&scope, &bins.ip, ["link", "set", &br, "up"])?;
        let rule: Vec<String> = [
            "-i",
            &br,
            "-o",
            &br,
            "-m",
            "comment",
            "--comment",
            &format!("shipyard-vm pool {}", self.rec.id),
            "-j",
            "ACCEPT",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.rec.forward_rule = Some(rule.clone());
        self.rec.save()?;
        let args: Vec<&str> = ["-I", "FORWARD"]
            .into_iter()
            .chain(rule.iter().map(String::as_str))
            .collect();
        run(&scope, &bins.iptables, &args)?;
        // Mount namespace files can only be bind-mounted on a private mount.
        let ns = self.rec.dir.join("ns");
        mkdir(&scope, &ns)?;
        self.rec.ns_dir_mounted = true;
        self.rec.save()?;
        run(&scope, &bins.mount, [Path::new("--bind"), &ns, &ns])?;
        run(&scope, &bins.mount, [Path::new("--make-private"), &ns])?;
        Ok(())
    }

    fn namespaces(&mut self, subnet: Subnet) -> Result<()> {
        let indices: Vec<usize> = (0..self.b.nodes).collect();
        self.add_records(subnet, &indices);
        let hosts_file = write_hosts(&self.rec)?;
        mkdir(&self.scope(), &self.b.node_root_dir)?;
        self.rec.save()?;
        for i in self.from..self.rec.nodes.len() {
            self.node_namespaces(i, &hosts_file)?;
        }
        Ok(())
    }

    /// Records nodes `node-<i>` for each of `indices` (address `.2+i`).
    fn add_records(&mut self, subnet: Subnet, indices: &[usize]) {
        for &i in indices {
            let name = format!("node-{i}");
            self.rec.nodes.push(NodeRecord {
                netns: format!("shipyard-{}-{name}", self.rec.id),
                veth: format!("syv{}n{i}", self.rec.id),
                dir: self.rec.dir.join(&name),
                exec_root: self.rec.run_dir.join(format!("n{i}")),
                address: subnet.host(2 + i as u8).to_string(),
                name,
                dockerd: None,
            });
        }
    }

    /// Adds nodes `indices` to a running pool (recorded before they are made): namespaces,
    /// every node's `/etc/hosts`, a data root seeded from the pool's image cache entry, and
    /// engines that answer.
    fn grow(&mut self, subnet: Subnet, indices: &[usize]) -> Result<()> {
        self.add_records(subnet, indices);
        self.rec.save()?;
        let hosts_file = write_hosts(&self.rec)?;
        for i in self.from..self.rec.nodes.len() {
            self.node_namespaces(i, &hosts_file)?;
        }
        if let Some(key) = self.cache_key.clone() {
            let scope = self.scope();
            let (dir, user) = CacheEntry::paths(&self.b.state_dir, &key, &self.rec.id);
            let mut cache = CacheEntry::open(&scope, key, dir, &user)?;
            if cache.ready() {
                self.seed_from_cache(&cache)?;
            } else {
                tracing::warn!(
                    scope,
                    "the image cache entry is incomplete: new nodes start without its images"
                );
            }
            cache.release();
        }
        self.engines()?;
        self.mount_layers()
    }

    fn node_namespaces(&self, i: usize, hosts_file: &Path) -> Result<()> {
        let bins = &self.b.binaries;
        let node = &self.rec.nodes[i];
        let scope = format!("{} of {}", node.name, self.scope());
        let br = self.rec.bridge.as_deref().unwrap_or_default();
        let root = node.dir.join("root");
        for d in ["shared", "startup", "workitems"] {
            mkdir(&scope, &root.join(d))?;
        }
        mkdir(&scope, &node.exec_root)?;
        run(&scope, &bins.ip, ["netns", "add", &node.netns])?;
        run(
            &scope,
            &bins.ip,
            [
                "link",
                "add",
                &node.veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &node.netns,
            ],
        )?;
        run(
            &scope,
            &bins.ip,
            ["link", "set", &node.veth, "master", br, "up"],
        )?;
        let addr = format!("{}/24", node.address);
        run(
            &scope,
            &bins.ip,
            ["-n", &node.netns, "addr", "add", &addr, "dev", "eth0"],
        )?;
        run(
            &scope,
            &bins.ip,
            ["-n", &node.netns, "link", "set", "eth0", "up"],
        )?;
        run(
            &scope,
            &bins.ip,
            ["-n", &node.netns, "link", "set", "lo", "up"],
        )?;
        let (mnt, uts) = ns_files(&self.rec.dir, &node.name);
        for f in [&mnt, &uts] {
            File::create(f).map_err(|e| VmNodeError::io(&scope, "creating", f, e))?;
        }
        let mut un = Command::new(&bins.unshare);
        un.arg(format!("--mount={}", mnt.display()))
            .arg(format!("--uts={}", uts.display()))
            .args(["--propagation", "private", "hostname", &node.name]);
        crate::cmd::run_cmd(&scope, &mut un)?;
        let enter_mnt = format!("--mount={}", mnt.display());
        let binds = [
            (root.as_path(), self.b.node_root_dir.as_path()),
            (hosts_file, Path::new("/etc/hosts")),
        ];
        for (from, to) in binds {
            let mut cmd = Command::new(&bins.nsenter);
            cmd.arg(&enter_mnt)
                .arg("--")
                .arg(&bins.mount)
                .arg("--bind")
                .arg(from)
                .arg(to);
            crate::cmd::run_cmd(&scope, &mut cmd)?;
        }
        Ok(())
    }

    fn engines(&mut self) -> Result<()> {
        for i in self.from..self.rec.nodes.len() {
            let child = self.spawn_dockerd(i)?;
            self.rec.nodes[i].dockerd = ProcRef::of(child.id());
            self.children.push(child);
            self.rec.save()?;
        }
        let deadline = Instant::now() + self.b.engine_timeout;
        let mut waiting: Vec<usize> = (self.from..self.rec.nodes.len()).collect();
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for &i in &waiting {
                let node = &self.rec.nodes[i];
                let socket = node.dir.join("docker.sock");
                if ping(&socket) {
                    continue;
                }
                let dead = node.dockerd.is_none_or(|p| !p.alive());
                if dead || Instant::now() > deadline {
                    let log_tail = log_tail(&node.dir.join("dockerd.log"));
                    let scope = format!("{} of {}", node.name, self.scope());
                    return Err(if dead {
                        VmNodeError::EngineDead {
                            scope,
                            reason: format!("dockerd exited during startup: {log_tail}"),
                        }
                    } else {
                        VmNodeError::EngineTimeout {
                            scope,
                            socket,
                            waited: self.b.engine_timeout,
                            log_tail,
                        }
                    });
                }
                still.push(i);
            }
            waiting = still;
            if !waiting.is_empty() {
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        Ok(())
    }

    fn spawn_dockerd(&self, i: usize) -> Result<Child> {
        let node = &self.rec.nodes[i];
        let paths = EnginePaths {
            data_root: node.dir.join("docker"),
            exec_root: node.exec_root.clone(),
            pidfile: node.dir.join("dockerd.pid"),
            socket: node.dir.join("docker.sock"),
            log: node.dir.join("dockerd.log"),
            config: node.dir.join("daemon.json"),
        };
        self.spawn_engine(i, &paths)
    }

    /// Starts a dockerd in node `i`'s namespaces with `paths`.
    fn spawn_engine(&self, i: usize, paths: &EnginePaths) -> Result<Child> {
        let bins = &self.b.binaries;
        let node = &self.rec.nodes[i];
        let scope = format!("{} of {}", node.name, self.scope());
        let (mnt, uts) = ns_files(&self.rec.dir, &node.name);
        let config = &paths.config;
        std::fs::write(config, "{}\n")
            .map_err(|e| VmNodeError::io(&scope, "writing", config, e))?;
        let log_path = &paths.log;
        let log =
            File::create(log_path).map_err(|e| VmNodeError::io(&scope, "creating", log_path, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| VmNodeError::io(&scope, "opening", log_path, e))?;
        let mut cmd = Command::new(&bins.nsenter);
        cmd.arg(format!("--net=/var/run/netns/{}", node.netns))
            .arg(format!("--mount={}", mnt.display()))
            .arg(format!("--uts={}", uts.display()))
            .arg("--")
            .arg(&bins.dockerd)
            .arg("--config-file")
            .arg(config)
            .arg("--data-root")
            .arg(&paths.data_root)
            .arg("--exec-root")
            .arg(&paths.exec_root)
            .arg("--pidfile")
            .arg(&paths.pidfile)
            .arg("-H")
            .arg(format!("unix://{}", paths.socket.display()))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            ])
            .args([
                "--userland-proxy=false",
                "--shutdown-timeout=2",
                "--log-level=warn",
            ]);
        if let Some(pull) = self.pull {
            cmd.arg(format!("--insecure-registry={pull}"));
            if self.b.registry_mirror {
                cmd.arg(format!("--registry-mirror=http://{pull}"));
            }
        }
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        tracing::debug!(scope, command = describe(&cmd), "starting dockerd");
        cmd.spawn().map_err(|source| VmNodeError::Spawn {
            scope,
            command: describe(&cmd),
            source,
        })
    }
}

/// Writes the pool's hosts file (bind-mounted as every node's `/etc/hosts`) naming every
/// node, in place (the same inode, so every node sees the new contents); returns its path.
fn write_hosts(rec: &PoolRecord) -> Result<PathBuf> {
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for n in &rec.nodes {
        hosts.push_str(&format!("{}\t{}\n", n.address, n.name));
    }
    let path = rec.dir.join("hosts");
    std::fs::write(&path, hosts).map_err(|e| VmNodeError::io(&rec.scope(), "writing", &path, e))?;
    Ok(path)
}

pub(crate) fn ns_files(pool_dir: &Path, node: &str) -> (PathBuf, PathBuf) {
    let ns = pool_dir.join("ns");
    (
        ns.join(format!("{node}.mnt")),
        ns.join(format!("{node}.uts")),
    )
}

fn panicked(what: &str) -> VmNodeError {
    VmNodeError::InvalidConfig {
        field: "nodes",
        reason: format!("a {what} thread panicked"),
    }
}

fn mkdir(scope: &str, p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| VmNodeError::io(scope, "creating", p, e))
}

pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// A pool of VM-like nodes. Dropping it (or [`VmPool::delete`]) removes every resource it
/// created.
#[derive(Debug)]
pub struct VmPool {
    rec: PoolRecord,
    children: Vec<Child>,
    registry: Option<Registry>,
    nodes: Vec<VmNode>,
    bins: Binaries,
    gateway: std::net::Ipv4Addr,
    subnet: Subnet,
    times: CreationTimes,
    deleted: bool,
    /// How the pool was made (for nodes added later).
    builder: VmPoolBuilder,
    shared: Arc<NodeShared>,
    cache_key: Option<CacheKey>,
}

impl VmPool {
    /// A builder with the defaults.
    pub fn builder() -> VmPoolBuilder {
        VmPoolBuilder::default()
    }

    fn new(
        rec: PoolRecord,
        children: Vec<Child>,
        registry: Option<Registry>,
        subnet: Subnet,
        b: &VmPoolBuilder,
        times: CreationTimes,
    ) -> VmPool {
        let shared = Arc::new(NodeShared {
            bins: b.binaries.clone(),
            pool_id: rec.id.clone(),
            node_root_dir: b.node_root_dir.clone(),
        });
        let nodes = rec
            .nodes
            .iter()
            .map(|n| VmNode::new(n, &rec.dir, shared.clone()))
            .collect();
        VmPool {
            bins: b.binaries.clone(),
            gateway: subnet.host(1),
            subnet,
            rec,
            children,
            registry,
            nodes,
            times,
            deleted: false,
            builder: b.clone(),
            shared,
            cache_key: None,
        }
    }

    /// The pool's id (8 hex digits; part of every resource name).
    pub fn id(&self) -> &str {
        &self.rec.id
    }
    /// The bridge's name (`syb<id>`).
    pub fn bridge(&self) -> &str {
        self.rec.bridge.as_deref().unwrap_or_default()
    }
    /// The bridge's (host side) address, `.1` of the pool's /24.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        self.gateway
    }
    /// The pool's state directory.
    pub fn dir(&self) -> &Path {
        &self.rec.dir
    }
    /// The nodes, `node-0` first.
    pub fn nodes(&self) -> &[VmNode] {
        &self.nodes
    }
    /// The registry, when the pool was built with [`VmPoolBuilder::registry`].
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_ref()
    }
    /// How long each phase of the pool's creation took.
    pub fn creation_times(&self) -> CreationTimes {
        self.times
    }
    pub(crate) fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// Adds `n` nodes, made as the first ones: on the pool's bridge, named in every node's
    /// `/etc/hosts`, using the pool's registry and seeded from its image cache entry, their
    /// engines answering before this returns. They take the lowest free node numbers. On
    /// failure the new nodes are removed and the pool is as before. Returns the new nodes.
    pub fn add_nodes(&mut self, n: usize) -> Result<Vec<VmNode>> {
        let used: std::collections::HashSet<&str> =
            self.rec.nodes.iter().map(|n| n.name.as_str()).collect();
        let indices: Vec<usize> = (0..MAX_NODES)
            .filter(|i| !used.contains(format!("node-{i}").as_str()))
            .take(n)
            .collect();
        if indices.len() < n {
            return Err(VmNodeError::InvalidConfig {
                field: "nodes",
                reason: format!(
                    "{} + {n} nodes is more than {MAX_NODES}",
                    self.rec.nodes.len()
                ),
            });
        }
        let from = self.rec.nodes.len();
        let mut setup = Setup {
            b: &self.builder,
            rec: self.rec.clone(),
            children: Vec::new(),
            registry: None,
            pull: self.registry.as_ref().map(Registry::pull_address),
            times: CreationTimes::default(),
            layers: Vec::new(),
            from,
            cache_key: self.cache_key.clone(),
        };
        let t = Instant::now();
        let grown = setup.grow(self.subnet, &indices);
        let Setup {
            rec, mut children, ..
        } = setup;
        if let Err(e) = grown {
            tracing::warn!(pool = self.rec.id, error = %e, "adding nodes failed; removing them");
            for node in &rec.nodes[from..] {
                remove_node(&rec, node, &self.bins, &mut children);
            }
            let _ = write_hosts(&self.rec);
            let _ = self.rec.save();
            return Err(e);
        }
        self.rec = rec;
        self.children.extend(children);
        let new: Vec<VmNode> = self.rec.nodes[from..]
            .iter()
            .map(|n| VmNode::new(n, &self.rec.dir, self.shared.clone()))
            .collect();
        self.nodes.extend(new.iter().cloned());
        tracing::info!(
            pool = self.rec.id,
            nodes = n,
            secs = t.elapsed().as_secs_f64(),
            "nodes added"
        );
        Ok(new)
    }

    /// Removes node `name` and everything of it: its dockerd and every process in its
    /// namespaces, its namespaces, veth and directories; every other node's `/etc/hosts`
    /// stops naming it. A name the pool does not have is left alone.
    pub fn remove_node(&mut self, name: &str) -> Result<()> {
        let Some(i) = self.rec.nodes.iter().position(|n| n.name == name) else {
            return Ok(());
        };
        let node = self.rec.nodes[i].clone();
        remove_node(&self.rec, &node, &self.bins, &mut self.children);
        self.rec.nodes.remove(i);
        self.nodes.retain(|n| n.name() != name);
        write_hosts(&self.rec)?;
        self.rec.save()
    }

    /// Removes everything now (also done on drop).
    pub fn delete(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        if !self.deleted {
            self.deleted = true;
            teardown(&self.rec, &self.bins, &mut self.children);
        }
    }
}

impl Drop for VmPool {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_rejects_bad_values_naming_the_field() {
        let e = VmPool::builder()
            .nodes(0)
            .validate()
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("invalid VM-node configuration: nodes: 0 is not in 1..=250")
        );
        let e = VmPool::builder()
            .node_root_dir("mnt/batch")
            .validate()
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("node_root_dir")));
        assert!(VmPool::builder().nodes(8).validate().is_ok());
    }

    #[test]
    fn the_hosts_file_names_every_node_and_is_rewritten_in_place() {
        use std::os::unix::fs::MetadataExt;
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let node = |i: usize| NodeRecord {
            name: format!("node-{i}"),
            netns: String::new(),
            veth: String::new(),
            address: format!("10.213.7.{}", 2 + i),
            dir: dir.path().join(format!("node-{i}")),
            exec_root: dir.path().join(format!("n{i}")),
            dockerd: None,
        };
        let mut rec = PoolRecord {
            id: "t".into(),
            owner: ProcRef::current(),
            dir: dir.path().to_path_buf(),
            run_dir: dir.path().join("run"),
            subnet_claim: None,
            bridge: None,
            forward_rule: None,
            ns_dir_mounted: false,
            registries: Vec::new(),
            nodes: vec![node(0)],
            cache_user: None,
            template_dockerd: None,
        };
        let path = write_hosts(&rec).unwrap_or_default();
        let inode = std::fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
        rec.nodes.push(node(1));
        assert_eq!(write_hosts(&rec).ok().as_ref(), Some(&path));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            text.ends_with("10.213.7.2\tnode-0\n10.213.7.3\tnode-1\n"),
            "{text}"
        );
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        // The same file: a bind mount of it (every node's /etc/hosts) sees the new contents.
        assert_eq!(
            std::fs::metadata(&path).map(|m| m.ino()).unwrap_or(1),
            inode
        );
        rec.nodes.remove(0);
        assert!(write_hosts(&rec).is_ok());
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            !text.contains("node-0") && text.contains("node-1"),
            "{text}"
        );
    }

    #[test]
    fn log_tail_keeps_the_last_five_lines() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else { panic!("tempdir") };
        let p = dir.path().join("log");
        let body: String = (1..=7).map(|i| format!("l{i}\n")).collect();
        assert!(std::fs::write(&p, body).is_ok());
        assert_eq!(log_tail(&p), "l3 | l4 | l5 | l6 | l7");
    }
}
