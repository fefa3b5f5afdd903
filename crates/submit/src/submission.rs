//! What gets submitted: the pool to create when it is missing, and each job with its tasks.

use shipyard_batch_api::models::{
    JobAddParameter, JobPatchParameter, OnAllTasksComplete, PoolAddParameter, TaskAddParameter,
};
use shipyard_runtime::ssh::JobSshKey;
use shipyard_runtime::JobPlan;

use crate::error::{Result, SubmitError};
use crate::redact::{redact_in_place, KEY_PLACEHOLDER};
use shipyard_batch_api::request::{self, Request, MAX_TASK_COLLECTION_BYTES};

/// One job ready to submit: `Job_Add` without `onAllTasksComplete` (Batch would apply it to
/// the still empty job at once), the tasks for `Task_AddCollection`, and the
/// `onAllTasksComplete` that a `Job_Patch` sets once every task is added (Batch Shipyard's
/// `auto_complete` sequence).
#[derive(Debug, Clone)]
pub struct JobSubmission {
    /// `Job_Add` body (with the per-job SSH key installed when the plan needs one).
    pub job: JobAddParameter,
    /// The tasks.
    pub tasks: Vec<TaskAddParameter>,
    /// Set by `Job_Patch` after the tasks are added.
    pub on_all_tasks_complete: Option<OnAllTasksComplete>,
}

impl JobSubmission {
    /// The submission of job `job_id` on pool `pool_id` from `plan`. A plan that needs an SSH
    /// key gets a fresh one here, so [`JobSubmission::requests`] shows what is sent.
    pub fn from_plan(job_id: &str, plan: &JobPlan, pool_id: &str) -> Result<Self> {
        let plan_err = |source| SubmitError::Plan {
            job: job_id.to_string(),
            source,
        };
        let mut plan = plan.clone();
        if plan.job.needs_ssh_key {
            let key = JobSshKey::generate(&format!("shipyard-{job_id}")).map_err(plan_err)?;
            plan.install_ssh_key(&key).map_err(plan_err)?;
        }
        let mut job = plan.job_add_parameter(job_id, pool_id);
        let on_all_tasks_complete = job.on_all_tasks_complete.take();
        let submission = JobSubmission {
            job,
            tasks: plan.tasks,
            on_all_tasks_complete,
        };
        submission.check()?;
        Ok(submission)
    }

    /// Refuses tasks that no `Task_AddCollection` request can hold (larger than the service's
    /// request limit on their own, or not serializable), naming them: sending the job would
    /// leave it without them.
    pub fn check(&self) -> Result<()> {
        let rejected =
            request::task_collection_chunks(&self.tasks, MAX_TASK_COLLECTION_BYTES).rejected;
        if rejected.is_empty() {
            return Ok(());
        }
        let details: Vec<String> = rejected
            .iter()
            .take(5)
            .map(|(i, e)| format!("{}: {e}", self.tasks[*i].id))
            .collect();
        Err(SubmitError::TasksRejected {
            job: self.id().to_string(),
            failed: rejected.len(),
            total: self.tasks.len(),
            details: details.join("; "),
        })
    }

    /// The job id.
    pub fn id(&self) -> &str {
        &self.job.id
    }

    /// The `Job_Patch` sent after the tasks, if any.
    pub fn patch(&self) -> Option<JobPatchParameter> {
        self.on_all_tasks_complete
            .clone()
            .map(|o| JobPatchParameter {
                on_all_tasks_complete: Some(o),
                ..Default::default()
            })
    }

    /// The requests this job sends, in order: `Job_Add`, `Task_AddCollection` chunks, then
    /// `Job_Patch`. The SSH key slots read [`KEY_PLACEHOLDER`].
    /// Tasks no request can hold are in none ([`JobSubmission::check`] refuses them).
    pub fn requests(&self) -> Vec<Request> {
        let mut add = request::add_job(&self.job);
        if let Some(body) = add.body.as_mut() {
            redact_in_place(body, KEY_PLACEHOLDER);
        }
        let mut out = vec![add];
        out.extend(request::add_task_collection(self.id(), &self.tasks));
        if let Some(patch) = self.patch() {
            out.push(request::patch_job(self.id(), &patch));
        }
        out
    }
}

/// A whole submission: the pool (created when missing) and the jobs, in order.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The pool every job runs on.
    pub pool_id: String,
    /// Created when the pool does not exist.
    pub pool: Option<PoolAddParameter>,
    /// The jobs.
    pub jobs: Vec<JobSubmission>,
}

impl Submission {
    /// An empty submission to pool `pool_id` (which must exist).
    pub fn new(pool_id: impl Into<String>) -> Self {
        Submission {
            pool_id: pool_id.into(),
            pool: None,
            jobs: Vec::new(),
        }
    }

    /// Creates `pool` when it does not exist (its id becomes the submission's pool id).
    pub fn create_pool(mut self, pool: PoolAddParameter) -> Self {
        self.pool_id = pool.id.clone();
        self.pool = Some(pool);
        self
    }

    /// Adds a job.
    pub fn job(mut self, job: JobSubmission) -> Self {
        self.jobs.push(job);
        self
    }

    /// Adds job `job_id` planned as `plan` (see [`JobSubmission::from_plan`]).
    pub fn plan(self, job_id: &str, plan: &JobPlan) -> Result<Self> {
        let job = JobSubmission::from_plan(job_id, plan, &self.pool_id)?;
        Ok(self.job(job))
    }

    /// Refuses a job with tasks no request can hold ([`JobSubmission::check`]).
    pub fn check(&self) -> Result<()> {
        self.jobs.iter().try_for_each(JobSubmission::check)
    }

    /// Tasks over all jobs.
    pub fn task_count(&self) -> usize {
        self.jobs.iter().map(|j| j.tasks.len()).sum()
    }

    /// Every request a submission sends when the pool is missing: `Pool_Add` (when a pool is
    /// given), then each job's [`JobSubmission::requests`]. What `--dry-run` prints.
    pub fn requests(&self) -> Vec<Request> {
        let mut out: Vec<Request> = self.pool.iter().map(request::add_pool).collect();
        for job in &self.jobs {
            out.extend(job.requests());
        }
        out
    }
}
