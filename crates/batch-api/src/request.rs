//! Pure descriptions of every request [`BatchClient`](crate::BatchClient) sends.
//!
//! Each Batch operation the client speaks has one constructor here that returns a [`Request`]:
//! the Swagger operation id, the method, the percent-encoded path, the query (always starting
//! with `api-version`), the Swagger definition of the body and the body. The client builds every
//! call with these constructors and sends exactly the description, so what `--dry-run` prints
//! from them is what is sent:
//!
//! ```
//! use shipyard_batch_api::models::JobPatchParameter;
//! use shipyard_batch_api::request::{self, Method};
//!
//! let r = request::terminate_job("job 1", Some("UserTerminate"));
//! assert_eq!(r.method, Method::Post);
//! assert_eq!(
//!     r.path_and_query(),
//!     "/jobs/job%201/terminate?api-version=2024-07-01.20.0"
//! );
//! assert_eq!(r.definition, Some("JobTerminateParameter"));
//! assert_eq!(r.body, Some(serde_json::json!({"terminateReason": "UserTerminate"})));
//! ```
//!
//! Settings of a client that change what goes on the wire, all off by default:
//! [`ClientOptions::api_version`](crate::ClientOptions::api_version) replaces the
//! `api-version` value, [`ClientOptions::server_timeout`](crate::ClientOptions::server_timeout)
//! appends `timeout`, and a [`ClientOptions::request_timeout`](crate::ClientOptions) under 30 s
//! appends it to `addtaskcollection` (so the service gives up before the client does).
//! Downloads add an `ocp-range` header; list operations follow the service's `odata.nextLink`
//! after the first page.

use std::fmt;

use serde::ser::SerializeStruct as _;
use serde::Serialize;
use serde_json::Value;

use crate::error::BatchError;
use crate::models::{
    ComputeNodeUser, JobAddParameter, JobPatchParameter, JobTerminateParameter, PoolAddParameter,
    PoolResizeParameter, TaskAddParameter, API_VERSION,
};

/// Most tasks one `addtaskcollection` request may carry (a service limit).
pub const MAX_TASKS_PER_REQUEST: usize = 100;

/// Largest `addtaskcollection` body, in bytes: under the service's 1 MB request limit.
pub const MAX_TASK_COLLECTION_BYTES: usize = 1_000_000;

/// `{"value":[` + `]}`: the bytes of a task collection body around its tasks.
const ENVELOPE_BYTES: usize = 12;

/// An HTTP method of the Batch API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
}

impl Method {
    /// The method as sent: `"GET"`, `"POST"`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One request to the Batch service, described completely.
///
/// Serializes (for `--dry-run`) as `{"method", "path", "definition", "body"}`, where `path`
/// is [`Request::path_and_query`], `definition` is `"-"` for a request without a body and
/// `body` is `null` then.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Swagger operation id, e.g. `"Pool_Add"`.
    pub operation: &'static str,
    /// HTTP method.
    pub method: Method,
    /// Percent-encoded path relative to the account URL, without the query: `"/pools/p1"`.
    pub path: String,
    /// Query parameters in order, unencoded; the first is `("api-version", API_VERSION)`.
    pub query: Vec<(String, String)>,
    /// The body's definition in `BatchService.json`, e.g. `"PoolAddParameter"`.
    pub definition: Option<&'static str>,
    /// The JSON body. `None` with a `definition` means the model could not be serialized
    /// (the client then refuses to send it).
    pub body: Option<Value>,
}

impl Request {
    fn new(operation: &'static str, method: Method, segments: &[&str]) -> Request {
        let mut path = String::new();
        for s in segments {
            path.push('/');
            path.push_str(&encode_segment(s));
        }
        Request {
            operation,
            method,
            path,
            query: vec![("api-version".to_owned(), API_VERSION.to_owned())],
            definition: None,
            body: None,
        }
    }

