//! `--target azure`: an Azure Batch account through `shipyard_batch_api`.
//!
//! The endpoint and credentials come from `[credentials.batch]` and the environment
//! (`SHIPYARD_BATCH_ACCOUNT_URL`, `SHIPYARD_BATCH_ACCOUNT_NAME`, `SHIPYARD_BATCH_ACCOUNT_KEY`,
//! or the `SHIPYARD_AAD_*` service principal).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use futures::TryStreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::Value;
use shipyard_batch_api::models::{JobState, PoolResizeParameter};
use shipyard_batch_api::{
    BatchClient, ClientSecretCredential, Credential, ListOptions, SharedKeyCredential,
};
use shipyard_submit::redact::{redacted, redacted_all};
use shipyard_submit::{SubmitEvent, SubmitOptions, Submitter};

use crate::args::{
    Command, FilesArgs, GlobalArgs, JobsCommand, OutputFormat, PoolCommand, RunArgs, TasksCommand,
};
use crate::config::{Config, ConfigError, ENV_ACCOUNT_KEY, ENV_ACCOUNT_URL};
use crate::output::{cell, emit, Table};
use crate::{CliError, CliResult};

/// Environment variable: milliseconds between polls while waiting (default 5000).
pub const ENV_POLL_MS: &str = "SHIPYARD_POLL_INTERVAL_MS";

fn poll_interval() -> Duration {
    poll_interval_or(shipyard_submit::DEFAULT_POLL_INTERVAL)
}

/// [`ENV_POLL_MS`], else `default`.
pub(crate) fn poll_interval_or(default: Duration) -> Duration {
    std::env::var(ENV_POLL_MS)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(default, Duration::from_millis)
}

/// Builds a client from the configuration's `[credentials.batch]` (after env overrides).
pub fn client(config: &Config) -> CliResult<BatchClient> {
    config.check_endpoints()?;
    let missing = |what: &str, hint: &str| {
        CliError::Config(ConfigError::Missing {
            what: what.to_string(),
            hint: hint.to_string(),
        })
    };
    let batch = config.credentials.batch.as_ref().ok_or_else(|| {
        missing(
            "--target azure needs [credentials.batch]",
            "add account_name and account_service_url to credentials.toml and export SHIPYARD_BATCH_ACCOUNT_KEY",
        )
    })?;
    let url = batch.account_service_url.as_deref().ok_or_else(|| {
        missing(
            "credentials.batch.account_service_url is not set",
            &format!("set it in the config or export {ENV_ACCOUNT_URL}"),
        )
    })?;
    let credential: Credential = if let Some(key) = &batch.account_key {
        let name = batch.account_name.as_deref().ok_or_else(|| {
            missing(
                "credentials.batch.account_name is not set",
                "Shared Key needs the account name",
            )
        })?;
        SharedKeyCredential::new(name, key.expose())
            .map_err(|e| CliError::Failed(anyhow::anyhow!(e)))?
            .into()
    } else if let Some(aad) = &batch.aad {
        let need = |v: &Option<String>, field: &str| {
            v.clone().ok_or_else(|| {
                missing(
                    &format!("credentials.batch.aad.{field} is not set"),
                    "Entra ID needs tenant_id, client_id and client_secret",
                )
            })
        };
        let tenant = need(&aad.tenant_id, "tenant_id")?;
        let client_id = need(&aad.client_id, "client_id")?;
        let secret = aad.client_secret.as_ref().ok_or_else(|| {
            missing(
                "credentials.batch.aad.client_secret is not set",
                "export SHIPYARD_AAD_CLIENT_SECRET",
            )
        })?;
        let cred = match &aad.authority_url {
            Some(a) => {
                ClientSecretCredential::with_authority(a, &tenant, client_id, secret.expose())
            }
            None => ClientSecretCredential::new(&tenant, client_id, secret.expose()),
        }
        .map_err(|e| CliError::Failed(anyhow::anyhow!(e)))?;
        cred.into()
    } else {
        return Err(missing(
            "no Batch credential configured",
            &format!("export {ENV_ACCOUNT_KEY} (Shared Key) or configure [credentials.batch.aad]"),
        ));
    };
    BatchClient::new(url, credential).map_err(|e| CliError::Failed(anyhow::anyhow!(e)))
}

fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot start the async runtime: {e}")))
}

fn failed(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Failed(e.into())
}

