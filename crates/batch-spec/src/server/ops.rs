//! The Batch operations served from in-memory state, with Batch semantics
//! (201 + ETag/Location/DataServiceId on creates, 409 `…Exists`, 404 `…NotFound`, paging).

use std::collections::BTreeMap;
use std::ops::Bound;

use serde_json::{json, Map, Value};

use super::http::Reply;
use super::state::{self, FileRec, Job, Pool, Task};
use super::{lock, Shared, TaskFailure};

pub(crate) use crate::wire::Query;

/// A validated request handed to an operation.
pub(crate) use crate::wire::OpRequest as Req;

fn not_found(kind: &str, id: &str) -> Reply {
    Reply::error(
        404,
        &format!("{kind}NotFound"),
        &format!("The specified {} does not exist.", kind.to_lowercase()),
        &[("ResourceId", id.to_owned())],
    )
}

fn exists(kind: &str) -> Reply {
    Reply::error(
        409,
        &format!("{kind}Exists"),
        &format!("The specified {} already exists.", kind.to_lowercase()),
        &[],
    )
}

fn created(url: &str, etag: &str) -> Reply {
    Reply::empty(201)
        .header("etag", etag)
        .header(
            "last-modified",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        )
        .header("location", url)
        .header("dataserviceid", url)
}

fn with_etag(mut r: Reply, body: &Value) -> Reply {
    if let Some(e) = body.get("eTag").and_then(Value::as_str) {
        r = r.header("etag", e);
    }
    r.header(
        "last-modified",
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    )
}

