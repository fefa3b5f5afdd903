//! `--target local` through the persistent local engine (`shipyard_local::Engine`), reached
//! with the same submission library and Batch client as `--target azure`.
//!
//! The engine's state lives in `<state base>/engine` (the base of
//! [`crate::serve::default_state_dir`], so `SHIPYARD_STATE_DIR` moves both). The first shipyard
//! process that needs the engine hosts it: it runs [`shipyard_serve::engine::serve_engine`] in
//! process on `127.0.0.1:0` with a random Shared Key and writes [`ENDPOINT_FILE`] (mode 0600:
//! url, pid and the key) into the state directory. Later processes find the file, check that
//! the pid is alive and that the URL answers to the key, and connect to it instead of opening
//! the store themselves. The key is never printed, logged or passed in argv.
//!
//! The host process removes the file when it ends cleanly; before that it waits for the jobs
//! still running on its engine (Ctrl-C abandons them). A pool `run` created is deleted when the
//! run ends (`pool add` first keeps one). Pools of VM-like nodes (no `containerConfiguration`)
//! live as long as their host process; container pools persist in the store.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use shipyard_batch_api::models::{
    AllocationState, JobReleaseTaskState, JobState, PoolAddParameter,
};
use shipyard_batch_api::{BatchClient, SharedKeyCredential};
use shipyard_serve::engine::EngineServer;
use shipyard_serve::{ServeError, ServeOptions};

use crate::args::{Command, GlobalArgs, PoolCommand, RunArgs};
use crate::config::Config;
use crate::{CliError, CliResult};

/// Environment variable equivalent to `--vm-nodes` (`1`: non-native pools get VM-like nodes).
pub const ENV_LOCAL_VM_NODES: &str = "SHIPYARD_LOCAL_VM_NODES";
/// Environment variable equivalent to `--per-run` (`1`: the per-run backend, not the engine).
pub const ENV_LOCAL_PER_RUN: &str = "SHIPYARD_LOCAL_PER_RUN";
/// The file in the engine's state directory that names the process hosting it.
pub const ENDPOINT_FILE: &str = "endpoint.json";
/// The account name of the engine's endpoint.
pub const ACCOUNT: &str = "local";
/// How often `run` polls the local engine (unless `SHIPYARD_POLL_INTERVAL_MS` says otherwise):
/// four loopback requests of well under a millisecond each, so a job's end is seen within
/// 25 ms at a cost of about 1% of a core.
pub const LOCAL_POLL: Duration = Duration::from_millis(25);
/// How often a command waits for a pool's deletion on the local engine (a loopback `GET`).
const POOL_GONE_POLL: Duration = Duration::from_millis(10);
/// Why a run's jobs that are still active are terminated when the run deletes the pool it
/// made (a rerun of the same job id then needs `--recreate`, as on the per-run backend).
pub const RUN_ENDED_REASON: &str = "shipyard: the run that made the job's pool ended";
/// Where [`Session::save_results`] keeps the files of `job`'s `task`.
fn results_dir(state: &Path, job: &str, task: &str) -> PathBuf {
    state.join("results").join(job).join(task)
}

/// `files` from the copy a run kept when it deleted its pool; `None` when there is none.
fn saved_files(state: &Path, f: &crate::args::FilesArgs) -> Option<CliResult> {
    let dir = results_dir(state, &f.job, &f.task);
    if !dir.is_dir() {
        return None;
    }
    Some(print_saved(&dir, f))
}

/// `files` of `f` from the kept copy in `dir`.
fn print_saved(dir: &Path, f: &crate::args::FilesArgs) -> CliResult {
    let names = crate::azure_target::file_names(f);
    for name in &names {
        let rel = crate::output::task_file_path(name)?;
        let src = dir.join(rel);
        if !src.is_file() {
            return Err(CliError::Usage(format!(
                "task {}/{} has no file `{name}` (kept in {})",
                f.job,
                f.task,
                dir.display()
            )));
        }
        match &f.out {
            Some(out) => {
                let dest = out.join(rel);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        failed(anyhow::anyhow!("cannot create {}: {e}", parent.display()))
                    })?;
                }
                std::fs::copy(&src, &dest)
                    .map_err(|e| failed(anyhow::anyhow!("cannot write {}: {e}", dest.display())))?;
                eprintln!("{name} -> {}", dest.display());
            }
            None => crate::azure_target::print_file(&src, name, names.len() > 1)?,
        }
    }
    Ok(())
}

/// The directory (in the engine's state directory) of the records of pools that runs made.
const RUN_POOLS_DIR: &str = "run-pools";
/// How long a new process waits for another one that is starting the engine.
const START_WAIT: Duration = Duration::from_secs(20);
/// How long `pool del` (and the end of a `run` that made its pool) waits for the pool to go.
const POOL_GONE_WAIT: Duration = Duration::from_secs(180);

/// The engine's state directory of `config`: `<[local].state_dir>/engine` when the
/// configuration names a local state directory, else [`state_dir`].
pub fn state_dir_of(config: &Config) -> PathBuf {
    match &config.local.state_dir {
        Some(d) => d.join("engine"),
        None => state_dir(),
    }
}

/// The engine's state directory: `<state base>/engine`.
pub fn state_dir() -> PathBuf {
    let serve = crate::serve::default_state_dir();
    match serve.parent() {
        Some(base) => base.join("engine"),
        None => serve.with_file_name("engine"),
    }
}

/// What [`ENDPOINT_FILE`] holds. No `Debug`: it carries the key.
#[derive(Serialize, Deserialize)]
struct Endpoint {
    url: String,
    pid: u32,
    account: String,
    key: String,
}