    fn with_body<T: Serialize>(mut self, definition: &'static str, body: &T) -> Request {
        self.definition = Some(definition);
        self.body = match serde_json::to_value(body) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(definition, error = %e, "request body does not serialize");
                None
            }
        };
        self
    }

    fn with_list_options(mut self, options: &ListOptions) -> Request {
        self.query.extend(options.query());
        self
    }

    /// Appends a query parameter.
    pub fn with_query(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.query.push((name.into(), value.into()));
        self
    }

    /// The encoded query string (no leading `?`), as sent.
    pub fn query_string(&self) -> String {
        encode_query(&self.query)
    }

    /// Path and query as sent: `"/pools?api-version=2024-07-01.20.0"`.
    pub fn path_and_query(&self) -> String {
        let q = self.query_string();
        if q.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{q}", self.path)
        }
    }

    /// The body's bytes as sent (compact JSON), `None` for a request without a body.
    pub fn body_bytes(&self) -> Option<Vec<u8>> {
        // Serializing a `serde_json::Value` cannot fail.
        self.body
            .as_ref()
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
    }
}

impl Serialize for Request {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Request", 4)?;
        st.serialize_field("method", &self.method)?;
        st.serialize_field("path", &self.path_and_query())?;
        st.serialize_field("definition", self.definition.unwrap_or("-"))?;
        st.serialize_field("body", &self.body)?;
        st.end()
    }
}

/// Renders requests for people: per request a `# METHOD path?query (Definition)` line, then
/// the pretty-printed body (if any).
pub fn render_text(requests: &[Request]) -> String {
    let mut out = String::new();
    for r in requests {
        out.push_str(&format!(
            "# {} {} ({})\n",
            r.method,
            r.path_and_query(),
            r.definition.unwrap_or("-")
        ));
        if let Some(body) = &r.body {
            // Pretty-printing a `serde_json::Value` cannot fail.
            out.push_str(&serde_json::to_string_pretty(body).unwrap_or_default());
            out.push('\n');
        }
    }
    out
}

/// Percent-encodes one path segment the way the `url` crate does (so `/` inside an id or a
/// file path stays inside its segment: `wd/out.txt` → `wd%2Fout.txt`).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_graphic()
            && !matches!(
                b,
                b'"' | b'#' | b'<' | b'>' | b'?' | b'`' | b'{' | b'}' | b'/' | b'%' | b'\\'
            );
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `application/x-www-form-urlencoded` query, as the client sends it.
pub(crate) fn encode_query(query: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish()
}

/// OData options of a list call.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// `$filter`, e.g. `state eq 'completed'`.
    pub filter: Option<String>,
    /// `$select`, a comma-separated property list.
    pub select: Option<String>,
    /// `$expand`, e.g. `stats`.
    pub expand: Option<String>,
    /// `maxresults`: items per page (1..=1000).
    pub max_results: Option<u32>,
}

impl ListOptions {
    /// Sets `$filter`.
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }

    /// Sets `$select`.
    pub fn select(mut self, select: impl Into<String>) -> Self {
        self.select = Some(select.into());
        self
    }

    /// Sets `$expand` (e.g. `stats`).
    pub fn expand(mut self, expand: impl Into<String>) -> Self {
        self.expand = Some(expand.into());
        self
    }

    /// Sets `maxresults`.
    pub fn max_results(mut self, n: u32) -> Self {
        self.max_results = Some(n);
        self
    }

    /// The query parameters, in order.
    pub fn query(&self) -> Vec<(String, String)> {
        let mut q = Vec::new();
        if let Some(f) = &self.filter {
            q.push(("$filter".to_owned(), f.clone()));
        }
        if let Some(s) = &self.select {
            q.push(("$select".to_owned(), s.clone()));
        }
        if let Some(e) = &self.expand {
            q.push(("$expand".to_owned(), e.clone()));
        }
        if let Some(m) = self.max_results {
            q.push(("maxresults".to_owned(), m.to_string()));
        }
        q
    }
}

// ---------------------------------------------------------------------- pools

/// `Pool_Add`: `POST /pools` with a `PoolAddParameter`.
pub fn add_pool(pool: &PoolAddParameter) -> Request {
    Request::new("Pool_Add", Method::Post, &["pools"]).with_body("PoolAddParameter", pool)
}

/// `Pool_Get`: `GET /pools/{poolId}`.
pub fn get_pool(pool_id: &str) -> Request {
    Request::new("Pool_Get", Method::Get, &["pools", pool_id])
}

/// `Pool_List`: `GET /pools` (first page).
pub fn list_pools(options: &ListOptions) -> Request {
    Request::new("Pool_List", Method::Get, &["pools"]).with_list_options(options)
}

/// `Pool_Delete`: `DELETE /pools/{poolId}`.
pub fn delete_pool(pool_id: &str) -> Request {
    Request::new("Pool_Delete", Method::Delete, &["pools", pool_id])
}

