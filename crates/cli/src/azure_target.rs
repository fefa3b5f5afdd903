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
use shipyard_batch_api::models::{AllocationState, JobState, PoolResizeParameter};
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

pub(crate) fn pool_id_of(config: &Config, given: &Option<String>) -> CliResult<String> {
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
            let submission = crate::submission::submission(config, None, true, false, None)?;
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
        PoolCommand::Nodes { pool_id } => pool_nodes(client, config, format, &pool_id).await?,
        PoolCommand::Ssh(a) => pool_ssh(client, config, &a).await?,
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
    let live = live_counts(client, config).await?;
    let submission = crate::submission::submission(config, only, false, false, live)?;
    let opts = SubmitOptions::default()
        .poll_interval(poll_interval())
        .recreate(recreate);
    let submitter = Submitter::new(client.clone(), opts);
    let submitted = submitter.submit(&submission).await.map_err(submit_error)?;
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
    if f.follow {
        return follow_file(client, f).await;
    }
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

pub(crate) fn print_file(path: &Path, name: &str, header: bool) -> CliResult {
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

/// The configured pool's node counts when it exists, for `pool_current_*` instance counts:
/// the current counts, or the targets while the pool is still resizing (the nodes a
/// multi-instance task will wait for). `None` when the pool does not exist yet.
async fn live_counts(client: &BatchClient, config: &Config) -> CliResult<Option<(u32, u32)>> {
    let id = &config.pool()?.id;
    let pool = match client.get_pool(id).await {
        Ok(p) => p,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    let count = |v: Option<i32>| u32::try_from(v.unwrap_or(0)).unwrap_or(0);
    let resizing = pool.allocation_state == Some(AllocationState::Resizing);
    let counts = if resizing {
        (
            count(pool.target_dedicated_nodes),
            count(pool.target_low_priority_nodes),
        )
    } else {
        (
            count(pool.current_dedicated_nodes),
            count(pool.current_low_priority_nodes),
        )
    };
    tracing::debug!(pool = %id, dedicated = counts.0, low_priority = counts.1, resizing, "live pool counts");
    Ok(Some(counts))
}

/// A submission error as the CLI reports it: a job that already exists and has finished is
/// the user's to resolve (`--recreate`, exit 2), an interrupted run exits 130, anything else
/// failed (exit 1).
fn submit_error(e: shipyard_submit::SubmitError) -> CliError {
    use shipyard_submit::SubmitError;
    let cancelled = match &e {
        SubmitError::Cancelled => true,
        SubmitError::Aborted { source, .. } => matches!(**source, SubmitError::Cancelled),
        _ => false,
    };
    match e {
        e @ SubmitError::JobExists { .. } => CliError::Usage(e.to_string()),
        // Ctrl-C or SIGTERM: the jobs were terminated; exit as a shell does after SIGINT.
        e if cancelled => {
            eprintln!("shipyard: {e}");
            CliError::Interrupted
        }
        e => failed(e),
    }
}

/// `run` through `client`, polling every `poll` (an Azure Batch account or the local engine).
pub(crate) fn run_with(
    client: BatchClient,
    poll: Duration,
    global: &GlobalArgs,
    config: &Config,
    args: &RunArgs,
) -> CliResult {
    let live = runtime()?.block_on(live_counts(&client, config))?;
    let submission = crate::submission::submission(config, args.job.as_deref(), true, false, live)?;
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
        let outcome = result.map_err(submit_error)?;
        emit_rows(global.output, &outcome.tasks, TASK_COLUMNS);
        match outcome.exit_code() {
            0 => Ok(()),
            c => Err(CliError::TaskExit(u8::try_from(c).unwrap_or(1))),
        }
    })
}

// ------------------------------------------------------------- node access and streaming

/// Environment variable: the ssh program `pool ssh` runs (default `ssh`), so tests can
/// substitute a recorder.
pub const ENV_SSH: &str = "SHIPYARD_SSH";
/// Environment variable: the docker program the local `pool ssh` runs (default `docker`).
pub const ENV_DOCKER: &str = "SHIPYARD_DOCKER";
/// Batch Shipyard's default node user name.
const DEFAULT_SSH_USER: &str = "shipyard";
/// Days a node user added by `pool ssh` stays valid unless the pool says otherwise.
const DEFAULT_SSH_EXPIRY_DAYS: u32 = 30;
/// Public keys tried in `~/.ssh`, in order, when none is given.
const DEFAULT_PUBLIC_KEYS: [&str; 3] = ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"];

const NODE_COLUMNS: &[(&str, &str)] = &[
    ("NODE", "/id"),
    ("STATE", "/state"),
    ("IP", "/ipAddress"),
    ("VM SIZE", "/vmSize"),
    ("START TASK EXIT", "/startTaskInfo/exitCode"),
    ("START TASK ERROR", "/startTaskInfo/failureInfo/message"),
    ("NODE ERROR", "/errors/0/message"),
];

/// `pool nodes`: each node's state, address, and its start task's exit code and failure
/// (`startTaskInfo`), plus the node's own errors (`unusable` nodes).
async fn pool_nodes(
    client: &BatchClient,
    config: &Config,
    format: OutputFormat,
    pool_id: &Option<String>,
) -> CliResult {
    let id = pool_id_of(config, pool_id)?;
    let nodes: Vec<_> = client
        .list_nodes(&id, &ListOptions::default())
        .try_collect()
        .await
        .with_context(|| format!("listing the nodes of pool `{id}`"))?;
    emit_rows(format, &nodes, NODE_COLUMNS);
    Ok(())
}

/// The public key to install and the private key file to give ssh (when known).
fn ssh_public_key(
    given: Option<&Path>,
    pool: Option<&shipyard_runtime::pool::PoolSsh>,
) -> CliResult<(String, Option<PathBuf>)> {
    if let Some(data) = given
        .is_none()
        .then(|| pool.and_then(|p| p.ssh_public_key_data.clone()))
        .flatten()
    {
        return Ok((
            checked_public_key(&data, "pool_specification.ssh.ssh_public_key_data")?,
            None,
        ));
    }
    let path: PathBuf = match given {
        Some(p) => p.to_path_buf(),
        None => match pool.and_then(|p| p.ssh_public_key.as_ref()) {
            Some(p) => PathBuf::from(p),
            None => {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_default();
                let found = DEFAULT_PUBLIC_KEYS
                    .iter()
                    .map(|k| home.join(".ssh").join(k))
                    .find(|p| p.is_file());
                let Some(found) = found else {
                    return Err(CliError::Usage(format!(
                        "no SSH public key: give --key FILE.pub, set pool_specification.ssh.ssh_public_key, or create ~/.ssh/{} (ssh-keygen -t ed25519)",
                        DEFAULT_PUBLIC_KEYS[0]
                    )));
                };
                found
            }
        },
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let key = checked_public_key(&text, &path.display().to_string())?;
    let private = path
        .to_str()
        .and_then(|p| p.strip_suffix(".pub"))
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    Ok((key, private))
}

/// The first line of `text` when it is an OpenSSH public key; never echoes a private key.
fn checked_public_key(text: &str, source: &str) -> CliResult<String> {
    if text.contains("PRIVATE KEY") {
        return Err(CliError::Usage(format!(
            "{source} holds a private key; give its public key (the `.pub` file)"
        )));
    }
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let kind = line.split_whitespace().next().unwrap_or("");
    let known =
        kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
    if !known || line.split_whitespace().count() < 2 {
        return Err(CliError::Usage(format!(
            "{source} is not an OpenSSH public key (`ssh-ed25519 AAAA... comment`)"
        )));
    }
    Ok(line.to_string())
}

/// `now + days` as RFC 3339 (UTC, whole seconds).
fn rfc3339_in_days(days: u32) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = now + u64::from(days) * 86_400;
    let (secs_of_day, days_since_epoch) = (t % 86_400, t / 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days_since_epoch as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

/// The first node of `pool` that accepts a login (idle or running).
pub(crate) async fn login_node(client: &BatchClient, pool: &str) -> CliResult<String> {
    use shipyard_batch_api::models::ComputeNodeState;
    let nodes: Vec<_> = client
        .list_nodes(pool, &ListOptions::default())
        .try_collect()
        .await
        .with_context(|| format!("listing the nodes of pool `{pool}`"))?;
    let ready = nodes.iter().find(|n| {
        matches!(
            n.state,
            Some(ComputeNodeState::Idle | ComputeNodeState::Running)
        )
    });
    match ready.and_then(|n| n.id.clone()) {
        Some(id) => Ok(id),
        None => {
            let states: Vec<String> = nodes
                .iter()
                .map(|n| {
                    format!(
                        "{} {}",
                        n.id.as_deref().unwrap_or("?"),
                        n.state.as_ref().map_or("unknown", |s| s.as_str())
                    )
                })
                .collect();
            Err(CliError::Usage(format!(
                "pool `{pool}` has no idle or running node to log in to ({}); see `shipyard pool nodes`",
                if states.is_empty() { "no nodes".to_string() } else { states.join(", ") }
            )))
        }
    }
}

/// `pool ssh` on Azure: adds a node user (admin, expiring) with the caller's public key, then
/// replaces this process with ssh to the node's remote login address and port.
async fn pool_ssh(client: &BatchClient, config: &Config, a: &crate::args::SshArgs) -> CliResult {
    use shipyard_batch_api::models::ComputeNodeUser;
    let pool = pool_id_of(config, &a.pool_id)?;
    let pool_ssh = config.pool.as_ref().and_then(|(p, _)| p.ssh.clone());
    let user = a
        .user
        .clone()
        .or_else(|| pool_ssh.as_ref().map(|s| s.username.clone()))
        .unwrap_or_else(|| DEFAULT_SSH_USER.to_string());
    let (public_key, private_key) = ssh_public_key(a.key.as_deref(), pool_ssh.as_ref())?;
    let node = match &a.node {
        Some(n) => n.clone(),
        None => login_node(client, &pool).await?,
    };
    let days = pool_ssh
        .as_ref()
        .and_then(|s| s.expiry_days)
        .unwrap_or(DEFAULT_SSH_EXPIRY_DAYS);
    let account = ComputeNodeUser {
        name: user.clone(),
        is_admin: Some(true),
        expiry_time: Some(rfc3339_in_days(days)),
        password: None,
        ssh_public_key: Some(public_key),
    };
    match client.add_node_user(&pool, &node, &account).await {
        Ok(()) => tracing::info!(%pool, %node, %user, "node user added"),
        Err(e) if e.code() == Some("NodeUserExists") => eprintln!(
            "note: user `{user}` already exists on node `{node}`; logging in with it (if its key differs, pass --user with another name)"
        ),
        Err(e) => {
            return Err(failed(anyhow::Error::new(e).context(format!(
                "adding user `{user}` to node `{node}` of pool `{pool}`"
            ))))
        }
    }
    let login = client
        .get_remote_login_settings(&pool, &node)
        .await
        .with_context(|| format!("reading the remote login settings of node `{node}`"))?;
    let mut argv = vec!["-p".to_string(), login.remote_login_port.to_string()];
    if let Some(k) = private_key {
        argv.extend(["-i".to_string(), k.display().to_string()]);
    }
    argv.push(format!("{user}@{}", login.remote_login_ip_address));
    if !a.command.is_empty() {
        argv.push("--".into());
        argv.extend(a.command.iter().cloned());
    }
    let ssh = std::env::var(ENV_SSH).unwrap_or_else(|_| "ssh".into());
    eprintln!("node `{node}` of pool `{pool}`: {ssh} {}", argv.join(" "));
    exec(&ssh, &argv)
}

/// Replaces this process with `program argv` (returns only when that fails).
fn exec(program: &str, argv: &[String]) -> CliResult {
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(program).args(argv).exec();
    Err(CliError::Failed(anyhow::anyhow!(
        "cannot run `{program}`: {err}"
    )))
}

/// `pool ssh --target local`: an interactive shell (or the given command) in a node container
/// of a running `shipyard run`. The per-run local target has no persistent nodes.
pub(crate) fn local_pool_ssh(store: &shipyard_local::Store, a: &crate::args::SshArgs) -> CliResult {
    use shipyard_local::{labels, TaskState};
    let mut nodes = Vec::new();
    for j in store.list_jobs().map_err(anyhow::Error::from)? {
        if j.end_time.is_some() || a.job.as_ref().is_some_and(|want| *want != j.id) {
            continue;
        }
        for t in store.list_tasks(&j.id).map_err(anyhow::Error::from)? {
            if matches!(t.state, TaskState::Preparing | TaskState::Running) {
                for n in &t.nodes {
                    if a.node.as_ref().is_none_or(|want| want == n) {
                        nodes.push((n.clone(), t.job_id.clone(), t.id.clone()));
                    }
                }
            }
        }
    }
    let (node, job, task) = match nodes.len() {
        0 => {
            return Err(CliError::Usage(
                "the local target has no persistent nodes: a local node is a container of a running task of a `shipyard run`, \
                 removed when the task ends. Start a run, then log in to one of the nodes `shipyard --target local pool nodes` lists \
                 while it runs (--node, --job)"
                    .into(),
            ))
        }
        1 => nodes.remove(0),
        _ => {
            let list: Vec<String> = nodes
                .iter()
                .map(|(n, j, t)| format!("{n} (job {j}, task {t})"))
                .collect();
            return Err(CliError::Usage(format!(
                "several running nodes match; pick one with --node and --job: {}",
                list.join(", ")
            )));
        }
    };
    let docker = std::env::var(ENV_DOCKER).unwrap_or_else(|_| "docker".into());
    let filter = |k: &str, v: &str| ["--filter".to_string(), format!("label={k}={v}")];
    let mut ps = vec!["ps".to_string(), "-q".to_string()];
    ps.extend(filter(labels::JOB, &job));
    ps.extend(filter(labels::TASK, &task));
    ps.extend(filter(labels::NODE, &node));
    let out = std::process::Command::new(&docker)
        .args(&ps)
        .output()
        .with_context(|| format!("cannot run `{docker}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(container) = stdout.split_whitespace().next() else {
        return Err(CliError::Failed(anyhow::anyhow!(
            "node `{node}` of job `{job}` (task `{task}`) has no running container: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    };
    let mut argv = vec!["exec".to_string(), "-it".to_string(), container.to_string()];
    if a.command.is_empty() {
        argv.extend(
            [
                "sh",
                "-c",
                "command -v bash >/dev/null && exec bash || exec sh",
            ]
            .map(String::from),
        );
    } else {
        argv.extend(a.command.iter().cloned());
    }
    eprintln!("node `{node}` of job `{job}` (task `{task}`): container {container}");
    exec(&docker, &argv)
}

/// `files --follow`: prints one task file as it grows, reading from the last offset with
/// `ocp-range` each poll, until the task completes (Batch Shipyard's `data files stream`).
async fn follow_file(client: &BatchClient, f: &FilesArgs) -> CliResult {
    let name = match f.file.as_slice() {
        [] => "stdout.txt".to_string(),
        [one] => one.clone(),
        _ => {
            return Err(CliError::Usage(
                "--follow streams one file: give at most one --file".into(),
            ))
        }
    };
    crate::output::task_file_path(&name)?;
    shipyard_submit::follow_task_file(
        client,
        &f.job,
        &f.task,
        &name,
        poll_interval(),
        crate::output::print_stdout,
    )
    .await
    .map_err(failed)?;
    Ok(())
}

/// What `pool ssh` sends, for `--dry-run`: the node listing when no `--node` is given, the
/// user (its key shown as a placeholder) and the remote login settings.
pub(crate) fn ssh_requests(
    config: &Config,
    pool: &str,
    a: &crate::args::SshArgs,
) -> Vec<shipyard_batch_api::request::Request> {
    use shipyard_batch_api::request;
    let mut out = Vec::new();
    let node = match &a.node {
        Some(n) => n.clone(),
        None => {
            out.push(request::list_nodes(pool, &ListOptions::default()));
            "<first idle or running node>".to_string()
        }
    };
    let pool_ssh = config.pool.as_ref().and_then(|(p, _)| p.ssh.clone());
    let user = shipyard_batch_api::models::ComputeNodeUser {
        name: a
            .user
            .clone()
            .or_else(|| pool_ssh.as_ref().map(|s| s.username.clone()))
            .unwrap_or_else(|| DEFAULT_SSH_USER.to_string()),
        is_admin: Some(true),
        expiry_time: Some(rfc3339_in_days(
            pool_ssh
                .as_ref()
                .and_then(|s| s.expiry_days)
                .unwrap_or(DEFAULT_SSH_EXPIRY_DAYS),
        )),
        password: None,
        ssh_public_key: Some("<your SSH public key>".into()),
    };
    out.push(request::add_node_user(pool, &node, &user));
    out.push(request::get_remote_login_settings(pool, &node));
    out
}