fn failed(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Failed(e.into())
}

/// A connection to the local engine: hosted by this process, or by another live one.
pub struct Session {
    rt: tokio::runtime::Runtime,
    /// `None` only while dropping.
    client: Option<BatchClient>,
    hosted: Option<Hosted>,
    /// This process's lease on the engine: its host keeps serving while the lease's process
    /// lives (see [`Lease`]).
    _lease: Lease,
}

struct Hosted {
    served: EngineServer,
    /// The endpoint file and what it says; `None` for a private host (see [`Session::open`]).
    endpoint: Option<(PathBuf, Endpoint)>,
    dir: PathBuf,
}

/// Where processes using an engine on a state directory say so (`<dir>/clients/<pid>`).
const CLIENTS_DIR: &str = "clients";

/// A process's lease on the engine of a state directory: a file named by its PID holding its
/// start time (so a reused PID is no lease). Taken before a process looks for a host, so a host
/// that stops serving either sees it or has already withdrawn its endpoint; the host keeps
/// serving while a live process holds one (a run attached to it may still delete its pool).
struct Lease(Option<PathBuf>);

impl Lease {
    fn take(dir: &Path) -> Lease {
        let clients = dir.join(CLIENTS_DIR);
        let pid = std::process::id();
        let path = clients.join(pid.to_string());
        let written = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&clients)
            .and_then(|()| std::fs::write(&path, start_time(pid).unwrap_or_default()));
        match written {
            Ok(()) => Lease(Some(path)),
            Err(e) => {
                tracing::debug!(file = %path.display(), error = %e, "no engine lease");
                Lease(None)
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), which tells a reused PID.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

/// Other live processes holding a lease on the engine of `dir`; stale leases are removed.
fn leases(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir(dir.join(CLIENTS_DIR)) else {
        return vec![];
    };
    let mut live = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let held = std::fs::read_to_string(e.path()).ok();
        match (held, start_time(pid)) {
            (Some(h), Some(now)) if h == now => live.push(pid),
            _ => {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    live.sort_unstable();
    live
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("hosted", &self.hosted.is_some())
            .finish_non_exhaustive()
    }
}

fn client_for(url: &str, key: &str) -> CliResult<BatchClient> {
    let cred = SharedKeyCredential::new(ACCOUNT, key).map_err(failed)?;
    BatchClient::new(url, cred).map_err(failed)
}

fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new("/proc").join(pid.to_string()).exists()
}

fn read_endpoint(dir: &Path) -> Option<Endpoint> {
    let text = std::fs::read_to_string(dir.join(ENDPOINT_FILE)).ok()?;
    match serde_json::from_str(&text) {
        Ok(ep) => Some(ep),
        Err(e) => {
            tracing::warn!(file = %dir.join(ENDPOINT_FILE).display(), error = %e, "ignoring an unreadable endpoint file");
            None
        }
    }
}

/// Writes the endpoint file atomically (a 0600 temporary file renamed into place).
fn write_endpoint(dir: &Path, ep: &Endpoint) -> CliResult<PathBuf> {
    let path = dir.join(ENDPOINT_FILE);
    let tmp = dir.join(format!(".{ENDPOINT_FILE}.{}", ep.pid));
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(serde_json::to_string(ep)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| failed(anyhow::anyhow!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// Whether the engine at `client` answers (an authenticated request within a few seconds).
async fn answers(client: &BatchClient) -> bool {
    match tokio::time::timeout(
        Duration::from_secs(3),
        client.get_pool("shipyard-endpoint-probe"),
    )
    .await
    {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.is_not_found(),
        Err(_) => false,
    }
}

/// Whether `e` says the store is held by another process (which is starting the engine).
fn store_busy(e: &ServeError) -> bool {
    matches!(e, ServeError::Engine { source, .. }
        if matches!(**source, shipyard_local::EngineError::Store { context: "opening", .. }))
}

impl Session {
    /// Connects to the engine on `dir`, hosting it in this process when no live one does.
    /// With `publish`, a hosted engine's endpoint is written for other processes to use, and
    /// this process serves them until they are done. Without it (a short command: a listing,
    /// a download), the engine stays private: a process that starts meanwhile waits for the
    /// store and hosts the engine itself, instead of tying its run to a command that is about
    /// to end.
    pub fn open(dir: &Path, publish: bool) -> CliResult<Session> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                failed(anyhow::anyhow!(
                    "cannot create the engine state directory {}: {e}",
                    dir.display()
                ))
            })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("shipyard-engine")
            .enable_all()
            .build()
            .map_err(|e| failed(anyhow::anyhow!("cannot start the async runtime: {e}")))?;
        let lease = Lease::take(dir);
        let started = std::time::Instant::now();
        loop {
            if let Some(ep) = read_endpoint(dir) {
                if ep.pid != std::process::id() && pid_alive(ep.pid) {
                    let client = client_for(&ep.url, &ep.key)?;
                    if rt.block_on(answers(&client)) {
                        tracing::info!(url = %ep.url, pid = ep.pid, "using the local engine hosted by another shipyard process");
                        return Ok(Session {
                            rt,
                            client: Some(client),
                            hosted: None,
                            _lease: lease,
                        });
                    }
                }
            }
            let key = ServeOptions::random_key();
            let opts = ServeOptions::new(ACCOUNT, key.clone())
                .listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
            match rt.block_on(shipyard_serve::engine::serve_engine(opts, dir.to_path_buf())) {
                Ok(served) => {
                    let url = format!("http://{}", served.server.addr());
                    let ep = Endpoint {
                        url: url.clone(),
                        pid: std::process::id(),
                        account: ACCOUNT.into(),
                        key,
                    };
                    let client = client_for(&url, &ep.key);
                    let endpoint = if publish {
                        write_endpoint(dir, &ep).map(|p| Some((p, ep)))
                    } else {
                        Ok(None)
                    };
                    let (client, endpoint) = match (client, endpoint) {
                        (Ok(c), Ok(p)) => (c, p),
                        (Err(e), _) | (_, Err(e)) => {
                            rt.block_on(served.shutdown());
                            return Err(e);
                        }
                    };
                    tracing::info!(%url, state_dir = %dir.display(), "hosting the local engine in this process");
                    return Ok(Session {
                        rt,
                        client: Some(client),
                        hosted: Some(Hosted {
                            served,
                            endpoint,
                            dir: dir.to_path_buf(),
                        }),
                        _lease: lease,
                    });
                }
                Err(e) if store_busy(&e) && started.elapsed() < START_WAIT => {
                    tracing::debug!(error = %e, "the engine store is held by another process; waiting for its endpoint");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(failed(anyhow::anyhow!(e).context(format!(
                        "cannot start the local engine on {} (another shipyard process may hold it without answering on loopback)",
                        dir.display()
                    ))))
                }
            }
        }
    }

    /// The Batch client of the engine's endpoint.
    pub fn client(&self) -> &BatchClient {
        self.client
            .as_ref()
            .expect("the session's client lives until the session is dropped")
    }

    /// Whether this process hosts the engine.
    pub fn is_host(&self) -> bool {
        self.hosted.is_some()
    }

    fn pool_exists(&self, id: &str) -> CliResult<bool> {
        match self.rt.block_on(self.client().get_pool(id)) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(failed(
                anyhow::anyhow!(e).context(format!("looking up pool `{id}`")),
            )),
        }
    }

    /// Waits until pool `id` is gone (deleting it first with `delete`).
    fn pool_gone(&self, id: &str, delete: bool) -> CliResult {
        let client = self.client();
        self.rt.block_on(async {
            if delete {
                match client.delete_pool(id).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => return Ok(()),
                    Err(e) => {
                        return Err(failed(
                            anyhow::anyhow!(e).context(format!("deleting pool `{id}`")),
                        ))
                    }
                }
            }
            shipyard_submit::wait_pool_deleted(client, id, POOL_GONE_POLL, POOL_GONE_WAIT)
                .await
                .map_err(failed)
        })
    }

