//! A container pool's network: a bridge of the engine's own, or a Docker network.
//!
//! By default (as root, with a local Docker engine and iproute2/iptables here) a pool's
//! holders are made with Docker's networking disabled (`NetworkDisabled`: runc gives the
//! container a network namespace of its own, with only its loopback) and each is given a veth
//! into a bridge the engine makes for the pool (crate `shipyard-vm-node`'s [`HostBridge`]),
//! with an address of the pool's private /24 (`10.212.x.0/24`). Task containers join their
//! holder's network namespace, as before. Docker attaches a container to a user-defined
//! network during its start, one container after another, and detaches them the same way at
//! the end; on this project's two-core machine that was the dearest part of a cold job (see
//! docs/local-engine.md). Even `--network none` costs a start about as much again as a
//! container that joins another's network (Docker still makes a sandbox for it), so holders do
//! without one.
//!
//! Without a sandbox Docker writes no `/etc/hosts` or `/etc/resolv.conf`: the engine writes
//! them for each node, beside its root ([`etc_dir`]), and bind-mounts them into the holder and
//! every container of the node. The hosts file names every node of the pool; the resolver
//! file is made as Docker makes one for a container without IPv6 ([`resolv_conf`]).
//!
//! Elsewhere (not root, a remote Docker engine, no `ip`/`iptables`), or with
//! `SHIPYARD_ENGINE_NETWORK=docker`, a pool is a Docker bridge network on a free /24 of
//! `10.213-214.x.x`, as the per-run backend's. A pool keeps the kind it was made with.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bollard::models::{Mount, MountTypeEnum};
use shipyard_vm_node::{sweep_bridges, Binaries, BridgeRecord, HostBridge};

use super::error::{EngineError, Result};
use super::node::labels;

/// The environment variable that picks Docker networks (`docker`) or the engine's bridges
/// (`bridge`, the default where it can work) for container pools.
pub const NETWORK_ENV: &str = "SHIPYARD_ENGINE_NETWORK";

/// The /16 the engine's pool bridges take their /24 from (Docker networks of the per-run
/// backend use 10.213-214, VM-like pools 10.213: Docker does not see the engine's bridges).
const BRIDGE_BASE: [u8; 2] = [10, 212];

/// Label on a holder: its address on the pool's bridge.
pub(crate) const ADDRESS_LABEL: &str = "shipyard.engine.address";

/// The first lines of every node's `/etc/hosts` (as Docker's).
const HOSTS_HEAD: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n";

/// Docker's name servers for a container (without IPv6) when the host has none it can reach.
const DEFAULT_NAMESERVERS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];

/// One node on a pool bridge.
#[derive(Debug, Clone)]
struct Member {
    last: u8,
    node: String,
    /// The holder's `/etc/hosts` on the host (which the node's containers bind, or Docker's
    /// file of a holder made with a sandbox by an earlier engine), once it runs.
    hosts: Option<PathBuf>,
}

/// The directory of node files bound at `/etc/hosts` and `/etc/resolv.conf` in the
/// containers of the node whose root is `root` (beside it, as its agents' directory).
pub(crate) fn etc_dir(root: &Path) -> PathBuf {
    super::node::beside_root(root, "etc")
}

/// Writes the node's `/etc` files (its hosts file naming only localhost until the node is on
/// the bridge; both readable by every user, as Docker's) and returns their mounts.
pub(crate) fn prepare_etc(root: &Path) -> std::io::Result<Vec<Mount>> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = etc_dir(root);
    std::fs::create_dir_all(&dir)?;
    for (file, body) in [
        ("hosts", HOSTS_HEAD.to_string()),
        ("resolv.conf", resolv_conf()),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, body)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(etc_mounts(root, &[]))
}

/// The bind mounts of the node's `/etc` files for a container of the node whose root is
/// `root`, when the node has them (a holder made without a sandbox), but none for a target
/// among the container's own `binds`. Mounts, not binds: a source gone meanwhile (the node's
/// removal) fails the container's creation instead of being made a directory by Docker.
pub(crate) fn etc_mounts(root: &Path, binds: &[String]) -> Vec<Mount> {
    let dir = etc_dir(root);
    if !dir.is_dir() {
        return vec![];
    }
    let taken = |target: &str| {
        binds.iter().any(|b| {
            b.split(':')
                .nth(1)
                .is_some_and(|t| t.trim_end_matches('/') == target)
        })
    };
    ["hosts", "resolv.conf"]
        .iter()
        .map(|f| (dir.join(f), format!("/etc/{f}")))
        .filter(|(_, target)| !taken(target))
        .map(|(src, target)| Mount {
            target: Some(target),
            source: Some(src.display().to_string()),
            typ: Some(MountTypeEnum::BIND),
            ..Default::default()
        })
        .collect()
}

