//! [`BatchClient::add_task_collection`]: any number of tasks, chunked, concurrent, with
//! per-task retries and outcomes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;

use crate::client::BatchClient;
use crate::error::{BatchError, ErrorDetail, ServiceError};
use crate::models::{TaskAddCollectionResult, TaskAddParameter, TaskAddResult, TaskAddStatus};
use crate::request;

/// Per-task error codes worth re-submitting even when reported as `clienterror`.
const RETRYABLE_TASK_CODES: [&str; 5] = [
    "ServerBusy",
    "OperationTimedOut",
    "InternalError",
    "TooManyRequests",
    "ServiceUnavailable",
];

/// What happened to one task of [`BatchClient::add_task_collection`].
#[derive(Debug, Clone)]
pub enum TaskAddOutcome {
    /// The service created the task.
    Created,
    /// A re-submission (after a lost reply or a retried chunk) found the task already there:
    /// an earlier submission of this call created it.
    AlreadyExisted,
    /// The task was not created (or its fate is unknown after the retry budget ran out).
    Failed(Arc<BatchError>),
}

impl TaskAddOutcome {
    /// Created now or by an earlier attempt of the same call.
    pub fn is_success(&self) -> bool {
        !matches!(self, TaskAddOutcome::Failed(_))
    }
}

/// Per-task outcomes of [`BatchClient::add_task_collection`], in input order.
#[derive(Debug, Clone, Default)]
pub struct TaskCollectionReport {
    /// `(task id, outcome)` for every input task, in input order.
    pub outcomes: Vec<(String, TaskAddOutcome)>,
    /// `addtaskcollection` requests sent (not counting transport-level retries).
    pub requests: u32,
}

impl TaskCollectionReport {
    /// Number of tasks created by this call (`Created` + `AlreadyExisted`).
    pub fn succeeded(&self) -> usize {
        self.outcomes.iter().filter(|(_, o)| o.is_success()).count()
    }

    /// The failed tasks.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &BatchError)> {
        self.outcomes.iter().filter_map(|(id, o)| match o {
            TaskAddOutcome::Failed(e) => Some((id.as_str(), e.as_ref())),
            _ => None,
        })
    }

    /// True when every task was created.
    pub fn all_succeeded(&self) -> bool {
        self.outcomes.iter().all(|(_, o)| o.is_success())
    }
}

struct Item {
    index: usize,
    id: String,
    /// Submitted before (so `TaskExists` means our earlier submission created it).
    sent: bool,
}

type Outcomes = Vec<(usize, TaskAddOutcome)>;

