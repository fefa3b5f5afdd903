//! Watching submitted jobs: one poll per interval over the pool, its nodes, each job's
//! preparation task status and its tasks, turned into [`SubmitEvent`]s. Any condition under
//! which the tasks can never finish (a failed prep or start task, an unusable node, a pool that
//! cannot allocate, tasks blocked forever by a failed dependency, the overall timeout) ends the
//! stream with an error within one poll.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use shipyard_batch_api::models::{
    CloudTask, ComputeNodeState, JobPreparationTaskState, TaskExecutionResult, TaskState,
};
use shipyard_batch_api::{BatchClient, ByteRange, ListOptions};

use crate::error::{Result, SubmitError};
use crate::events::{OutputStream, SubmitEvent};
use crate::submitter::{SubmitOptions, Submitted};

type Item = Result<SubmitEvent>;

pub(crate) struct Watcher {
    client: BatchClient,
    opts: SubmitOptions,
    submitted: Submitted,
    started: Instant,
    polls: u64,
    states: HashMap<(String, String), TaskState>,
    offsets: HashMap<(String, String, &'static str), (u64, String)>,
    reported: HashSet<String>,
    done: HashSet<String>,
    pending: VecDeque<Item>,
    finished: bool,
    scratch: Option<tempfile::TempDir>,
}

impl Watcher {
    pub(crate) fn new(client: BatchClient, opts: SubmitOptions, submitted: Submitted) -> Self {
        Watcher {
            client,
            opts,
            submitted,
            started: Instant::now(),
            polls: 0,
            states: HashMap::new(),
            offsets: HashMap::new(),
            reported: HashSet::new(),
            done: HashSet::new(),
            pending: VecDeque::new(),
            finished: false,
            scratch: None,
        }
    }

    pub(crate) fn into_stream(self) -> BoxStream<'static, Item> {
        futures::stream::unfold(self, |mut w| async move {
            let item = w.next().await?;
            Some((item, w))
        })
        .boxed()
    }

