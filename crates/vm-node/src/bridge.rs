//! A bridge of the caller's own for containers that Docker starts without a network
//! (`--network none`): each container is given a veth into it and an address on the bridge's
//! private /24.
//!
//! Why not a Docker network: Docker connects a container to a user-defined network during
//! its start, one container after another, and removes the endpoints the same way; with eight
//! containers started at once on this project's two-core CI machine that was 0.4–0.6 s of a
//! cold MPI job's start and 0.3 s of its end. A veth made here costs two `ip` runs (about
//! 2 ms each) and goes with the container's network namespace.
//!
//! What a bridge makes is recorded before it is made, in `<records>/<bridge>.json` (by default
//! under `/run`, which is gone with the bridges at a reboot), so [`HostBridge::remove`] and
//! [`sweep_bridges`] remove exactly that: the bridge, its iptables rules (each carrying the
//! comment `shipyard bridge <name>`) and its subnet claim.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cmd::{describe, run, run_quiet, status_text, Binaries};
use crate::error::{Result, VmNodeError};

/// Where bridge records and subnet claims live unless told otherwise: machine-wide, so that
/// engines with different state directories never pick the same /24.
pub const DEFAULT_BRIDGE_RECORDS: &str = "/run/shipyard/bridges";

/// A subnet claim younger than this whose bridge does not exist yet is still being set up.
const CLAIM_GRACE: Duration = Duration::from_secs(30);

/// What a bridge made, written before it is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeRecord {
    /// The bridge's interface name.
    pub name: String,
    /// Its /24 (`a.b.c`).
    pub subnet: [u8; 3],
    /// Who made it (free-form key/value pairs the maker uses to find its bridges again, and
    /// [`sweep_bridges`]'s caller to decide whether the maker is gone).
    pub owner: BTreeMap<String, String>,
    /// Whether its iptables rules were inserted.
    #[serde(default)]
    pub rules: bool,
    /// Set when its removal begins: such a bridge is never opened again, only removed.
    #[serde(default)]
    pub removing: bool,
}