    /// Active jobs on `pool` other than `ours`.
    fn other_active_jobs(&self, pool: &str, ours: &[String]) -> Vec<String> {
        let jobs: Vec<_> = match self.rt.block_on(
            self.client()
                .list_jobs(&shipyard_batch_api::ListOptions::default())
                .try_collect(),
        ) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "listing jobs");
                return Vec::new();
            }
        };
        jobs.into_iter()
            .filter(|j: &shipyard_batch_api::models::CloudJob| {
                j.state == Some(JobState::Active)
                    && j.pool_info.as_ref().and_then(|p| p.pool_id.as_deref()) == Some(pool)
            })
            .filter_map(|j| j.id)
            .filter(|id| !ours.contains(id))
            .collect()
    }

    /// Deletes the pools that runs made and could not delete because they were killed
    /// (`kill -9`): each run records the pool it makes in `<state>/run-pools/<pool>` (its pid,
    /// then its job ids, a line each) and removes the record once it has deleted the pool. A
    /// record whose process is gone names an orphan: its jobs are terminated and the pool is
    /// deleted, unless other active jobs use it.
    fn reap_orphan_pools(&self, state: &Path) {
        let Ok(entries) = std::fs::read_dir(state.join(RUN_POOLS_DIR)) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let mut lines = text.lines();
            let pid = lines.next().and_then(|l| l.trim().parse::<u32>().ok());
            if pid.is_some_and(|p| p == std::process::id() || pid_alive(p)) {
                continue;
            }
            let jobs: Vec<String> = lines.map(str::to_string).collect();
            let Some(pool) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if !self.other_active_jobs(&pool, &jobs).is_empty() {
                continue;
            }
            self.end_jobs(&jobs);
            self.wait_jobs_ended(&jobs);
            if self.pool_exists(&pool).unwrap_or(false) {
                eprintln!("shipyard: deleting pool `{pool}`, left by a run that was killed");
                if let Err(e) = self.pool_gone(&pool, true) {
                    crate::report(&e);
                    continue;
                }
            }
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Copies every file of every task of `jobs` into `<state>/results/<job>/<task>/`, before
    /// the run deletes the pool (and with it the nodes' task directories), so that `files`
    /// still reads them after the run ([`saved_files`]).
    fn save_results(&self, state: &Path, jobs: &[String]) {
        use shipyard_batch_api::ListOptions;
        for job in jobs {
            let tasks: Vec<shipyard_batch_api::models::CloudTask> = match self.rt.block_on(
                self.client()
                    .list_tasks(job, &ListOptions::default())
                    .try_collect(),
            ) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%job, error = %e, "listing tasks to keep their files");
                    continue;
                }
            };
            for task in tasks.iter().filter_map(|t| t.id.as_deref()) {
                let dir = results_dir(state, job, task);
                // A rerun (`--recreate`) replaces what an earlier run kept.
                let _ = std::fs::remove_dir_all(&dir);
                let saved = self.rt.block_on(async {
                    let files: Vec<_> = self
                        .client()
                        .list_task_files(job, task, true, &ListOptions::default())
                        .try_collect()
                        .await?;
                    for name in files
                        .iter()
                        .filter(|f| f.is_directory != Some(true))
                        .filter_map(|f| f.name.as_deref())
                    {
                        let Ok(rel) = crate::output::task_file_path(name) else {
                            continue;
                        };
                        let dest = dir.join(rel);
                        if let Some(parent) = dest.parent() {
                            std::fs::create_dir_all(parent).map_err(|e| {
                                anyhow::anyhow!("cannot create {}: {e}", parent.display())
                            })?;
                        }
                        self.client()
                            .download_task_file(job, task, name, &dest, None)
                            .await?;
                    }
                    Ok::<_, anyhow::Error>(())
                });
                match saved {
                    Ok(()) => {}
                    // A task that never ran has no directory: nothing to keep.
                    Err(e)
                        if e.downcast_ref::<shipyard_batch_api::BatchError>()
                            .is_some_and(|b| b.is_not_found()) =>
                    {
                        tracing::debug!(%job, %task, "no task files to keep")
                    }
                    Err(e) => tracing::warn!(%job, %task, error = %e, "keeping the task's files"),
                }
            }
        }
    }

    /// Terminates those of `jobs` that are still active (a run's jobs whose pool the run is
    /// about to delete: nothing is left active without nodes to run on).
    fn end_jobs(&self, jobs: &[String]) {
        for id in jobs {
            let active = self
                .rt
                .block_on(self.client().get_job(id))
                .is_ok_and(|j| j.state == Some(JobState::Active));
            if active {
                if let Err(e) = self
                    .rt
                    .block_on(self.client().terminate_job(id, Some(RUN_ENDED_REASON)))
                {
                    tracing::warn!(job = %id, error = %e, "terminating the job of an ended run");
                }
            }
        }
    }

    /// Waits while the job release of any of `jobs` still has to run or runs on a node, so
    /// that deleting the pool the run made does not kill a release (the removal of the jobs'
    /// task containers is left to the pool's deletion). The engine bounds a release by its
    /// `maxWallClockTime` (15 minutes by default); Ctrl-C or SIGTERM stops waiting.
    fn wait_jobs_ended(&self, jobs: &[String]) {
        let releasing = |id: String| async move {
            let Ok(j) = self.client().get_job(&id).await else {
                return false;
            };
            if !matches!(j.state, Some(JobState::Terminating | JobState::Deleting))
                || j.job_release_task.is_none()
            {
                return false;
            }
            let status: Result<Vec<_>, _> = self
                .client()
                .list_preparation_and_release_status(&id, &Default::default())
                .try_collect()
                .await;
            // Every node that ran the preparation has its release completed (until then the
            // job is still ending; a node without a release, such as an unusable one, leaves
            // the wait to the job's own end).
            status.is_ok_and(|s| {
                s.iter()
                    .filter(|n| n.job_preparation_task_execution_info.is_some())
                    .any(|n| {
                        n.job_release_task_execution_info
                            .as_ref()
                            .is_none_or(|r| r.state != JobReleaseTaskState::Completed)
                    })
            })
        };
        let ending = || async {
            for id in jobs {
                if releasing(id.clone()).await {
                    return true;
                }
            }
            false
        };
        self.rt.block_on(async {
            if !ending().await {
                return;
            }
            tracing::debug!(
                ?jobs,
                "waiting for the jobs' release before deleting the pool"
            );
            // Short steps for the first two seconds (a release is usually short), then backing
            // off to one request per second.
            let wait = async {
                let began = std::time::Instant::now();
                let mut step = POOL_GONE_POLL;
                while ending().await {
                    tokio::time::sleep(step).await;
                    if began.elapsed() > Duration::from_secs(2) {
                        step = (step * 2).min(Duration::from_secs(1));
                    }
                }
            };
            tokio::select! {
                () = wait => {}
                () = stop_signal() => {}
            }
        });
    }

    /// Says which of `jobs` were terminated by someone else (e.g. `jobs term`).
    fn report_terminated(&self, jobs: &[String]) {
        for id in jobs {
            let Ok(job) = self.rt.block_on(self.client().get_job(id)) else {
                continue;
            };
            let reason = job.execution_info.and_then(|i| i.terminate_reason);
            match reason.as_deref() {
                None
                | Some("AllTasksComplete")
                | Some(shipyard_submit::TERMINATE_REASON)
                | Some(RUN_ENDED_REASON) => {}
                Some(r) => eprintln!("shipyard: job `{id}` was terminated ({r})"),
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(hosted) = self.hosted.take() else {
            return;
        };
        let dir = hosted.dir.clone();
        self.rt.block_on(async {
            loop {
                let users = hosted.endpoint.is_some();
                let stopped = !wait_for_active_work(&hosted.served.engine, &dir, users).await;
                let Some((path, ep)) = &hosted.endpoint else {
                    break;
                };
                // Only our own file: a later host may have replaced it.
                if read_endpoint(&dir).is_some_and(|ep| ep.pid == std::process::id()) {
                    let _ = std::fs::remove_file(path);
                }
                // A process that took its lease before the endpoint went may be using the
                // engine: serve it (one that takes it after finds no endpoint and waits for
                // the store).
                if stopped || leases(&dir).is_empty() {
                    break;
                }
                if let Err(e) = write_endpoint(&dir, ep) {
                    tracing::warn!(error = %e, "cannot keep the engine's endpoint");
                    break;
                }
            }
            // The client's idle keep-alive connections keep the served engine in use: close
            // them first, or the engine's close waits for them (10 s).
            drop(self.client.take());
            let t = std::time::Instant::now();
            hosted.served.shutdown().await;
            tracing::debug!(took = ?t.elapsed(), "engine shut down");
        });
    }
}

/// Pools of `engine` still allocating nodes, and jobs that still have tasks to run.
fn active_work(engine: &shipyard_local::Engine) -> Vec<String> {
    let mut work: Vec<String> = engine
        .list_pools()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.allocation_state == Some(AllocationState::Resizing))
        .filter_map(|p| p.id.map(|id| format!("pool {id}")))
        .collect();
    let Ok(jobs) = engine.list_jobs() else {
        return work;
    };
    work.extend(jobs.into_iter().filter_map(|j| {
        let id = j.id?;
        match j.state {
            // Ending in the background: its tasks stop, its release runs.
            Some(JobState::Terminating | JobState::Deleting) => Some(format!("job {id}")),
            Some(JobState::Active) => {
                let counts = engine.task_counts(&id).ok()?;
                (counts.task_counts.active + counts.task_counts.running > 0)
                    .then(|| format!("job {id}"))
            }
            _ => None,
        }
    }));
    work
}

