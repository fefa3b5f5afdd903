//! VM-like Azure Batch nodes on this machine.
//!
//! A [`VmPool`] of N nodes is a Linux bridge (`syb<id>`, with an iptables `FORWARD` accept rule
//! for traffic between its ports, since the host's dockerd sets the policy to DROP) on a
//! private /24 picked free, and per node:
//!
//! - a network namespace with a veth into the bridge and its own address;
//! - a mount and a UTS namespace, held by namespace files (no holder process), with a unique
//!   hostname (`node-0`…), an `/etc/hosts` naming every node, and the node's root bind-mounted
//!   at one common path (`/mnt/batch/tasks`) so `AZ_BATCH_NODE_ROOT_DIR` is the same on every
//!   node;
//! - its own `dockerd` (own data root, exec root, pidfile, socket; `--bridge=none
//!   --iptables=false`) started with `nsenter` into those namespaces (not `ip netns exec`,
//!   which remounts /sys and breaks dockerd's cgroup detection).
//!
//! Processes run "as on a Batch VM" with [`VmNode::command`]. Images reach the engines by
//! [`VmPool::load_image`] (`docker save` once, `docker load` into every node) or
//! [`VmPool::distribute_via_registry`] (a real `docker pull` from a pool-local registry), or
//! are there from the start with [`VmPoolBuilder::images`]: a persistent image cache under the
//! state directory (`cache/<key>/`: registry storage and a template data root, pushed and
//! pulled once per set of host image IDs) seeds every node's data root (layers as read-only
//! bind mounts in the node's mount namespace) before its dockerd starts (see [`DEFAULT_CACHE_KEEP`] for how the cache is bounded).
//!
//! A live pool grows with [`VmPool::add_nodes`] (new nodes made as the first ones, seeded from
//! the same cache entry, named in every node's `/etc/hosts`) and shrinks with
//! [`VmPool::remove_node`] (the node's dockerd, processes, namespaces, veth and directories).
//!
//! Everything is recorded under the state directory before it is created; dropping the pool,
//! [`VmPool::delete`], a failed creation and [`sweep`] (for pools whose owner process died)
//! remove exactly that.

mod bridge;
mod cache;
mod cmd;
mod error;
mod image;
mod net;
mod node;
mod pool;
mod registry;
mod state;
mod teardown;

use std::path::Path;

pub use bridge::{sweep_bridges, BridgeRecord, HostBridge, DEFAULT_BRIDGE_RECORDS};
pub use cache::{mirror_path, DEFAULT_CACHE_KEEP};
pub use cmd::{is_executable, Binaries};
pub use error::{Result, VmNodeError};
pub use image::DistributionTimes;
pub use node::{NodeCommand, NodeHealth, NodeKiller, NodeOutput, NodeProcess, VmNode};
pub use pool::{
    CreationTimes, VmPool, VmPoolBuilder, DEFAULT_NODE_ROOT_DIR, DEFAULT_RUN_DIR,
    DEFAULT_STATE_DIR, MAX_NODES,
};
pub use registry::Registry;

/// What [`sweep`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Ids of the pools removed (their owner process had died).
    pub removed: Vec<String>,
    /// Ids of the pools left alone (their owner still runs).
    pub kept: Vec<String>,
}

/// Removes every pool recorded under `state_dir` whose owner process is dead, and subnet
/// claims no pool holds.
pub fn sweep(state_dir: &Path, bins: &Binaries) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    let pools = state_dir.join("pools");
    let entries = match std::fs::read_dir(&pools) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(VmNodeError::io("sweep", "reading", &pools, e)),
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let rec = match state::PoolRecord::load(&dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "unreadable pool record left alone");
                continue;
            }
        };
        if rec.owner.alive() {
            report.kept.push(rec.id);
            continue;
        }
        tracing::info!(pool = rec.id, "sweeping a pool whose owner died");
        teardown::teardown(&rec, bins, &mut []);
        report.removed.push(rec.id);
    }
    Ok(report)
}
