//! Descriptions of the REST requests a command sends, for `--dry-run`.
//!
//! Interim home: `shipyard_batch_api::request` (one constructor per operation, the same
//! chunking the client uses) replaces this module once it lands; the shape printed stays
//! `{"method","path","definition","body"}`.

use serde::Serialize;
use serde_json::{json, Value};
use shipyard_batch_api::models::{
    JobAddParameter, JobPatchParameter, PoolAddParameter, PoolResizeParameter, TaskAddParameter,
};
use shipyard_batch_api::{API_VERSION, MAX_TASKS_PER_REQUEST};

/// One REST request: method, path (with `api-version`), the Swagger definition of the body
/// (`-` when there is none), and the body (`null` when there is none).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestRequest {
    /// HTTP method.
    pub method: &'static str,
    /// Path and query relative to the account URL.
    pub path: String,
    /// The body's definition in `BatchService.json` (`PoolAddParameter`, ...).
    pub definition: &'static str,
    /// The JSON body.
    pub body: Value,
}

fn req(method: &'static str, path: String, definition: &'static str, body: Value) -> RestRequest {
    let sep = if path.contains('?') { '&' } else { '?' };
    RestRequest {
        method,
        path: format!("{path}{sep}api-version={API_VERSION}"),
        definition,
        body,
    }
}

fn get(path: String) -> RestRequest {
    req("GET", path, "-", Value::Null)
}

fn body<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// `Pool_Add`.
pub fn add_pool(pool: &PoolAddParameter) -> RestRequest {
    req("POST", "/pools".into(), "PoolAddParameter", body(pool))
}

/// `Pool_List`.
pub fn list_pools() -> RestRequest {
    get("/pools".into())
}

/// `Pool_Delete`.
pub fn delete_pool(pool_id: &str) -> RestRequest {
    req("DELETE", format!("/pools/{pool_id}"), "-", Value::Null)
}

/// `Pool_Resize`.
pub fn resize_pool(pool_id: &str, resize: &PoolResizeParameter) -> RestRequest {
    req(
        "POST",
        format!("/pools/{pool_id}/resize"),
        "PoolResizeParameter",
        body(resize),
    )
}

/// `ComputeNode_List`.
pub fn list_nodes(pool_id: &str) -> RestRequest {
    get(format!("/pools/{pool_id}/nodes"))
}

/// `Job_Add`.
pub fn add_job(job: &JobAddParameter) -> RestRequest {
    req("POST", "/jobs".into(), "JobAddParameter", body(job))
}

/// `Job_List`.
pub fn list_jobs() -> RestRequest {
    get("/jobs".into())
}

/// `Job_Delete`.
pub fn delete_job(job_id: &str) -> RestRequest {
    req("DELETE", format!("/jobs/{job_id}"), "-", Value::Null)
}

/// `Job_Terminate` as `jobs term` sends it.
pub fn terminate_job(job_id: &str) -> RestRequest {
    req(
        "POST",
        format!("/jobs/{job_id}/terminate"),
        "JobTerminateParameter",
        json!({"terminateReason": "UserTerminate"}),
    )
}

/// `Job_Patch`.
pub fn patch_job(job_id: &str, patch: &JobPatchParameter) -> RestRequest {
    req(
        "PATCH",
        format!("/jobs/{job_id}"),
        "JobPatchParameter",
        body(patch),
    )
}

/// `Task_AddCollection` requests of at most [`MAX_TASKS_PER_REQUEST`] tasks, in order.
pub fn add_task_collection(job_id: &str, tasks: &[TaskAddParameter]) -> Vec<RestRequest> {
    tasks
        .chunks(MAX_TASKS_PER_REQUEST)
        .map(|chunk| {
            req(
                "POST",
                format!("/jobs/{job_id}/addtaskcollection"),
                "TaskAddCollectionParameter",
                json!({ "value": body(&chunk) }),
            )
        })
        .collect()
}

/// `Task_List`.
pub fn list_tasks(job_id: &str) -> RestRequest {
    get(format!("/jobs/{job_id}/tasks"))
}

/// `Task_List` of the completed tasks (what `jobs cmi` looks at).
pub fn list_completed_tasks(job_id: &str) -> RestRequest {
    get(format!(
        "/jobs/{job_id}/tasks?$filter=state%20eq%20'completed'"
    ))
}

/// `Task_Get`.
pub fn get_task(job_id: &str, task_id: &str) -> RestRequest {
    get(format!("/jobs/{job_id}/tasks/{task_id}"))
}

/// `Task_Terminate`.
pub fn terminate_task(job_id: &str, task_id: &str) -> RestRequest {
    req(
        "POST",
        format!("/jobs/{job_id}/tasks/{task_id}/terminate"),
        "-",
        Value::Null,
    )
}

/// `File_GetFromTask`.
pub fn get_task_file(job_id: &str, task_id: &str, file: &str) -> RestRequest {
    get(format!("/jobs/{job_id}/tasks/{task_id}/files/{file}"))
}

/// Renders requests for people: a `# METHOD path (Definition)` line, then the pretty body.
pub fn requests_text(requests: &[RestRequest]) -> String {
    let mut out = String::new();
    for r in requests {
        out.push_str(&format!("# {} {} ({})\n", r.method, r.path, r.definition));
        if !r.body.is_null() {
            out.push_str(&serde_json::to_string_pretty(&r.body).unwrap_or_default());
            out.push('\n');
        }
    }
    out
}