/// Active work on `engine` (see [`active_work`]) and the other processes using it (their
/// leases on `dir`).
fn active_work_or_users(engine: &shipyard_local::Engine, dir: &Path, users: bool) -> Vec<String> {
    let mut work = active_work(engine);
    if !users {
        return work;
    }
    work.extend(
        leases(dir)
            .into_iter()
            .map(|pid| format!("shipyard process {pid}")),
    );
    work
}

/// The host process keeps serving while its engine allocates pools or runs jobs (others may
/// have added them), and (`users`: its endpoint is published) while other shipyard processes
/// use it; `false` when Ctrl-C or SIGTERM stopped the wait (the next engine fails that work
/// with a reason).
async fn wait_for_active_work(engine: &shipyard_local::Engine, dir: &Path, users: bool) -> bool {
    let mut active = active_work_or_users(engine, dir, users);
    if active.is_empty() {
        return true;
    }
    eprintln!(
        "shipyard: this process hosts the local engine; waiting for {} (Ctrl-C abandons the work)",
        active.join(", ")
    );
    let stop = stop_signal();
    tokio::pin!(stop);
    while !active.is_empty() {
        tokio::select! {
            () = &mut stop => return false,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        active = active_work_or_users(engine, dir, users);
    }
    true
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Whether `pool` gets VM-like nodes on the engine (no `containerConfiguration`).
pub fn is_vm_like(pool: &PoolAddParameter) -> bool {
    pool.virtual_machine_configuration
        .as_ref()
        .and_then(|v| v.container_configuration.as_ref())
        .is_none()
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

/// What this machine lacks for VM-like nodes (root, the programs of
/// [`shipyard_vm_node::Binaries`], and `setpriv`, which the engine runs tasks with), `None` if
/// nothing.
pub fn vm_node_missing() -> Option<String> {
    let mut missing: Vec<String> = Vec::new();
    if !is_root() {
        missing.push(
            "root (VM-like nodes are network and mount namespaces with their own dockerd)".into(),
        );
    }
    let binaries = shipyard_vm_node::Binaries::default();
    let setpriv = (std::path::Path::new("setpriv"), "util-linux");
    for (program, package) in binaries
        .missing()
        .into_iter()
        .chain((!shipyard_vm_node::is_executable(setpriv.0)).then_some(setpriv))
    {
        missing.push(format!(
            "`{}` (Debian package {package})",
            program.display()
        ));
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Fails naming what is missing when `pool` needs VM-like nodes this machine cannot make.
fn check_vm_like(pool: &PoolAddParameter) -> CliResult {
    if !is_vm_like(pool) {
        return Ok(());
    }
    match vm_node_missing() {
        None => Ok(()),
        Some(m) => Err(CliError::Usage(format!(
            "pool `{}` has no container configuration, so the local engine makes VM-like nodes for it, \
             which need: {m}; `bash scripts/setup.sh` installs the programs",
            pool.id
        ))),
    }
}

/// The id prefix of the pool a run without `[pool_specification]` gets on the engine
/// (`local-engine-<pid>`).
pub const DEFAULT_POOL_ID: &str = "local-engine";

/// Whether every job of `jobs` can be planned for a native pool (Batch runs its containers):
/// the docker runtime can, host-MPI runtimes (singularity, charliecloud) cannot.
fn all_plan_natively(config: &Config, jobs: &[&crate::config::LoadedJob]) -> bool {
    jobs.iter()
        .all(|j| crate::local_target::plan_on(config, j, true).is_ok())
}

/// `config` as the local engine runs it (`vm_nodes`: `--vm-nodes`).
///
/// - Without `[pool_specification]` (only `run`, `jobs`: `Some`), a pool named
///   [`DEFAULT_POOL_ID`]`-<pid>` sized for the jobs (one node per instance of the largest
///   multi-instance task).
/// - Unless `vm_nodes`, a non-native pool whose jobs all plan natively runs on container nodes:
///   the pool is made native, so Batch's native plan (one container per task) runs, which
///   starts in seconds where VM-like nodes take a dockerd and an image copy per node.
fn local_config<'a>(
    config: &'a Config,
    jobs: Option<Option<&str>>,
    vm_nodes: bool,
) -> CliResult<std::borrow::Cow<'a, Config>> {
    // Planned only where the answer matters (a native pool needs no trial plan); the pool is
    // planned against every configured job.
    let containers =
        || !vm_nodes && all_plan_natively(config, &config.jobs.iter().collect::<Vec<_>>());
    match &config.pool {
        None if jobs.is_some() => {
            let containers = containers();
            let selected = crate::submission::selected_jobs(config, jobs.flatten())?;
            let nodes = selected
                .iter()
                .map(|j| shipyard_local::convert::pool_facts(&j.spec).node_count)
                .max()
                .unwrap_or(1);
            let id = format!("{DEFAULT_POOL_ID}-{}", std::process::id());
            let spec: shipyard_runtime::PoolSpec = toml::from_str(&format!(
                "id = \"{id}\"\nvm_count = {nodes}\n\
                 [vm_configuration.platform_image]\npublisher = \"local\"\noffer = \"local\"\n\
                 sku = \"local\"\nnode_agent_sku_id = \"batch.node.debian 12\"\n\
                 native = {containers}\n"
            ))
            .map_err(|e| failed(anyhow::anyhow!("internal: the default local pool: {e}")))?;
            tracing::info!(
                pool = %id,
                nodes,
                kind = if containers { "container" } else { "VM-like" },
                "no [pool_specification]: the run gets a pool of its own"
            );
            let mut owned = config.clone();
            owned.pool = Some((spec, 0));
            Ok(std::borrow::Cow::Owned(owned))
        }
        Some((pool, _)) if !pool.native() && containers() => {
            tracing::info!(
                pool = %pool.id,
                "the pool is non-native (`native = false`): locally its jobs run on container \
                 nodes with Batch's native plan; --vm-nodes runs the non-native plan on VM-like \
                 nodes as on Azure"
            );
            let mut owned = config.clone();
            if let Some((pool, _)) = owned.pool.as_mut() {
                pool.set_native(true);
            }
            Ok(std::borrow::Cow::Owned(owned))
        }
        _ => Ok(std::borrow::Cow::Borrowed(config)),
    }
}

/// `run` on the local engine: the `--target azure` run through the engine's client. A pool the
/// run created is deleted when it ends. Pools as [`local_config`] makes them.
pub(crate) fn run(global: &GlobalArgs, config: &Config, args: &RunArgs) -> CliResult {
    let config = &*local_config(config, Some(args.job.as_deref()), global.vm_nodes)?;
    let pool_id = config.pool()?.id.clone();
    let submission = crate::submission::submission(config, args.job.as_deref(), true, false, None)?;
    if let Some(p) = &submission.pool {
        check_vm_like(p)?;
    }
    let jobs: Vec<String> = submission.jobs.iter().map(|j| j.job.id.clone()).collect();
    let state = state_dir_of(config);
    let session = Session::open(&state, true)?;
    session.reap_orphan_pools(&state);
    let existed = session.pool_exists(&pool_id)?;
    let record = state.join(RUN_POOLS_DIR).join(&pool_id);
    if !existed {
        let written = std::fs::create_dir_all(record.parent().unwrap_or(&state)).and_then(|()| {
            let lines: Vec<String> = std::iter::once(std::process::id().to_string())
                .chain(jobs.iter().cloned())
                .collect();
            std::fs::write(&record, lines.join("\n") + "\n")
        });
        if let Err(e) = written {
            tracing::warn!(file = %record.display(), error = %e, "recording the pool this run makes");
        }
    }
    let result = crate::azure_target::run_with(
        session.client().clone(),
        crate::azure_target::poll_interval_or(LOCAL_POLL),
        global,
        config,
        args,
    );
    if result.is_err() {
        session.report_terminated(&jobs);
    }
    if !existed {
        let others = session.other_active_jobs(&pool_id, &jobs);
        if others.is_empty() {
            session.end_jobs(&jobs);
            session.wait_jobs_ended(&jobs);
            session.save_results(&state, &jobs);
            tracing::info!(pool = %pool_id, "deleting the pool this run created");
            match session.pool_gone(&pool_id, true) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&record);
                }
                Err(e) => crate::report(&e),
            }
        } else {
            tracing::info!(pool = %pool_id, jobs = ?others, "keeping the pool this run created: other jobs use it");
        }
    }
    result
}

