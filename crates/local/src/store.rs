//! The embedded store (redb): every job's and task's state, times and exit code, so a fresh
//! process can list them after the run.
//!
//! The database file is opened for each operation and closed again, so several processes (a
//! running job and a `jobs list`) can share it; a busy file is retried for a few seconds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{LocalError, Result};
use crate::owner::RunOwner;

const JOBS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("jobs");
const TASKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tasks");

/// A job's state (Batch's `JobState` subset that a local run reaches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Running, or finished with `onAllTasksComplete: noaction`.
    Active,
    /// Tasks are being stopped.
    Terminating,
    /// Terminated (all tasks complete with `terminatejob`, a task failure, or cancellation).
    Completed,
}

/// A task's state (Batch's `TaskState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for a slot or for its dependencies.
    Active,
    /// Nodes are being started and coordinated.
    Preparing,
    /// The application command runs.
    Running,
    /// Finished (see [`TaskResult`]).
    Completed,
}

/// How a completed task ended (Batch's `TaskExecutionResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskResult {
    /// Exit code 0.
    Success,
    /// Non-zero exit, a lost node, a coordination failure, or cancellation.
    Failure,
}

/// One job as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    /// Job id.
    pub id: String,
    /// State.
    pub state: JobState,
    /// The run (process invocation) that executed it.
    pub run_id: String,
    /// When the run started.
    #[serde(with = "time::serde::rfc3339")]
    pub creation_time: OffsetDateTime,
    /// When the run ended.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub end_time: Option<OffsetDateTime>,
    /// Why the job was terminated (`AllTasksComplete`, `TaskFailed`, `Cancelled`), if it was.
    #[serde(default)]
    pub terminate_reason: Option<String>,
    /// Number of tasks.
    pub task_count: usize,
    /// The process and host running the job (absent in records of older versions).
    #[serde(default)]
    pub owner: Option<RunOwner>,
}

impl JobState {
    /// Active or terminating: a run may still be writing it.
    pub fn is_running(self) -> bool {
        matches!(self, JobState::Active | JobState::Terminating)
    }
}

/// `terminate_reason` of a job whose run died without recording its end.
pub const OWNER_DIED: &str = "RunProcessDied";

/// One task as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    /// Job id.
    pub job_id: String,
    /// Task id.
    pub id: String,
    /// State.
    pub state: TaskState,
    /// How it ended, once completed.
    #[serde(default)]
    pub result: Option<TaskResult>,
    /// The application's exit code (the master's for multi-instance tasks).
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Why it failed, when it did not simply exit non-zero.
    #[serde(default)]
    pub failure: Option<String>,
    /// Start of the last attempt.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub start_time: Option<OffsetDateTime>,
    /// End of the last attempt.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub end_time: Option<OffsetDateTime>,
    /// How many times it was retried.
    pub retry_count: u32,
    /// Nodes of the last attempt.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Host directory holding `stdout.txt` / `stderr.txt`.
    pub task_dir: PathBuf,
}

/// Handle on the store file.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    busy_timeout: Duration,
}

/// How long a reader defers to a writer that announced itself (a marker older than this is
/// a crashed writer's and is ignored).
const WRITER_PRIORITY: Duration = Duration::from_secs(2);

static PROCESS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn task_key(job: &str, task: &str) -> String {
    format!("{job}\u{0}{task}")
}