/// `Pool_Exists`: `HEAD /pools/{poolId}`.
pub fn pool_exists(pool_id: &str) -> Request {
    Request::new("Pool_Exists", Method::Head, &["pools", pool_id])
}

/// `Pool_Resize`: `POST /pools/{poolId}/resize` with a `PoolResizeParameter`.
pub fn resize_pool(pool_id: &str, resize: &PoolResizeParameter) -> Request {
    Request::new("Pool_Resize", Method::Post, &["pools", pool_id, "resize"])
        .with_body("PoolResizeParameter", resize)
}

/// `ComputeNode_List`: `GET /pools/{poolId}/nodes` (first page).
pub fn list_nodes(pool_id: &str, options: &ListOptions) -> Request {
    Request::new(
        "ComputeNode_List",
        Method::Get,
        &["pools", pool_id, "nodes"],
    )
    .with_list_options(options)
}

/// `ComputeNode_Get`: `GET /pools/{poolId}/nodes/{nodeId}`.
pub fn get_node(pool_id: &str, node_id: &str) -> Request {
    Request::new(
        "ComputeNode_Get",
        Method::Get,
        &["pools", pool_id, "nodes", node_id],
    )
}

/// `ComputeNode_AddUser`: `POST /pools/{poolId}/nodes/{nodeId}/users` with a
/// `ComputeNodeUser` (a name, and for SSH access its `sshPublicKey`).
pub fn add_node_user(pool_id: &str, node_id: &str, user: &ComputeNodeUser) -> Request {
    Request::new(
        "ComputeNode_AddUser",
        Method::Post,
        &["pools", pool_id, "nodes", node_id, "users"],
    )
    .with_body("ComputeNodeUser", user)
}

/// `ComputeNode_GetRemoteLoginSettings`: `GET /pools/{poolId}/nodes/{nodeId}/remoteloginsettings`
/// (the address and port to ssh to).
pub fn get_remote_login_settings(pool_id: &str, node_id: &str) -> Request {
    Request::new(
        "ComputeNode_GetRemoteLoginSettings",
        Method::Get,
        &["pools", pool_id, "nodes", node_id, "remoteloginsettings"],
    )
}

// ----------------------------------------------------------------------- jobs

/// `Job_Add`: `POST /jobs` with a `JobAddParameter`.
pub fn add_job(job: &JobAddParameter) -> Request {
    Request::new("Job_Add", Method::Post, &["jobs"]).with_body("JobAddParameter", job)
}

/// `Job_Get`: `GET /jobs/{jobId}`.
pub fn get_job(job_id: &str) -> Request {
    Request::new("Job_Get", Method::Get, &["jobs", job_id])
}

/// `Job_List`: `GET /jobs` (first page).
pub fn list_jobs(options: &ListOptions) -> Request {
    Request::new("Job_List", Method::Get, &["jobs"]).with_list_options(options)
}

/// `Job_Delete`: `DELETE /jobs/{jobId}`.
pub fn delete_job(job_id: &str) -> Request {
    Request::new("Job_Delete", Method::Delete, &["jobs", job_id])
}

/// `Job_Terminate`: `POST /jobs/{jobId}/terminate`, with a `JobTerminateParameter` carrying
/// `reason` when given, without a body otherwise.
pub fn terminate_job(job_id: &str, reason: Option<&str>) -> Request {
    let r = Request::new(
        "Job_Terminate",
        Method::Post,
        &["jobs", job_id, "terminate"],
    );
    match reason {
        Some(reason) => r.with_body(
            "JobTerminateParameter",
            &JobTerminateParameter {
                terminate_reason: Some(reason.to_owned()),
                ..Default::default()
            },
        ),
        None => r,
    }
}

/// `Job_Patch`: `PATCH /jobs/{jobId}` with a `JobPatchParameter`.
pub fn patch_job(job_id: &str, patch: &JobPatchParameter) -> Request {
    Request::new("Job_Patch", Method::Patch, &["jobs", job_id])
        .with_body("JobPatchParameter", patch)
}

/// `Job_ListPreparationAndReleaseTaskStatus`:
/// `GET /jobs/{jobId}/jobpreparationandreleasetaskstatus` (first page).
pub fn list_preparation_and_release_status(job_id: &str, options: &ListOptions) -> Request {
    Request::new(
        "Job_ListPreparationAndReleaseTaskStatus",
        Method::Get,
        &["jobs", job_id, "jobpreparationandreleasetaskstatus"],
    )
    .with_list_options(options)
}