/// Every other command on the local engine (pool, jobs, tasks, files).
pub(crate) fn command(global: &GlobalArgs, command: Command) -> CliResult {
    let loaded = crate::load_optional(global)?.unwrap_or_default();
    let config = local_config(&loaded, None, global.vm_nodes)?;
    let mut vm_pool_added = None;
    if let Command::Pool(PoolCommand::Add) = &command {
        let submission = crate::submission::submission(&config, None, true, false, None)?;
        if let Some(p) = &submission.pool {
            check_vm_like(p)?;
            if is_vm_like(p) {
                vm_pool_added = Some(p.id.clone());
            }
        }
    }
    let deleted = match &command {
        Command::Pool(PoolCommand::Del { pool_id, .. }) => match pool_id {
            Some(id) => Some(id.clone()),
            None => Some(config.pool()?.id.clone()),
        },
        _ => None,
    };
    let state = state_dir_of(&config);
    // Long commands publish the engine they host; short ones keep it private.
    let publish = match &command {
        Command::Pool(
            PoolCommand::Add
            | PoolCommand::Del { .. }
            | PoolCommand::Resize { .. }
            | PoolCommand::Ssh(_),
        ) => true,
        Command::Files(f) => f.follow,
        _ => false,
    };
    let session = Session::open(&state, publish)?;
    if let (Some(id), true) = (&vm_pool_added, session.is_host()) {
        return Err(CliError::Usage(format!(
            "pool `{id}` would get VM-like nodes, which live only as long as the process that \
             hosts the local engine; this command would host it and exit, and the nodes would \
             go with it. `shipyard --vm-nodes run CONFIG` makes the pool for its job; to keep \
             one between commands, add it while another shipyard process (a running `run`) \
             hosts the engine"
        )));
    }
    session.reap_orphan_pools(&state);
    if let Command::Pool(PoolCommand::Ssh(a)) = &command {
        return node_shell(&session, &config, a);
    }
    if let Command::Files(f) = &command {
        if !f.follow {
            let f = f.clone();
            // From the engine while the task's node exists, else from what its run kept.
            return match crate::azure_target::command_with(
                session.client(),
                &config,
                global,
                command,
            ) {
                Ok(()) => Ok(()),
                Err(e) => saved_files(&state, &f).unwrap_or(Err(e)),
            };
        }
    }
    crate::azure_target::command_with(session.client(), &config, global, command)?;
    if let Some(id) = deleted {
        // The host process may end right after: the removal must be finished.
        session.pool_gone(&id, false)?;
    }
    Ok(())
}