fn body_object(req: &mut Req<'_>) -> Map<String, Value> {
    match req.body.take() {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The `id` of a create body (already validated against the spec, which requires it).
fn body_id(body: &Map<String, Value>) -> String {
    body.get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Dispatches a validated request to its operation.
pub(crate) fn dispatch(shared: &Shared, mut req: Req<'_>) -> Reply {
    let req = &mut req;
    let base = shared.base_url.as_str();
    let mut st = lock(&shared.state);
    st.refresh(base);
    let st = &mut *st;
    match req.op {
        // ---------------------------------------------------------------- pools
        "Pool_Add" => {
            let mut body = body_object(req);
            let id = body_id(&body);
            let key = format!("pool/{id}");
            st.count_attempt(&key);
            if st.pools.contains_key(&id) {
                return exists("Pool");
            }
            let url = format!("{base}/pools/{}", enc(&id));
            let etag = shared.next_etag();
            state::stamp(&mut body, url.clone(), &etag, "active");
            body.entry("targetDedicatedNodes").or_insert(json!(0));
            body.entry("targetLowPriorityNodes").or_insert(json!(0));
            body.insert("currentDedicatedNodes".into(), json!(0));
            body.insert("currentLowPriorityNodes".into(), json!(0));
            body.insert("allocationState".into(), json!("resizing"));
            body.insert(
                "allocationStateTransitionTime".into(),
                json!(state::now_rfc3339()),
            );
            st.pools.insert(
                id,
                Pool {
                    body: Value::Object(body),
                    steady_at: state::deadline(shared.config.pool_allocation_delay),
                    nodes: BTreeMap::new(),
                    node_files: Default::default(),
                    node_users: Default::default(),
                },
            );
            st.count_created(&key);
            created(&url, &etag)
        }
        "Pool_Get" => match st.pools.get(req.param("poolId")) {
            Some(p) => with_etag(Reply::json(200, &select(&p.body, req.query)), &p.body),
            None => not_found("Pool", req.param("poolId")),
        },
        "Pool_Exists" => match st.pools.get(req.param("poolId")) {
            Some(p) => with_etag(Reply::empty(200), &p.body),
            None => Reply::empty(404),
        },
        "Pool_Delete" => match st.pools.remove(req.param("poolId")) {
            Some(_) => Reply::empty(202),
            None => not_found("Pool", req.param("poolId")),
        },
        "Pool_List" => {
            let items = st.pools.iter().map(|(k, p)| (k.as_str(), &p.body));
            page(shared, req, "/pools", items, after(req))
        }
        "Pool_Resize" => {
            let id = req.param("poolId").to_owned();
            let etag = shared.next_etag();
            let Some(pool) = st.pools.get_mut(&id) else {
                return not_found("Pool", &id);
            };
            if pool.body.get("allocationState").and_then(Value::as_str) != Some("steady") {
                return Reply::error(
                    409,
                    "PoolNotSteady",
                    "The specified pool is not in steady state.",
                    &[],
                );
            }
            let b = body_object(req);
            if let Some(obj) = pool.body.as_object_mut() {
                for k in ["targetDedicatedNodes", "targetLowPriorityNodes"] {
                    if let Some(v) = b.get(k) {
                        obj.insert(k.into(), v.clone());
                    }
                }
                obj.insert("eTag".into(), json!(etag));
                obj.insert("lastModified".into(), json!(state::now_rfc3339()));
                // A new resize clears the previous one's errors, as on the service.
                obj.remove("resizeErrors");
            }
            state::set_state(&mut pool.body, "allocationState", "resizing");
            pool.steady_at = state::deadline(shared.config.pool_allocation_delay);
            Reply::empty(202).header("etag", etag)
        }
        // ---------------------------------------------------------------- nodes
        "ComputeNode_Get" => {
            let Some(pool) = st.pools.get(req.param("poolId")) else {
                return not_found("Pool", req.param("poolId"));
            };
            match pool.nodes.get(req.param("nodeId")) {
                Some(n) => Reply::json(200, &select(n, req.query)),
                None => not_found("Node", req.param("nodeId")),
            }
        }
        "ComputeNode_List" => {
            let Some(pool) = st.pools.get(req.param("poolId")) else {
                return not_found("Pool", req.param("poolId"));
            };
            let path = format!("/pools/{}/nodes", enc(req.param("poolId")));
            let items = pool.nodes.iter().map(|(k, v)| (k.as_str(), v));
            page(shared, req, &path, items, after(req))
        }
        "ComputeNode_AddUser" => add_node_user(st, req),
        "ComputeNode_GetRemoteLoginSettings" => {
            let Some(pool) = st.pools.get(req.param("poolId")) else {
                return not_found("Pool", req.param("poolId"));
            };
            // Each node gets its own port on loopback (as Batch's NAT gives each node a port
            // on the pool's public address), so nothing a test sshes to leaves this machine.
            match pool.nodes.keys().position(|n| n == req.param("nodeId")) {
                Some(i) => Reply::json(
                    200,
                    &json!({"remoteLoginIPAddress": "127.0.0.1", "remoteLoginPort": 50000 + i}),
                ),
                None => not_found("Node", req.param("nodeId")),
            }
        }
        // ---------------------------------------------------------------- jobs
        "Job_Add" => {
            let mut body = body_object(req);
            let id = body_id(&body);
            let key = format!("job/{id}");
            st.count_attempt(&key);
            if st.jobs.contains_key(&id) {
                return exists("Job");
            }
            let url = format!("{base}/jobs/{}", enc(&id));
            let etag = shared.next_etag();
            state::stamp(&mut body, url.clone(), &etag, "active");
            let pool_id = body
                .get("poolInfo")
                .and_then(|p| p.get("poolId"))
                .cloned()
                .unwrap_or(Value::Null);
            body.insert(
                "executionInfo".into(),
                json!({"startTime": state::now_rfc3339(), "poolId": pool_id}),
            );
            body.entry("priority").or_insert(json!(0));
            body.entry("usesTaskDependencies").or_insert(json!(false));
            st.jobs.insert(
                id,
                Job {
                    body: Value::Object(body),
                    tasks: BTreeMap::new(),
                    completes_at: None,
                    prep: BTreeMap::new(),
                },
            );
            st.count_created(&key);
            created(&url, &etag)
        }
        "Job_Get" => match st.jobs.get(req.param("jobId")) {
            Some(j) => with_etag(Reply::json(200, &select(&j.body, req.query)), &j.body),
            None => not_found("Job", req.param("jobId")),
        },
        "Job_List" => {
            let items = st.jobs.iter().map(|(k, j)| (k.as_str(), &j.body));
            page(shared, req, "/jobs", items, after(req))
        }
        "Job_Delete" => match st.jobs.remove(req.param("jobId")) {
            Some(_) => Reply::empty(202),
            None => not_found("Job", req.param("jobId")),
        },
        "Job_Terminate" => {
            let id = req.param("jobId").to_owned();
            let etag = shared.next_etag();
            let Some(job) = st.jobs.get_mut(&id) else {
                return not_found("Job", &id);
            };
            match job.body.get("state").and_then(Value::as_str) {
                Some("completed") => {
                    return Reply::error(
                        409,
                        "JobCompleted",
                        "The specified job is already in a completed state.",
                        &[],
                    )
                }
                Some("terminating") => {
                    return Reply::error(
                        409,
                        "JobBeingTerminated",
                        "The specified job is already being terminated.",
                        &[],
                    )
                }
                _ => {}
            }
            let reason = req
                .body
                .as_ref()
                .and_then(|b| b.get("terminateReason"))
                .and_then(Value::as_str)
                .unwrap_or("UserTerminate")
                .to_owned();
            state::set_state(&mut job.body, "state", "terminating");
            if let Some(obj) = job.body.as_object_mut() {
                obj.insert("eTag".into(), json!(etag));
                if let Some(exec) = obj.get_mut("executionInfo").and_then(Value::as_object_mut) {
                    exec.insert("terminateReason".into(), json!(reason));
                }
            }
            job.completes_at = state::deadline(shared.config.job_terminate_delay);
            Reply::empty(202).header("etag", etag)
        }
        "Job_Patch" => {
            let id = req.param("jobId").to_owned();
            let etag = shared.next_etag();
            let Some(job) = st.jobs.get_mut(&id) else {
                return not_found("Job", &id);
            };
            if let Some(obj) = job.body.as_object_mut() {
                for (k, v) in body_object(req) {
                    obj.insert(k, v);
                }
                obj.insert("eTag".into(), json!(etag));
                obj.insert("lastModified".into(), json!(state::now_rfc3339()));
            }
            Reply::empty(200).header("etag", etag)
        }
        "Job_ListPreparationAndReleaseTaskStatus" => {
            let id = req.param("jobId");
            let Some(job) = st.jobs.get(id) else {
                return not_found("Job", id);
            };
            if job.body.get("jobPreparationTask").is_none()
                && job.body.get("jobReleaseTask").is_none()
            {
                return Reply::error(
                    409,
                    "JobPreparationTaskOrReleaseTaskNotSpecified",
                    "The specified job does not have a job preparation or release task.",
                    &[],
                );
            }
            let pool_id = job
                .body
                .get("poolInfo")
                .and_then(|p| p.get("poolId"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let entries: Vec<(String, Value)> = st
                .pools
                .get(pool_id)
                .map(|p| {
                    p.nodes
                        .keys()
                        .map(|n| {
                            let now = state::now_rfc3339();
                            let info = job.prep.get(n).cloned().unwrap_or_else(|| {
                                json!({
                                    "startTime": now, "endTime": now, "state": "completed",
                                    "exitCode": 0, "retryCount": 0, "result": "success"
                                })
                            });
                            (
                                n.clone(),
                                json!({
                                    "poolId": pool_id,
                                    "nodeId": n,
                                    "nodeUrl": format!("{base}/pools/{}/nodes/{}", enc(pool_id), enc(n)),
                                    "jobPreparationTaskExecutionInfo": info
                                }),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let path = format!("/jobs/{}/jobpreparationandreleasetaskstatus", enc(id));
            let items = entries.iter().map(|(k, v)| (k.as_str(), v));
            page(shared, req, &path, items, after(req))
        }
        // ---------------------------------------------------------------- tasks
        "Task_Add" => {
            let job_id = req.param("jobId").to_owned();
            let body = body_object(req);
            let task_id = body_id(&body);
            let key = format!("task/{job_id}/{task_id}");
            let Some(job) = st.jobs.get_mut(&job_id) else {
                return not_found("Job", &job_id);
            };
            if let Some(r) = job_not_accepting(job) {
                return r;
            }
            let outcome = add_task(shared, base, &job_id, job, body);
            st.count_attempt(&key);
            match outcome {
                Ok((url, etag)) => {
                    st.count_created(&key);
                    created(&url, &etag)
                }
                Err((status, code, msg)) => Reply::error(status, code, msg, &[]),
            }
        }
        "Task_AddCollection" => {
            let job_id = req.param("jobId").to_owned();
            let tasks: Vec<Value> = match body_object(req).remove("value") {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            };
            if tasks.len() > 100 {
                return Reply::error(
                    400,
                    "InvalidRequestBody",
                    "A task collection may hold at most 100 tasks.",
                    &[("Reason", format!("{} tasks", tasks.len()))],
                );
            }
            if !st.jobs.contains_key(&job_id) {
                return not_found("Job", &job_id);
            }
            let mut results = Vec::with_capacity(tasks.len());
            let mut failures = lock(&shared.task_failures);
            for t in tasks {
                let Value::Object(body) = t else { continue };
                let task_id = body_id(&body);
                let key = format!("task/{job_id}/{task_id}");
                st.count_attempt(&key);
                if let Some((failure, left)) = failures.get_mut(&task_id) {
                    let failure = failure.clone();
                    *left -= 1;
                    if *left == 0 {
                        failures.remove(&task_id);
                    }
                    let (status, code) = match &failure {
                        TaskFailure::ServerError => ("servererror", "ServerBusy".to_owned()),
                        TaskFailure::ClientError(c) => ("clienterror", c.clone()),
                    };
                    results.push(json!({
                        "status": status, "taskId": task_id,
                        "error": {"code": code, "message": {"lang": "en-US", "value": "Injected per-task failure."}}
                    }));
                    continue;
                }
                let Some(job) = st.jobs.get_mut(&job_id) else {
                    continue;
                };
                if let Some(r) = job_not_accepting(job) {
                    return r;
                }
                match add_task(shared, base, &job_id, job, body) {
                    Ok((url, etag)) => {
                        st.count_created(&key);
                        results.push(json!({
                            "status": "success", "taskId": task_id, "eTag": etag,
                            "lastModified": state::now_rfc3339(), "location": url
                        }));
                    }
                    Err((_, code, msg)) => results.push(json!({
                        "status": "clienterror", "taskId": task_id,
                        "error": {"code": code, "message": {"lang": "en-US", "value": msg}}
                    })),
                }
            }
            Reply::json(200, &json!({"value": results}))
        }
        "Task_Get" => match task_ref(st, req) {
            Ok(t) => with_etag(Reply::json(200, &select(&t.body, req.query)), &t.body),
            Err(r) => r,
        },
        "Task_List" => {
            let job_id = req.param("jobId");
            let Some(job) = st.jobs.get(job_id) else {
                return not_found("Job", job_id);
            };
            let path = format!("/jobs/{}/tasks", enc(job_id));
            let start = after(req);
            let range = match &start {
                Some(k) => job
                    .tasks
                    .range::<String, _>((Bound::Excluded(k.clone()), Bound::Unbounded)),
                None => job.tasks.range::<String, _>(..),
            };
            let items = range.map(|(k, t)| (k.as_str(), &t.body));
            page(shared, req, &path, items, None)
        }
        "Task_Terminate" => {
            let etag = shared.next_etag();
            match task_mut(st, req) {
                Ok(t) => {
                    if t.body.get("state").and_then(Value::as_str) != Some("completed") {
                        state::set_task_state(&mut t.body, "completed", Some(-1), &etag);
                        if let Some(exec) = t
                            .body
                            .get_mut("executionInfo")
                            .and_then(Value::as_object_mut)
                        {
                            exec.insert(
                                "failureInfo".into(),
                                json!({"category": "usererror", "code": "TaskEnded", "message": "Task was terminated by the user"}),
                            );
                        }
                    }
                    Reply::empty(204).header("etag", etag)
                }
                Err(r) => r,
            }
        }
        "Task_Delete" => {
            let job_id = req.param("jobId");
            let task_id = req.param("taskId");
            let Some(job) = st.jobs.get_mut(job_id) else {
                return not_found("Job", job_id);
            };
            match job.tasks.remove(task_id) {
                Some(_) => Reply::empty(200),
                None => not_found("Task", task_id),
            }
        }
        "Task_ListSubtasks" => match task_ref(st, req) {
            Ok(t) => Reply::json(200, &json!({"value": t.subtasks})),
            Err(r) => r,
        },
        // ---------------------------------------------------------------- files
        "File_ListFromTask" => {
            let (job_id, task_id) = (req.param("jobId"), req.param("taskId"));
            let t = match task_ref(st, req) {
                Ok(t) => t,
                Err(r) => return r,
            };
            let file_base = format!("{base}/jobs/{}/tasks/{}/files", enc(job_id), enc(task_id));
            let entries = file_entries(&file_base, &t.files);
            let path = format!("/jobs/{}/tasks/{}/files", enc(job_id), enc(task_id));
            let items = entries.iter().map(|(k, v)| (k.as_str(), v));
            page(shared, req, &path, items, after(req))
        }
        "File_ListFromComputeNode" => {
            let (pool_id, node_id) = (req.param("poolId"), req.param("nodeId"));
            let Some(pool) = st.pools.get(pool_id) else {
                return not_found("Pool", pool_id);
            };
            if !pool.nodes.contains_key(node_id) {
                return not_found("Node", node_id);
            }
            let empty = BTreeMap::new();
            let files = pool.node_files.get(node_id).unwrap_or(&empty);
            let file_base = format!("{base}/pools/{}/nodes/{}/files", enc(pool_id), enc(node_id));
            let entries = file_entries(&file_base, files);
            let path = format!("/pools/{}/nodes/{}/files", enc(pool_id), enc(node_id));
            let items = entries.iter().map(|(k, v)| (k.as_str(), v));
            page(shared, req, &path, items, after(req))
        }
        "File_GetFromTask" | "File_GetPropertiesFromTask" => {
            let t = match task_ref(st, req) {
                Ok(t) => t,
                Err(r) => return r,
            };
            let file_path = req.param("filePath");
            match t.files.get(file_path) {
                Some(f) => file_reply(req, f, req.op.starts_with("File_GetProperties")),
                None => Reply::error(
                    404,
                    "FileNotFound",
                    "The specified file does not exist.",
                    &[("FilePath", file_path.to_owned())],
                ),
            }
        }
        "File_GetFromComputeNode" | "File_GetPropertiesFromComputeNode" => {
            let (pool_id, node_id) = (req.param("poolId"), req.param("nodeId"));
            let Some(pool) = st.pools.get(pool_id) else {
                return not_found("Pool", pool_id);
            };
            if !pool.nodes.contains_key(node_id) {
                return not_found("Node", node_id);
            }
            let file_path = req.param("filePath");
            match pool.node_files.get(node_id).and_then(|m| m.get(file_path)) {
                Some(f) => file_reply(req, f, req.op.starts_with("File_GetProperties")),
                None => Reply::error(
                    404,
                    "FileNotFound",
                    "The specified file does not exist.",
                    &[("FilePath", file_path.to_owned())],
                ),
            }
        }
        other => Reply::error(
            501,
            "NotImplemented",
            &format!("The strict test server does not implement {other}."),
            &[],
        ),
    }
}

/// `ComputeNode_AddUser`: the body is already valid against `ComputeNodeUser`; on top, as on
/// the service, a Linux account needs a password or an OpenSSH public key (never a private
/// key), a node accepts logins only once it is up, and a name is taken once.
fn add_node_user(st: &mut state::State, req: &mut Req<'_>) -> Reply {
    let body = body_object(req);
    let (pool_id, node_id) = (req.param("poolId"), req.param("nodeId"));
    let Some(pool) = st.pools.get_mut(pool_id) else {
        return not_found("Pool", pool_id);
    };
    let Some(node) = pool.nodes.get(node_id) else {
        return not_found("Node", node_id);
    };
    let node_state = node.get("state").and_then(Value::as_str).unwrap_or("");
    if matches!(
        node_state,
        "creating" | "starting" | "unusable" | "leavingpool" | "offline"
    ) {
        return Reply::error(
            409,
            "NodeNotReady",
            "The specified node is not ready for a user account.",
            &[("NodeState", node_state.to_owned())],
        );
    }
    let name = body.get("name").and_then(Value::as_str).unwrap_or("");
    let invalid = |property: &str, reason: &str| {
        Reply::error(
            400,
            "InvalidPropertyValue",
            "The value provided for one of the properties in the request body is invalid.",
            &[
                ("PropertyName", property.to_owned()),
                ("Reason", reason.to_owned()),
            ],
        )
    };
    if name.is_empty() || name.len() > 32 || name.contains(['/', '\\', ':', '@', ' ']) {
        return invalid("name", "not a valid user name");
    }
    let key = body.get("sshPublicKey").and_then(Value::as_str);
    if key.is_none() && body.get("password").is_none() {
        return invalid(
            "sshPublicKey",
            "a Linux node user needs a password or an SSH public key",
        );
    }
    if let Some(k) = key {
        if !is_openssh_public_key(k) {
            return invalid("sshPublicKey", "not an OpenSSH public key");
        }
    }
    let users = pool.node_users.entry(node_id.to_owned()).or_default();
    if users.contains_key(name) {
        return Reply::error(
            409,
            "NodeUserExists",
            "The specified node user already exists.",
            &[],
        );
    }
    users.insert(name.to_owned(), Value::Object(body));
    Reply::empty(201)
}

/// `type base64 [comment]` with a known key type and decodable base64 (never a private key).
fn is_openssh_public_key(k: &str) -> bool {
    use base64::Engine as _;
    let mut words = k.split_whitespace();
    let (Some(kind), Some(data)) = (words.next(), words.next()) else {
        return false;
    };
    let known =
        kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
    known
        && !k.contains("PRIVATE KEY")
        && base64::engine::general_purpose::STANDARD
            .decode(data)
            .is_ok_and(|raw| raw.len() > 4)
}

fn job_not_accepting(job: &Job) -> Option<Reply> {
    match job.body.get("state").and_then(Value::as_str) {
        Some("completed") => Some(Reply::error(
            409,
            "JobCompleted",
            "The specified job is already in a completed state.",
            &[],
        )),
        Some("terminating") => Some(Reply::error(
            409,
            "JobBeingTerminated",
            "The specified job is being terminated.",
            &[],
        )),
        Some("deleting") => Some(Reply::error(
            409,
            "JobBeingDeleted",
            "The specified job is being deleted.",
            &[],
        )),
        _ => None,
    }
}

type TaskError = (u16, &'static str, &'static str);

/// Creates a task in a job; Err for duplicates or dependency misuse.
fn add_task(
    shared: &Shared,
    base: &str,
    job_id: &str,
    job: &mut Job,
    mut body: Map<String, Value>,
) -> Result<(String, String), TaskError> {
    let task_id = body_id(&body);
    if job.tasks.contains_key(&task_id) {
        return Err((409, "TaskExists", "The specified task already exists."));
    }
    if body.contains_key("dependsOn")
        && job
            .body
            .get("usesTaskDependencies")
            .and_then(Value::as_bool)
            != Some(true)
    {
        return Err((
            409,
            "TaskDependenciesNotSpecifiedOnJob",
            "The task has dependencies but the job does not set usesTaskDependencies.",
        ));
    }
    let url = format!("{base}/jobs/{}/tasks/{}", enc(job_id), enc(&task_id));
    let etag = shared.next_etag();
    state::stamp(&mut body, url.clone(), &etag, "active");
    body.insert(
        "executionInfo".into(),
        json!({"retryCount": 0, "requeueCount": 0}),
    );
    job.tasks.insert(
        task_id,
        Task {
            body: Value::Object(body),
            files: BTreeMap::new(),
            subtasks: Vec::new(),
        },
    );
    Ok((url, etag))
}

fn task_ref<'s>(st: &'s state::State, req: &Req<'_>) -> Result<&'s Task, Reply> {
    let job_id = req.param("jobId");
    let task_id = req.param("taskId");
    let job = st
        .jobs
        .get(job_id)
        .ok_or_else(|| not_found("Job", job_id))?;
    job.tasks
        .get(task_id)
        .ok_or_else(|| not_found("Task", task_id))
}

fn task_mut<'s>(st: &'s mut state::State, req: &Req<'_>) -> Result<&'s mut Task, Reply> {
    let job_id = req.param("jobId");
    let task_id = req.param("taskId");
    let job = st
        .jobs
        .get_mut(job_id)
        .ok_or_else(|| not_found("Job", job_id))?;
    job.tasks
        .get_mut(task_id)
        .ok_or_else(|| not_found("Task", task_id))
}

fn file_entries(file_base: &str, files: &BTreeMap<String, FileRec>) -> Vec<(String, Value)> {
    files
        .iter()
        .map(|(name, f)| {
            (
                name.clone(),
                json!({
                    "name": name,
                    "url": format!("{file_base}/{}", enc(name)),
                    "isDirectory": false,
                    "properties": {
                        "creationTime": f.created,
                        "lastModified": f.created,
                        "contentLength": f.data.len(),
                        "contentType": "application/octet-stream",
                        "fileMode": "0o100644",
                    }
                }),
            )
        })
        .collect()
}

fn file_reply(req: &Req<'_>, f: &FileRec, head: bool) -> Reply {
    let total = f.data.len();
    let mut status = 200;
    let mut data = f.data.clone();
    let range = req
        .headers
        .get("ocp-range")
        .and_then(|v| v.to_str().ok())
        .filter(|_| !req.ignore_range);
    if let Some(range) = range {
        let parsed =
            crate::wire::parse_range(range, total as u64).map(|(a, b)| (a as usize, b as usize));
        match parsed {
            Some((a, b)) => {
                data = f.data.slice(a..=b);
                status = 206;
            }
            None => return super::http::invalid_range(range),
        }
    }
    let mut r = Reply::empty(status);
    r = r
        .header("content-type", "application/octet-stream")
        .header("ocp-creation-time", f.modified_http.clone())
        .header("ocp-batch-file-isdirectory", "false")
        .header("ocp-batch-file-mode", "0o100644")
        .header("last-modified", f.modified_http.clone());
    if head {
        r = r.header("content-length", total.to_string());
    } else {
        r.body = data;
    }
    r
}

/// The `$skiptoken` of a list call (the last key of the previous page).
fn after(req: &Req<'_>) -> Option<String> {
    req.query.get("$skiptoken").map(str::to_owned)
}

/// Applies `$select` (top-level properties) to an item.
fn select(item: &Value, query: &Query) -> Value {
    crate::wire::select(item.clone(), query.get("$select"))
}

/// One page of a list: items after the skip token, filtered, at most `maxresults`, with an
/// `odata.nextLink` when more remain.
fn page<'a, I>(shared: &Shared, req: &Req<'_>, path: &str, items: I, after: Option<String>) -> Reply
where
    I: Iterator<Item = (&'a str, &'a Value)>,
{
    let mut paging = match crate::wire::Paging::from_query(req.query) {
        Ok(p) => p,
        Err((status, body)) => return Reply::error_value(status, body),
    };
    paging.after = after;
    let base = format!("{}{path}", shared.base_url);
    let out = paging.page(req.query, &base, items.map(|(k, v)| (k, v.clone())));
    Reply::json(200, &out)
}
