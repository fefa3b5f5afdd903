//! What gets submitted: the pool to create when it is missing, and each job with its tasks.

use shipyard_batch_api::models::{
    JobAddParameter, JobPatchParameter, OnAllTasksComplete, PoolAddParameter, TaskAddParameter,
};
use shipyard_runtime::ssh::JobSshKey;
use shipyard_runtime::JobPlan;

use crate::error::{Result, SubmitError};
use crate::redact::{redact_in_place, KEY_PLACEHOLDER};
use crate::requests::{self, RestRequest};

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
        Ok(JobSubmission {
            job,
            tasks: plan.tasks,
            on_all_tasks_complete,
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
    pub fn requests(&self) -> Vec<RestRequest> {
        let mut add = requests::add_job(&self.job);
        redact_in_place(&mut add.body, KEY_PLACEHOLDER);
        let mut out = vec![add];
        out.extend(requests::add_task_collection(self.id(), &self.tasks));
        if let Some(patch) = self.patch() {
            out.push(requests::patch_job(self.id(), &patch));
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

    /// Tasks over all jobs.
    pub fn task_count(&self) -> usize {
        self.jobs.iter().map(|j| j.tasks.len()).sum()
    }

    /// Every request a submission sends when the pool is missing: `Pool_Add` (when a pool is
    /// given), then each job's [`JobSubmission::requests`]. What `--dry-run` prints.
    pub fn requests(&self) -> Vec<RestRequest> {
        let mut out: Vec<RestRequest> = self.pool.iter().map(requests::add_pool).collect();
        for job in &self.jobs {
            out.extend(job.requests());
        }
        out
    }
}