fn pool_id_of(config: &Config, given: &Option<String>) -> CliResult<String> {
    match given {
        Some(id) => Ok(id.clone()),
        None => Ok(config.pool()?.id.clone()),
    }
}

/// The `Pool_Resize` body of `pool resize`.
/// The terminate reason `jobs cmi` sends.
pub(crate) const CMI_REASON: &str = "shipyard jobs cmi";

pub(crate) fn resize_parameter(dedicated: u32, low_priority: u32) -> PoolResizeParameter {
    let n = |v: u32| Some(i32::try_from(v).unwrap_or(i32::MAX));
    PoolResizeParameter {
        target_dedicated_nodes: n(dedicated),
        target_low_priority_nodes: n(low_priority),
        ..Default::default()
    }
}

/// The files `files` fetches: the given ones, or stdout.txt and stderr.txt.
pub(crate) fn file_names(f: &FilesArgs) -> Vec<String> {
    if f.file.is_empty() {
        vec!["stdout.txt".to_string(), "stderr.txt".to_string()]
    } else {
        f.file.clone()
    }
}

#[derive(Serialize)]
struct Status<'a> {
    id: &'a str,
    status: &'a str,
}

fn println_status(format: OutputFormat, id: &str, status: &str) {
    emit(format, &Status { id, status }, || {
        let mut t = Table::new(&["ID", "STATUS"]);
        t.row(vec![id.to_string(), status.to_string()]);
        t
    });
}

