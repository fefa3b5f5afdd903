//! In-memory records (the store's contents) and their keys.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shipyard_batch_api::models::{
    CloudJob, CloudPool, CloudTask, ComputeNode, JobAddParameter,
    JobPreparationAndReleaseTaskExecutionInformation, PoolAddParameter, SubtaskInformation,
    TaskAddParameter,
};

use super::node::NodeRef;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PoolRec {
    pub pool: CloudPool,
    pub params: PoolAddParameter,
    pub network: String,
    pub next_node: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeRec {
    pub pool: String,
    pub node: ComputeNode,
    pub holder: String,
    pub root: PathBuf,
    pub image: String,
    pub used_slots: i32,
    /// Tasks (`job/task`) placed here.
    pub tasks: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobRec {
    pub job: CloudJob,
    pub params: JobAddParameter,
    pub seq: u64,
    /// Job preparation/release per node id (of the job's pool).
    pub prep: BTreeMap<String, JobPreparationAndReleaseTaskExecutionInformation>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskRec {
    pub job: String,
    pub task: CloudTask,
    pub params: TaskAddParameter,
    pub seq: u64,
    pub subtasks: Vec<SubtaskInformation>,
    /// Nodes the current attempt runs on (primary first).
    pub nodes: Vec<String>,
    /// Containers of the current attempt.
    pub containers: Vec<String>,
}

/// A job's tasks in submission order (not stored; rebuilt when tasks are added or removed).
#[derive(Default)]
pub(crate) struct JobQueue {
    /// (seq, task id), oldest first.
    pub order: Vec<(u64, String)>,
    /// No task before this index is active (moves forward; back to 0 when a task is retried).
    pub first: usize,
}

#[derive(Default)]
pub(crate) struct State {
    /// The scheduler's view of each job's tasks.
    pub queues: std::collections::HashMap<String, JobQueue>,
    pub pools: BTreeMap<String, PoolRec>,
    pub nodes: BTreeMap<(String, String), NodeRec>,
    pub jobs: BTreeMap<String, JobRec>,
    pub tasks: BTreeMap<(String, String), TaskRec>,
    pub seq: u64,
}

pub(crate) fn pool_key(id: &str) -> String {
    format!("pool/{id}")
}
pub(crate) fn node_key(pool: &str, id: &str) -> String {
    format!("node/{pool}\u{1}{id}")
}
pub(crate) fn job_key(id: &str) -> String {
    format!("job/{id}")
}
pub(crate) fn task_key(job: &str, id: &str) -> String {
    format!("task/{job}\u{1}{id}")
}

impl NodeRec {
    pub(crate) fn id(&self) -> &str {
        self.node.id.as_deref().unwrap_or_default()
    }
    pub(crate) fn node_ref(
        &self,
        network: &str,
        labels: std::collections::HashMap<String, String>,
        registries: Vec<shipyard_runtime::registry_auth::RegistryLogin>,
    ) -> NodeRef {
        NodeRef {
            pool: self.pool.clone(),
            id: self.id().to_string(),
            network: network.to_string(),
            holder: self.holder.clone(),
            root: self.root.clone(),
            image: self.image.clone(),
            labels,
            registries,
        }
    }
}

pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