/// This host's resolver configuration for a container, as Docker makes it for one without
/// IPv6: `/etc/resolv.conf` (systemd-resolved's upstream file when it names only its stub)
/// with only its IPv4 name servers that are not loopback ones (a container reaches neither
/// kind), and Docker's defaults when none is left; or, when the Docker daemon's
/// `/etc/docker/daemon.json` sets `dns`, `dns-search` or `dns-opts`, those.
fn resolv_conf() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    resolv_from(
        &read("/etc/resolv.conf"),
        &read("/run/systemd/resolve/resolv.conf"),
        &DaemonDns::from_json(&read("/etc/docker/daemon.json")),
    )
}

/// The Docker daemon's own resolver settings.
#[derive(Debug, Default)]
struct DaemonDns {
    servers: Vec<String>,
    search: Vec<String>,
    options: Vec<String>,
}

impl DaemonDns {
    fn from_json(json: &str) -> DaemonDns {
        let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        let list = |k: &str| -> Vec<String> {
            v.get(k)
                .and_then(|x| x.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        DaemonDns {
            servers: list("dns"),
            search: list("dns-search"),
            options: list("dns-opts"),
        }
    }

    fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.search.is_empty() && self.options.is_empty()
    }
}

/// [`resolv_conf`] of the host's `etc` file, systemd-resolved's `upstream` one and the
/// daemon's settings.
fn resolv_from(etc: &str, upstream: &str, daemon: &DaemonDns) -> String {
    let mut conf = etc;
    if !nameservers(conf).any(reachable) && nameservers(upstream).any(reachable) {
        conf = upstream;
    }
    let defaults: Vec<String> = DEFAULT_NAMESERVERS.iter().map(|s| s.to_string()).collect();
    let lines = |servers: &[String]| -> String {
        servers
            .iter()
            .map(|s| format!("nameserver {s}\n"))
            .collect()
    };
    if daemon.is_empty() {
        // The host's file without the name servers a container cannot reach (Docker's
        // defaults after it when none is left).
        let mut out: String = conf
            .lines()
            .filter(|l| nameserver_of(l).is_none_or(reachable))
            .map(|l| format!("{l}\n"))
            .collect();
        if nameservers(&out).next().is_none() {
            out.push_str(&lines(&defaults));
        }
        return out;
    }
    // Docker builds the file anew: name servers, search domains, options, each the daemon's
    // when it sets them, else the host's.
    let words = |key: &str| -> Vec<String> {
        conf.lines()
            .filter_map(|l| l.strip_prefix(key))
            .filter(|rest| rest.starts_with([' ', '\t']))
            .flat_map(|rest| rest.split_whitespace().map(String::from))
            .collect()
    };
    let pick = |own: &[String], key: &str| {
        if own.is_empty() {
            words(key)
        } else {
            own.to_vec()
        }
    };
    let mut out = if daemon.servers.is_empty() {
        let host: Vec<String> = nameservers(conf)
            .filter(|a| reachable(a))
            .map(String::from)
            .collect();
        lines(if host.is_empty() { &defaults } else { &host })
    } else {
        lines(&daemon.servers)
    };
    let search = pick(&daemon.search, "search");
    if !search.is_empty() && search.join(" ").trim() != "." {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    let options = pick(&daemon.options, "options");
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

fn nameserver_of(line: &str) -> Option<&str> {
    let mut w = line.split_whitespace();
    (w.next() == Some("nameserver")).then(|| w.next()).flatten()
}

fn nameservers(conf: &str) -> impl Iterator<Item = &str> {
    conf.lines().filter_map(nameserver_of)
}

/// Whether a container on a pool bridge (IPv4 only) can reach name server `addr`.
fn reachable(addr: &str) -> bool {
    addr.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|a| !a.is_loopback())
}

/// A pool bridge and the addresses given out on it, by holder name.
#[derive(Debug)]
pub(crate) struct PoolBridge {
    bridge: HostBridge,
    members: Mutex<HashMap<String, Member>>,
    /// Set once the holders an earlier engine put on the bridge are recorded (at once for a
    /// bridge made by this engine): no address is given out before.
    pub(crate) adopted: tokio::sync::OnceCell<()>,
}

impl PoolBridge {
    /// `adopted`: a bridge made by this engine (no earlier holders to read back).
    fn new(bridge: HostBridge, adopted: bool) -> Arc<PoolBridge> {
        Arc::new(PoolBridge {
            bridge,
            members: Mutex::new(HashMap::new()),
            adopted: tokio::sync::OnceCell::new_with(adopted.then_some(())),
        })
    }

    /// Takes the lowest free address for `holder` (node `node`).
    pub(crate) fn allocate(&self, holder: &str, node: &str) -> Result<std::net::Ipv4Addr> {
        let mut m = lock(&self.members);
        if let Some(existing) = m.get(holder) {
            return Ok(self.bridge.record().host(existing.last));
        }
        let taken: std::collections::HashSet<u8> = m.values().map(|x| x.last).collect();
        let last = (2..=254u8).find(|l| !taken.contains(l)).ok_or_else(|| {
            EngineError::invalid(
                "targetDedicatedNodes",
                "more than 253 nodes on one container pool",
            )
        })?;
        m.insert(
            holder.to_string(),
            Member {
                last,
                node: node.to_string(),
                hosts: None,
            },
        );
        Ok(self.bridge.record().host(last))
    }

    /// Gives the running holder `holder` (process `pid`) its veth and address, and names it
    /// in every running holder's `/etc/hosts` (and them in its own).
    pub(crate) async fn attach(
        self: &Arc<Self>,
        holder: &str,
        pid: u32,
        hosts: Option<PathBuf>,
    ) -> Result<String> {
        let last = lock(&self.members)
            .get(holder)
            .map(|m| m.last)
            .ok_or_else(|| EngineError::invalid("node", format!("{holder} has no address")))?;
        let me = self.clone();
        let name = holder.to_string();
        let addr = blocking(
            format!("giving {name} its address on the pool bridge"),
            move || {
                // Random: a veth of a container removed a moment ago can still exist (its
                // namespace goes in the background).
                let veth = format!("syv{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
                me.bridge.attach(&Binaries::default(), pid, &veth, last)
            },
        )
        .await?;
        if let Some(m) = lock(&self.members).get_mut(holder) {
            m.hosts = hosts;
        }
        self.write_hosts();
        Ok(addr.to_string())
    }

    /// Gives `holder`'s address back and drops it from the other holders' `/etc/hosts`.
    pub(crate) fn release(&self, holder: &str) {
        if lock(&self.members).remove(holder).is_some() {
            self.write_hosts();
        }
    }

    /// Rewrites (in place: the task containers of a holder bind the same file) the
    /// `/etc/hosts` of every running holder, naming every node of the pool.
    fn write_hosts(&self) {
        let m = lock(&self.members);
        let mut body = String::from(HOSTS_HEAD);
        let mut nodes: Vec<&Member> = m.values().collect();
        nodes.sort_by_key(|x| x.last);
        for n in &nodes {
            body.push_str(&format!(
                "{}\t{}\n",
                self.bridge.record().host(n.last),
                n.node
            ));
        }
        for path in nodes.iter().filter_map(|n| n.hosts.as_ref()) {
            // Written over, then cut to length (a truncation first would let a reader see an
            // empty file).
            let written = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|mut f| {
                    std::io::Write::write_all(&mut f, body.as_bytes())?;
                    f.set_len(body.len() as u64)
                });
            if let Err(e) = written {
                tracing::debug!(file = %path.display(), error = %e, "writing a holder's hosts file");
            }
        }
    }
}

/// How the engine makes container pools' networks.
#[derive(Debug)]
pub(crate) struct PoolNets {
    /// Whether new pools get a bridge (else a Docker network).
    new_bridges: bool,
    /// Where bridge records live (`None`: not root, no bridge can be ours). Looked up also
    /// when new pools get Docker networks: a pool keeps the kind it was made with.
    records: Option<PathBuf>,
    bridges: Mutex<HashMap<String, Arc<PoolBridge>>>,
}

impl PoolNets {
    /// Bridges where they can work (see the module docs), else Docker networks.
    pub(crate) fn detect() -> PoolNets {
        let wanted = std::env::var(NETWORK_ENV).unwrap_or_default();
        let bins = Binaries::default();
        let local_docker = std::env::var("DOCKER_HOST")
            .map(|h| h.is_empty() || h.starts_with("unix://"))
            .unwrap_or(true);
        let tools = [
            &bins.ip,
            &bins.iptables,
            &bins.iptables_restore,
            &bins.nsenter,
        ]
        .iter()
        .all(|p| shipyard_vm_node::is_executable(p));
        let root = rustix::process::geteuid().is_root();
        let bridges = match wanted.as_str() {
            "docker" => false,
            _ => root && local_docker && tools,
        };
        if wanted == "bridge" && !bridges {
            tracing::warn!(
                root,
                local_docker,
                tools,
                "{NETWORK_ENV}=bridge needs root, a local Docker engine, ip and iptables: using Docker networks"
            );
        }
        PoolNets {
            new_bridges: bridges,
            records: root.then(|| PathBuf::from(shipyard_vm_node::DEFAULT_BRIDGE_RECORDS)),
            bridges: Mutex::new(HashMap::new()),
        }
    }

    /// Docker networks for every new pool.
    pub(crate) fn docker() -> PoolNets {
        PoolNets {
            new_bridges: false,
            records: rustix::process::geteuid()
                .is_root()
                .then(|| PathBuf::from(shipyard_vm_node::DEFAULT_BRIDGE_RECORDS)),
            bridges: Mutex::new(HashMap::new()),
        }
    }

    /// Whether new pools get a bridge of the engine's own.
    pub(crate) fn uses_bridges(&self) -> bool {
        self.new_bridges && self.records.is_some()
    }

    /// The bridge's interface name for the pool network `network` (at most 15 characters).
    pub(crate) fn bridge_name(network: &str) -> String {
        format!(
            "syc{:012x}",
            super::fnv(network.as_bytes()) & 0xffff_ffff_ffff
        )
    }

    /// Makes the pool's bridge (or finds the one an earlier engine made).
    pub(crate) async fn create(
        &self,
        network: &str,
        owner: &HashMap<String, String>,
    ) -> Result<Arc<PoolBridge>> {
        let Some(records) = self.records.clone() else {
            return Err(EngineError::invalid(
                "network",
                "the engine uses Docker networks",
            ));
        };
        if let Some(b) = self.find(network) {
            return Ok(b);
        }
        let name = Self::bridge_name(network);
        let mut rec_owner: BTreeMap<String, String> = owner
            .iter()
            .filter(|(k, _)| [labels::STATE_DIR, labels::HOST, labels::POOL].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rec_owner.insert("network".into(), network.to_string());
        let bridge = blocking(
            format!("making the bridge of pool network {network}"),
            move || {
                HostBridge::create(
                    &Binaries::default(),
                    &records,
                    &name,
                    BRIDGE_BASE,
                    rec_owner,
                )
            },
        )
        .await?;
        let b = PoolBridge::new(bridge, true);
        lock(&self.bridges).insert(network.to_string(), b.clone());
        Ok(b)
    }

    /// The pool's bridge, also one an earlier engine made (whose holders are read back
    /// before [`PoolBridge::adopted`] is set); `None` when the pool has none (a Docker
    /// network).
    pub(crate) fn find(&self, network: &str) -> Option<Arc<PoolBridge>> {
        if let Some(b) = lock(&self.bridges).get(network) {
            return Some(b.clone());
        }
        let records = self.records.as_deref()?;
        let bridge = HostBridge::open(records, &Self::bridge_name(network))?;
        tracing::debug!(
            network,
            bridge = bridge.record().name,
            "found the pool bridge of an earlier engine"
        );
        let b = PoolBridge::new(bridge, false);
        Some(
            lock(&self.bridges)
                .entry(network.to_string())
                .or_insert(b)
                .clone(),
        )
    }

    /// Removes the pool's bridge, if it has one.
    pub(crate) async fn remove(&self, network: &str) {
        let b = lock(&self.bridges).remove(network);
        let bridge = match (b, self.records.as_deref()) {
            (Some(b), _) => Some(b.bridge.clone()),
            (None, Some(records)) => HostBridge::open(records, &Self::bridge_name(network)),
            (None, None) => None,
        };
        if let Some(bridge) = bridge {
            let _ = tokio::task::spawn_blocking(move || bridge.remove(&Binaries::default())).await;
        }
    }

    /// Removes the bridges of engines of this host whose state directory is gone.
    pub(crate) async fn sweep(&self) {
        let Some(records) = self.records.clone() else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || {
            sweep_bridges(&Binaries::default(), &records, abandoned)
        })
        .await;
    }
}

impl PoolBridge {
    /// Records a holder an earlier engine gave address `.last` (found by its labels); an
    /// address another holder has already is not taken twice.
    pub(crate) fn adopt(&self, holder: &str, node: &str, last: u8, hosts: Option<PathBuf>) {
        let mut m = lock(&self.members);
        if m.values().any(|x| x.last == last) {
            tracing::warn!(
                holder,
                last,
                "two holders claim one address on the pool bridge"
            );
            return;
        }
        m.entry(holder.to_string()).or_insert(Member {
            last,
            node: node.to_string(),
            hosts,
        });
    }

    /// The bridge's last address octet of `addr`, if it is on the bridge's /24.
    pub(crate) fn last_of(&self, addr: &str) -> Option<u8> {
        let ip: std::net::Ipv4Addr = addr.parse().ok()?;
        let [a, b, c, d] = ip.octets();
        ([a, b, c] == self.bridge.record().subnet).then_some(d)
    }
}

/// A bridge of an engine of this host and mount namespace whose state directory is gone.
fn abandoned(rec: &BridgeRecord) -> bool {
    rec.owner.get(labels::HOST).map(String::as_str) == Some(labels::host())
        && rec.owner.get(labels::STATE_DIR).is_some_and(|d| {
            std::fs::symlink_metadata(Path::new(d))
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        })
}

/// Runs `f` (`ip`/`iptables` work) off the async threads; its error is `context`'s.
async fn blocking<T: Send + 'static>(
    context: String,
    f: impl FnOnce() -> shipyard_vm_node::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::invalid("network", format!("{context}: {e}")))?
        .map_err(|source| EngineError::VmNode { context, source })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resolver_file_drops_servers_a_container_cannot_reach_like_docker() {
        let none = DaemonDns::default();
        let etc = "search corp.example\nnameserver 127.0.0.53\nnameserver 10.1.2.3\nnameserver 2001:db8::1\nnameserver fe80::1%eth0\noptions edns0\n";
        assert_eq!(
            resolv_from(etc, "", &none),
            "search corp.example\nnameserver 10.1.2.3\noptions edns0\n"
        );
        // systemd-resolved's stub alone: its upstream servers (IPv4 ones).
        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\n";
        let upstream = "nameserver 192.0.2.1\nnameserver ::1\n";
        assert_eq!(resolv_from(stub, upstream, &none), "nameserver 192.0.2.1\n");
        // Nothing reachable at all (IPv6 only counts as such): Docker's defaults.
        let defaults = "nameserver 8.8.8.8\nnameserver 8.8.4.4\n";
        assert_eq!(
            resolv_from(stub, "nameserver 2001:db8::53\n", &none),
            format!("options edns0 trust-ad\n{defaults}")
        );
    }

