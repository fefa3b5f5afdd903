//! One run of a job: its records, the scheduling of tasks into slots by their dependencies,
//! the job actions (`onTaskFailure`, `onAllTasksComplete`) and the final states.

use std::sync::Arc;

use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backend::JobOutcome;
use crate::error::Result;
use crate::events::Event;
use crate::recorder::Recorder;
use crate::spec::{LocalJob, LocalTask, OnAllTasksComplete, OnTaskFailure};
use crate::store::{JobRecord, JobState, Store, TaskRecord, TaskResult, TaskState};
use crate::task::{run_attempt, RunCtx};

/// Where a task of the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Pending,
    Running,
    Succeeded,
    Failed,
    /// Never runs: a task it depends on failed or is blocked.
    Blocked,
}

/// Which tasks may start: each task's dependencies (indexes) and the run's task slots.
#[derive(Debug)]
pub(crate) struct Schedule {
    deps: Vec<Vec<usize>>,
    progress: Vec<Progress>,
    slots: usize,
}

impl Schedule {
    /// All tasks pending; `deps[i]` are the indexes task `i` depends on.
    pub(crate) fn new(deps: Vec<Vec<usize>>, slots: usize) -> Self {
        Schedule {
            progress: vec![Progress::Pending; deps.len()],
            deps,
            slots,
        }
    }

    /// Blocks the pending tasks whose dependencies can never succeed.
    fn block_unsatisfiable(&mut self) {
        let mut changed = true;
        while changed {
            changed = false;
            for i in 0..self.progress.len() {
                if self.progress[i] == Progress::Pending
                    && self.deps[i]
                        .iter()
                        .any(|&d| matches!(self.progress[d], Progress::Failed | Progress::Blocked))
                {
                    self.progress[i] = Progress::Blocked;
                    changed = true;
                }
            }
        }
    }

    /// Marks as running, and returns in job order, the pending tasks whose dependencies have all
    /// succeeded, as many as the free slots allow.
    fn start_ready(&mut self) -> Vec<usize> {
        let mut running = self
            .progress
            .iter()
            .filter(|p| **p == Progress::Running)
            .count();
        let mut started = Vec::new();
        for i in 0..self.progress.len() {
            if running >= self.slots {
                break;
            }
            if self.progress[i] == Progress::Pending
                && self.deps[i]
                    .iter()
                    .all(|&d| self.progress[d] == Progress::Succeeded)
            {
                self.progress[i] = Progress::Running;
                running += 1;
                started.push(i);
            }
        }
        started
    }

    /// Records that task `i` ended.
    fn finished(&mut self, i: usize, succeeded: bool) {
        self.progress[i] = if succeeded {
            Progress::Succeeded
        } else {
            Progress::Failed
        };
    }

    /// Why task `i` never ran, if it did not.
    fn not_run_reason(&self, i: usize, cancelled: bool) -> Option<&'static str> {
        match self.progress[i] {
            Progress::Blocked => Some("not run: a task it depends on failed"),
            Progress::Pending if cancelled => Some("not run: the run was cancelled"),
            Progress::Pending => Some("not run: the job was terminated"),
            _ => None,
        }
    }
}

/// A job being run: the shared context, the records (kept in the store as they change) and
/// the schedule.
pub(crate) struct JobRun {
    ctx: Arc<RunCtx>,
    recorder: Recorder,
    job_rec: JobRecord,
    records: Vec<TaskRecord>,
    schedule: Schedule,
    /// The job was terminated by `onTaskFailure`.
    terminated: bool,
}