// ---------------------------------------------------------------------- tasks

/// `Task_Add`: `POST /jobs/{jobId}/tasks` with a `TaskAddParameter`.
pub fn add_task(job_id: &str, task: &TaskAddParameter) -> Request {
    Request::new("Task_Add", Method::Post, &["jobs", job_id, "tasks"])
        .with_body("TaskAddParameter", task)
}

/// `Task_Get`: `GET /jobs/{jobId}/tasks/{taskId}`.
pub fn get_task(job_id: &str, task_id: &str) -> Request {
    Request::new("Task_Get", Method::Get, &["jobs", job_id, "tasks", task_id])
}

/// `Task_List`: `GET /jobs/{jobId}/tasks` (first page).
pub fn list_tasks(job_id: &str, options: &ListOptions) -> Request {
    Request::new("Task_List", Method::Get, &["jobs", job_id, "tasks"]).with_list_options(options)
}

/// `Task_Terminate`: `POST /jobs/{jobId}/tasks/{taskId}/terminate` (no body).
pub fn terminate_task(job_id: &str, task_id: &str) -> Request {
    Request::new(
        "Task_Terminate",
        Method::Post,
        &["jobs", job_id, "tasks", task_id, "terminate"],
    )
}

/// `Task_Delete`: `DELETE /jobs/{jobId}/tasks/{taskId}`.
pub fn delete_task(job_id: &str, task_id: &str) -> Request {
    Request::new(
        "Task_Delete",
        Method::Delete,
        &["jobs", job_id, "tasks", task_id],
    )
}

/// `Task_ListSubtasks`: `GET /jobs/{jobId}/tasks/{taskId}/subtasksinfo`.
pub fn list_subtasks(job_id: &str, task_id: &str) -> Request {
    Request::new(
        "Task_ListSubtasks",
        Method::Get,
        &["jobs", job_id, "tasks", task_id, "subtasksinfo"],
    )
}

// ---------------------------------------------------------------------- files

/// `File_ListFromTask`: `GET /jobs/{jobId}/tasks/{taskId}/files?recursive=…` (first page).
pub fn list_task_files(
    job_id: &str,
    task_id: &str,
    recursive: bool,
    options: &ListOptions,
) -> Request {
    Request::new(
        "File_ListFromTask",
        Method::Get,
        &["jobs", job_id, "tasks", task_id, "files"],
    )
    .with_list_options(options)
    .with_query("recursive", recursive.to_string())
}

/// `File_ListFromComputeNode`: `GET /pools/{poolId}/nodes/{nodeId}/files?recursive=…`.
pub fn list_node_files(
    pool_id: &str,
    node_id: &str,
    recursive: bool,
    options: &ListOptions,
) -> Request {
    Request::new(
        "File_ListFromComputeNode",
        Method::Get,
        &["pools", pool_id, "nodes", node_id, "files"],
    )
    .with_list_options(options)
    .with_query("recursive", recursive.to_string())
}

/// `File_GetFromTask`: `GET /jobs/{jobId}/tasks/{taskId}/files/{filePath}` (the file path is
/// one segment: its `/` are encoded).
pub fn get_task_file(job_id: &str, task_id: &str, file_path: &str) -> Request {
    Request::new(
        "File_GetFromTask",
        Method::Get,
        &["jobs", job_id, "tasks", task_id, "files", file_path],
    )
}

/// `File_GetFromComputeNode`: `GET /pools/{poolId}/nodes/{nodeId}/files/{filePath}`.
pub fn get_node_file(pool_id: &str, node_id: &str, file_path: &str) -> Request {
    Request::new(
        "File_GetFromComputeNode",
        Method::Get,
        &["pools", pool_id, "nodes", node_id, "files", file_path],
    )
}

// ------------------------------------------------------------ task collections