/// Prints `items` (redacted) as JSON, or a table of the `columns` (header, JSON pointer).
fn emit_rows<T: Serialize>(format: OutputFormat, items: &[T], columns: &[(&'static str, &str)]) {
    let rows = redacted_all(items);
    emit(format, &rows, || rows_table(&rows, columns));
}

fn rows_table(rows: &[Value], columns: &[(&'static str, &str)]) -> Table {
    let headers: Vec<&'static str> = columns.iter().map(|(h, _)| *h).collect();
    let mut t = Table::new(&headers);
    for r in rows {
        t.row(columns.iter().map(|(_, p)| cell(r, p)).collect());
    }
    t
}

const TASK_COLUMNS: &[(&str, &str)] = &[
    ("TASK", "/id"),
    ("STATE", "/state"),
    ("EXIT", "/executionInfo/exitCode"),
    ("NODE", "/nodeInfo/nodeId"),
    ("FAILURE", "/executionInfo/failureInfo/message"),
];

/// Every command but `run`.
pub(crate) fn command(global: &GlobalArgs, command: Command) -> CliResult {
    let config = crate::load(global, &[])?;
    let client = client(&config)?;
    command_with(&client, &config, global, command)
}

/// Every command but `run`, through `client` (an Azure Batch account or the local engine).
pub(crate) fn command_with(
    client: &BatchClient,
    config: &Config,
    global: &GlobalArgs,
    command: Command,
) -> CliResult {
    let format = global.output;
    runtime()?.block_on(async move {
        match command {
            Command::Pool(p) => pool_command(client, config, format, p).await,
            Command::Jobs(j) => jobs_command(client, config, format, j).await,
            Command::Tasks(t) => tasks_command(client, format, t).await,
            Command::Files(f) => files(client, &f).await,
            Command::Run(_)
            | Command::Config(_)
            | Command::Serve(_)
            | Command::Completions { .. } => Err(CliError::Usage(
                "internal: command dispatched to the wrong place".into(),
            )),
        }
    })
}

async fn pool_command(
    client: &BatchClient,
    config: &Config,
    format: OutputFormat,
    command: PoolCommand,
) -> CliResult {
    match command {
        PoolCommand::Add => {
            let submission = crate::submission::submission(config, None, true, false)?;
            let Some(pool) = &submission.pool else {
                return Err(CliError::Usage("no pool to add".into()));
            };
            client.add_pool(pool).await.map_err(failed)?;
            emit(format, &Created { created: &pool.id }, || {
                let mut t = Table::new(&["POOL", "STATUS"]);
                t.row(vec![pool.id.clone(), "created".into()]);
                t
            });
        }
        PoolCommand::List => {
            let pools: Vec<_> = client
                .list_pools(&ListOptions::default())
                .try_collect()
                .await
                .map_err(failed)?;
            emit_rows(
                format,
                &pools,
                &[
                    ("POOL", "/id"),
                    ("STATE", "/state"),
                    ("ALLOCATION", "/allocationState"),
                    ("VM SIZE", "/vmSize"),
                    ("NODES", "/currentDedicatedNodes"),
                ],
            );
        }
        PoolCommand::Del { pool_id, .. } => {
            let id = pool_id_of(config, &pool_id)?;
            client.delete_pool(&id).await.map_err(failed)?;
            println_status(format, &id, "deleting");
        }
        PoolCommand::Resize {
            dedicated,
            low_priority,
            pool_id,
        } => {
            let id = pool_id_of(config, &pool_id)?;
            let resize = resize_parameter(dedicated, low_priority);
            client.resize_pool(&id, &resize).await.map_err(failed)?;
            println_status(format, &id, "resizing");
        }
        PoolCommand::Nodes { pool_id } => {
            let id = pool_id_of(config, &pool_id)?;
            let nodes: Vec<_> = client
                .list_nodes(&id, &ListOptions::default())
                .try_collect()
                .await
                .map_err(failed)?;
            emit_rows(
                format,
                &nodes,
                &[
                    ("NODE", "/id"),
                    ("STATE", "/state"),
                    ("IP", "/ipAddress"),
                    ("VM SIZE", "/vmSize"),
                ],
            );
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct Created<'a> {
    created: &'a str,
}

#[derive(Serialize)]
struct AddedJob {
    job: String,
    tasks: usize,
}

async fn jobs_add(
    client: &BatchClient,
    config: &Config,
    format: OutputFormat,
    only: Option<&str>,
    recreate: bool,
) -> CliResult {
    let submission = crate::submission::submission(config, only, false, false)?;
    let opts = SubmitOptions::default()
        .poll_interval(poll_interval())
        .recreate(recreate);
    let submitter = Submitter::new(client.clone(), opts);
    let submitted = submitter.submit(&submission).await.map_err(failed)?;
    let rows: Vec<AddedJob> = submitted
        .jobs
        .iter()
        .map(|j| AddedJob {
            job: j.id.clone(),
            tasks: j.tasks.len(),
        })
        .collect();
    emit(format, &rows, || {
        let mut t = Table::new(&["JOB", "TASKS ADDED"]);
        for r in &rows {
            t.row(vec![r.job.clone(), r.tasks.to_string()]);
        }
        t
    });
    Ok(())
}

async fn jobs_command(
    client: &BatchClient,
    config: &Config,
    format: OutputFormat,
    command: JobsCommand,
) -> CliResult {
    match command {
        JobsCommand::Add { job, recreate } => {
            return jobs_add(client, config, format, job.as_deref(), recreate).await
        }
        JobsCommand::List => {
            let jobs: Vec<_> = client
                .list_jobs(&ListOptions::default())
                .try_collect()
                .await
                .map_err(failed)?;
            emit_rows(
                format,
                &jobs,
                &[
                    ("JOB", "/id"),
                    ("STATE", "/state"),
                    ("POOL", "/poolInfo/poolId"),
                    ("CREATED", "/creationTime"),
                ],
            );
        }
        JobsCommand::Del { job, .. } => {
            client.delete_job(&job).await.map_err(failed)?;
            println_status(format, &job, "deleting");
        }
        JobsCommand::Term { job } => {
            client.terminate_job(&job, None).await.map_err(failed)?;
            println_status(format, &job, "terminating");
        }
        JobsCommand::Cmi { job } => {
            // The job release task of a non-native job removes its containers; terminating
            // the job runs it on every node that ran the job.
            let j = client.get_job(&job).await.map_err(failed)?;
            if j.state == Some(JobState::Active) {
                client
                    .terminate_job(&job, Some(CMI_REASON))
                    .await
                    .map_err(failed)?;
            }
            println_status(
                format,
                &job,
                "terminated; job release removes its containers",
            );
        }
        JobsCommand::Tasks { job } => return list_tasks(client, format, &job).await,
    }
    Ok(())
}

async fn list_tasks(client: &BatchClient, format: OutputFormat, job: &str) -> CliResult {
    let tasks: Vec<_> = client
        .list_tasks(job, &ListOptions::default())
        .try_collect()
        .await
        .map_err(failed)?;
    emit_rows(format, &tasks, TASK_COLUMNS);
    Ok(())
}

async fn tasks_command(
    client: &BatchClient,
    format: OutputFormat,
    command: TasksCommand,
) -> CliResult {
    match command {
        TasksCommand::List { job } => list_tasks(client, format, &job).await,
        TasksCommand::Get { job, task } => {
            let t = client.get_task(&job, &task).await.map_err(failed)?;
            let v = redacted(&t);
            emit(format, &v, || {
                rows_table(std::slice::from_ref(&v), TASK_COLUMNS)
            });
            Ok(())
        }
        TasksCommand::Term { job, task } => {
            client.terminate_task(&job, &task).await.map_err(failed)?;
            println_status(format, &format!("{job}/{task}"), "terminated");
            Ok(())
        }
    }
}

async fn files(client: &BatchClient, f: &FilesArgs) -> CliResult {
    let names = file_names(f);
    let tmp = tempfile::Builder::new()
        .prefix("shipyard-files-")
        .tempdir()
        .context("cannot create a private temporary directory")?;
    for name in &names {
        let rel = crate::output::task_file_path(name)?;
        let dest: PathBuf = match &f.out {
            Some(dir) => dir.join(rel),
            None => tmp.path().join(name.replace('/', "_")),
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        client
            .download_task_file(&f.job, &f.task, name, &dest, None)
            .await
            .with_context(|| format!("downloading {name} of task {}/{}", f.job, f.task))?;
        if f.out.is_some() {
            eprintln!("{name} -> {}", dest.display());
        } else {
            print_file(&dest, name, names.len() > 1)?;
        }
    }
    Ok(())
}

fn print_file(path: &Path, name: &str, header: bool) -> CliResult {
    if header {
        crate::output::print_stdout(format!("==> {name} <==\n").as_bytes());
    }
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    crate::output::print_stdout(&data);
    Ok(())
}

fn progress_bar(global: &GlobalArgs, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if global.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} tasks completed  {msg}  {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Shows one event of a run: output lines on stdout, the rest on the progress bar / stderr.
fn show_event(bar: &ProgressBar, event: SubmitEvent) {
    match event {
        SubmitEvent::Output { task, line, .. } => bar.suspend(|| {
            crate::output::print_stdout(format!("[{task}] {line}\n").as_bytes());
        }),
        SubmitEvent::PoolCreating { pool } => bar.set_message(format!("creating pool {pool}")),
        SubmitEvent::Progress { completed, .. } => bar.set_position(completed as u64),
        SubmitEvent::TaskState { task, state, .. } => {
            bar.set_message(format!("{task}: {}", state.as_str()));
        }
        SubmitEvent::JobTerminated { job, .. } => bar.suspend(|| {
            eprintln!("shipyard: terminated job `{job}` so its job release task runs");
        }),
        SubmitEvent::PoolResizeError {
            pool,
            code,
            message,
        } => bar.suspend(|| {
            eprintln!("shipyard: pool `{pool}` resize error {code}: {message}");
        }),
        _ => {}
    }
}

/// `run`: create the pool if it does not exist, add the job(s), wait for every task (failing
/// early when a prep/start task fails or a node is unusable), exit with the first failed
/// task's exit code. On failure, timeout or Ctrl-C the jobs are terminated.
pub(crate) fn run(global: &GlobalArgs, config: &Config, args: &RunArgs) -> CliResult {
    run_with(client(config)?, poll_interval(), global, config, args)
}

/// `run` through `client`, polling every `poll` (an Azure Batch account or the local engine).
pub(crate) fn run_with(
    client: BatchClient,
    poll: Duration,
    global: &GlobalArgs,
    config: &Config,
    args: &RunArgs,
) -> CliResult {
    let submission = crate::submission::submission(config, args.job.as_deref(), true, false)?;
    let mut opts = SubmitOptions::default()
        .poll_interval(poll)
        .stream_output(args.tail)
        .recreate(args.recreate);
    if let Some(t) = args.timeout {
        opts = opts.timeout(Duration::from_secs(t));
    }
    let submitter = Submitter::new(client, opts);
    runtime()?.block_on(async {
        crate::cancel_on_signal(submitter.cancel_token(), "terminating the job(s)");
        let bar = progress_bar(global, submission.task_count() as u64);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let printer_bar = bar.clone();
        let printer = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                show_event(&printer_bar, ev);
            }
        });
        let result = submitter.run(&submission, Some(tx)).await;
        let _ = printer.await;
        bar.finish_and_clear();
        let outcome = result.map_err(failed)?;
        emit_rows(global.output, &outcome.tasks, TASK_COLUMNS);
        match outcome.exit_code() {
            0 => Ok(()),
            c => Err(CliError::TaskExit(u8::try_from(c).unwrap_or(1))),
        }
    })
}
