//! Waiting on the service: a task file followed as it grows ([`follow_task_file`]) and a pool
//! deletion seen through to its end ([`wait_pool_deleted`]).

use std::time::Duration;

use futures::TryStreamExt as _;
use shipyard_batch_api::models::TaskState;
use shipyard_batch_api::{BatchClient, ByteRange, ListOptions};

use crate::error::{Result, SubmitError};

/// Streams the task file `name` of `job`/`task` as it grows, as Batch Shipyard's
/// `data files stream` did: every `poll` it reads only the bytes past the last offset
/// (`ocp-range`) and hands them to `on_chunk`, until the task is completed and the last bytes
/// are read. Returns the file's length. A task that completes without the file is an error
/// naming it.
pub async fn follow_task_file(
    client: &BatchClient,
    job: &str,
    task: &str,
    name: &str,
    poll: Duration,
    mut on_chunk: impl FnMut(&[u8]),
) -> Result<u64> {
    let tmp = tempfile::Builder::new()
        .prefix("shipyard-follow-")
        .tempdir()
        .map_err(|e| SubmitError::Io {
            context: "creating a private temporary directory".into(),
            source: e,
        })?;
    let dest = tmp.path().join("chunk");
    let mut offset: u64 = 0;
    loop {
        // The state first: once it says completed, the size read next is final.
        let state = client
            .get_task(job, task)
            .await
            .map_err(|e| SubmitError::batch(format!("reading task {job}/{task}"), e))?
            .state;
        let done = state == Some(TaskState::Completed);
        let size = task_file_size(client, job, task, name).await;
        if size.is_some_and(|s| s > offset) {
            let range = ByteRange {
                start: offset,
                end: None,
            };
            client
                .download_task_file(job, task, name, &dest, Some(range))
                .await
                .map_err(|e| {
                    SubmitError::batch(
                        format!("reading {name} of task {job}/{task} from byte {offset}"),
                        e,
                    )
                })?;
            let data = std::fs::read(&dest).map_err(|e| SubmitError::Io {
                context: format!("reading {}", dest.display()),
                source: e,
            })?;
            on_chunk(&data);
            offset += data.len() as u64;
        }
        if done {
            return match size {
                Some(_) => Ok(offset),
                None => Err(SubmitError::MissingTaskFile {
                    job: job.into(),
                    task: task.into(),
                    file: name.into(),
                }),
            };
        }
        tokio::time::sleep(poll).await;
    }
}

/// The size of a task file (`None` while it does not exist or cannot be listed yet).
async fn task_file_size(client: &BatchClient, job: &str, task: &str, name: &str) -> Option<u64> {
    let files: Vec<_> = match client
        .list_task_files(job, task, name.contains('/'), &ListOptions::default())
        .try_collect()
        .await
    {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(job, task, error = %e, "cannot list task files yet");
            return None;
        }
    };
    files
        .iter()
        .find(|f| f.name.as_deref() == Some(name))
        .and_then(|f| f.properties.as_ref())
        .map(|p| u64::try_from(p.content_length).unwrap_or(0))
}

/// Waits, polling every `poll`, until pool `id` is gone (`PoolNotFound`) after a delete;
/// [`SubmitError::PoolStillDeleting`] naming the pool after `limit`.
pub async fn wait_pool_deleted(
    client: &BatchClient,
    id: &str,
    poll: Duration,
    limit: Duration,
) -> Result<()> {
    let until = tokio::time::Instant::now() + limit;
    loop {
        match client.get_pool(id).await {
            Err(e) if e.is_not_found() => return Ok(()),
            _ if tokio::time::Instant::now() > until => {
                return Err(SubmitError::PoolStillDeleting {
                    pool: id.into(),
                    secs: limit.as_secs(),
                })
            }
            _ => tokio::time::sleep(poll).await,
        }
    }
}