    async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if item.is_err() {
                    self.finished = true;
                    self.pending.clear();
                }
                return Some(item);
            }
            if self.finished {
                return None;
            }
            if self.polls > 0 {
                tokio::time::sleep(self.opts.poll_interval).await;
            }
            self.polls += 1;
            if let Err(e) = self.poll().await {
                self.pending.push_back(Err(e));
            }
        }
    }

    fn fail(&mut self, event: SubmitEvent, error: SubmitError) {
        self.pending.push_back(Ok(event));
        self.pending.push_back(Err(error));
    }

    async fn poll(&mut self) -> Result<()> {
        self.check_pool().await?;
        self.check_nodes().await?;
        let jobs = self.submitted.jobs.clone();
        let mut completed = 0;
        for job in &jobs {
            if self.done.contains(&job.id) {
                completed += job.tasks.len();
                continue;
            }
            if job.has_preparation_task {
                self.check_preparation(&job.id).await?;
            }
            completed += self.check_tasks(&job.id).await?;
        }
        let total = self.submitted.task_count();
        self.pending
            .push_back(Ok(SubmitEvent::Progress { completed, total }));
        if self.done.len() == jobs.len() {
            self.finished = true;
        } else if self.started.elapsed() > self.opts.timeout {
            self.pending.push_back(Err(SubmitError::TimedOut {
                timeout: self.opts.timeout,
                completed,
                total,
            }));
        }
        Ok(())
    }

    async fn check_pool(&mut self) -> Result<()> {
        let pool_id = self.submitted.pool_id.clone();
        let pool = match self.client.get_pool(&pool_id).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(SubmitError::batch(format!("getting pool `{pool_id}`"), e)),
        };
        let nodes = pool.current_dedicated_nodes.unwrap_or(0)
            + pool.current_low_priority_nodes.unwrap_or(0);
        for err in pool.resize_errors.unwrap_or_default() {
            let code = err.code.unwrap_or_else(|| "ResizeError".into());
            let message = err.message.unwrap_or_default();
            if !self.reported.insert(format!("resize:{code}:{message}")) {
                continue;
            }
            let event = SubmitEvent::PoolResizeError {
                pool: pool_id.clone(),
                code: code.clone(),
                message: message.clone(),
            };
            if nodes == 0 {
                let error = SubmitError::PoolResizeFailed {
                    pool: pool_id.clone(),
                    code,
                    message,
                };
                self.fail(event, error);
                return Ok(());
            }
            self.pending.push_back(Ok(event));
        }
        Ok(())
    }

    async fn check_nodes(&mut self) -> Result<()> {
        let pool = self.submitted.pool_id.clone();
        let nodes: Vec<_> = match self
            .client
            .list_nodes(&pool, &ListOptions::default())
            .try_collect()
            .await
        {
            Ok(n) => n,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(SubmitError::batch(format!("listing nodes of `{pool}`"), e)),
        };
        for node in nodes {
            let id = node.id.clone().unwrap_or_default();
            match node.state {
                Some(ComputeNodeState::StartTaskFailed) => {
                    let info = node.start_task_info.as_ref();
                    let exit_code = info.and_then(|i| i.exit_code);
                    let failure = info
                        .and_then(|i| i.failure_info.as_ref())
                        .and_then(|f| f.message.clone());
                    let event = SubmitEvent::StartTaskFailed {
                        pool: pool.clone(),
                        node: id.clone(),
                        exit_code,
                        failure: failure.clone(),
                    };
                    let error = SubmitError::StartTaskFailed {
                        pool: pool.clone(),
                        node: id,
                        exit_code,
                        failure,
                    };
                    self.fail(event, error);
                    return Ok(());
                }
                Some(ref s @ (ComputeNodeState::Unusable | ComputeNodeState::StateUnknown)) => {
                    let state = s.as_str().to_string();
                    let reason = node_errors(&node);
                    let event = SubmitEvent::NodeUnusable {
                        pool: pool.clone(),
                        node: id.clone(),
                        state: state.clone(),
                        reason: reason.clone(),
                    };
                    let error = SubmitError::NodeUnusable {
                        pool: pool.clone(),
                        node: id,
                        state,
                        reason,
                    };
                    self.fail(event, error);
                    return Ok(());
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn check_preparation(&mut self, job: &str) -> Result<()> {
        let status: Vec<_> = self
            .client
            .list_preparation_and_release_status(job, &ListOptions::default())
            .try_collect()
            .await
            .map_err(|e| {
                SubmitError::batch(format!("listing job preparation status of `{job}`"), e)
            })?;
        for entry in status {
            let Some(prep) = entry.job_preparation_task_execution_info else {
                continue;
            };
            let failed = prep.state == JobPreparationTaskState::Completed
                && (prep.result == Some(TaskExecutionResult::Failure)
                    || prep.exit_code.is_some_and(|c| c != 0));
            if !failed {
                continue;
            }
            let node = entry.node_id.unwrap_or_default();
            let pool = entry
                .pool_id
                .unwrap_or_else(|| self.submitted.pool_id.clone());
            let stderr_tail = match prep.task_root_directory.as_deref() {
                Some(dir) => self.node_file_tail(&pool, &node, dir, "stderr.txt").await,
                None => None,
            };
            let failure = prep.failure_info.and_then(|f| f.message);
            let event = SubmitEvent::JobPreparationFailed {
                job: job.to_string(),
                node: node.clone(),
                exit_code: prep.exit_code,
                failure: failure.clone(),
            };
            let error = SubmitError::JobPreparationFailed {
                job: job.to_string(),
                pool,
                node,
                exit_code: prep.exit_code,
                failure,
                stderr_tail,
            };
            self.fail(event, error);
            return Ok(());
        }
        Ok(())
    }

    /// The last lines (at most 20, 2,000 bytes) of file `name` in directory `dir` of a node,
    /// for an error message; `None` when it cannot be read (best effort, logged).
    async fn node_file_tail(
        &self,
        pool: &str,
        node: &str,
        dir: &str,
        name: &str,
    ) -> Option<Box<str>> {
        let tmp = tempfile::tempdir().ok()?;
        let dest = tmp.path().join(name);
        let path = format!("{}/{name}", dir.trim_end_matches('/'));
        if let Err(e) = self
            .client
            .download_node_file(pool, node, &path, &dest, None)
            .await
        {
            tracing::debug!(pool, node, path, error = %e, "cannot read the node file");
            return None;
        }
        let text = std::fs::read(&dest).ok()?;
        let text = String::from_utf8_lossy(&text[text.len().saturating_sub(2000)..]).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        (!tail.trim().is_empty()).then(|| tail.into_boxed_str())
    }

    /// Reports the job's task changes (and output); the number of completed tasks.
    async fn check_tasks(&mut self, job: &str) -> Result<usize> {
        let tasks: Vec<CloudTask> = self
            .client
            .list_tasks(job, &ListOptions::default())
            .try_collect()
            .await
            .map_err(|e| SubmitError::batch(format!("listing tasks of job `{job}`"), e))?;
        let mut completed = 0;
        for t in &tasks {
            let (Some(id), Some(state)) = (t.id.clone(), t.state.clone()) else {
                continue;
            };
            let key = (job.to_string(), id.clone());
            if self.states.get(&key) != Some(&state) {
                self.states.insert(key, state.clone());
                self.pending.push_back(Ok(task_event(job, &id, t)));
            }
            let is_completed = state == TaskState::Completed;
            if self.opts.stream_output && (is_completed || state == TaskState::Running) {
                self.tail(job, &id, is_completed).await;
            }
            completed += usize::from(is_completed);
        }
        let expected = self
            .submitted
            .jobs
            .iter()
            .find(|j| j.id == job)
            .map_or(0, |j| j.tasks.len());
        if completed < expected {
            if let Some(b) = crate::blocked::blocked_tasks(&tasks) {
                let event = SubmitEvent::TasksBlocked {
                    job: job.to_string(),
                    blocked: b.blocked.clone(),
                    failed: b.failed.clone(),
                };
                let error = SubmitError::DependencyBlocked {
                    job: job.to_string(),
                    blocked: b.blocked,
                    failed: b.failed,
                };
                self.fail(event, error);
            }
        } else {
            self.done.insert(job.to_string());
            self.pending.push_back(Ok(SubmitEvent::JobCompleted {
                job: job.to_string(),
                tasks,
            }));
        }
        Ok(completed)
    }

    /// Queues the new complete lines of a task's stdout/stderr (all of it once `last`). The
    /// file sizes come from one `File_ListFromTask`; only grown files are fetched (ranged).
    async fn tail(&mut self, job: &str, task: &str, last: bool) {
        let sizes = self.file_sizes(job, task).await;
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let name = stream.file_name();
            let key = (job.to_string(), task.to_string(), name);
            let (from, mut partial) = self.offsets.remove(&key).unwrap_or_default();
            let size = sizes.get(name).copied().unwrap_or(0);
            let data = if size > from {
                self.fetch(job, task, name, from).await.unwrap_or_default()
            } else {
                Vec::new()
            };
            partial.push_str(&String::from_utf8_lossy(&data));
            let mut lines: Vec<String> = partial.split('\n').map(str::to_string).collect();
            let rest = lines.pop().unwrap_or_default();
            if last && !rest.is_empty() {
                lines.push(rest.clone());
            }
            for line in lines {
                self.pending.push_back(Ok(SubmitEvent::Output {
                    job: job.to_string(),
                    task: task.to_string(),
                    stream,
                    line,
                }));
            }
            let keep = if last { String::new() } else { rest };
            self.offsets.insert(key, (from + data.len() as u64, keep));
        }
    }

    /// Sizes of the files at the top of a task's directory (empty when it cannot be listed).
    async fn file_sizes(&self, job: &str, task: &str) -> HashMap<String, u64> {
        let files: Vec<_> = match self
            .client
            .list_task_files(job, task, false, &ListOptions::default())
            .try_collect()
            .await
        {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(job, task, error = %e, "cannot list task files yet");
                return HashMap::new();
            }
        };
        files
            .into_iter()
            .filter_map(|f| {
                let size = f.properties.map(|p| p.content_length)?;
                Some((f.name?, u64::try_from(size).unwrap_or(0)))
            })
            .collect()
    }

    /// The bytes of a task file from `from` on; `None` when it is absent or unreadable yet.
    async fn fetch(&mut self, job: &str, task: &str, name: &str, from: u64) -> Option<Vec<u8>> {
        if self.scratch.is_none() {
            self.scratch = tempfile::Builder::new()
                .prefix("shipyard-tail-")
                .tempdir()
                .ok();
        }
        let dest = self.scratch.as_ref()?.path().join("chunk");
        let range = ByteRange {
            start: from,
            end: None,
        };
        let got = self
            .client
            .download_task_file(job, task, name, &dest, Some(range))
            .await;
        if let Err(e) = got {
            tracing::debug!(job, task, file = name, error = %e, "no output yet");
            return None;
        }
        tokio::fs::read(&dest).await.ok()
    }
}

fn task_event(job: &str, id: &str, t: &CloudTask) -> SubmitEvent {
    let exec = t.execution_info.as_ref();
    SubmitEvent::TaskState {
        job: job.to_string(),
        task: id.to_string(),
        state: t.state.clone().unwrap_or(TaskState::Active),
        node: t.node_info.as_ref().and_then(|n| n.node_id.clone()),
        exit_code: exec.and_then(|e| e.exit_code),
        failure: exec
            .and_then(|e| e.failure_info.as_ref())
            .and_then(|f| f.message.clone()),
    }
}

/// A node's errors as `code: message` (`; `-separated), `None` when Batch reports none.
fn node_errors(node: &shipyard_batch_api::models::ComputeNode) -> Option<String> {
    let text: Vec<String> = node
        .errors
        .iter()
        .flatten()
        .map(|e| match (e.code.as_deref(), e.message.as_deref()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_string(),
            (None, Some(m)) => m.to_string(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect();
    (!text.is_empty()).then(|| text.join("; "))
}
