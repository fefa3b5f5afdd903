//! In-memory resources of the strict server.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Create attempts and successes for one resource id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreateStats {
    /// Requests that tried to create the resource (including ones answered `…Exists`).
    pub attempts: u32,
    /// Requests that actually created it (more than 1 would be a duplicate).
    pub created: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct FileRec {
    pub data: Bytes,
    pub created: String,
    pub modified_http: String,
}

impl FileRec {
    pub fn new(data: Vec<u8>) -> Self {
        FileRec {
            data: Bytes::from(data),
            created: now_rfc3339(),
            modified_http: httpdate::fmt_http_date(std::time::SystemTime::now()),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Pool {
    pub body: Value,
    pub steady_at: Option<Instant>,
    pub nodes: BTreeMap<String, Value>,
    pub node_files: HashMap<String, BTreeMap<String, FileRec>>,
    /// `ComputeNode_AddUser` accounts: node id → user name → the `ComputeNodeUser` body.
    pub node_users: HashMap<String, BTreeMap<String, Value>>,
}

#[derive(Debug)]
pub(crate) struct Task {
    pub body: Value,
    pub files: BTreeMap<String, FileRec>,
    pub subtasks: Vec<Value>,
}

#[derive(Debug)]
pub(crate) struct Job {
    pub body: Value,
    pub tasks: BTreeMap<String, Task>,
    pub completes_at: Option<Instant>,
    /// `jobPreparationTaskExecutionInfo` per node set by the test (default: completed, 0).
    pub prep: BTreeMap<String, Value>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub pools: BTreeMap<String, Pool>,
    pub jobs: BTreeMap<String, Job>,
    pub creates: HashMap<String, CreateStats>,
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Sets `field` and `{field}TransitionTime` (plus `previous…` for `state`).
pub(crate) fn set_state(body: &mut Value, field: &str, value: &str) {
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    let old = obj.get(field).cloned();
    if old.as_ref().and_then(Value::as_str) == Some(value) {
        return;
    }
    if field == "state" {
        if let Some(old) = old {
            obj.insert("previousState".into(), old);
            if let Some(t) = obj.get("stateTransitionTime").cloned() {
                obj.insert("previousStateTransitionTime".into(), t);
            }
        }
    }
    obj.insert(field.into(), json!(value));
    obj.insert(format!("{field}TransitionTime"), json!(now_rfc3339()));
}

pub(crate) fn set_task_state(body: &mut Value, state: &str, exit_code: Option<i32>, etag: &str) {
    set_state(body, "state", state);
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    obj.insert("eTag".into(), json!(etag));
    obj.insert("lastModified".into(), json!(now_rfc3339()));
    let exec = obj
        .entry("executionInfo")
        .or_insert_with(|| json!({"retryCount": 0, "requeueCount": 0}));
    if let Some(exec) = exec.as_object_mut() {
        match state {
            "running" => {
                exec.insert("startTime".into(), json!(now_rfc3339()));
            }
            "completed" => {
                exec.entry("startTime").or_insert(json!(now_rfc3339()));
                exec.insert("endTime".into(), json!(now_rfc3339()));
                let code = exit_code.unwrap_or(0);
                exec.insert("exitCode".into(), json!(code));
                exec.insert(
                    "result".into(),
                    json!(if code == 0 { "success" } else { "failure" }),
                );
            }
            _ => {}
        }
    }
}

fn node_json(
    base_url: &str,
    pool_id: &str,
    node_id: &str,
    vm_size: &Value,
    dedicated: bool,
) -> Value {
    json!({
        "id": node_id,
        "url": format!("{base_url}/pools/{pool_id}/nodes/{node_id}"),
        "state": "idle",
        "schedulingState": "enabled",
        "stateTransitionTime": now_rfc3339(),
        "allocationTime": now_rfc3339(),
        "ipAddress": "10.0.0.4",
        "affinityId": format!("TVM:{node_id}"),
        "vmSize": vm_size,
        "totalTasksRun": 0,
        "runningTasksCount": 0,
        "runningTaskSlotsCount": 0,
        "totalTasksSucceeded": 0,
        "isDedicated": dedicated,
    })
}

impl State {
    /// Applies time-driven transitions (pool allocation finishing, job termination finishing).
    pub fn refresh(&mut self, base_url: &str) {
        let now = Instant::now();
        for (pool_id, pool) in self.pools.iter_mut() {
            if pool.steady_at.is_some_and(|t| t <= now) {
                pool.steady_at = None;
                let b = &mut pool.body;
                let dedicated = b
                    .get("targetDedicatedNodes")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let low = b
                    .get("targetLowPriorityNodes")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let vm_size = b.get("vmSize").cloned().unwrap_or(Value::Null);
                let want = (dedicated + low) as usize;
                while pool.nodes.len() > want {
                    if let Some(k) = pool.nodes.keys().next_back().cloned() {
                        pool.nodes.remove(&k);
                        pool.node_files.remove(&k);
                    }
                }
                let mut n = 0usize;
                while pool.nodes.len() < want {
                    let id = format!("tvmps_{:04}_d", n);
                    n += 1;
                    if !pool.nodes.contains_key(&id) {
                        let is_dedicated = (pool.nodes.len() as u64) < dedicated;
                        let node = node_json(base_url, pool_id, &id, &vm_size, is_dedicated);
                        pool.nodes.insert(id, node);
                    }
                }
                if let Some(obj) = b.as_object_mut() {
                    obj.insert("currentDedicatedNodes".into(), json!(dedicated));
                    obj.insert("currentLowPriorityNodes".into(), json!(low));
                }
                set_state(b, "allocationState", "steady");
            }
        }
        for job in self.jobs.values_mut() {
            if job.completes_at.is_some_and(|t| t <= now) {
                job.completes_at = None;
                set_state(&mut job.body, "state", "completed");
                if let Some(exec) = job
                    .body
                    .get_mut("executionInfo")
                    .and_then(Value::as_object_mut)
                {
                    exec.insert("endTime".into(), json!(now_rfc3339()));
                }
            }
        }
    }

    pub fn count_attempt(&mut self, key: &str) {
        self.creates.entry(key.to_owned()).or_default().attempts += 1;
    }

    pub fn count_created(&mut self, key: &str) {
        self.creates.entry(key.to_owned()).or_default().created += 1;
    }
}

/// Adds the service-owned properties of a newly created resource.
pub(crate) fn stamp(body: &mut Map<String, Value>, url: String, etag: &str, state: &str) {
    let now = now_rfc3339();
    body.insert("url".into(), json!(url));
    body.insert("eTag".into(), json!(etag));
    body.insert("lastModified".into(), json!(now));
    body.insert("creationTime".into(), json!(now));
    body.insert("state".into(), json!(state));
    body.insert("stateTransitionTime".into(), json!(now));
}

/// Pool allocation delay as an optional deadline.
pub(crate) fn deadline(delay: Duration) -> Option<Instant> {
    Some(Instant::now() + delay)
}
