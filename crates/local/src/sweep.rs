//! Removing the leftovers of dead runs: every object carries `shipyard.run` and the owning
//! process's pid and start time; a run whose process is gone is removed entirely.

use std::collections::{BTreeMap, HashMap};

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
};

use crate::docker::{labels, Engine};
use crate::error::{LocalError, Result};
use crate::owner::RunOwner;

/// What a sweep found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Runs whose owner is gone and whose objects were removed.
    pub dead_runs: Vec<String>,
    /// Containers, networks and volumes removed.
    pub objects_removed: usize,
    /// Runs skipped because their process is still alive.
    pub live_runs: usize,
    /// Private key directories removed.
    pub key_dirs_removed: usize,
}

/// Whether process `pid` may exist (an invisible pid, e.g. under `hidepid`, counts as alive).
pub(crate) fn pid_alive(pid: u32) -> bool {
    crate::owner::probe_pid(pid) != crate::owner::PidProbe::Gone
}

/// Whether the owner recorded in `labels` is alive (or cannot be judged from here: another
/// host or boot, another pid namespace, an invisible pid).
fn owner_alive(l: &HashMap<String, String>) -> bool {
    RunOwner::from_labels(l).is_some_and(|o| o.alive())
}

pub(crate) async fn sweep(engine: &Engine, key_base: &std::path::Path) -> Result<SweepReport> {
    let d = &engine.docker;
    let filters: HashMap<&str, Vec<String>> =
        HashMap::from([("label", vec![format!("{}=local", labels::BACKEND)])]);
    let mut runs: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
    let containers = d
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| LocalError::docker("listing containers", e))?;
    for l in containers.into_iter().filter_map(|c| c.labels) {
        if let Some(r) = l.get(labels::RUN).cloned() {
            runs.entry(r).or_insert(l);
        }
    }
    let nets = d
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .map_err(|e| LocalError::docker("listing networks", e))?;
    for l in nets.into_iter().filter_map(|n| n.labels) {
        if let Some(r) = l.get(labels::RUN).cloned() {
            runs.entry(r).or_insert(l);
        }
    }
    let vols = d
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .map_err(|e| LocalError::docker("listing volumes", e))?;
    for v in vols.volumes.unwrap_or_default() {
        if let Some(r) = v.labels.get(labels::RUN).cloned() {
            runs.entry(r).or_insert(v.labels);
        }
    }
    let mut report = SweepReport::default();
    for (run, l) in runs {
        if owner_alive(&l) {
            report.live_runs += 1;
            continue;
        }
        tracing::info!(run = %run, job = ?l.get(labels::JOB), "removing leftovers of a dead run");
        report.objects_removed += engine
            .remove_labelled(&[format!("{}={run}", labels::RUN)])
            .await;
        report.dead_runs.push(run);
    }
    report.key_dirs_removed = crate::keys::sweep_key_dirs(key_base);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_recognised() {
        let pid = std::process::id();
        let start = crate::owner::pid_start_time(pid).expect("own start time");
        let l = HashMap::from([
            (labels::PID.to_string(), pid.to_string()),
            (labels::PID_START.to_string(), start.to_string()),
        ]);
        assert!(owner_alive(&l));
        let reused = HashMap::from([
            (labels::PID.to_string(), pid.to_string()),
            (labels::PID_START.to_string(), (start + 1).to_string()),
        ]);
        assert!(!owner_alive(&reused), "a recycled pid is not the owner");
        assert!(!owner_alive(&HashMap::new()));
        let elsewhere = HashMap::from([
            (labels::PID.to_string(), "999999999".to_string()),
            (labels::PID_NS.to_string(), "pid:[1]".to_string()),
        ]);
        assert!(
            owner_alive(&elsewhere),
            "another namespace is never judged dead"
        );
        let other_host = HashMap::from([
            (labels::PID.to_string(), "999999999".to_string()),
            (labels::HOST.to_string(), "another-machine/boot".to_string()),
        ]);
        assert!(
            owner_alive(&other_host),
            "a run of another host sharing the daemon is never judged dead"
        );
    }
}
