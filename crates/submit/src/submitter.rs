//! [`Submitter`]: creates the pool when missing, adds jobs and task collections, sets
//! `onAllTasksComplete`, watches, and terminates the jobs on failure, timeout or interrupt.

use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt as _;
use shipyard_batch_api::models::{CloudTask, JobState, TaskExecutionResult};
use shipyard_batch_api::BatchClient;
use tokio_util::sync::CancellationToken;

use crate::error::{Result, SubmitError};
use crate::events::{EventSender, SubmitEvent};
use crate::submission::{JobSubmission, Submission};
use crate::watch::Watcher;

/// Default time between polls while watching.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Default overall timeout of [`Submitter::run`] / [`Submitter::watch`]: 24 hours.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The terminate reason shipyard gives when it ends a job itself.
pub const TERMINATE_REASON: &str = "shipyard: submission failed or was interrupted";

/// How a [`Submitter`] works.
#[derive(Debug, Clone)]
pub struct SubmitOptions {
    /// Time between polls while watching.
    pub poll_interval: Duration,
    /// Give up (and terminate the jobs) after this long.
    pub timeout: Duration,
    /// Report new output lines of running tasks ([`SubmitEvent::Output`]).
    pub stream_output: bool,
    /// Terminate the submitted jobs when the run fails, times out or is cancelled.
    pub terminate_on_failure: bool,
    /// A job id that exists and has finished (`completed`, or `terminating` until it is) is
    /// deleted and added anew, as Batch Shipyard's `--recreate` does; an active job is refused.
    pub recreate: bool,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        SubmitOptions {
            poll_interval: DEFAULT_POLL_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            stream_output: false,
            terminate_on_failure: true,
            recreate: false,
        }
    }
}

impl SubmitOptions {
    /// Time between polls.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// Overall timeout.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Report output lines.
    pub fn stream_output(mut self, on: bool) -> Self {
        self.stream_output = on;
        self
    }

    /// Delete a finished job with the same id before adding it (default off).
    pub fn recreate(mut self, on: bool) -> Self {
        self.recreate = on;
        self
    }

    /// Terminate the jobs when the run fails (default on).
    pub fn terminate_on_failure(mut self, on: bool) -> Self {
        self.terminate_on_failure = on;
        self
    }
}

/// A job that was submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedJob {
    /// Job id.
    pub id: String,
    /// Ids of the tasks added.
    pub tasks: Vec<String>,
    /// This submission created the job (it was not there before).
    pub created: bool,
    /// The job has a job preparation task (its status is watched).
    pub has_preparation_task: bool,
}

/// What [`Submitter::submit`] added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The pool.
    pub pool_id: String,
    /// Whether the pool was created by this submission.
    pub pool_created: bool,
    /// The jobs, in order.
    pub jobs: Vec<SubmittedJob>,
}

impl Submitted {
    /// Tasks over all jobs.
    pub fn task_count(&self) -> usize {
        self.jobs.iter().map(|j| j.tasks.len()).sum()
    }
}

/// How a run ended (every task completed).
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// What was submitted.
    pub submitted: Submitted,
    /// Every task, as Batch last reported it, job by job.
    pub tasks: Vec<CloudTask>,
}

impl RunOutcome {
    /// The first failed task's exit code (1..=255; 1 for a failure without a usable code), or
    /// 0 when every task succeeded.
    pub fn exit_code(&self) -> i32 {
        self.tasks.iter().find_map(task_exit_code).unwrap_or(0)
    }
}

fn task_exit_code(t: &CloudTask) -> Option<i32> {
    let exec = t.execution_info.as_ref()?;
    let failed = exec.result == Some(TaskExecutionResult::Failure);
    match exec.exit_code {
        Some(0) if failed => Some(1),
        Some(0) => None,
        Some(c) => Some(if (1..=255).contains(&c) { c } else { 1 }),
        None if failed => Some(1),
        None => None,
    }
}

/// Submits [`Submission`]s to one Batch endpoint.
#[derive(Debug, Clone)]
pub struct Submitter {
    client: BatchClient,
    opts: SubmitOptions,
    cancel: CancellationToken,
}

impl Submitter {
    /// A submitter over `client`.
    pub fn new(client: BatchClient, opts: SubmitOptions) -> Self {
        Submitter {
            client,
            opts,
            cancel: CancellationToken::new(),
        }
    }

    /// The client.
    pub fn client(&self) -> &BatchClient {
        &self.client
    }

    /// The options.
    pub fn options(&self) -> &SubmitOptions {
        &self.opts
    }