impl Store {
    /// The store at `path` (created on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Store {
            path: path.into(),
            busy_timeout: Duration::from_secs(10),
        }
    }

    /// How long one operation waits for a database another process holds (default 10 s).
    /// Writers that still fail are retried by the run's recorder, never dropped.
    pub fn busy_timeout(mut self, d: Duration) -> Self {
        self.busy_timeout = d;
        self
    }

    /// The marker a waiting writer leaves so that readers stand back.
    fn writer_marker(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".writer-waiting");
        PathBuf::from(p)
    }

    /// Whether a writer is waiting for the database (a fresh marker exists).
    pub(crate) fn writer_waiting(&self) -> bool {
        std::fs::metadata(self.writer_marker())
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < WRITER_PRIORITY))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, reason: impl std::fmt::Display) -> LocalError {
        LocalError::Store {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// Opens the database for `f`. Readers copy what they need and close at once, and they
    /// stand back while a writer waits, so a stream of readers never starves a writer.
    fn with_db<T>(&self, write: bool, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        let _guard = PROCESS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(parent) = self.path.parent() {
            crate::private::create_dir_all(parent)?;
        }
        let started = std::time::Instant::now();
        let deadline = started + self.busy_timeout;
        let marker = write.then(|| self.writer_marker());
        if !write {
            while self.writer_waiting() && started.elapsed() < WRITER_PRIORITY {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let result = loop {
            match Database::create(&self.path) {
                Ok(db) => break f(&db),
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if std::time::Instant::now() < deadline =>
                {
                    if let Some(m) = &marker {
                        // (Re)announce: the marker's age tells readers the writer is live.
                        let _ = std::fs::write(m, b"");
                    }
                    std::thread::sleep(Duration::from_millis(if write { 2 } else { 20 }));
                }
                Err(e) => break Err(self.err(e)),
            }
        };
        if let Some(m) = &marker {
            let _ = std::fs::remove_file(m);
        }
        crate::private::restrict_file(&self.path);
        result
    }

    fn put(&self, table: TableDefinition<'_, &str, &[u8]>, key: &str, value: &[u8]) -> Result<()> {
        self.with_db(true, |db| {
            let w = db.begin_write().map_err(|e| self.err(e))?;
            {
                let mut t = w.open_table(table).map_err(|e| self.err(e))?;
                t.insert(key, value).map_err(|e| self.err(e))?;
            }
            w.commit().map_err(|e| self.err(e))
        })
    }

    fn scan(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        prefix: Option<&str>,
    ) -> Result<Vec<Vec<u8>>> {
        if !self.path.exists() {
            return Ok(Vec::new());
        }
        self.with_db(false, |db| {
            let r = db.begin_read().map_err(|e| self.err(e))?;
            let t = match r.open_table(table) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(self.err(e)),
            };
            let mut out = Vec::new();
            for item in t.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                if prefix.is_none_or(|p| k.value().starts_with(p)) {
                    out.push(v.value().to_vec());
                }
            }
            Ok(out)
        })
    }

    /// Records jobs and tasks in one transaction.
    pub fn put_batch(&self, jobs: &[JobRecord], tasks: &[TaskRecord]) -> Result<()> {
        if jobs.is_empty() && tasks.is_empty() {
            return Ok(());
        }
        let jobs: Vec<(String, Vec<u8>)> = jobs
            .iter()
            .map(|j| {
                Ok((
                    j.id.clone(),
                    serde_json::to_vec(j).map_err(|e| self.err(e))?,
                ))
            })
            .collect::<Result<_>>()?;
        let tasks = self.task_rows(tasks)?;
        self.with_db(true, |db| {
            let w = db.begin_write().map_err(|e| self.err(e))?;
            for (table, rows) in [(JOBS, &jobs), (TASKS, &tasks)] {
                if rows.is_empty() {
                    continue;
                }
                let mut t = w.open_table(table).map_err(|e| self.err(e))?;
                for (k, v) in rows.iter() {
                    t.insert(k.as_str(), v.as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
            w.commit().map_err(|e| self.err(e))
        })
    }

    /// Tasks as (key, JSON) rows.
    fn task_rows(&self, tasks: &[TaskRecord]) -> Result<Vec<(String, Vec<u8>)>> {
        tasks
            .iter()
            .map(|t| {
                Ok((
                    task_key(&t.job_id, &t.id),
                    serde_json::to_vec(t).map_err(|e| self.err(e))?,
                ))
            })
            .collect()
    }

    /// Records (inserts or replaces) a job.
    pub fn put_job(&self, job: &JobRecord) -> Result<()> {
        let v = serde_json::to_vec(job).map_err(|e| self.err(e))?;
        self.put(JOBS, &job.id, &v)
    }

    /// Records (inserts or replaces) a task.
    pub fn put_task(&self, task: &TaskRecord) -> Result<()> {
        let v = serde_json::to_vec(task).map_err(|e| self.err(e))?;
        self.put(TASKS, &task_key(&task.job_id, &task.id), &v)
    }

    /// Records a new run of `job` and its tasks, atomically with the check that it may run:
    /// an id whose run is still active is refused ([`LocalError::JobExists`], like Batch's
    /// `JobExists`), and so is a finished one unless `recreate` (then its old tasks go).
    pub fn claim_job(&self, job: &JobRecord, tasks: &[TaskRecord], recreate: bool) -> Result<()> {
        self.reconcile_quietly();
        let value = serde_json::to_vec(job).map_err(|e| self.err(e))?;
        let rows = self.task_rows(tasks)?;
        self.with_db(true, |db| {
            let w = db.begin_write().map_err(|e| self.err(e))?;
            {
                let mut jt = w.open_table(JOBS).map_err(|e| self.err(e))?;
                let existing: Option<JobRecord> = jt
                    .get(job.id.as_str())
                    .map_err(|e| self.err(e))?
                    .and_then(|v| serde_json::from_slice(v.value()).ok());
                if let Some(old) = existing {
                    let active = old.state.is_running();
                    if active || !recreate {
                        return Err(LocalError::JobExists {
                            job: job.id.clone(),
                            active,
                            run_id: old.run_id,
                        });
                    }
                }
                jt.insert(job.id.as_str(), value.as_slice())
                    .map_err(|e| self.err(e))?;
                let mut tt = w.open_table(TASKS).map_err(|e| self.err(e))?;
                let prefix = format!("{}\u{0}", job.id);
                let stale: Vec<String> = tt
                    .iter()
                    .map_err(|e| self.err(e))?
                    .filter_map(|i| i.ok())
                    .map(|(k, _)| k.value().to_owned())
                    .filter(|k| k.starts_with(&prefix))
                    .collect();
                for k in stale {
                    tt.remove(k.as_str()).map_err(|e| self.err(e))?;
                }
                for (k, v) in &rows {
                    tt.insert(k.as_str(), v.as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
            w.commit().map_err(|e| self.err(e))
        })
    }

    /// Ends the records of runs whose process died (`kill -9`, a crash, a reboot) without
    /// recording their end: the job becomes completed with [`OWNER_DIED`] and each unfinished
    /// task a failure saying so. Runs of live owners, of other hosts and of other pid
    /// namespaces are left alone. Returns the ids of the jobs it ended.
    pub fn reconcile(&self) -> Result<Vec<String>> {
        let dead: Vec<JobRecord> = self
            .scan(JOBS, None)?
            .iter()
            .filter_map(|v| serde_json::from_slice::<JobRecord>(v).ok())
            .filter(|j| j.state.is_running() && j.owner.as_ref().is_some_and(|o| !o.alive()))
            .collect();
        let mut ended = Vec::new();
        for mut job in dead {
            let pid = job.owner.as_ref().map_or(0, |o| o.pid);
            let now = OffsetDateTime::now_utc();
            let why = format!(
                "the run's process (pid {pid}) died before the task ended; its containers are \
                 removed by the next sweep"
            );
            let mut tasks = self.list_tasks_raw(&job.id)?;
            tasks.retain(|t| t.state != TaskState::Completed);
            for t in &mut tasks {
                t.state = TaskState::Completed;
                t.result = Some(TaskResult::Failure);
                t.failure = Some(why.clone());
                t.end_time = Some(now);
            }
            job.state = JobState::Completed;
            job.terminate_reason = Some(OWNER_DIED.into());
            job.end_time = Some(now);
            tracing::info!(job = %job.id, pid, "the run of this job died; its records now say so");
            self.put_batch(std::slice::from_ref(&job), &tasks)?;
            ended.push(job.id);
        }
        Ok(ended)
    }

    fn reconcile_quietly(&self) {
        if let Err(e) = self.reconcile() {
            tracing::warn!(error = %e, "could not reconcile the records of dead runs");
        }
    }

    fn list_tasks_raw(&self, job: &str) -> Result<Vec<TaskRecord>> {
        let prefix = format!("{job}\u{0}");
        self.scan(TASKS, Some(&prefix))?
            .iter()
            .map(|v| serde_json::from_slice(v).map_err(|e| self.err(e)))
            .collect()
    }

    /// Every recorded job, ordered by id (after [`Store::reconcile`]).
    pub fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        self.reconcile_quietly();
        self.scan(JOBS, None)?
            .iter()
            .map(|v| serde_json::from_slice(v).map_err(|e| self.err(e)))
            .collect()
    }

    /// One job, if recorded.
    pub fn get_job(&self, job: &str) -> Result<Option<JobRecord>> {
        Ok(self.list_jobs()?.into_iter().find(|j| j.id == job))
    }

    /// The tasks of `job`, ordered by id (after [`Store::reconcile`]).
    pub fn list_tasks(&self, job: &str) -> Result<Vec<TaskRecord>> {
        self.reconcile_quietly();
        self.list_tasks_raw(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(job: &str, id: &str) -> TaskRecord {
        TaskRecord {
            job_id: job.into(),
            id: id.into(),
            state: TaskState::Completed,
            result: Some(TaskResult::Success),
            exit_code: Some(0),
            failure: None,
            start_time: Some(OffsetDateTime::now_utc()),
            end_time: Some(OffsetDateTime::now_utc()),
            retry_count: 0,
            nodes: vec!["node-0".into()],
            task_dir: "/x".into(),
        }
    }

    #[test]
    fn round_trips_across_handles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let s = Store::new(&path);
        assert!(s.list_jobs().unwrap().is_empty());
        s.put_job(&JobRecord {
            id: "j".into(),
            state: JobState::Completed,
            run_id: "r".into(),
            creation_time: OffsetDateTime::now_utc(),
            end_time: None,
            terminate_reason: Some("AllTasksComplete".into()),
            task_count: 2,
            owner: None,
        })
        .unwrap();
        s.put_task(&task("j", "a")).unwrap();
        s.put_task(&task("j", "b")).unwrap();
        s.put_task(&task("jj", "a")).unwrap();
        let mut b = task("j", "b");
        b.exit_code = Some(3);
        s.put_task(&b).unwrap();
        let fresh = Store::new(&path);
        assert_eq!(fresh.list_jobs().unwrap().len(), 1);
        let tasks = fresh.list_tasks("j").unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[1].exit_code, Some(3));
        assert_eq!(fresh.list_tasks("jj").unwrap().len(), 1);
    }
}
