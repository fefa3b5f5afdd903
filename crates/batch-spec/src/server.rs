//! A strict local Azure Batch server for tests and benchmarks.
//!
//! [`TestServer::start`] binds `127.0.0.1:0` and serves the Batch data-plane operations that
//! shipyard uses (pools, jobs, tasks, task collections, compute nodes, files, subtasks, job
//! preparation status) from in-memory state. It is deliberately strict:
//!
//! - every request must carry the accepted `api-version` (400 otherwise), an `ocp-date` within
//!   15 minutes (`Date` is not accepted as a substitute), and a valid `Authorization`: a Shared
//!   Key signature that the server recomputes from the raw request on its own code path, or a
//!   bearer token the server itself issued from `{url}/{tenant}/oauth2/v2.0/token`;
//! - bodies must be `application/json` and are validated with
//!   [`Spec::validate`](crate::schema::Spec::validate) (unknown properties rejected);
//! - `addtaskcollection` accepts at most 100 tasks and a body under 1 MB
//!   (413 `RequestBodyTooLarge`).
//!
//! Faults are injected with [`TestServer::inject`](ServerHandle::inject) ([`FaultRule`]: 429 with `Retry-After`, 503,
//! 500, a dropped connection, a slow reply, or a create whose reply is dropped after it was
//! committed) and [`TestServer::fail_tasks`](ServerHandle::fail_tasks) (chosen tasks of `addtaskcollection` answer
//! `servererror`/`clienterror`). [`TestServer::create_stats`](ServerHandle::create_stats) counts create attempts and
//! successful creates per resource, so tests can prove nothing was created twice.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use shipyard_batch_spec::server::{Fault, FaultRule, ServerConfig, TestServer};
//! let server = TestServer::start(ServerConfig::default()).await?;
//! server.inject(FaultRule::new(Fault::ServiceUnavailable).operation("Pool_Add").times(1));
//! println!("{} {} {}", server.url(), server.account(), server.key());
//! # Ok(()) }
//! ```

pub mod auth;
pub mod http;
mod ops;
mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::schema::Spec;

pub use state::CreateStats;

/// Configuration of a [`TestServer`].
#[derive(Clone)]
pub struct ServerConfig {
    /// Batch account name the Shared Key signatures must use.
    pub account: String,
    /// Base64 account key (random by default).
    pub key: String,
    /// api-versions accepted besides the spec's own (e.g. `2025-06-01` for the Python SDK).
    /// Bodies sent with these versions are validated as strictly as any other (against the
    /// spec's own version; the Python SDK 15.1.0's bodies pass).
    pub extra_api_versions: Vec<String>,
    /// Client id accepted by the token endpoint.
    pub client_id: String,
    /// Client secret accepted by the token endpoint.
    pub client_secret: String,
    /// Lifetime of issued bearer tokens.
    pub token_lifetime: Duration,
    /// How long a new or resized pool stays `resizing` before it is `steady` with idle nodes.
    pub pool_allocation_delay: Duration,
    /// How long a terminated job stays `terminating` before it is `completed`.
    pub job_terminate_delay: Duration,
    /// Keep a log of every request ([`ServerHandle::requests`]).
    pub log_requests: bool,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("account", &self.account)
            .field("key", &"<redacted>")
            .field("extra_api_versions", &self.extra_api_versions)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("token_lifetime", &self.token_lifetime)
            .field("pool_allocation_delay", &self.pool_allocation_delay)
            .field("job_terminate_delay", &self.job_terminate_delay)
            .field("log_requests", &self.log_requests)
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        let key: [u8; 32] = rand::random();
        ServerConfig {
            account: "testaccount".into(),
            key: base64::engine::general_purpose::STANDARD.encode(key),
            extra_api_versions: Vec::new(),
            client_id: "test-client".into(),
            client_secret: "test-secret".into(),
            token_lifetime: Duration::from_secs(3600),
            pool_allocation_delay: Duration::ZERO,
            job_terminate_delay: Duration::ZERO,
            log_requests: true,
        }
    }
}