impl BridgeRecord {
    /// The bridge's address: `.1` of its /24.
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }

    /// Address `.last` of its /24.
    pub fn host(&self, last: u8) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, last)
    }

    fn scope(&self) -> String {
        format!("bridge {}", self.name)
    }

    fn cidr(&self) -> String {
        format!("{}/24", self.host(0))
    }

    fn comment(&self) -> String {
        format!("shipyard bridge {}", self.name)
    }

    /// `(table, chain, rule)` of every rule: traffic between the bridge's ports (the host's
    /// dockerd sets the FORWARD policy to DROP), out of it and back, and NAT for what leaves
    /// the machine, as a Docker bridge network has.
    fn rules(&self) -> Vec<(&'static str, &'static str, Vec<String>)> {
        let (br, c) = (self.name.as_str(), self.comment());
        let rule = |words: &[&str]| -> Vec<String> {
            words
                .iter()
                .map(|w| w.to_string())
                .chain(["-m", "comment", "--comment", &c].map(String::from))
                .collect()
        };
        let accept = |words: &[&str]| {
            let mut w = rule(words);
            w.extend(["-j", "ACCEPT"].map(String::from));
            ("filter", "FORWARD", w)
        };
        let drop_to = |out: &str| {
            let mut w = rule(&["-i", br, "-o", out]);
            w.extend(["-j", "DROP"].map(String::from));
            ("filter", "FORWARD", w)
        };
        // In the order they end up in the chain: the bridge's own traffic, then none to
        // other bridges (pools and Docker networks stay apart, as Docker keeps its networks),
        // then out of the machine and back.
        let mut r = vec![
            accept(&["-i", br, "-o", br]),
            drop_to("syc+"),
            drop_to("syb+"),
            drop_to("br-+"),
            drop_to("docker0"),
            accept(&["-i", br, "!", "-o", br]),
            accept(&[
                "-o",
                br,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
            ]),
        ];
        let mut nat = rule(&["-s", &self.cidr(), "!", "-o", br]);
        nat.extend(["-j", "MASQUERADE"].map(String::from));
        r.push(("nat", "POSTROUTING", nat));
        r
    }

    /// The `iptables-restore --noflush` input that inserts (`-I`) or deletes (`-D`) every rule.
    fn restore_input(&self, op: &str) -> String {
        let mut out = String::new();
        for table in ["filter", "nat"] {
            out.push_str(&format!("*{table}\n"));
            // `-I` inserts at the top: the last line inserted is the first rule.
            for (_, chain, words) in self.rules().into_iter().rev().filter(|(t, ..)| *t == table) {
                out.push_str(&format!("{op} {chain}"));
                for w in words {
                    // Quoted as iptables-restore reads them (the comment has spaces).
                    if w.contains(' ') {
                        out.push_str(&format!(" \"{w}\""));
                    } else {
                        out.push(' ');
                        out.push_str(&w);
                    }
                }
                out.push('\n');
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// A bridge made (or found again) by [`HostBridge::create`] / [`HostBridge::open`].
#[derive(Debug, Clone)]
pub struct HostBridge {
    record: BridgeRecord,
    records: PathBuf,
}

impl HostBridge {
    /// Makes a bridge named `name` on the first /24 of `base.0.0/16` that no interface, route
    /// or other bridge of `records` uses, with its rules. What it made is recorded first; a
    /// failure removes it again.
    pub fn create(
        bins: &Binaries,
        records: &Path,
        name: &str,
        base: [u8; 2],
        owner: BTreeMap<String, String>,
    ) -> Result<HostBridge> {
        let scope = format!("bridge {name}");
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            return Err(VmNodeError::InvalidConfig {
                field: "bridge name",
                reason: format!("`{name}` is not a usable interface name (1–15 characters)"),
            });
        }
        // A record whose interface is gone (its maker died mid-way, or the bridge was removed
        // by hand): what else it made goes first.
        if let Ok(old) = load(&records.join(format!("{name}.json"))) {
            if !remove_recorded(bins, records, &old) {
                return Err(VmNodeError::InvalidConfig {
                    field: "bridge name",
                    reason: format!(
                        "an earlier bridge `{name}` could not be removed (its rules or \
                         interface are left, see {}): remove them by hand",
                        records.join(format!("{name}.json")).display()
                    ),
                });
            }
        }
        let claims = records.join("claims");
        std::fs::create_dir_all(&claims)
            .map_err(|e| VmNodeError::io(&scope, "creating", &claims, e))?;
        let subnet = claim(bins, &claims, base, name)?;
        let mut bridge = HostBridge {
            record: BridgeRecord {
                name: name.to_string(),
                subnet,
                owner,
                rules: false,
                removing: false,
            },
            records: records.to_path_buf(),
        };
        if let Err(e) = bridge.save().and_then(|()| bridge.make(bins)) {
            bridge.remove(bins);
            return Err(e);
        }
        Ok(bridge)
    }

    fn make(&mut self, bins: &Binaries) -> Result<()> {
        let (scope, name) = (self.record.scope(), self.record.name.as_str());
        run(&scope, &bins.ip, ["link", "add", name, "type", "bridge"])?;
        let gw = format!("{}/24", self.record.gateway());
        run(&scope, &bins.ip, ["addr", "add", &gw, "dev", name])?;
        run(&scope, &bins.ip, ["link", "set", name, "up"])?;
        // Recorded before they are inserted (so a failure removes them too).
        self.record.rules = true;
        self.save()?;
        run_with_input(
            &scope,
            &bins.iptables_restore,
            ["-w", "--noflush"],
            &self.record.restore_input("-I"),
        )
    }

    /// The bridge recorded as `name` under `records` whose interface still exists (and whose
    /// removal has not begun).
    pub fn open(records: &Path, name: &str) -> Option<HostBridge> {
        let record = load(&records.join(format!("{name}.json"))).ok()?;
        (interface_exists(name) && !record.removing).then(|| HostBridge {
            record,
            records: records.to_path_buf(),
        })
    }

    /// What was recorded.
    pub fn record(&self) -> &BridgeRecord {
        &self.record
    }

    fn save(&self) -> Result<()> {
        save_record(&self.records, &self.record)
    }

    /// Gives the network namespace of process `pid` (a container started with
    /// `--network none`) an `eth0` on the bridge with address `.last`, and a default route
    /// through the bridge. The host side is `veth`; it goes with the namespace.
    pub fn attach(&self, bins: &Binaries, pid: u32, veth: &str, last: u8) -> Result<Ipv4Addr> {
        let scope = format!("{} of {}", veth, self.record.scope());
        let addr = self.record.host(last);
        let pid_s = pid.to_string();
        run(
            &scope,
            &bins.ip,
            [
                "link",
                "add",
                veth,
                "master",
                &self.record.name,
                "up",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &pid_s,
            ],
        )?;
        let net = format!("--net=/proc/{pid}/ns/net");
        let input = format!(
            "addr add {addr}/24 dev eth0\nlink set eth0 up\nlink set lo up\nroute add default via {}\n",
            self.record.gateway()
        );
        let ip = bins.ip.to_string_lossy().into_owned();
        let configured = run_with_input(
            &scope,
            &bins.nsenter,
            [net.as_str(), "--", ip.as_str(), "-batch", "-"],
            &input,
        );
        if configured.is_err() {
            run_quiet(&scope, &bins.ip, ["link", "del", veth]);
        }
        configured.map(|()| addr)
    }

    /// Removes the rules, the bridge, its claim and its record; what is already gone is
    /// skipped. Veths of containers still running are detached (they go with their
    /// namespaces). When a rule or the interface could not be removed, the claim and the
    /// record stay (for the sweep, or the next bridge of this name, to try again) and this
    /// returns `false`.
    pub fn remove(&self, bins: &Binaries) -> bool {
        remove_recorded(bins, &self.records, &self.record)
    }
}

/// Removes every bridge recorded under `records` that `gone` says belongs to nobody any more,
/// and claims no bridge holds. Returns the names of the bridges removed.
pub fn sweep_bridges(
    bins: &Binaries,
    records: &Path,
    gone: impl Fn(&BridgeRecord) -> bool,
) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(records) else {
        return removed;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match load(&path) {
            Ok(rec) if gone(&rec) => {
                tracing::info!(bridge = rec.name, "removing a bridge whose owner is gone");
                if remove_recorded(bins, records, &rec) {
                    removed.push(rec.name);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "unreadable bridge record left alone"),
        }
    }
    removed
}

/// Removes what `rec` records (see [`HostBridge::remove`]); `false` when a rule or the
/// interface is left, and then the claim and the record stay.
fn remove_recorded(bins: &Binaries, records: &Path, rec: &BridgeRecord) -> bool {
    let scope = rec.scope();
    if !rec.removing {
        let marked = BridgeRecord {
            removing: true,
            ..rec.clone()
        };
        if let Err(e) = save_record(records, &marked) {
            tracing::debug!(error = %e, "marking a bridge record as being removed");
        }
    }
    let mut left = false;
    if rec.rules
        && run_with_input(
            &scope,
            &bins.iptables_restore,
            ["-w", "--noflush"],
            &rec.restore_input("-D"),
        )
        .is_err()
    {
        // Some rule is gone already (restore is all or nothing): one at a time.
        for (table, chain, words) in rec.rules() {
            let args = |op: &str| -> Vec<String> {
                ["-w", "-t", table, op, chain]
                    .map(String::from)
                    .into_iter()
                    .chain(words.iter().cloned())
                    .collect()
            };
            if run(&scope, &bins.iptables, args("-C")).is_ok() {
                left |= !run_quiet(&scope, &bins.iptables, args("-D"));
            }
        }
    }
    if interface_exists(&rec.name) {
        run_quiet(&scope, &bins.ip, ["link", "del", &rec.name]);
        left |= interface_exists(&rec.name);
    }
    if left {
        tracing::warn!(
            bridge = rec.name,
            "a rule or the interface of the bridge could not be removed: its record stays"
        );
        return false;
    }
    let [a, b, c] = rec.subnet;
    let claim = records.join("claims").join(format!("{a}.{b}.{c}"));
    if std::fs::read_to_string(&claim).is_ok_and(|n| n == rec.name) {
        let _ = std::fs::remove_file(&claim);
    }
    let _ = std::fs::remove_file(records.join(format!("{}.json", rec.name)));
    true
}

/// Writes `rec` under `records` (whole or not at all).
fn save_record(records: &Path, rec: &BridgeRecord) -> Result<()> {
    let path = records.join(format!("{}.json", rec.name));
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(rec).map_err(|source| VmNodeError::State {
        path: path.clone(),
        source,
    })?;
    let scope = rec.scope();
    std::fs::write(&tmp, body).map_err(|e| VmNodeError::io(&scope, "writing", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| VmNodeError::io(&scope, "renaming", &path, e))
}

fn load(path: &Path) -> Result<BridgeRecord> {
    let body = std::fs::read(path).map_err(|e| VmNodeError::io("bridge", "reading", path, e))?;
    serde_json::from_slice(&body).map_err(|source| VmNodeError::State {
        path: path.to_path_buf(),
        source,
    })
}

fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Claims the first free /24 of `base.0.0/16` for `name` by creating `claims/<a.b.c>`
/// exclusively. A /24 is free when no interface address or route of this machine overlaps it
/// and no live claim holds it; a claim whose bridge does not exist is live only while it is
/// young (its bridge is being made).
fn claim(bins: &Binaries, claims: &Path, base: [u8; 2], name: &str) -> Result<[u8; 3]> {
    let used = crate::net::used_prefixes(bins)?;
    for c in 0..=255u8 {
        let subnet = crate::net::Subnet([base[0], base[1], c]);
        if used.iter().any(|&(net, len)| subnet.overlaps(net, len)) {
            continue;
        }
        let path = claims.join(format!("{}.{}.{c}", base[0], base[1]));
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    if let Err(e) = f.write_all(name.as_bytes()) {
                        let _ = std::fs::remove_file(&path);
                        return Err(VmNodeError::io("bridge", "writing", &path, e));
                    }
                    return Ok(subnet.0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !stale(&path) {
                        break;
                    }
                    tracing::debug!(claim = %path.display(), "removing a stale subnet claim");
                    // Renamed away first: of two claimers that both judged it stale, only one
                    // renames it, and neither can remove the other's new claim.
                    let aside = path.with_extension(format!("stale-{}", std::process::id()));
                    if std::fs::rename(&path, &aside).is_err() {
                        break;
                    }
                    let _ = std::fs::remove_file(&aside);
                }
                Err(e) => return Err(VmNodeError::io("bridge", "creating", &path, e)),
            }
        }
    }
    Err(VmNodeError::NoFreeSubnet {
        range: format!("{}.{}.0.0/16", base[0], base[1]),
    })
}

/// A claim whose bridge does not exist and that is older than [`CLAIM_GRACE`].
fn stale(path: &Path) -> bool {
    let Ok(owner) = std::fs::read_to_string(path) else {
        return false;
    };
    let old = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > CLAIM_GRACE);
    let owner = owner.trim();
    old && (owner.is_empty() || !interface_exists(owner))
}