/// `Task_AddCollection`: `POST /jobs/{jobId}/addtaskcollection` with a
/// `TaskAddCollectionParameter` `{"value": [...]}` holding `tasks` in order (no chunking; see
/// [`add_task_collection`]).
pub fn task_collection_request<'a>(
    job_id: &str,
    tasks: impl IntoIterator<Item = &'a TaskAddParameter>,
) -> Request {
    let mut r = Request::new(
        "Task_AddCollection",
        Method::Post,
        &["jobs", job_id, "addtaskcollection"],
    );
    let values: Result<Vec<Value>, _> = tasks.into_iter().map(serde_json::to_value).collect();
    r.definition = Some("TaskAddCollectionParameter");
    r.body = match values {
        Ok(values) => {
            let mut body = serde_json::Map::with_capacity(1);
            body.insert("value".to_owned(), Value::Array(values));
            Some(Value::Object(body))
        }
        Err(e) => {
            tracing::error!(error = %e, "task collection body does not serialize");
            None
        }
    };
    r
}

/// How tasks split into `addtaskcollection` requests (see [`task_collection_chunks`]).
#[derive(Debug)]
pub struct TaskCollectionChunks {
    /// Per request, the input indices of its tasks, in order; together every task not in
    /// `rejected`, in input order.
    pub chunks: Vec<Vec<usize>>,
    /// Tasks that cannot be sent, by input index: [`BatchError::TaskTooLarge`] (too large for
    /// a request on their own) or [`BatchError::Serialize`].
    pub rejected: Vec<(usize, BatchError)>,
}

/// Counts the bytes a value serializes to without keeping them.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Splits `tasks` into `Task_AddCollection` requests of at most [`MAX_TASKS_PER_REQUEST`] tasks
/// and at most `max_body_bytes` bytes of body, in input order: a request is closed when the next
/// task would break either limit. This is the rule [`BatchClient::add_task_collection`] applies
/// with its [`ClientOptions::max_body_bytes`](crate::ClientOptions::max_body_bytes); each chunk
/// becomes a request with [`task_collection_request`].
///
/// [`BatchClient::add_task_collection`]: crate::BatchClient::add_task_collection
pub fn task_collection_chunks(
    tasks: &[TaskAddParameter],
    max_body_bytes: usize,
) -> TaskCollectionChunks {
    let limit = max_body_bytes.max(ENVELOPE_BYTES + 2);
    let mut out = TaskCollectionChunks {
        chunks: Vec::new(),
        rejected: Vec::new(),
    };
    let mut current: Vec<usize> = Vec::new();
    let mut current_bytes = ENVELOPE_BYTES;
    for (index, task) in tasks.iter().enumerate() {
        let mut count = ByteCount(0);
        if let Err(e) = serde_json::to_writer(&mut count, task) {
            let what = format!("task `{}`", task.id);
            let message = e.to_string();
            out.rejected
                .push((index, BatchError::Serialize { what, message }));
            continue;
        }
        let size = count.0;
        if ENVELOPE_BYTES + size > limit {
            let task_id = task.id.clone();
            out.rejected.push((
                index,
                BatchError::TaskTooLarge {
                    task_id,
                    size,
                    limit,
                },
            ));
            continue;
        }
        let add = size + usize::from(!current.is_empty());
        if current.len() == MAX_TASKS_PER_REQUEST || current_bytes + add > limit {
            out.chunks.push(std::mem::take(&mut current));
            current_bytes = ENVELOPE_BYTES;
        }
        current_bytes += size + usize::from(!current.is_empty());
        current.push(index);
    }
    if !current.is_empty() {
        out.chunks.push(current);
    }
    out
}

/// The `Task_AddCollection` requests that add `tasks` to job `job_id`, chunked by
/// [`MAX_TASKS_PER_REQUEST`] and [`MAX_TASK_COLLECTION_BYTES`], in order: what
/// [`BatchClient::add_task_collection`](crate::BatchClient::add_task_collection) sends with
/// default options when no task needs a retry. A task too large for a request on its own is in
/// no request ([`task_collection_chunks`] names it).
pub fn add_task_collection(job_id: &str, tasks: &[TaskAddParameter]) -> Vec<Request> {
    task_collection_chunks(tasks, MAX_TASK_COLLECTION_BYTES)
        .chunks
        .iter()
        .map(|chunk| task_collection_request(job_id, chunk.iter().map(|&i| &tasks[i])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_list_option_becomes_its_odata_parameter() {
        let q = ListOptions::default()
            .filter("state eq 'active'")
            .select("id,state")
            .expand("stats")
            .max_results(50)
            .query();
        let pairs: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("$filter", "state eq 'active'"),
                ("$select", "id,state"),
                ("$expand", "stats"),
                ("maxresults", "50"),
            ]
        );
        assert!(ListOptions::default().query().is_empty());
    }
}
