//! Typed operations on pools, jobs, tasks, compute nodes and files.

use std::path::Path;

use futures::stream::BoxStream;
use futures::StreamExt as _;
use reqwest::header::{HeaderName, HeaderValue};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};

use crate::client::{header_str, BatchClient};
use crate::error::{BatchError, Result};
use crate::models::{
    CloudJob, CloudPool, CloudTask, CloudTaskListSubtasksResult, ComputeNode,
    ComputeNodeGetRemoteLoginSettingsResult, ComputeNodeUser, JobAddParameter, JobPatchParameter,
    JobPreparationAndReleaseTaskExecutionInformation, NodeFile, PoolAddParameter,
    PoolResizeParameter, SubtaskInformation, TaskAddParameter,
};
use crate::request::{self, ListOptions, Request};

/// Result of a create call (`add_pool`, `add_job`, `add_task`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// A retry after a lost reply found the resource already there (409 `…Exists`), i.e. an
    /// earlier attempt of this same call created it.
    pub already_existed: bool,
    /// `ETag` of the new resource (absent when `already_existed`).
    pub etag: Option<String>,
    /// `Location` / `DataServiceId` of the new resource.
    pub location: Option<String>,
    /// Server `request-id` of the final attempt.
    pub request_id: Option<String>,
    /// Attempts made.
    pub attempts: u32,
}

/// Result of a file download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes written to the destination file.
    pub bytes: u64,
    /// HTTP requests made (more than 1 when an interrupted transfer was resumed).
    pub requests: u32,
}

/// A byte range for `ocp-range`: `start` to `end` inclusive (`None` = to the end of the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: Option<u64>,
}

impl ByteRange {
    fn header(&self) -> String {
        match self.end {
            Some(e) => format!("bytes={}-{}", self.start, e),
            None => format!("bytes={}-", self.start),
        }
    }
}

impl BatchClient {
    /// A create (`Pool_Add`, `Job_Add`, `Task_Add`): a retry answered `…Exists` is success.
    async fn create(&self, request: Request) -> Result<Created> {
        tracing::debug!(operation = request.operation, "create");
        let reply = self.execute(self.call_for(&request)?).await?;
        Ok(Created {
            already_existed: reply.already_existed,
            etag: header_str(&reply.headers, "etag"),
            location: header_str(&reply.headers, "location")
                .or_else(|| header_str(&reply.headers, "dataserviceid")),
            request_id: header_str(&reply.headers, "request-id"),
            attempts: reply.attempts,
        })
    }

    /// Sends a request whose reply has no body worth reading (202/204 actions, deletes,
    /// patches).
    async fn no_content(&self, request: Request) -> Result<()> {
        let reply = self.execute(self.call_for(&request)?).await?;
        // Drain the body so the connection returns to the pool.
        if let Some(r) = reply.response {
            let _ = r.bytes().await;
        }
        Ok(())
    }

    async fn get_json<T: DeserializeOwned>(&self, request: Request) -> Result<T> {
        self.json(self.call_for(&request)?).await
    }

    /// A list operation: its first page is `request`, then `odata.nextLink`.
    fn list<T>(&self, request: Request) -> BoxStream<'static, Result<T>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        match self.call_for(&request) {
            Ok(call) => self.paged(call.url),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    // ------------------------------------------------------------------ pools

    /// `Pool_Add`. Retried with the same id after a lost reply; a retry answered
    /// `PoolExists` returns `Created { already_existed: true, .. }`.
    pub async fn add_pool(&self, pool: &PoolAddParameter) -> Result<Created> {
        self.create(request::add_pool(pool)).await
    }

    /// `Pool_Get`.
    pub async fn get_pool(&self, pool_id: &str) -> Result<CloudPool> {
        self.get_json(request::get_pool(pool_id)).await
    }