/// `pool ssh` on the local engine: a shell (or the given command) in the node's holder
/// container, the long-lived container that is the node of a container pool. The node is
/// `--node`, else the first idle or running one. The engine keeps serving meanwhile (docker runs
/// as a child, not by exec), and its exit code is this command's.
fn node_shell(session: &Session, config: &Config, a: &crate::args::SshArgs) -> CliResult {
    use shipyard_local::engine::labels;
    let pool = crate::azure_target::pool_id_of(config, &a.pool_id)?;
    let node = match &a.node {
        Some(n) => n.clone(),
        None => session
            .rt
            .block_on(crate::azure_target::login_node(session.client(), &pool))?,
    };
    let docker = std::env::var(crate::azure_target::ENV_DOCKER).unwrap_or_else(|_| "docker".into());
    let out = std::process::Command::new(&docker)
        .args(["ps", "-q", "--filter"])
        .arg(format!("label={}={pool}/{node}", labels::NODE))
        .args([
            "--format",
            &format!("{{{{.ID}}}} {{{{.Label \"{}\"}}}}", labels::TASK),
        ])
        .output()
        .map_err(|e| failed(anyhow::anyhow!("cannot run `{docker}`: {e}")))?;
    // Task containers carry the node label too; the holder is the one without a task.
    let holders: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| match l.split_once(' ') {
            Some((id, task)) if task.trim().is_empty() => Some(id.to_string()),
            None if !l.trim().is_empty() => Some(l.trim().to_string()),
            _ => None,
        })
        .collect();
    let container = match holders.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(CliError::Usage(format!(
                "node `{node}` of pool `{pool}` has no node container: VM-like nodes (pools \
                 without container configuration) are namespaces on this machine, which `pool \
                 ssh` does not enter; see `shipyard pool nodes` for the node's address{}",
                if out.status.success() {
                    String::new()
                } else {
                    format!(" ({})", String::from_utf8_lossy(&out.stderr).trim())
                }
            )))
        }
        _ => {
            return Err(CliError::Usage(format!(
                "several local engines have a node `{node}` in a pool `{pool}` (containers {}); \
                 use the state directory (SHIPYARD_STATE_DIR) of the one you mean",
                holders.join(", ")
            )))
        }
    };
    let mut cmd = std::process::Command::new(&docker);
    cmd.arg("exec");
    if a.command.is_empty() {
        cmd.args(["-it", &container, "sh", "-c"])
            .arg("command -v bash >/dev/null && exec bash || exec sh");
    } else {
        cmd.arg("-i").arg(&container).args(&a.command);
    }
    eprintln!("node `{node}` of pool `{pool}`: container {container}");
    let status = cmd
        .status()
        .map_err(|e| failed(anyhow::anyhow!("cannot run `{docker}`: {e}")))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(c) => Err(CliError::TaskExit(u8::try_from(c).unwrap_or(1))),
        None => Err(failed(anyhow::anyhow!(
            "`{docker} exec` was killed by a signal"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shipyard_batch_api::models::{ContainerConfiguration, VirtualMachineConfiguration};

    #[test]
    fn the_endpoint_file_is_private_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ep = Endpoint {
            url: "http://127.0.0.1:1".into(),
            pid: 4242,
            account: ACCOUNT.into(),
            key: "c2VjcmV0".into(),
        };
        let path = write_endpoint(dir.path(), &ep).expect("write");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("stat").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let back = read_endpoint(dir.path()).expect("read back");
        assert_eq!((back.url.as_str(), back.pid), ("http://127.0.0.1:1", 4242));
        assert_eq!(back.key, "c2VjcmV0");
        // rewriting replaces it (a new host), no temporary file stays
        write_endpoint(dir.path(), &ep).expect("rewrite");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(ENDPOINT_FILE)]);
        // garbage is ignored, not trusted
        std::fs::write(&path, "{not json").expect("garbage");
        assert!(read_endpoint(dir.path()).is_none());
    }

    #[test]
    fn only_live_pids_count() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }

    #[test]
    fn pools_without_container_configuration_are_vm_like() {
        let mut p = PoolAddParameter {
            id: "p".into(),
            ..Default::default()
        };
        assert!(is_vm_like(&p));
        p.virtual_machine_configuration = Some(VirtualMachineConfiguration {
            container_configuration: Some(ContainerConfiguration::default()),
            ..Default::default()
        });
        assert!(!is_vm_like(&p));
    }

    fn load(dir: &Path, text: &str) -> Config {
        let p = dir.join("c.toml");
        std::fs::write(&p, text).expect("write config");
        Config::load(&[p]).expect("config")
    }

    const JOB: &str = r#"
