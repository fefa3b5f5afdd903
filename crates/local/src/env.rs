//! The Azure Batch environment reproduced inside each node container.

use std::net::Ipv4Addr;

/// `AZ_BATCH_NODE_ROOT_DIR` inside the containers.
pub const NODE_ROOT_DIR: &str = "/mnt/batch/tasks";
/// Port Batch reserves on the master (`AZ_BATCH_MASTER_NODE` is `ip:6000`).
pub const MASTER_PORT: u16 = 6000;

/// One node of a task as seen by the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    /// Node id (also the container's hostname).
    pub id: String,
    /// Its fixed address on the task's network.
    pub ip: Ipv4Addr,
}

/// Directories of a task inside the containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDirs {
    /// `AZ_BATCH_TASK_DIR`.
    pub task_dir: String,
    /// `AZ_BATCH_TASK_WORKING_DIR`.
    pub working_dir: String,
    /// `AZ_BATCH_TASK_SHARED_DIR` (backed by a volume all nodes share).
    pub shared_dir: String,
    /// `AZ_BATCH_NODE_SHARED_DIR`.
    pub node_shared_dir: String,
}

impl TaskDirs {
    /// The Batch layout for `job`/`task`.
    pub fn new(job: &str, task: &str) -> Self {
        let task_dir = format!("{NODE_ROOT_DIR}/workitems/{job}/job-1/{task}");
        TaskDirs {
            working_dir: format!("{task_dir}/wd"),
            shared_dir: format!("{task_dir}/shared"),
            node_shared_dir: format!("{NODE_ROOT_DIR}/shared"),
            task_dir,
        }
    }
}

/// The `AZ_BATCH_*` variables (and `CCP_NODES`) for node `index` of a task running on `nodes`.
/// For a single-instance task (`multi_instance == false`) the host-list variables are omitted,
/// as on Batch.
pub fn batch_env(
    job: &str,
    task: &str,
    nodes: &[NodeAddr],
    index: usize,
    multi_instance: bool,
) -> Vec<(String, String)> {
    let dirs = TaskDirs::new(job, task);
    let me = &nodes[index.min(nodes.len().saturating_sub(1))];
    let mut env: Vec<(String, String)> = vec![
        ("AZ_BATCH_ACCOUNT_NAME".into(), "local".into()),
        ("AZ_BATCH_POOL_ID".into(), "local".into()),
        ("AZ_BATCH_JOB_ID".into(), job.into()),
        ("AZ_BATCH_TASK_ID".into(), task.into()),
        ("AZ_BATCH_NODE_ID".into(), me.id.clone()),
        ("AZ_BATCH_NODE_IS_DEDICATED".into(), "true".into()),
        ("AZ_BATCH_NODE_ROOT_DIR".into(), NODE_ROOT_DIR.into()),
        (
            "AZ_BATCH_NODE_SHARED_DIR".into(),
            dirs.node_shared_dir.clone(),
        ),
        (
            "AZ_BATCH_NODE_STARTUP_DIR".into(),
            format!("{NODE_ROOT_DIR}/startup"),
        ),
        ("AZ_BATCH_TASK_DIR".into(), dirs.task_dir.clone()),
        ("AZ_BATCH_TASK_WORKING_DIR".into(), dirs.working_dir.clone()),
    ];
    if multi_instance {
        let ips: Vec<String> = nodes.iter().map(|n| n.ip.to_string()).collect();
        let master = nodes.first().map(|n| n.ip.to_string()).unwrap_or_default();
        let mut ccp = nodes.len().to_string();
        for ip in &ips {
            ccp.push_str(&format!(" {ip} 1"));
        }
        env.extend([
            ("AZ_BATCH_TASK_SHARED_DIR".into(), dirs.shared_dir.clone()),
            ("AZ_BATCH_HOST_LIST".into(), ips.join(",")),
            ("AZ_BATCH_NODE_LIST".into(), ips.join(";")),
            (
                "AZ_BATCH_MASTER_NODE".into(),
                format!("{master}:{MASTER_PORT}"),
            ),
            (
                "AZ_BATCH_IS_CURRENT_NODE_MASTER".into(),
                (index == 0).to_string(),
            ),
            ("CCP_NODES".into(), ccp),
            // Local nodes are containers sharing one kernel: UCX (MPICH's ch4:ucx, Open MPI's
            // pml ucx) would take ranks in other containers for neighbours and try their
            // /proc/<pid>/fd for shared memory, which another pid namespace cannot open.
            // The task's own environment comes later and wins.
            ("UCX_POSIX_USE_PROC_LINK".into(), "n".into()),
        ]);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<NodeAddr> {
        (0..3)
            .map(|i| NodeAddr {
                id: format!("node-{i}"),
                ip: Ipv4Addr::new(10, 213, 7, 2 + i),
            })
            .collect()
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn multi_instance_env_matches_batch() {
        let n = nodes();
        let e = batch_env("job1", "t1", &n, 1, true);
        assert_eq!(
            get(&e, "AZ_BATCH_HOST_LIST"),
            Some("10.213.7.2,10.213.7.3,10.213.7.4")
        );
        assert_eq!(
            get(&e, "AZ_BATCH_NODE_LIST"),
            Some("10.213.7.2;10.213.7.3;10.213.7.4")
        );
        assert_eq!(get(&e, "AZ_BATCH_MASTER_NODE"), Some("10.213.7.2:6000"));
        assert_eq!(get(&e, "AZ_BATCH_IS_CURRENT_NODE_MASTER"), Some("false"));
        assert_eq!(get(&e, "AZ_BATCH_NODE_ID"), Some("node-1"));
        assert_eq!(
            get(&e, "CCP_NODES"),
            Some("3 10.213.7.2 1 10.213.7.3 1 10.213.7.4 1")
        );
        assert_eq!(
            get(&e, "AZ_BATCH_TASK_WORKING_DIR"),
            Some("/mnt/batch/tasks/workitems/job1/job-1/t1/wd")
        );
        let m = batch_env("job1", "t1", &n, 0, true);
        assert_eq!(get(&m, "AZ_BATCH_IS_CURRENT_NODE_MASTER"), Some("true"));
    }

    #[test]
    fn single_instance_has_no_host_list() {
        let e = batch_env("job1", "t1", &nodes()[..1], 0, false);
        assert_eq!(get(&e, "AZ_BATCH_HOST_LIST"), None);
        assert_eq!(get(&e, "AZ_BATCH_JOB_ID"), Some("job1"));
    }
}