/// A fault the server injects instead of (or around) normal processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 `TooManyRequests` with `Retry-After: <seconds>`; the request is not processed.
    TooManyRequests {
        /// Seconds in `Retry-After`.
        retry_after_secs: u64,
        /// Send `Retry-After` as an HTTP date instead of delta-seconds.
        as_http_date: bool,
    },
    /// 503 `ServerBusy`; not processed.
    ServiceUnavailable,
    /// 500 `InternalError`; not processed.
    InternalError,
    /// The connection is closed without a reply; not processed.
    DropConnection,
    /// The reply is delayed by this long (then processed normally).
    SlowReply(Duration),
    /// The request is processed (a create succeeds), then the connection is closed without a reply.
    DropReplyAfterCommit,
    /// A file GET is answered `200` with the whole file although it carried `ocp-range` (a
    /// server or proxy that ignores ranges); other requests are processed normally.
    IgnoreRange,
    /// The request is processed and the reply's headers announce the whole body, but the
    /// connection closes after the first `bytes` bytes of it (a transfer cut mid-stream).
    TruncatedReply {
        /// Body bytes sent before the connection closes.
        bytes: usize,
    },
}

/// Which requests a [`Fault`] hits and how many times.
#[derive(Debug, Clone)]
pub struct FaultRule {
    fault: Fault,
    method: Option<String>,
    operation: Option<String>,
    remaining: u32,
}

impl FaultRule {
    /// A rule that hits the next matching request once.
    pub fn new(fault: Fault) -> Self {
        FaultRule {
            fault,
            method: None,
            operation: None,
            remaining: 1,
        }
    }

    /// Only requests with this HTTP method.
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Only requests for this spec `operationId` (e.g. `Task_AddCollection`).
    pub fn operation(mut self, operation_id: &str) -> Self {
        self.operation = Some(operation_id.to_owned());
        self
    }

    /// Hit the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.remaining = n;
        self
    }
}

/// How a chosen task fails inside an `addtaskcollection` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskFailure {
    /// `status: servererror` with code `ServerBusy`; the task is not created.
    ServerError,
    /// `status: clienterror` with the given code; the task is not created.
    ClientError(String),
}

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// No usable Authorization header.
    None,
    /// Shared Key.
    SharedKey,
    /// Bearer token.
    Bearer,
}

/// One logged request.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Raw request path.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Matched spec operationId.
    pub operation: Option<String>,
    /// Response status; 0 when the connection was dropped.
    pub status: u16,
    /// Batch error code of an error reply.
    pub error_code: Option<String>,
    /// How the request authenticated.
    pub auth: AuthKind,
    /// `client-request-id` header.
    pub client_request_id: Option<String>,
    /// Request body length.
    pub body_len: usize,
    /// Injected fault, if any.
    pub fault: Option<Fault>,
}

pub(crate) struct Shared {
    pub config: ServerConfig,
    pub spec: &'static Spec,
    pub key: Vec<u8>,
    pub base_url: String,
    pub state: Mutex<state::State>,
    pub faults: Mutex<Vec<FaultRule>>,
    pub task_failures: Mutex<HashMap<String, (TaskFailure, u32)>>,
    pub log: Mutex<Vec<RequestRecord>>,
    pub tokens: Mutex<HashMap<String, Instant>>,
    pub tokens_issued: AtomicU64,
    pub etag: AtomicU64,
}

/// Locks a mutex, recovering from poisoning (a panicking test thread must not wedge the server).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn take_fault(&self, method: &str, op: Option<&str>) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let pos = faults.iter().position(|r| {
            r.remaining > 0
                && r.method.as_deref().is_none_or(|m| m == method)
                && r.operation.as_deref().is_none_or(|o| Some(o) == op)
        })?;
        let rule = &mut faults[pos];
        rule.remaining -= 1;
        let fault = rule.fault.clone();
        if rule.remaining == 0 {
            faults.remove(pos);
        }
        Some(fault)
    }

    pub(crate) fn next_etag(&self) -> String {
        let n = self.etag.fetch_add(1, Ordering::Relaxed);
        format!("0x8DC{:013X}", 0x1000_0000 + n)
    }
}