    /// `Pool_List`: all pools, following `odata.nextLink`.
    pub fn list_pools(&self, options: &ListOptions) -> BoxStream<'static, Result<CloudPool>> {
        self.list(request::list_pools(options))
    }

    /// `Pool_Delete` (202: deletion started). Repeating it is harmless, so it retries like a
    /// GET; a retry answered 404 or `PoolBeingDeleted` is success.
    pub async fn delete_pool(&self, pool_id: &str) -> Result<()> {
        self.no_content(request::delete_pool(pool_id)).await
    }

    /// `Pool_Exists` (HEAD): `false` on 404.
    pub async fn pool_exists(&self, pool_id: &str) -> Result<bool> {
        match self
            .execute(self.call_for(&request::pool_exists(pool_id))?)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `Pool_Resize`. A non-idempotent action: retried only on 429/503/connection refused.
    pub async fn resize_pool(&self, pool_id: &str, resize: &PoolResizeParameter) -> Result<()> {
        self.no_content(request::resize_pool(pool_id, resize)).await
    }

    // ------------------------------------------------------------------ nodes

    /// `ComputeNode_List`.
    pub fn list_nodes(
        &self,
        pool_id: &str,
        options: &ListOptions,
    ) -> BoxStream<'static, Result<ComputeNode>> {
        self.list(request::list_nodes(pool_id, options))
    }

    /// `ComputeNode_Get`.
    pub async fn get_node(&self, pool_id: &str, node_id: &str) -> Result<ComputeNode> {
        self.get_json(request::get_node(pool_id, node_id)).await
    }

    /// `ComputeNode_AddUser` (201). An action: retried only when the service provably did not
    /// act on it; a user of that name on the node is answered 409 `NodeUserExists`.
    pub async fn add_node_user(
        &self,
        pool_id: &str,
        node_id: &str,
        user: &ComputeNodeUser,
    ) -> Result<()> {
        self.no_content(request::add_node_user(pool_id, node_id, user))
            .await
    }

    /// `ComputeNode_GetRemoteLoginSettings`: where to ssh to reach the node.
    pub async fn get_remote_login_settings(
        &self,
        pool_id: &str,
        node_id: &str,
    ) -> Result<ComputeNodeGetRemoteLoginSettingsResult> {
        self.get_json(request::get_remote_login_settings(pool_id, node_id))
            .await
    }

    // ------------------------------------------------------------------ jobs

    /// `Job_Add`; a retry answered `JobExists` counts as success (`already_existed`).
    pub async fn add_job(&self, job: &JobAddParameter) -> Result<Created> {
        self.create(request::add_job(job)).await
    }

    /// `Job_Get`.
    pub async fn get_job(&self, job_id: &str) -> Result<CloudJob> {
        self.get_json(request::get_job(job_id)).await
    }

    /// `Job_List`.
    pub fn list_jobs(&self, options: &ListOptions) -> BoxStream<'static, Result<CloudJob>> {
        self.list(request::list_jobs(options))
    }

    /// `Job_Delete` (202: deletion started).
    pub async fn delete_job(&self, job_id: &str) -> Result<()> {
        self.no_content(request::delete_job(job_id)).await
    }

    /// `Job_Terminate`. A non-idempotent action: retried only on 429/503/connection refused.
    pub async fn terminate_job(&self, job_id: &str, reason: Option<&str>) -> Result<()> {
        self.no_content(request::terminate_job(job_id, reason))
            .await
    }

    /// `Job_Patch`: sets the given properties. Repeating a patch sets the same values, so it
    /// is retried like a GET.
    pub async fn patch_job(&self, job_id: &str, patch: &JobPatchParameter) -> Result<()> {
        self.no_content(request::patch_job(job_id, patch)).await
    }

    /// `Job_ListPreparationAndReleaseTaskStatus`.
    pub fn list_preparation_and_release_status(
        &self,
        job_id: &str,
        options: &ListOptions,
    ) -> BoxStream<'static, Result<JobPreparationAndReleaseTaskExecutionInformation>> {
        self.list(request::list_preparation_and_release_status(
            job_id, options,
        ))
    }

    // ------------------------------------------------------------------ tasks

    /// `Task_Add`; a retry answered `TaskExists` counts as success (`already_existed`).
    pub async fn add_task(&self, job_id: &str, task: &TaskAddParameter) -> Result<Created> {
        self.create(request::add_task(job_id, task)).await
    }

    /// `Task_Get`.
    pub async fn get_task(&self, job_id: &str, task_id: &str) -> Result<CloudTask> {
        self.get_json(request::get_task(job_id, task_id)).await
    }

    /// `Task_List`.
    pub fn list_tasks(
        &self,
        job_id: &str,
        options: &ListOptions,
    ) -> BoxStream<'static, Result<CloudTask>> {
        self.list(request::list_tasks(job_id, options))
    }

    /// `Task_Terminate`. A non-idempotent action: retried only on 429/503/connection refused.
    pub async fn terminate_task(&self, job_id: &str, task_id: &str) -> Result<()> {
        self.no_content(request::terminate_task(job_id, task_id))
            .await
    }

    /// `Task_Delete`.
    pub async fn delete_task(&self, job_id: &str, task_id: &str) -> Result<()> {
        self.no_content(request::delete_task(job_id, task_id)).await
    }

    /// `Task_ListSubtasks`: the subtasks of a multi-instance task.
    pub async fn list_subtasks(
        &self,
        job_id: &str,
        task_id: &str,
    ) -> Result<Vec<SubtaskInformation>> {
        let r: CloudTaskListSubtasksResult = self
            .get_json(request::list_subtasks(job_id, task_id))
            .await?;
        Ok(r.value.unwrap_or_default())
    }

    // ------------------------------------------------------------------ files

    /// `File_ListFromTask`.
    pub fn list_task_files(
        &self,
        job_id: &str,
        task_id: &str,
        recursive: bool,
        options: &ListOptions,
    ) -> BoxStream<'static, Result<NodeFile>> {
        self.list(request::list_task_files(
            job_id, task_id, recursive, options,
        ))
    }

    /// `File_ListFromComputeNode`.
    pub fn list_node_files(
        &self,
        pool_id: &str,
        node_id: &str,
        recursive: bool,
        options: &ListOptions,
    ) -> BoxStream<'static, Result<NodeFile>> {
        self.list(request::list_node_files(
            pool_id, node_id, recursive, options,
        ))
    }

    /// `File_GetFromTask`, streamed to `dest` (created or truncated). `range` sets `ocp-range`.
    /// An interrupted transfer is resumed with `ocp-range` from the last byte written.
    pub async fn download_task_file(
        &self,
        job_id: &str,
        task_id: &str,
        file_path: &str,
        dest: &Path,
        range: Option<ByteRange>,
    ) -> Result<Downloaded> {
        let r = request::get_task_file(job_id, task_id, file_path);
        self.download(&r, dest, range).await
    }

    /// `File_GetFromComputeNode`, streamed to `dest`; see [`BatchClient::download_task_file`].
    pub async fn download_node_file(
        &self,
        pool_id: &str,
        node_id: &str,
        file_path: &str,
        dest: &Path,
        range: Option<ByteRange>,
    ) -> Result<Downloaded> {
        let r = request::get_node_file(pool_id, node_id, file_path);
        self.download(&r, dest, range).await
    }

    async fn download(
        &self,
        request: &Request,
        dest: &Path,
        range: Option<ByteRange>,
    ) -> Result<Downloaded> {
        let io_err = |source| BatchError::Io {
            path: dest.display().to_string(),
            source,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(io_err)?;
        let mut written: u64 = 0;
        let mut requests: u32 = 0;
        let max_resumes = self.inner.options.retry.max_attempts.max(1);
        loop {
            requests += 1;
            let mut call = self.call_for(request)?;
            call.headers.push((
                HeaderName::from_static("accept"),
                HeaderValue::from_static("*/*"),
            ));
            let start = range.map_or(0, |r| r.start) + written;
            let want = if written > 0 || range.is_some() {
                Some(ByteRange {
                    start,
                    end: range.and_then(|r| r.end),
                })
            } else {
                None
            };
            let ranged = want.is_some();
            if let Some(r) = want {
                let v = HeaderValue::from_str(&r.header()).map_err(|_| BatchError::Config {
                    field: "range".into(),
                    message: "cannot form ocp-range header".into(),
                })?;
                call.headers.push((HeaderName::from_static("ocp-range"), v));
            }
            let path = call.url.path().to_owned();
            let reply = self.execute(call).await?;
            let Some(resp) = reply.response else {
                return Ok(Downloaded {
                    bytes: written,
                    requests,
                });
            };
            // A ranged GET is answered 206, or (the 2025 spec lists only 200) 200 with a
            // Content-Range naming the bytes asked for; anything else is the whole file.
            let range_honoured = reply.status == 206
                || (reply.status == 200
                    && resp
                        .headers()
                        .get("content-range")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|cr| {
                            content_range_matches(cr, start, want.and_then(|w| w.end))
                        }));
            if ranged && !range_honoured {
                // The range was ignored and the whole file is coming: writing it after what
                // we have would corrupt the file. Without a caller's range, start over; with
                // one, the bytes asked for cannot be told apart, so fail.
                if range.is_some() {
                    return Err(BatchError::Decode {
                        context: format!("GET {path}"),
                        message: format!(
                            "asked for bytes {start}- with ocp-range, the service answered \
                             {} with the whole file",
                            reply.status
                        ),
                    });
                }
                tracing::debug!(path = %path, written, "range ignored on resume; restarting");
                file.set_len(0).await.map_err(io_err)?;
                file.seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(io_err)?;
                written = 0;
            }
            let mut body = resp.bytes_stream();
            let mut failed: Option<String> = None;
            // A body that stalls for a whole request timeout counts as interrupted (resumed),
            // so a silent connection never hangs the download.
            let stall = self.inner.options.request_timeout;
            loop {
                match tokio::time::timeout(stall, body.next()).await {
                    Ok(None) => break,
                    Ok(Some(Ok(c))) => {
                        file.write_all(&c).await.map_err(io_err)?;
                        written += c.len() as u64;
                    }
                    Ok(Some(Err(e))) => {
                        failed = Some(e.to_string());
                        break;
                    }
                    Err(_) => {
                        failed = Some(format!("no data for {stall:?}"));
                        break;
                    }
                }
            }
            match failed {
                None => {
                    file.flush().await.map_err(io_err)?;
                    return Ok(Downloaded {
                        bytes: written,
                        requests,
                    });
                }
                Some(e) if requests < max_resumes => {
                    tracing::debug!(path = %path, written, error = %e, "download interrupted, resuming");
                }
                Some(e) => {
                    return Err(BatchError::Transport {
                        method: "GET".into(),
                        path,
                        message: format!("download interrupted after {written} bytes: {e}"),
                    })
                }
            }
        }
    }
}

