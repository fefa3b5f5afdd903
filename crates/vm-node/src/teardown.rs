//! Removing everything a [`PoolRecord`] names, in dependency order. Every step tolerates
//! resources that are already gone, so teardown can run after a partial setup, twice, or from
//! [`sweep`](crate::sweep) in another process.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::cmd::{run, run_quiet, Binaries};
use crate::state::{NodeRecord, PoolRecord, ProcRef};

const STOP_GRACE: Duration = Duration::from_secs(10);

/// Sends `signal` to each live process, then waits until all are gone (reaping `children`),
/// escalating to SIGKILL after [`STOP_GRACE`].
pub(crate) fn stop_all(scope: &str, bins: &Binaries, procs: &[ProcRef], children: &mut [Child]) {
    let live: Vec<ProcRef> = procs.iter().copied().filter(ProcRef::alive).collect();
    if live.is_empty() {
        reap(children);
        return;
    }
    let pids: Vec<String> = live.iter().map(|p| p.pid.to_string()).collect();
    run_quiet(
        scope,
        &bins.kill,
        std::iter::once("-TERM".to_string()).chain(pids.clone()),
    );
    let start = Instant::now();
    let mut killed = false;
    loop {
        reap(children);
        if live.iter().all(|p| !p.alive()) {
            break;
        }
        if !killed && start.elapsed() > STOP_GRACE {
            tracing::warn!(scope, "processes ignored SIGTERM; sending SIGKILL");
            let still: Vec<String> = live
                .iter()
                .filter(|p| p.alive())
                .map(|p| p.pid.to_string())
                .collect();
            run_quiet(
                scope,
                &bins.kill,
                std::iter::once("-KILL".to_string()).chain(still),
            );
            killed = true;
        }
        if start.elapsed() > STOP_GRACE * 2 {
            tracing::error!(scope, "processes survived SIGKILL");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A multi-threaded process (dockerd) shows as a zombie as soon as its main thread exits,
    // but can be reaped only once every thread has: wait for our own children to be reaped,
    // so that none is left behind when this returns.
    let ours: Vec<u32> = live
        .iter()
        .map(|p| p.pid)
        .filter(|pid| children.iter().any(|c| c.id() == *pid))
        .collect();
    let start = Instant::now();
    while children
        .iter_mut()
        .any(|c| ours.contains(&c.id()) && matches!(c.try_wait(), Ok(None)))
        && start.elapsed() <= STOP_GRACE
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    reap(children);
}

fn reap(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.try_wait();
    }
}

/// SIGKILLs every process left in the node's network namespace (container shims, `--net=host`
/// containers, task processes).
fn kill_netns_processes(scope: &str, bins: &Binaries, netns: &str) {
    let Ok(out) = run(scope, &bins.ip, ["netns", "pids", netns]) else {
        return;
    };
    let procs: Vec<ProcRef> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter_map(ProcRef::of)
        .collect();
    if procs.is_empty() {
        return;
    }
    tracing::debug!(
        scope,
        count = procs.len(),
        "killing processes left in the namespace"
    );
    let pids: Vec<String> = procs.iter().map(|p| p.pid.to_string()).collect();
    run_quiet(
        scope,
        &bins.kill,
        std::iter::once("-KILL".to_string()).chain(pids),
    );
    let start = Instant::now();
    while procs.iter().any(ProcRef::alive) && start.elapsed() < STOP_GRACE {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills what runs in `node`'s namespaces, then removes them and its veth.
fn node_namespaces_down(rec: &PoolRecord, node: &NodeRecord, bins: &Binaries) {
    let ns = format!("{} of {}", node.name, rec.scope());
    kill_netns_processes(&ns, bins, &node.netns);
    let ns_dir = rec.dir.join("ns");
    for kind in ["mnt", "uts"] {
        let f = ns_dir.join(format!("{}.{kind}", node.name));
        if f.exists() {
            run_quiet(&ns, &bins.umount, [&f]);
            let _ = std::fs::remove_file(&f);
        }
    }
    run_quiet(&ns, &bins.ip, ["link", "del", &node.veth]);
    run_quiet(&ns, &bins.ip, ["netns", "del", &node.netns]);
}

/// Removes one node of a live pool: its dockerd (reaping it among `children`), what runs in
/// its namespaces, the namespaces, its veth and its directories.
pub(crate) fn remove_node(
    rec: &PoolRecord,
    node: &NodeRecord,
    bins: &Binaries,
    children: &mut [Child],
) {
    let scope = format!("{} of {}", node.name, rec.scope());
    tracing::info!(scope, "removing the node");
    let procs: Vec<ProcRef> = node.dockerd.into_iter().collect();
    stop_all(&scope, bins, &procs, children);
    node_namespaces_down(rec, node, bins);
    for dir in [&node.dir, &node.exec_root] {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(scope, dir = %dir.display(), error = %e, "cannot remove");
            }
        }
    }
}

/// Removes everything `rec` names. `children` are this process's dockerd/registry handles
/// (empty when sweeping), reaped so no zombie stays behind.
pub(crate) fn teardown(rec: &PoolRecord, bins: &Binaries, children: &mut [Child]) {
    let scope = rec.scope();
    tracing::info!(scope, "tearing down");
    let mut procs: Vec<ProcRef> = rec.nodes.iter().filter_map(|n| n.dockerd).collect();
    procs.extend(rec.registries.iter().copied());
    procs.extend(rec.template_dockerd);
    stop_all(&scope, bins, &procs, children);
    for node in &rec.nodes {
        node_namespaces_down(rec, node, bins);
    }
    if rec.ns_dir_mounted {
        run_quiet(&scope, &bins.umount, [rec.dir.join("ns")]);
    }
    if let Some(rule) = &rec.forward_rule {
        let check: Vec<&str> = ["-C", "FORWARD"]
            .into_iter()
            .chain(rule.iter().map(String::as_str))
            .collect();
        if run(&scope, &bins.iptables, &check).is_ok() {
            let del: Vec<&str> = ["-D", "FORWARD"]
                .into_iter()
                .chain(rule.iter().map(String::as_str))
                .collect();
            run_quiet(&scope, &bins.iptables, &del);
        }
    }
    if let Some(br) = &rec.bridge {
        run_quiet(&scope, &bins.ip, ["link", "del", br]);
    }
    let remove = |dir: &Path| {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(scope, dir = %dir.display(), error = %e, "cannot remove");
            }
        }
    };
    // Node data roots hold thousands of files (image layers): removed in parallel first.
    std::thread::scope(|s| {
        for node in rec.nodes.iter().filter(|n| n.dir.starts_with(&rec.dir)) {
            s.spawn(|| remove(&node.dir));
        }
    });
    remove(&rec.run_dir);
    remove(&rec.dir);
    if let Some(claim) = &rec.subnet_claim {
        let _ = std::fs::remove_file(claim);
    }
    // The cache entry stays (deliberate state, see `cache`); only this pool's use of it goes.
    if let Some(user) = &rec.cache_user {
        let _ = std::fs::remove_file(user);
    }
}
