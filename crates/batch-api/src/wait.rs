//! Polling helpers that wait for task, job and pool states.

use std::time::{Duration, Instant};

use futures::TryStreamExt as _;

use crate::client::BatchClient;
use crate::error::{BatchError, Result};
use crate::models::{
    AllocationState, CloudJob, CloudPool, CloudTask, ComputeNode, ComputeNodeState, JobState,
    TaskState,
};
use crate::request::ListOptions;

/// Timeout and poll interval of a wait helper.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    /// Give up after this long ([`BatchError::WaitTimeout`]).
    pub timeout: Duration,
    /// Time between polls.
    pub poll_interval: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            timeout: Duration::from_secs(30 * 60),
            poll_interval: Duration::from_secs(5),
        }
    }
}

impl WaitOptions {
    /// Wait options with the given timeout and poll interval.
    pub fn new(timeout: Duration, poll_interval: Duration) -> Self {
        WaitOptions {
            timeout,
            poll_interval,
        }
    }
}

/// What one poll saw.
enum Check {
    /// The awaited state is reached.
    Done,
    /// Not yet; what was seen.
    Pending(String),
    /// It can no longer be reached; why.
    Failed(String),
}

impl Check {
    fn pending_unless(reached: bool, seen: String) -> Check {
        if reached {
            Check::Done
        } else {
            Check::Pending(seen)
        }
    }
}

async fn poll<T, F, Fut, D>(what: String, opts: WaitOptions, mut get: F, mut check: D) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
    D: FnMut(&T) -> Check,
{
    let started = Instant::now();
    loop {
        let value = get().await?;
        let seen = match check(&value) {
            Check::Done => return Ok(value),
            Check::Failed(reason) => return Err(BatchError::WaitFailed { what, reason }),
            Check::Pending(seen) => seen,
        };
        let waited = started.elapsed();
        if waited + opts.poll_interval > opts.timeout {
            return Err(BatchError::WaitTimeout {
                what,
                waited,
                last_seen: seen,
            });
        }
        tokio::time::sleep(opts.poll_interval).await;
    }
}

fn show<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "unknown".to_owned(), |s| s.to_string())
}

impl BatchClient {
    /// Polls a task until it reaches `state`, or `completed` (which no task leaves, so waiting
    /// for `running` returns a task that already finished). Check the returned task's state.
    pub async fn wait_for_task_state(
        &self,
        job_id: &str,
        task_id: &str,
        state: TaskState,
        opts: WaitOptions,
    ) -> Result<CloudTask> {
        let what = format!("task `{task_id}` of job `{job_id}` to be {state}");
        poll(
            what,
            opts,
            || self.get_task(job_id, task_id),
            |t: &CloudTask| {
                let reached = t.state.as_ref() == Some(&state)
                    || t.state.as_ref() == Some(&TaskState::Completed);
                Check::pending_unless(reached, show(&t.state))
            },
        )
        .await
    }

    /// Polls a job until it reaches `state`.
    pub async fn wait_for_job_state(
        &self,
        job_id: &str,
        state: JobState,
        opts: WaitOptions,
    ) -> Result<CloudJob> {
        let what = format!("job `{job_id}` to be {state}");
        poll(
            what,
            opts,
            || self.get_job(job_id),
            |j: &CloudJob| Check::pending_unless(j.state.as_ref() == Some(&state), show(&j.state)),
        )
        .await
    }

    /// Polls a pool until its allocation state is `steady`.
    pub async fn wait_for_pool_steady(
        &self,
        pool_id: &str,
        opts: WaitOptions,
    ) -> Result<CloudPool> {
        let what = format!("pool `{pool_id}` allocation to be steady");
        poll(
            what,
            opts,
            || self.get_pool(pool_id),
            |p: &CloudPool| {
                Check::pending_unless(
                    p.allocation_state.as_ref() == Some(&AllocationState::Steady),
                    show(&p.allocation_state),
                )
            },
        )
        .await
    }

    /// Polls a pool until it is steady and all of its (at least `min_nodes`) compute nodes are
    /// `idle`; returns the nodes. Stops early with [`BatchError::WaitFailed`], naming the
    /// nodes, when any node is `starttaskfailed` or `unusable`.
    pub async fn wait_for_nodes_idle(
        &self,
        pool_id: &str,
        min_nodes: usize,
        opts: WaitOptions,
    ) -> Result<Vec<ComputeNode>> {
        let what = format!("{min_nodes}+ idle nodes in pool `{pool_id}`");
        poll(
            what,
            opts,
            || async move {
                let pool = self.get_pool(pool_id).await?;
                let nodes: Vec<ComputeNode> = self
                    .list_nodes(pool_id, &ListOptions::default())
                    .try_collect()
                    .await?;
                Ok((pool, nodes))
            },
            |(pool, nodes): &(CloudPool, Vec<ComputeNode>)| {
                let broken: Vec<String> = nodes
                    .iter()
                    .filter(|n| {
                        matches!(
                            n.state,
                            Some(ComputeNodeState::StartTaskFailed | ComputeNodeState::Unusable)
                        )
                    })
                    .map(|n| format!("{} is {}", n.id.as_deref().unwrap_or("?"), show(&n.state)))
                    .collect();
                if !broken.is_empty() {
                    return Check::Failed(broken.join(", "));
                }
                let steady = pool.allocation_state.as_ref() == Some(&AllocationState::Steady);
                let idle = nodes
                    .iter()
                    .filter(|n| n.state.as_ref() == Some(&ComputeNodeState::Idle))
                    .count();
                Check::pending_unless(
                    steady && idle >= min_nodes && idle == nodes.len(),
                    format!(
                        "allocation {}, {idle}/{} nodes idle",
                        show(&pool.allocation_state),
                        nodes.len()
                    ),
                )
            },
        )
        .await
        .map(|(_, nodes)| nodes)
    }
}