/// Runs `program args…` with `input` on its standard input; a non-zero exit is a
/// [`VmNodeError::Command`].
fn run_with_input<I, S>(scope: &str, program: &Path, args: I, input: &str) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let command = describe(&cmd);
    tracing::debug!(scope, command, "running");
    let spawn_err = |source| VmNodeError::Spawn {
        scope: scope.to_string(),
        command: command.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(());
    }
    Err(VmNodeError::Command {
        scope: scope.to_string(),
        command,
        status: status_text(out.status),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> BridgeRecord {
        BridgeRecord {
            name: "sycabc".into(),
            subnet: [10, 212, 7],
            owner: BTreeMap::new(),
            rules: true,
            removing: false,
        }
    }

    #[test]
    fn the_rules_accept_the_bridges_own_traffic_and_nat_what_leaves() {
        let input = rec().restore_input("-I");
        let lines: Vec<&str> = input.lines().collect();
        let c = "-m comment --comment \"shipyard bridge sycabc\"";
        // Inserted at the top one after another: the chain then reads in the opposite order.
        assert_eq!(
            lines[..9],
            [
                "*filter".to_string(),
                format!(
                    "-I FORWARD -o sycabc -m conntrack --ctstate RELATED,ESTABLISHED {c} -j ACCEPT"
                ),
                format!("-I FORWARD -i sycabc ! -o sycabc {c} -j ACCEPT"),
                format!("-I FORWARD -i sycabc -o docker0 {c} -j DROP"),
                format!("-I FORWARD -i sycabc -o br-+ {c} -j DROP"),
                format!("-I FORWARD -i sycabc -o syb+ {c} -j DROP"),
                format!("-I FORWARD -i sycabc -o syc+ {c} -j DROP"),
                format!("-I FORWARD -i sycabc -o sycabc {c} -j ACCEPT"),
                "COMMIT".to_string(),
            ]
        );
        assert_eq!(
            lines[9..],
            [
                "*nat".to_string(),
                format!("-I POSTROUTING -s 10.212.7.0/24 ! -o sycabc {c} -j MASQUERADE"),
                "COMMIT".to_string(),
            ]
        );
        assert_eq!(rec().restore_input("-D").replace("-D ", "-I "), input);
        assert_eq!(rec().gateway(), Ipv4Addr::new(10, 212, 7, 1));
    }

    #[test]
    fn a_bridge_whose_interface_cannot_go_keeps_its_record_and_claim() {
        let dir = tempfile::tempdir().expect("tempdir");
        // `ip` always fails here, and `lo` always exists: its removal cannot succeed.
        let bins = Binaries {
            ip: "/bin/false".into(),
            ..Binaries::default()
        };
        let write = |r: &BridgeRecord| {
            let [a, b, c] = r.subnet;
            std::fs::create_dir_all(dir.path().join("claims")).expect("claims");
            std::fs::write(dir.path().join(format!("claims/{a}.{b}.{c}")), &r.name).expect("claim");
            std::fs::write(
                dir.path().join(format!("{}.json", r.name)),
                serde_json::to_vec(r).expect("json"),
            )
            .expect("record");
        };
        let stuck = BridgeRecord {
            name: "lo".into(),
            rules: false,
            ..rec()
        };
        write(&stuck);
        assert!(HostBridge::open(dir.path(), "lo").is_some());
        assert!(!remove_recorded(&bins, dir.path(), &stuck));
        let kept = load(&dir.path().join("lo.json")).expect("the record stays");
        assert!(kept.removing, "marked as being removed: {kept:?}");
        assert!(
            HostBridge::open(dir.path(), "lo").is_none(),
            "a bridge being removed is not opened again"
        );
        assert!(
            dir.path().join("claims/10.212.7").exists(),
            "the claim stays"
        );
        // Nor made again over what is left.
        let again = HostBridge::create(&bins, dir.path(), "lo", [10, 212], BTreeMap::new());
        assert!(
            again
                .as_ref()
                .is_err_and(|e| e.to_string().contains("could not be removed")),
            "{again:?}"
        );
        // One whose interface is gone already is removed whole.
        let gone = BridgeRecord {
            name: "sy-no-such-if".into(),
            rules: false,
            ..rec()
        };
        std::fs::remove_file(dir.path().join("claims/10.212.7")).expect("claim");
        write(&gone);
        assert!(remove_recorded(&bins, dir.path(), &gone));
        assert!(!dir.path().join("sy-no-such-if.json").exists());
        assert!(!dir.path().join("claims/10.212.7").exists());
    }

    #[test]
    fn a_claim_is_stale_only_when_old_and_its_bridge_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let young = dir.path().join("young");
        std::fs::write(&young, "sy-no-such-if").expect("write");
        assert!(!stale(&young), "a young claim is being set up");
        let old = dir.path().join("old");
        std::fs::write(&old, "sy-no-such-if").expect("write");
        let f = std::fs::File::options()
            .write(true)
            .open(&old)
            .expect("open");
        f.set_modified(SystemTime::now() - Duration::from_secs(60))
            .expect("set mtime");
        assert!(stale(&old));
        std::fs::write(&old, "lo").expect("write");
        f.set_modified(SystemTime::now() - Duration::from_secs(60))
            .expect("set mtime");
        assert!(!stale(&old), "its interface exists");
    }
}