[[job_specifications]]
id = "j"
runtime = "RUNTIME"
[[job_specifications.tasks]]
id = "t"
image = "docker://shipyard/mpi:bookworm"
command = "hostname"
[job_specifications.tasks.multi_instance]
num_instances = 3
[job_specifications.tasks.multi_instance.mpi]
runtime = "mpich"
executable_path = "/usr/bin/mpiexec.mpich"
"#;

    /// The pool `run` submits for `config` (`vm_nodes`: `--vm-nodes`).
    fn run_pool(config: &Config, vm_nodes: bool) -> (String, u32, PoolAddParameter) {
        let with = local_config(config, Some(None), vm_nodes).expect("pool");
        let pool = with.pool().expect("a pool");
        let (id, count) = (pool.id.clone(), pool.vm_count.total());
        let submission =
            crate::submission::submission(&with, None, true, false, None).expect("submission");
        (id, count, submission.pool.expect("pool add"))
    }

    #[test]
    fn a_run_without_a_pool_gets_one_for_its_largest_task() {
        crate::link_runtimes();
        let dir = tempfile::tempdir().expect("tempdir");
        let own = format!("{DEFAULT_POOL_ID}-{}", std::process::id());
        // host-MPI runtimes need VM-like nodes, with or without --vm-nodes
        let config = load(dir.path(), &JOB.replace("RUNTIME", "singularity"));
        for vm_nodes in [false, true] {
            let (id, count, pool) = run_pool(&config, vm_nodes);
            assert_eq!((id.as_str(), count), (own.as_str(), 3));
            assert!(is_vm_like(&pool), "vm_nodes {vm_nodes}");
        }
        // docker jobs get container nodes unless --vm-nodes
        let config = load(dir.path(), &JOB.replace("RUNTIME", "docker"));
        let (_, count, pool) = run_pool(&config, false);
        assert_eq!(count, 3);
        assert!(!is_vm_like(&pool), "{pool:?}");
        assert!(is_vm_like(&run_pool(&config, true).2));
        // a configured pool keeps its id
        let configured = load(
            dir.path(),
            &format!(
                "[pool_specification]\nid = \"mine\"\nvm_count = 5\n{}",
                JOB.replace("RUNTIME", "docker")
            ),
        );
        assert_eq!(run_pool(&configured, false).0, "mine");
    }

    #[test]
    fn a_non_native_pool_runs_on_container_nodes_unless_vm_nodes() {
        crate::link_runtimes();
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = "[pool_specification]\nid = \"nn\"\nvm_count = 3\n\
                    inter_node_communication_enabled = true\n\
                    [pool_specification.vm_configuration.platform_image]\n\
                    publisher = \"p\"\noffer = \"o\"\nsku = \"s\"\nnode_agent_sku_id = \"batch.node.ubuntu 22.04\"\nnative = false\n";
        let docker = load(
            dir.path(),
            &format!("{pool}{}", JOB.replace("RUNTIME", "docker")),
        );
        assert!(!docker.pool().expect("pool").native());
        let (_, _, fast) = run_pool(&docker, false);
        assert!(!is_vm_like(&fast), "container nodes by default");
        let (_, _, faithful) = run_pool(&docker, true);
        assert!(is_vm_like(&faithful), "--vm-nodes: the non-native plan");
        // the configuration itself is not changed
        assert!(!docker.pool().expect("pool").native());
        // a job that cannot plan natively keeps the pool non-native
        let singularity = load(
            dir.path(),
            &format!("{pool}{}", JOB.replace("RUNTIME", "singularity")),
        );
        assert!(is_vm_like(&run_pool(&singularity, false).2));
    }

    #[test]
    fn host_mpi_runtimes_route_to_the_engine_and_docker_does_not() {
        crate::link_runtimes();
        let dir = tempfile::tempdir().expect("tempdir");
        for (runtime, engine) in [("singularity", true), ("docker", false)] {
            let config = load(dir.path(), &JOB.replace("RUNTIME", runtime));
            let job = config.job(None).expect("job");
            assert_eq!(
                crate::local_target::needs_engine(&config, job).expect("plans"),
                engine,
                "{runtime}"
            );
        }
    }

    #[test]
    fn vm_nodes_and_per_run_are_global_flags() {
        use clap::Parser as _;
        let parse = |args: &[&str]| crate::args::Cli::try_parse_from(args);
        let cli = parse(&["shipyard", "pool", "list", "--vm-nodes"]).expect("parses");
        assert!(cli.global.vm_nodes && !cli.global.per_run);
        // the older name
        let cli = parse(&["shipyard", "pool", "list", "--engine"]).expect("parses");
        assert!(cli.global.vm_nodes);
        let cli = parse(&["shipyard", "--per-run", "jobs", "list"]).expect("parses");
        assert!(cli.global.per_run);
        assert!(parse(&["shipyard", "--per-run", "--vm-nodes", "jobs", "list"]).is_err());
        let cli = parse(&["shipyard", "pool", "list"]).expect("parses");
        let set = |var: &str| std::env::var(var).is_ok_and(|v| v == "1" || v == "true");
        assert_eq!(cli.global.vm_nodes, set(ENV_LOCAL_VM_NODES));
        assert_eq!(cli.global.per_run, set(ENV_LOCAL_PER_RUN));
    }

    #[test]
    fn the_state_dir_sits_beside_serves() {
        let serve = crate::serve::default_state_dir();
        assert_eq!(state_dir().parent(), serve.parent());
        assert_eq!(
            state_dir().file_name(),
            Some(std::ffi::OsStr::new("engine"))
        );
    }
}