/// A running strict Batch server. Dropping it stops the accept loop.
///
/// It dereferences to [`ServerHandle`], which carries the state, fault-injection and
/// request-log accessors; [`TestServer::handle`] gives a cloneable handle for other tasks.
pub struct TestServer {
    handle: ServerHandle,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Cloneable access to a running server's state, faults and request log.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("url", &self.shared.base_url)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for TestServer {
    type Target = ServerHandle;
    fn deref(&self) -> &ServerHandle {
        &self.handle
    }
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("account", &self.handle.shared.config.account)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// Starts the server on `127.0.0.1:0` (a free port) in the current tokio runtime.
    pub async fn start(config: ServerConfig) -> std::io::Result<TestServer> {
        Self::start_on(config, "127.0.0.1:0").await
    }

    /// Starts the server on an explicit address (e.g. `127.0.0.1:0`). Fails with an error
    /// naming the file when the Batch spec cannot be loaded (see [`crate::schema::SPEC_ENV`]).
    pub async fn start_on(config: ServerConfig, addr: &str) -> std::io::Result<TestServer> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(&config.key)
            .map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("ServerConfig.key is not base64: {e}"),
                )
            })?;
        let spec = Spec::try_shared().map_err(|e| std::io::Error::other(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            spec,
            key,
            base_url: format!("http://{addr}"),
            state: Mutex::new(state::State::default()),
            faults: Mutex::new(Vec::new()),
            task_failures: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashMap::new()),
            tokens_issued: AtomicU64::new(0),
            etag: AtomicU64::new(1),
            config,
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(http::serve(listener, shared.clone(), rx));
        Ok(TestServer {
            handle: ServerHandle { shared },
            addr,
            shutdown: Some(tx),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A cloneable handle (for driving state from another task).
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Stops accepting connections.
    pub fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl ServerHandle {
    /// Base URL, `http://127.0.0.1:<port>` — the Batch endpoint and the token authority.
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Account name.
    pub fn account(&self) -> &str {
        &self.shared.config.account
    }

    /// Base64 account key.
    pub fn key(&self) -> &str {
        &self.shared.config.key
    }

    /// Client id and secret the token endpoint accepts.
    pub fn client_credentials(&self) -> (&str, &str) {
        (
            &self.shared.config.client_id,
            &self.shared.config.client_secret,
        )
    }

    /// Number of bearer tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.tokens_issued.load(Ordering::Relaxed)
    }

    /// Revokes every bearer token issued so far (they are answered 401 from now on).
    pub fn revoke_tokens(&self) {
        lock(&self.shared.tokens).clear();
    }

    /// Adds a fault rule; rules are matched in insertion order.
    pub fn inject(&self, rule: FaultRule) {
        lock(&self.shared.faults).push(rule);
    }

    /// Makes the next `times` submissions of each given task id through `addtaskcollection`
    /// answer with `failure` (the task is not created).
    pub fn fail_tasks<I, S>(&self, task_ids: I, failure: TaskFailure, times: u32)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut m = lock(&self.shared.task_failures);
        for id in task_ids {
            m.insert(id.into(), (failure.clone(), times));
        }
    }

    /// The request log (empty when `log_requests` is off).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    /// Create attempts and successful creates per resource key: `pool/{id}`, `job/{id}`,
    /// `task/{jobId}/{taskId}`.
    pub fn create_stats(&self) -> HashMap<String, CreateStats> {
        lock(&self.shared.state).creates.clone()
    }

    /// A resource's create statistics (see [`ServerHandle::create_stats`] for keys).
    pub fn create_stat(&self, key: &str) -> CreateStats {
        lock(&self.shared.state)
            .creates
            .get(key)
            .copied()
            .unwrap_or_default()
    }

    /// Number of tasks stored in a job.
    pub fn task_count(&self, job_id: &str) -> usize {
        lock(&self.shared.state)
            .jobs
            .get(job_id)
            .map_or(0, |j| j.tasks.len())
    }

    /// The stored JSON of a pool.
    pub fn pool(&self, pool_id: &str) -> Option<Value> {
        let mut st = lock(&self.shared.state);
        st.refresh(&self.shared.base_url);
        st.pools.get(pool_id).map(|p| p.body.clone())
    }

    /// The stored JSON of a job.
    pub fn job(&self, job_id: &str) -> Option<Value> {
        let mut st = lock(&self.shared.state);
        st.refresh(&self.shared.base_url);
        st.jobs.get(job_id).map(|j| j.body.clone())
    }

    /// The stored JSON of a task.
    pub fn task(&self, job_id: &str, task_id: &str) -> Option<Value> {
        lock(&self.shared.state)
            .jobs
            .get(job_id)
            .and_then(|j| j.tasks.get(task_id))
            .map(|t| t.body.clone())
    }

    /// Runs `f` on a task's record; false if the job or task is unknown.
    fn with_task(&self, job_id: &str, task_id: &str, f: impl FnOnce(&mut state::Task)) -> bool {
        let mut st = lock(&self.shared.state);
        match st
            .jobs
            .get_mut(job_id)
            .and_then(|j| j.tasks.get_mut(task_id))
        {
            Some(t) => {
                f(t);
                true
            }
            None => false,
        }
    }

    /// Drives a task's state (`active`, `preparing`, `running`, `completed`); with
    /// `completed`, `exit_code` goes into `executionInfo`. Returns false if the task is unknown.
    pub fn set_task_state(
        &self,
        job_id: &str,
        task_id: &str,
        state: &str,
        exit_code: Option<i32>,
    ) -> bool {
        let etag = self.shared.next_etag();
        self.with_task(job_id, task_id, |task| {
            state::set_task_state(&mut task.body, state, exit_code, &etag)
        })
    }

    /// Drives a job's state (e.g. `completed`). Returns false if the job is unknown.
    pub fn set_job_state(&self, job_id: &str, state: &str) -> bool {
        let mut st = lock(&self.shared.state);
        let Some(job) = st.jobs.get_mut(job_id) else {
            return false;
        };
        job.completes_at = None;
        state::set_state(&mut job.body, "state", state);
        true
    }

    /// Sets a task's subtasks (JSON `SubtaskInformation` objects) for `Task_ListSubtasks`.
    pub fn set_subtasks(&self, job_id: &str, task_id: &str, subtasks: Vec<Value>) -> bool {
        self.with_task(job_id, task_id, |t| t.subtasks = subtasks)
    }

    /// Puts a file in a task's directory (path relative to the task dir, e.g. `stdout.txt`).
    pub fn put_task_file(&self, job_id: &str, task_id: &str, path: &str, data: Vec<u8>) -> bool {
        self.with_task(job_id, task_id, |t| {
            t.files.insert(path.to_owned(), state::FileRec::new(data));
        })
    }

    /// Puts a file on a compute node (path relative to the node root, e.g. `startup/stdout.txt`).
    pub fn put_node_file(&self, pool_id: &str, node_id: &str, path: &str, data: Vec<u8>) -> bool {
        let mut st = lock(&self.shared.state);
        st.refresh(&self.shared.base_url);
        match st.pools.get_mut(pool_id) {
            Some(p) if p.nodes.contains_key(node_id) => {
                p.node_files
                    .entry(node_id.to_owned())
                    .or_default()
                    .insert(path.to_owned(), state::FileRec::new(data));
                true
            }
            _ => false,
        }
    }

    /// Sets a compute node's `state` (e.g. `starttaskfailed`, `unusable`). Returns false if
    /// the pool or node is unknown (nodes exist once the pool's allocation finished).
    pub fn set_node_state(&self, pool_id: &str, node_id: &str, state: &str) -> bool {
        self.with_node(pool_id, node_id, |obj| {
            obj.insert("state".into(), Value::String(state.to_owned()));
            obj.insert(
                "stateTransitionTime".into(),
                Value::String(state::now_rfc3339()),
            );
        })
    }

    /// Sets the job preparation task's execution on `node_id` as
    /// `Job_ListPreparationAndReleaseTaskStatus` reports it (`state` `running` or `completed`;
    /// with `completed`, `exit_code` and `failure`, a failure code such as
    /// `FailureExitCode`, decide `result`). Nodes not set report a successful preparation.
    /// Returns false if the job is unknown.
    pub fn set_preparation_task(
        &self,
        job_id: &str,
        node_id: &str,
        state: &str,
        exit_code: Option<i32>,
        failure: Option<&str>,
    ) -> bool {
        let mut st = lock(&self.shared.state);
        let Some(job) = st.jobs.get_mut(job_id) else {
            return false;
        };
        let now = state::now_rfc3339();
        let mut info = serde_json::json!({
            "startTime": now,
            "state": state,
            "retryCount": 0,
            "taskRootDirectory": format!("workitems/{job_id}/job-1/jobpreparation"),
        });
        if state == "completed" {
            info["endTime"] = Value::String(now);
            if let Some(code) = exit_code {
                info["exitCode"] = code.into();
            }
            let failed = failure.is_some() || exit_code.is_some_and(|c| c != 0);
            info["result"] = if failed { "failure" } else { "success" }.into();
            if failed {
                info["failureInfo"] = failure_info(
                    failure.unwrap_or("FailureExitCode"),
                    &format!(
                        "The job preparation task failed (exit code {})",
                        exit_code.map_or("none".into(), |c| c.to_string())
                    ),
                );
            }
        }
        job.prep.insert(node_id.to_owned(), info);
        true
    }

    /// Makes a node's start task fail: `state` `starttaskfailed` and `startTaskInfo` completed
    /// with `exit_code`, result `failure` and a `FailureExitCode` failure. Returns false if the
    /// pool or node is unknown.
    pub fn set_node_start_task_failed(&self, pool_id: &str, node_id: &str, exit_code: i32) -> bool {
        self.with_node(pool_id, node_id, |obj| {
            let now = state::now_rfc3339();
            obj.insert("state".into(), "starttaskfailed".into());
            obj.insert("stateTransitionTime".into(), now.clone().into());
            obj.insert(
                "startTaskInfo".into(),
                serde_json::json!({
                    "state": "completed", "startTime": now, "endTime": now, "exitCode": exit_code,
                    "retryCount": 0, "result": "failure",
                    "failureInfo": failure_info(
                        "FailureExitCode",
                        &format!("The start task exited with exit code {exit_code}"),
                    ),
                }),
            );
        })
    }

    /// Records a resize error on a pool (`resizeErrors: [{code, message}]`, allocation
    /// `steady`), as the service reports a failed allocation. Returns false if the pool is unknown.
    pub fn set_pool_resize_error(&self, pool_id: &str, code: &str, message: &str) -> bool {
        let mut st = lock(&self.shared.state);
        st.refresh(&self.shared.base_url);
        let Some(pool) = st.pools.get_mut(pool_id) else {
            return false;
        };
        pool.steady_at = None;
        state::set_state(&mut pool.body, "allocationState", "steady");
        if let Some(obj) = pool.body.as_object_mut() {
            obj.insert(
                "resizeErrors".into(),
                serde_json::json!([{"code": code, "message": message}]),
            );
        }
        true
    }

    /// Runs `f` on a node's JSON object; false if the pool or node is unknown.
    fn with_node(
        &self,
        pool_id: &str,
        node_id: &str,
        f: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> bool {
        let mut st = lock(&self.shared.state);
        st.refresh(&self.shared.base_url);
        match st
            .pools
            .get_mut(pool_id)
            .and_then(|p| p.nodes.get_mut(node_id))
            .and_then(Value::as_object_mut)
        {
            Some(obj) => {
                f(obj);
                true
            }
            None => false,
        }
    }

    /// Ids of a pool's compute nodes (after allocation finished).
    pub fn node_ids(&self, pool_id: &str) -> Vec<String> {
        let mut st = lock(&self.shared.state);
        st.refresh(&self.shared.base_url);
        st.pools
            .get(pool_id)
            .map(|p| p.nodes.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// A `TaskFailureInformation` of category `usererror`.
fn failure_info(code: &str, message: &str) -> Value {
    serde_json::json!({"category": "usererror", "code": code, "message": message})
}