    /// Cancelling this token stops [`Submitter::run`]: the jobs it added are terminated.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Creates the pool when it is missing, adds every job with its tasks and sets
    /// `onAllTasksComplete`. On failure the jobs this call created are terminated (so their
    /// release tasks run) and the error says so.
    pub async fn submit(&self, submission: &Submission) -> Result<Submitted> {
        self.submit_reporting(submission, None).await
    }

    async fn submit_reporting(
        &self,
        submission: &Submission,
        events: Option<&EventSender>,
    ) -> Result<Submitted> {
        let mut submitted = Submitted {
            pool_id: submission.pool_id.clone(),
            pool_created: false,
            jobs: Vec::new(),
        };
        let result = tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(SubmitError::Cancelled),
            r = self.submit_steps(submission, events, &mut submitted) => r,
        };
        match result {
            Ok(()) => Ok(submitted),
            Err(e) => Err(self.abort(&submitted, e, events).await),
        }
    }

    async fn submit_steps(
        &self,
        submission: &Submission,
        events: Option<&EventSender>,
        submitted: &mut Submitted,
    ) -> Result<()> {
        // Before anything is created: a job missing tasks would be a partial submission.
        submission.check()?;
        if let Some(pool) = &submission.pool {
            let exists = self
                .client
                .pool_exists(&pool.id)
                .await
                .map_err(|e| SubmitError::batch(format!("checking pool `{}`", pool.id), e))?;
            if !exists {
                send(
                    events,
                    SubmitEvent::PoolCreating {
                        pool: pool.id.clone(),
                    },
                );
                self.client
                    .add_pool(pool)
                    .await
                    .map_err(|e| SubmitError::batch(format!("adding pool `{}`", pool.id), e))?;
                submitted.pool_created = true;
            }
        }
        for job in &submission.jobs {
            self.add_job(job, events, submitted).await?;
        }
        Ok(())
    }

    /// Deletes job `id` once it has finished (waiting while it is `terminating`), and waits
    /// until Batch no longer knows it. An active job is refused: it may be another run's.
    async fn delete_finished_job(&self, id: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.opts.timeout;
        let mut deleted = false;
        loop {
            let job = match self.client.get_job(id).await {
                Ok(j) => j,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(SubmitError::batch(format!("reading job `{id}`"), e)),
            };
            match job.state {
                Some(JobState::Completed) if !deleted => {
                    tracing::info!(job = %id, "recreate: deleting the finished job");
                    self.client
                        .delete_job(id)
                        .await
                        .map_err(|e| SubmitError::batch(format!("deleting job `{id}`"), e))?;
                    deleted = true;
                }
                Some(JobState::Completed | JobState::Terminating | JobState::Deleting) => {}
                state => {
                    return Err(SubmitError::JobActive {
                        job: id.to_string(),
                        state: state.map_or_else(|| "unknown".to_string(), |s| s.to_string()),
                    })
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SubmitError::TimedOut {
                    timeout: self.opts.timeout,
                    completed: 0,
                    total: 0,
                });
            }
            tokio::select! {
                () = self.cancel.cancelled() => return Err(SubmitError::Cancelled),
                () = tokio::time::sleep(self.opts.poll_interval) => {}
            }
        }
    }

    /// Adds one job. Like Batch Shipyard, adding to an existing active job adds its tasks,
    /// unless the job sets `onAllTasksComplete` (it may already have completed); a job that
    /// has finished is [`SubmitError::JobExists`] (rerun it with `recreate`).
    async fn add_job(
        &self,
        job: &JobSubmission,
        events: Option<&EventSender>,
        submitted: &mut Submitted,
    ) -> Result<()> {
        let id = job.id().to_string();
        let patch = job.patch();
        let created = match self.client.add_job(&job.job).await {
            Ok(_) => true,
            Err(e) if e.code() == Some("JobExists") && self.opts.recreate => {
                self.delete_finished_job(&id).await?;
                self.client
                    .add_job(&job.job)
                    .await
                    .map_err(|e| SubmitError::batch(format!("adding job `{id}` again"), e))?;
                true
            }
            Err(e) if e.code() == Some("JobExists") && patch.is_none() => {
                // A finished job takes no more tasks: say how to run it again.
                let job = self
                    .client
                    .get_job(&id)
                    .await
                    .map_err(|e| SubmitError::batch(format!("reading job `{id}`"), e))?;
                if !matches!(job.state, None | Some(JobState::Active)) {
                    return Err(SubmitError::JobExists { job: id });
                }
                tracing::info!(job = %id, "job exists; adding its tasks");
                false
            }
            Err(e) if e.code() == Some("JobExists") => {
                return Err(SubmitError::JobExists { job: id });
            }
            Err(e) => return Err(SubmitError::batch(format!("adding job `{id}`"), e)),
        };
        submitted.jobs.push(SubmittedJob {
            id: id.clone(),
            tasks: job.tasks.iter().map(|t| t.id.clone()).collect(),
            created,
            has_preparation_task: job.job.job_preparation_task.is_some(),
        });
        let report = self
            .client
            .add_task_collection(&id, job.tasks.clone())
            .await;
        if !report.all_succeeded() {
            let details: Vec<String> = report
                .failures()
                .take(5)
                .map(|(task, e)| format!("{task}: {e}"))
                .collect();
            return Err(SubmitError::TasksRejected {
                job: id,
                failed: job.tasks.len() - report.succeeded(),
                total: job.tasks.len(),
                details: details.join("; "),
            });
        }
        if let Some(patch) = patch {
            self.client.patch_job(&id, &patch).await.map_err(|e| {
                SubmitError::batch(format!("setting onAllTasksComplete of job `{id}`"), e)
            })?;
        }
        send(
            events,
            SubmitEvent::JobAdded {
                job: id,
                tasks: job.tasks.len(),
                existed: !created,
            },
        );
        Ok(())
    }

    /// Watches submitted jobs until every task completed. The stream ends with an error (after
    /// the event that explains it) when a prep or start task fails, a node turns unusable, the
    /// pool cannot allocate, every unfinished task of a job waits on a failed dependency that
    /// blocks it ([`SubmitError::DependencyBlocked`]), or the timeout passes.
    pub fn watch(&self, submitted: &Submitted) -> BoxStream<'static, Result<SubmitEvent>> {
        Watcher::new(self.client.clone(), self.opts.clone(), submitted.clone()).into_stream()
    }

    /// Terminates job `job_id` (its release task runs on every node that ran it).
    pub async fn terminate(&self, job_id: &str, reason: &str) -> Result<()> {
        self.client
            .terminate_job(job_id, Some(reason))
            .await
            .map_err(|e| SubmitError::batch(format!("terminating job `{job_id}`"), e))
    }

    /// Submits, watches until every task completed, and returns the tasks. On failure,
    /// timeout or cancellation the submitted jobs are terminated ([`SubmitEvent::JobTerminated`])
    /// and the error says which.
    pub async fn run(
        &self,
        submission: &Submission,
        events: Option<EventSender>,
    ) -> Result<RunOutcome> {
        let submitted = self.submit_reporting(submission, events.as_ref()).await?;
        let mut stream = self.watch(&submitted);
        let mut tasks = Vec::new();
        loop {
            let next = tokio::select! {
                biased;
                () = self.cancel.cancelled() => Some(Err(SubmitError::Cancelled)),
                n = stream.next() => n,
            };
            match next {
                None => break,
                Some(Ok(SubmitEvent::JobCompleted { job, tasks: t })) => {
                    tasks.extend(t.iter().cloned());
                    send(events.as_ref(), SubmitEvent::JobCompleted { job, tasks: t });
                }
                Some(Ok(ev)) => send(events.as_ref(), ev),
                Some(Err(e)) => return Err(self.abort(&submitted, e, events.as_ref()).await),
            }
        }
        Ok(RunOutcome { submitted, tasks })
    }

    /// Terminates the jobs of `submitted` this submission created; `error` with their ids.
    async fn abort(
        &self,
        submitted: &Submitted,
        error: SubmitError,
        events: Option<&EventSender>,
    ) -> SubmitError {
        if !self.opts.terminate_on_failure {
            return error;
        }
        let mut terminated = Vec::new();
        for job in submitted.jobs.iter().filter(|j| j.created) {
            match self.terminate(&job.id, TERMINATE_REASON).await {
                Ok(()) => {
                    send(
                        events,
                        SubmitEvent::JobTerminated {
                            job: job.id.clone(),
                            reason: error.to_string(),
                        },
                    );
                    terminated.push(job.id.clone());
                }
                // Ended already (its tasks failed on the pool, say): nothing to stop.
                Err(e) if matches!(e.code(), Some("JobCompleted" | "JobBeingTerminated")) => {
                    tracing::debug!(job = %job.id, "the job had ended already")
                }
                Err(e) => tracing::warn!(
                    job = %job.id,
                    error = %e,
                    cause = %std::error::Error::source(&e).map(|c| c.to_string()).unwrap_or_default(),
                    "could not terminate"
                ),
            }
        }
        if terminated.is_empty() {
            return error;
        }
        SubmitError::Aborted {
            terminated,
            source: Box::new(error),
        }
    }
}

fn send(events: Option<&EventSender>, event: SubmitEvent) {
    if let Some(tx) = events {
        let _ = tx.send(event);
    }
}