    #[test]
    fn the_daemons_own_dns_settings_win_as_in_docker() {
        let etc = "search corp.example\nnameserver 127.0.0.1\noptions ndots:2\n";
        let servers = DaemonDns::from_json(r#"{"dns": ["192.0.2.53", "192.0.2.54"]}"#);
        assert_eq!(
            resolv_from(etc, "", &servers),
            "nameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch corp.example\noptions ndots:2\n"
        );
        let search =
            DaemonDns::from_json(r#"{"dns-search": ["a.example"], "dns-opts": ["rotate"]}"#);
        assert_eq!(
            resolv_from(etc, "", &search),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\nsearch a.example\noptions rotate\n"
        );
        assert!(DaemonDns::from_json("not json").is_empty());
        assert!(DaemonDns::from_json(r#"{"dns": "not a list"}"#).is_empty());
    }

    #[test]
    fn a_node_mounts_its_etc_files_unless_the_task_binds_the_same_targets() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().expect("a temporary directory");
        let root = d.path().join("n0");
        assert!(etc_mounts(&root, &[]).is_empty(), "no files, no mounts");
        let mounts = prepare_etc(&root).expect("the files are written");
        let dir = etc_dir(&root);
        assert_eq!(dir, d.path().join("n0.etc"));
        let shown = |m: &[Mount]| -> Vec<(String, String, Option<MountTypeEnum>)> {
            m.iter()
                .map(|m| {
                    (
                        m.source.clone().unwrap_or_default(),
                        m.target.clone().unwrap_or_default(),
                        m.typ,
                    )
                })
                .collect()
        };
        let bind = |f: &str| {
            (
                dir.join(f).display().to_string(),
                format!("/etc/{f}"),
                Some(MountTypeEnum::BIND),
            )
        };
        assert_eq!(shown(&mounts), vec![bind("hosts"), bind("resolv.conf")]);
        assert_eq!(
            std::fs::read_to_string(dir.join("hosts")).expect("hosts"),
            HOSTS_HEAD
        );
        for f in ["hosts", "resolv.conf"] {
            let mode = std::fs::metadata(dir.join(f))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o644, "{f}");
        }
        let own = ["/x/hosts:/etc/hosts:ro".to_string()];
        assert_eq!(shown(&etc_mounts(&root, &own)), vec![bind("resolv.conf")]);
    }
}
