//! [`BatchClient::add_task_collection`]: any number of tasks, chunked, concurrent, with
//! per-task retries and outcomes.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use futures::StreamExt as _;
use reqwest::Method;

use crate::client::{BatchClient, Call, RetryClass};
use crate::error::{BatchError, ErrorDetail, ServiceError};
use crate::models::{TaskAddCollectionResult, TaskAddParameter, TaskAddResult, TaskAddStatus};

/// Most tasks one `addtaskcollection` request may carry.
pub const MAX_TASKS_PER_REQUEST: usize = 100;

/// Per-task error codes worth re-submitting even when reported as `clienterror`.
const RETRYABLE_TASK_CODES: [&str; 5] = [
    "ServerBusy",
    "OperationTimedOut",
    "InternalError",
    "TooManyRequests",
    "ServiceUnavailable",
];

/// `{"value":[` + `]}`.
const ENVELOPE_BYTES: usize = 12;

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
    json: Bytes,
    /// Submitted before (so `TaskExists` means our earlier submission created it).
    sent: bool,
}

type Outcomes = Vec<(usize, TaskAddOutcome)>;

fn envelope(items: &[Item]) -> Bytes {
    let len = ENVELOPE_BYTES + items.iter().map(|i| i.json.len() + 1).sum::<usize>();
    let mut b = BytesMut::with_capacity(len);
    b.put_slice(b"{\"value\":[");
    for (n, i) in items.iter().enumerate() {
        if n > 0 {
            b.put_u8(b',');
        }
        b.put_slice(&i.json);
    }
    b.put_slice(b"]}");
    b.freeze()
}

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
        let limit = opts.max_body_bytes.max(ENVELOPE_BYTES + 2);
        let total = tasks.len();
        let mut slots: Vec<Option<(String, TaskAddOutcome)>> = Vec::with_capacity(total);
        let mut chunks: Vec<Vec<Item>> = Vec::new();
        let mut current: Vec<Item> = Vec::new();
        let mut current_bytes = ENVELOPE_BYTES;
        for (index, task) in tasks.into_iter().enumerate() {
            let id = task.id.clone();
            let json = match serde_json::to_vec(&task) {
                Ok(j) => Bytes::from(j),
                Err(e) => {
                    slots.push(Some((
                        id.clone(),
                        TaskAddOutcome::Failed(Arc::new(BatchError::Serialize {
                            what: format!("task `{id}`"),
                            message: e.to_string(),
                        })),
                    )));
                    continue;
                }
            };
            if ENVELOPE_BYTES + json.len() > limit {
                slots.push(Some((
                    id.clone(),
                    TaskAddOutcome::Failed(Arc::new(BatchError::TaskTooLarge {
                        task_id: id,
                        size: json.len(),
                        limit,
                    })),
                )));
                continue;
            }
            slots.push(Some((id.clone(), TaskAddOutcome::Created)));
            let add = json.len() + usize::from(!current.is_empty());
            if current.len() == MAX_TASKS_PER_REQUEST || current_bytes + add > limit {
                chunks.push(std::mem::take(&mut current));
                current_bytes = ENVELOPE_BYTES;
            }
            current_bytes += json.len() + usize::from(!current.is_empty());
            current.push(Item {
                index,
                id,
                json,
                sent: false,
            });
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        let requests = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let concurrency = opts.task_collection_concurrency.max(1);
        tracing::debug!(
            job_id,
            tasks = total,
            chunks = chunks.len(),
            "add_task_collection"
        );
        let mut results = futures::stream::iter(chunks.into_iter().map(|chunk| {
            let requests = requests.clone();
            async move { self.submit_chunk(job_id, chunk, &requests).await }
        }))
        .buffer_unordered(concurrency);
        while let Some(outcomes) = results.next().await {
            for (index, outcome) in outcomes {
                if let Some(Some(slot)) = slots.get_mut(index) {
                    slot.1 = outcome;
                }
            }
        }
        TaskCollectionReport {
            outcomes: slots.into_iter().flatten().collect(),
            requests: requests.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    async fn submit_chunk(
        &self,
        job_id: &str,
        items: Vec<Item>,
        requests: &std::sync::atomic::AtomicU32,
    ) -> Outcomes {
        let rounds = self.inner.options.task_retry_rounds;
        // Server-side processing budget of one request (seconds; the service caps it at 30).
        let server_timeout =
            self.inner.options.server_timeout.unwrap_or_else(|| {
                self.inner.options.request_timeout.as_secs().clamp(1, 30) as u32
            });
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
            let call = Call {
                method: Method::POST,
                url: self.url(
                    &["jobs", job_id, "addtaskcollection"],
                    &[("timeout", server_timeout.to_string())],
                ),
                body: Some(envelope(&pending)),
                headers: Vec::new(),
                class: RetryClass::Collection,
            };
            let reply = match self
                .json_with_attempts::<TaskAddCollectionResult>(call)
                .await
            {
                Ok(r) => r,
                Err(e) if e.status() == Some(413) && pending.len() > 1 => {
                    // Too large after all: split and submit the halves.
                    let mut a = pending;
                    let b = a.split_off(a.len() / 2);
                    let left = Box::pin(self.submit_chunk(job_id, a, requests)).await;
                    let right = Box::pin(self.submit_chunk(job_id, b, requests)).await;
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
