//! Turning the configuration into the Azure Batch REST requests a submission sends: what
//! `--dry-run` prints and what `--target azure` posts.
//!
//! The planning itself is the runtime's ([`shipyard_runtime::ContainerRuntime::plan`]); this
//! module only adds the pool's own settings from `[pool_specification]` and splits tasks into
//! `Task_AddCollection` requests of at most [`TASKS_PER_COLLECTION`].

use serde::Serialize;
use serde_json::{json, Value};
use shipyard_batch_api::models::{JobAddParameter, TaskAddParameter};
use shipyard_runtime::{Field, JobPlan, JobSpec, PoolSpec, RuntimeError};

/// The Batch REST API version the bodies are written for.
pub const API_VERSION: &str = "2024-07-01.20.0";

/// Batch accepts at most 100 tasks per `Task_AddCollection` request.
pub const TASKS_PER_COLLECTION: usize = 100;

/// Placeholder put where the per-job SSH private key goes in a dry run (never printed).
pub const KEY_PLACEHOLDER: &str = "<generated per job at submit time; never printed>";

/// One REST request: method, path (with `api-version`), the Swagger definition of the body,
/// and the body.
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

/// Plans `job` with its configured runtime on `pool`.
pub fn plan_job(job: &JobSpec, pool: &PoolSpec) -> Result<JobPlan, RuntimeError> {
    let runtime = shipyard_runtime::registry::get(&job.runtime)?;
    runtime.plan(job, &pool.facts())
}

fn to_value<T: Serialize>(v: &T, field: Field) -> Result<Value, RuntimeError> {
    serde_json::to_value(v)
        .map_err(|e| RuntimeError::invalid(field, format!("cannot serialize: {e}")))
}

/// Replaces the per-job SSH key values in a job's JSON by [`KEY_PLACEHOLDER`].
fn redact_keys(job: &mut Value) {
    let Some(env) = job
        .pointer_mut("/jobPreparationTask/environmentSettings")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for setting in env {
        let name = setting.get("name").and_then(Value::as_str).unwrap_or("");
        if name == shipyard_runtime::ssh::PRIVATE_KEY_ENV
            || name == shipyard_runtime::ssh::PUBLIC_KEY_ENV
        {
            setting["value"] = json!(KEY_PLACEHOLDER);
        }
    }
}

/// A job ready to submit: the `JobAddParameter` (without `onAllTasksComplete`, which Batch
/// would apply to the still empty job at once), the tasks, and the `JobPatchParameter` that sets
/// `onAllTasksComplete` once every task is added (Batch Shipyard's `auto_complete` sequence).
#[derive(Debug, Clone)]
pub struct JobSubmission {
    /// `Job_Add` body.
    pub job: JobAddParameter,
    /// The tasks, for `Task_AddCollection`.
    pub tasks: Vec<TaskAddParameter>,
    /// `Job_Patch` body sent after the tasks, if any.
    pub patch: Option<Value>,
}

/// Builds the submission of `job` from `plan`. A plan that needs an SSH key gets a fresh one.
pub fn job_submission(
    job: &JobSpec,
    plan: &JobPlan,
    pool_id: &str,
) -> Result<JobSubmission, RuntimeError> {
    let mut plan = plan.clone();
    if plan.job.needs_ssh_key {
        let key = shipyard_runtime::ssh::JobSshKey::generate(&format!("shipyard-{}", job.id))?;
        plan.install_ssh_key(&key)?;
    }
    let mut add = plan.job_add_parameter(&job.id, pool_id);
    let patch = match add.on_all_tasks_complete.take() {
        Some(o) => Some(
            json!({ "onAllTasksComplete": to_value(&o, Field::job(&job.id).key("onAllTasksComplete"))? }),
        ),
        None => None,
    };
    Ok(JobSubmission {
        job: add,
        tasks: plan.tasks,
        patch,
    })
}

/// The requests that create job `job` (and its tasks) from `plan`: `Job_Add`,
/// `Task_AddCollection` per 100 tasks, then `Job_Patch` for `onAllTasksComplete`. With
/// `dry_run` the SSH key slots hold [`KEY_PLACEHOLDER`].
pub fn job_requests(
    job: &JobSpec,
    plan: &JobPlan,
    pool_id: &str,
    dry_run: bool,
) -> Result<Vec<RestRequest>, RuntimeError> {
    let sub = job_submission(job, plan, pool_id)?;
    let mut job_body = to_value(&sub.job, Field::job(&job.id))?;
    if dry_run {
        redact_keys(&mut job_body);
    }
    let mut out = Vec::with_capacity(3 + sub.tasks.len() / TASKS_PER_COLLECTION);
    out.push(RestRequest {
        method: "POST",
        path: format!("/jobs?api-version={API_VERSION}"),
        definition: "JobAddParameter",
        body: job_body,
    });
    for chunk in sub.tasks.chunks(TASKS_PER_COLLECTION) {
        out.push(RestRequest {
            method: "POST",
            path: format!(
                "/jobs/{}/addtaskcollection?api-version={API_VERSION}",
                job.id
            ),
            definition: "TaskAddCollectionParameter",
            body: json!({ "value": to_value(&chunk, Field::job(&job.id).key("tasks"))? }),
        });
    }
    if let Some(patch) = sub.patch {
        out.push(RestRequest {
            method: "PATCH",
            path: format!("/jobs/{}?api-version={API_VERSION}", job.id),
            definition: "JobPatchParameter",
            body: patch,
        });
    }
    Ok(out)
}

/// The `Pool_Add` request.
pub fn pool_request(pool: &PoolSpec, plans: &[&JobPlan]) -> Result<RestRequest, RuntimeError> {
    Ok(RestRequest {
        method: "POST",
        path: format!("/pools?api-version={API_VERSION}"),
        definition: "PoolAddParameter",
        body: to_value(&pool.add_parameter(plans)?, Field::pool())?,
    })
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