fn task_error(job_id: &str, r: &TaskAddResult) -> BatchError {
    let (code, message, details) = match &r.error {
        Some(e) => (
            e.code.clone(),
            e.message.as_ref().and_then(|m| m.value.clone()),
            e.values
                .as_ref()
                .map(|vs| {
                    vs.iter()
                        .map(|d| ErrorDetail {
                            key: d.key.clone(),
                            value: d.value.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        None => (None, None, Vec::new()),
    };
    BatchError::Service {
        method: "POST".into(),
        path: format!(
            "/jobs/{job_id}/addtaskcollection (task `{}`: {})",
            r.task_id, r.status
        ),
        error: Box::new(ServiceError {
            status: 0,
            code,
            message,
            details,
            request_id: None,
            client_request_id: None,
        }),
    }
}

impl BatchClient {
    /// Adds any number of tasks to a job with `addtaskcollection`.
    ///
    /// Tasks are serialized once and packed into requests of at most 100 tasks and at most
    /// [`ClientOptions::max_body_bytes`](crate::ClientOptions::max_body_bytes) bytes, sent with
    /// at most [`ClientOptions::task_collection_concurrency`](crate::ClientOptions) requests in
    /// flight. Whole requests are retried on transport errors and retryable statuses (a task
    /// the retry finds `TaskExists` was created by the lost attempt: `AlreadyExisted`); a 413
    /// `RequestBodyTooLarge` splits the request in two. Tasks whose per-task result is
    /// `servererror` or carries a retryable code are re-submitted for up to
    /// [`ClientOptions::task_retry_rounds`](crate::ClientOptions) rounds; other per-task errors
    /// are final. Every input task gets exactly one outcome.
    pub async fn add_task_collection(
        &self,
        job_id: &str,
        tasks: Vec<TaskAddParameter>,
    ) -> TaskCollectionReport {
        let opts = &self.inner.options;
        let total = tasks.len();
        let plan = request::task_collection_chunks(&tasks, opts.max_body_bytes);
        let mut slots: Vec<(String, TaskAddOutcome)> = tasks
            .iter()
            .map(|t| (t.id.clone(), TaskAddOutcome::Created))
            .collect();
        for (index, e) in plan.rejected {
            if let Some(slot) = slots.get_mut(index) {
                slot.1 = TaskAddOutcome::Failed(Arc::new(e));
            }
        }
        let chunks: Vec<Vec<Item>> = plan
            .chunks
            .into_iter()
            .map(|indices| {
                indices
                    .into_iter()
                    .map(|index| Item {
                        index,
                        id: slots.get(index).map(|s| s.0.clone()).unwrap_or_default(),
                        sent: false,
                    })
                    .collect()
            })
            .collect();
        let requests = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let concurrency = opts.task_collection_concurrency.max(1);
        tracing::debug!(
            job_id,
            tasks = total,
            chunks = chunks.len(),
            "add_task_collection"
        );
        let tasks = &tasks;
        let mut results = futures::stream::iter(chunks.into_iter().map(|items| {
            let requests = requests.clone();
            async move { self.submit_chunk(job_id, tasks, items, &requests).await }
        }))
        .buffer_unordered(concurrency);
        while let Some(outcomes) = results.next().await {
            for (index, outcome) in outcomes {
                if let Some(slot) = slots.get_mut(index) {
                    slot.1 = outcome;
                }
            }
        }
        TaskCollectionReport {
            outcomes: slots,
            requests: requests.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Submits one chunk of `tasks` (by index): each round one request of the tasks still
    /// pending, built with [`request::task_collection_request`].
    async fn submit_chunk(
        &self,
        job_id: &str,
        tasks: &[TaskAddParameter],
        items: Vec<Item>,
        requests: &std::sync::atomic::AtomicU32,
    ) -> Outcomes {
        let rounds = self.inner.options.task_retry_rounds;
        let mut done: Outcomes = Vec::with_capacity(items.len());
        let mut pending = items;
        let mut last_errors: std::collections::HashMap<usize, Arc<BatchError>> = Default::default();
        let mut round: u32 = 0;
        while !pending.is_empty() {
            if round > rounds {
                for item in pending {
                    let err = last_errors.remove(&item.index).unwrap_or_else(|| {
                        Arc::new(BatchError::Decode {
                            context: format!("addtaskcollection for job `{job_id}`"),
                            message: format!("no result for task `{}`", item.id),
                        })
                    });
                    done.push((item.index, TaskAddOutcome::Failed(err)));
                }
                break;
            }
            if round > 0 {
                let delay = self
                    .inner
                    .options
                    .retry
                    .backoff(round)
                    .min(Duration::from_secs(10));
                tokio::time::sleep(delay).await;
            }
            round += 1;
            requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let req = request::task_collection_request(
                job_id,
                pending.iter().filter_map(|i| tasks.get(i.index)),
            );
            let sent = match self.call_for(&req) {
                Ok(call) => {
                    self.json_with_attempts::<TaskAddCollectionResult>(call)
                        .await
                }
                Err(e) => Err(e),
            };
            let reply = match sent {
                Ok(r) => r,
                Err(e) if e.status() == Some(413) && pending.len() > 1 => {
                    // Too large after all: split and submit the halves.
                    let mut a = pending;
                    let b = a.split_off(a.len() / 2);
                    let left = Box::pin(self.submit_chunk(job_id, tasks, a, requests)).await;
                    let right = Box::pin(self.submit_chunk(job_id, tasks, b, requests)).await;
                    done.extend(left);
                    done.extend(right);
                    return done;
                }
                Err(
                    e @ (BatchError::Transport { .. }
                    | BatchError::Timeout { .. }
                    | BatchError::Decode { .. }),
                ) => {
                    // The reply was lost after the request was accepted: re-submit; tasks the
                    // lost attempt created come back as TaskExists.
                    let e = Arc::new(e);
                    for item in pending.iter_mut() {
                        item.sent = true;
                        last_errors.insert(item.index, e.clone());
                    }
                    continue;
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for item in pending {
                        done.push((item.index, TaskAddOutcome::Failed(e.clone())));
                    }
                    return done;
                }
            };
            let (result, attempts) = reply;
            let mut by_id: std::collections::HashMap<&str, &TaskAddResult> = result
                .value
                .iter()
                .flatten()
                .map(|r| (r.task_id.as_str(), r))
                .collect();
            let mut retry = Vec::new();
            for mut item in std::mem::take(&mut pending) {
                let resubmitted = item.sent || attempts > 1;
                match by_id.remove(item.id.as_str()) {
                    Some(r) if r.status == TaskAddStatus::Success => {
                        done.push((item.index, TaskAddOutcome::Created));
                    }
                    Some(r) => {
                        let code = r.error.as_ref().and_then(|e| e.code.as_deref());
                        if resubmitted && code == Some("TaskExists") {
                            done.push((item.index, TaskAddOutcome::AlreadyExisted));
                        } else if r.status == TaskAddStatus::ServerError
                            || code.is_some_and(|c| RETRYABLE_TASK_CODES.contains(&c))
                        {
                            last_errors.insert(item.index, Arc::new(task_error(job_id, r)));
                            item.sent = true;
                            retry.push(item);
                        } else {
                            done.push((
                                item.index,
                                TaskAddOutcome::Failed(Arc::new(task_error(job_id, r))),
                            ));
                        }
                    }
                    None => {
                        item.sent = true;
                        retry.push(item);
                    }
                }
            }
            if !retry.is_empty() {
                tracing::debug!(job_id, retry = retry.len(), round, "re-submitting tasks");
            }
            pending = retry;
        }
        done
    }
}
