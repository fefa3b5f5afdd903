//! `impl Backend for shipyard_local::Engine` (feature `engine`) and [`serve_engine`], what
//! `shipyard serve` runs: the Batch REST API executed by the local engine, its state under a
//! directory that survives restarts.

use std::path::PathBuf;
use std::sync::Arc;

use shipyard_batch_api::models::{
    CloudJob, CloudPool, CloudTask, ComputeNode, JobAddParameter, JobPatchParameter,
    JobPreparationAndReleaseTaskExecutionInformation, NodeFile, PoolAddParameter,
    PoolPatchParameter, PoolResizeParameter, SubtaskInformation, TaskAddParameter, TaskAddResult,
    TaskCountsResult,
};
use shipyard_local::{Engine, EngineError, EngineOptions};

use crate::backend::{Backend, BackendError, BackendResult, BoxFuture, FileContent};
use crate::{ServeError, ServeOptions, Server};

impl From<EngineError> for BackendError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Service(f) => BackendError::Service(f),
            other => {
                tracing::warn!(error = %other, "local engine failed");
                BackendError::Internal {
                    message: other.to_string(),
                }
            }
        }
    }
}

fn file(f: shipyard_local::FileContent) -> FileContent {
    FileContent {
        path: f.path,
        len: f.len,
        modified: f.modified,
    }
}

impl Backend for Engine {
    fn add_pool(&self, p: PoolAddParameter) -> BoxFuture<'_, BackendResult<()>> {
        Box::pin(async move { Ok(Engine::add_pool(self, p).await?) })
    }
    fn get_pool(&self, id: &str) -> BackendResult<CloudPool> {
        Ok(Engine::get_pool(self, id)?)
    }
    fn list_pools(&self) -> BackendResult<Vec<CloudPool>> {
        Ok(Engine::list_pools(self)?)
    }
    fn delete_pool<'a>(&'a self, id: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { Ok(Engine::delete_pool(self, id).await?) })
    }
    fn resize_pool<'a>(
        &'a self,
        id: &'a str,
        r: PoolResizeParameter,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { Ok(Engine::resize_pool(self, id, r).await?) })
    }
    fn patch_pool(&self, id: &str, p: PoolPatchParameter) -> BackendResult<()> {
        Ok(Engine::patch_pool(self, id, p)?)
    }
    fn list_nodes(&self, pool: &str) -> BackendResult<Vec<ComputeNode>> {
        Ok(Engine::list_nodes(self, pool)?)
    }
    fn get_node(&self, pool: &str, node: &str) -> BackendResult<ComputeNode> {
        Ok(Engine::get_node(self, pool, node)?)
    }
    fn list_node_files(
        &self,
        pool: &str,
        node: &str,
        recursive: bool,
    ) -> BackendResult<Vec<NodeFile>> {
        Ok(Engine::list_node_files(self, pool, node, recursive)?)
    }
    fn node_file(&self, pool: &str, node: &str, path: &str) -> BackendResult<FileContent> {
        Ok(file(Engine::node_file(self, pool, node, path)?))
    }
    fn add_job(&self, j: JobAddParameter) -> BoxFuture<'_, BackendResult<()>> {
        Box::pin(async move { Ok(Engine::add_job(self, j).await?) })
    }
    fn get_job(&self, id: &str) -> BackendResult<CloudJob> {
        Ok(Engine::get_job(self, id)?)
    }
    fn list_jobs(&self) -> BackendResult<Vec<CloudJob>> {
        Ok(Engine::list_jobs(self)?)
    }
    fn patch_job<'a>(
        &'a self,
        id: &'a str,
        p: JobPatchParameter,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { Ok(Engine::patch_job(self, id, p).await?) })
    }
    fn terminate_job<'a>(
        &'a self,
        id: &'a str,
        reason: Option<String>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { Ok(Engine::terminate_job(self, id, reason).await?) })
    }
    fn delete_job<'a>(&'a self, id: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { Ok(Engine::delete_job(self, id).await?) })
    }
    fn task_counts(&self, job: &str) -> BackendResult<TaskCountsResult> {
        Ok(Engine::task_counts(self, job)?)
    }
    fn prep_release_status(
        &self,
        job: &str,
    ) -> BackendResult<Vec<JobPreparationAndReleaseTaskExecutionInformation>> {
        Ok(Engine::prep_release_status(self, job)?)
    }
    fn add_tasks<'a>(
        &'a self,
        job: &'a str,
        tasks: Vec<TaskAddParameter>,
    ) -> BoxFuture<'a, BackendResult<Vec<TaskAddResult>>> {
        Box::pin(async move { Ok(Engine::add_tasks(self, job, tasks).await?) })
    }
    fn get_task(&self, job: &str, task: &str) -> BackendResult<CloudTask> {
        Ok(Engine::get_task(self, job, task)?)
    }
    fn list_tasks(&self, job: &str) -> BackendResult<Vec<CloudTask>> {
        Ok(Engine::list_tasks(self, job)?)
    }
    fn list_subtasks(&self, job: &str, task: &str) -> BackendResult<Vec<SubtaskInformation>> {
        Ok(Engine::list_subtasks(self, job, task)?)
    }
    fn terminate_task<'a>(
        &'a self,
        job: &'a str,
        task: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { Ok(Engine::terminate_task(self, job, task).await?) })
    }
    fn delete_task<'a>(&'a self, job: &'a str, task: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { Ok(Engine::delete_task(self, job, task).await?) })
    }
    fn list_task_files(
        &self,
        job: &str,
        task: &str,
        recursive: bool,
    ) -> BackendResult<Vec<NodeFile>> {
        Ok(Engine::list_task_files(self, job, task, recursive)?)
    }
    fn task_file(&self, job: &str, task: &str, path: &str) -> BackendResult<FileContent> {
        Ok(file(Engine::task_file(self, job, task, path)?))
    }
}

/// A server over the local engine ([`serve_engine`]): the bound [`Server`] and the engine it
/// runs (for [`Engine::close`] on shutdown, or for labels in tests).
#[derive(Debug)]
pub struct EngineServer {
    /// The HTTP server.
    pub server: Server,
    /// The engine behind it.
    pub engine: Engine,
}

impl EngineServer {
    /// Stops serving, then closes the engine (running work is abandoned, to be failed with a
    /// reason by the next [`serve_engine`] on the same state directory).
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        self.engine.close().await;
    }
}

/// Binds the listen address, then opens (and recovers) the local engine under `state_dir`
/// with its account name and URL taken from `opts` (`opts.public_url`, else
/// `http://{bound address}`), and serves it.
pub async fn serve_engine(
    opts: ServeOptions,
    state_dir: PathBuf,
) -> Result<EngineServer, ServeError> {
    serve_engine_with(opts, EngineOptions::new(state_dir)).await
}

/// [`serve_engine`] with explicit engine options (e.g. another holder image); their
/// `account` and `account_url` are overwritten from `opts`.
pub async fn serve_engine_with(
    opts: ServeOptions,
    mut engine_opts: EngineOptions,
) -> Result<EngineServer, ServeError> {
    let listener = crate::bind_listener(opts.listen).await?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: opts.listen,
        source,
    })?;
    engine_opts.account = opts.account.clone();
    engine_opts.account_url = opts
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let state_dir = engine_opts.state_dir.clone();
    let engine = Engine::open(engine_opts)
        .await
        .map_err(|source| ServeError::Engine {
            state_dir: state_dir.clone(),
            source: Box::new(source),
        })?;
    let server =
        Server::serve_listener(opts, listener, Arc::new(engine.clone()), Some(&state_dir))?;
    Ok(EngineServer { server, engine })
}