impl JobRun {
    /// Records the job and its tasks as active and emits [`Event::JobStarted`].
    /// Fails when the job id is taken ([`crate::LocalError::JobExists`]).
    pub(crate) fn start(
        job: &LocalJob,
        ctx: Arc<RunCtx>,
        store: Store,
        schedule: Schedule,
        recreate: bool,
    ) -> Result<Self> {
        let job_rec = JobRecord {
            id: job.id.clone(),
            state: JobState::Active,
            run_id: ctx.run_id.clone(),
            creation_time: OffsetDateTime::now_utc(),
            end_time: None,
            terminate_reason: None,
            task_count: job.tasks.len(),
            owner: Some(crate::owner::RunOwner::current()),
        };
        let records: Vec<TaskRecord> = job
            .tasks
            .iter()
            .map(|t| TaskRecord {
                job_id: job.id.clone(),
                id: t.id.clone(),
                state: TaskState::Active,
                result: None,
                exit_code: None,
                failure: None,
                start_time: None,
                end_time: None,
                retry_count: 0,
                nodes: Vec::new(),
                task_dir: ctx.task_dir(&t.id),
            })
            .collect();
        // Written before anything runs, in one transaction with the check that the id is
        // free: two runs of one id never both proceed.
        store.claim_job(&job_rec, &records, recreate)?;
        let recorder = Recorder::start(store);
        ctx.events.emit(Event::JobStarted {
            job: job.id.clone(),
            run_id: ctx.run_id.clone(),
            tasks: job.tasks.len(),
        });
        Ok(JobRun {
            ctx,
            recorder,
            job_rec,
            records,
            schedule,
            terminated: false,
        })
    }

    /// Runs the tasks as their dependencies and the slots allow, until none is left to start
    /// and none is running. Once `cancel` fires (or the job is terminated) no task starts.
    pub(crate) async fn drive(&mut self, job: &LocalJob, cancel: &CancellationToken) {
        let mut set: JoinSet<(usize, TaskRecord)> = JoinSet::new();
        loop {
            self.schedule.block_unsatisfiable();
            if !self.terminated && !cancel.is_cancelled() {
                for i in self.schedule.start_ready() {
                    let ctx = self.ctx.clone();
                    let recorder = self.recorder.clone();
                    let task = job.tasks[i].clone();
                    let rec = self.records[i].clone();
                    let cancel = cancel.clone();
                    set.spawn(async move {
                        let rec = run_task(&ctx, &recorder, &task, rec, &cancel).await;
                        (i, rec)
                    });
                }
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            match joined {
                Ok((i, rec)) => self.task_ended(job, i, rec, cancel),
                Err(e) => tracing::error!(error = %e, "a task runner panicked"),
            }
        }
    }

    /// Takes task `i`'s final record; a failure terminates the job when `onTaskFailure` says so.
    fn task_ended(
        &mut self,
        job: &LocalJob,
        i: usize,
        rec: TaskRecord,
        cancel: &CancellationToken,
    ) {
        let ok = rec.result == Some(TaskResult::Success);
        self.schedule.finished(i, ok);
        self.records[i] = rec;
        if !ok
            && !cancel.is_cancelled()
            && job.on_task_failure == OnTaskFailure::PerformExitOptionsJobAction
            && !self.terminated
        {
            tracing::info!(task = %self.records[i].id, "task failed; terminating the job (onTaskFailure)");
            self.terminated = true;
            self.job_rec.terminate_reason = Some("TaskFailed".into());
            cancel.cancel();
        }
    }

    /// Records why unrun tasks did not run and the job's final state, deletes the key
    /// directory, emits [`Event::JobFinished`] and returns the outcome; fails when some state
    /// change could not be recorded.
    pub(crate) async fn finish(self, job: LocalJob, cancelled: bool) -> Result<JobOutcome> {
        let JobRun {
            ctx,
            recorder,
            mut job_rec,
            mut records,
            schedule,
            terminated,
        } = self;
        // Tasks that never ran keep state `active`; say why.
        for (i, rec) in records.iter_mut().enumerate() {
            if let Some(why) = schedule.not_run_reason(i, cancelled) {
                rec.failure = Some(why.to_string());
                recorder.task(rec);
            }
        }
        let all_complete = records.iter().all(|r| r.state == TaskState::Completed);
        if cancelled {
            job_rec.state = JobState::Completed;
            job_rec.terminate_reason = Some("Cancelled".into());
        } else if terminated {
            job_rec.state = JobState::Completed;
        } else if all_complete && job.on_all_tasks_complete == OnAllTasksComplete::TerminateJob {
            job_rec.state = JobState::Completed;
            job_rec.terminate_reason = Some("AllTasksComplete".into());
        }
        job_rec.end_time = Some(OffsetDateTime::now_utc());
        recorder.job(&job_rec);
        let recorded = recorder.flush().await;
        let events = ctx.events.clone();
        let run_id = ctx.run_id.clone();
        drop(ctx); // deletes the key directory
        events.emit(Event::JobFinished {
            job: job.id.clone(),
            state: job_rec.state,
        });
        // A state change that could not be recorded fails the run: the records would lie.
        recorded?;
        Ok(JobOutcome {
            job_id: job.id,
            run_id,
            state: job_rec.state,
            terminate_reason: job_rec.terminate_reason,
            cancelled,
            tasks: records,
        })
    }
}

/// Removes a run's Docker objects if its `run` future is dropped before the end.
pub(crate) struct RunGuard {
    filter: Vec<String>,
    armed: bool,
}

impl RunGuard {
    /// Armed for everything labelled with run `run_id`.
    pub(crate) fn new(run_id: &str) -> Self {
        RunGuard {
            filter: vec![format!("{}={run_id}", crate::docker::labels::RUN)],
            armed: true,
        }
    }