/// Whether a `Content-Range: bytes a-b/total` reply holds the bytes from `start` up to `end`
/// (inclusive; the service may stop earlier at the end of the file).
fn content_range_matches(header: &str, start: u64, end: Option<u64>) -> bool {
    let Some(spec) = header.trim().strip_prefix("bytes ") else {
        return false;
    };
    let Some((span, _total)) = spec.split_once('/') else {
        return false;
    };
    let Some((a, b)) = span.split_once('-') else {
        return false;
    };
    match (a.trim().parse::<u64>(), b.trim().parse::<u64>()) {
        (Ok(a), Ok(b)) => a == start && b >= a && end.is_none_or(|e| b <= e),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::content_range_matches;

    #[test]
    fn content_range_must_name_the_bytes_asked_for() {
        assert!(content_range_matches("bytes 100-199/4096", 100, Some(199)));
        assert!(content_range_matches("bytes 100-4095/4096", 100, None));
        // The file ends before the asked-for end.
        assert!(content_range_matches("bytes 100-149/150", 100, Some(199)));
        for bad in [
            "bytes 0-4095/4096",
            "bytes 100-300/4096",
            "bytes */4096",
            "items 100-199/4096",
            "bytes 100-199",
            "",
        ] {
            assert!(!content_range_matches(bad, 100, Some(199)), "{bad}");
        }
    }
}