    /// The run ended normally: its tasks have removed what they created.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if self.armed {
            crate::task::blocking_remove_labelled(self.filter.clone());
        }
    }
}

/// Runs a task with its retries, recording each state change.
async fn run_task(
    ctx: &RunCtx,
    store: &Recorder,
    task: &LocalTask,
    mut rec: TaskRecord,
    cancel: &CancellationToken,
) -> TaskRecord {
    let mut attempt: u32 = 0;
    loop {
        rec.state = TaskState::Preparing;
        rec.start_time = Some(OffsetDateTime::now_utc());
        rec.end_time = None;
        rec.result = None;
        rec.exit_code = None;
        rec.failure = None;
        rec.retry_count = attempt;
        store.task(&rec);
        ctx.events.emit(Event::TaskState {
            task: task.id.clone(),
            state: TaskState::Preparing,
            attempt,
            exit_code: None,
            failure: None,
        });
        // The application starts: record it then, not at the end.
        let running = TaskRecord {
            state: TaskState::Running,
            ..rec.clone()
        };
        let on_running = || store.task(&running);
        let a = run_attempt(ctx, task, attempt, cancel, &on_running).await;
        rec.end_time = Some(OffsetDateTime::now_utc());
        rec.state = TaskState::Completed;
        rec.exit_code = a.exit_code;
        rec.nodes = a.nodes.clone();
        rec.failure = a.failure.clone();
        if a.succeeded() {
            rec.result = Some(TaskResult::Success);
        } else {
            rec.result = Some(TaskResult::Failure);
            if rec.failure.is_none() {
                rec.failure = Some(format!(
                    "the application exited with code {}",
                    a.exit_code.unwrap_or(-1)
                ));
            }
        }
        let retry = !a.succeeded()
            && !a.cancelled
            && !cancel.is_cancelled()
            && (task.max_task_retry_count < 0 || attempt < task.max_task_retry_count as u32);
        if retry {
            attempt += 1;
            store.task(&rec);
            ctx.events.emit(Event::TaskRetry {
                task: task.id.clone(),
                attempt,
                reason: rec.failure.clone().unwrap_or_default(),
            });
            continue;
        }
        store.task(&rec);
        ctx.events.emit(Event::TaskState {
            task: task.id.clone(),
            state: TaskState::Completed,
            attempt,
            exit_code: rec.exit_code,
            failure: rec.failure.clone(),
        });
        return rec;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_fills_slots_in_order_and_blocks_behind_failures() {
        // 0 and 1 free; 2 needs 0; 3 needs 2; 4 needs 1.
        let mut s = Schedule::new(vec![vec![], vec![], vec![0], vec![2], vec![1]], 1);
        assert_eq!(s.start_ready(), vec![0]);
        assert_eq!(s.start_ready(), Vec::<usize>::new(), "one slot only");
        s.finished(0, false);
        s.block_unsatisfiable();
        assert_eq!(s.progress[2], Progress::Blocked);
        assert_eq!(s.progress[3], Progress::Blocked, "blocked transitively");
        assert_eq!(s.start_ready(), vec![1]);
        s.finished(1, true);
        s.block_unsatisfiable();
        assert_eq!(s.start_ready(), vec![4]);
        assert_eq!(
            s.not_run_reason(3, false),
            Some("not run: a task it depends on failed")
        );
        assert_eq!(s.not_run_reason(1, true), None);
        let pending = Schedule::new(vec![vec![]], 2);
        assert_eq!(
            pending.not_run_reason(0, true),
            Some("not run: the run was cancelled")
        );
        assert_eq!(
            pending.not_run_reason(0, false),
            Some("not run: the job was terminated")
        );
    }
}
