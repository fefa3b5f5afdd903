//! `--target azure`: an Azure Batch account through `shipyard_batch_api`.
//!
//! The endpoint and credentials come from `[credentials.batch]` and the environment
//! (`SHIPYARD_BATCH_ACCOUNT_URL`, `SHIPYARD_BATCH_ACCOUNT_NAME`, `SHIPYARD_BATCH_ACCOUNT_KEY`,
//! or the `SHIPYARD_AAD_*` service principal).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use shipyard_batch_api::models::{JobPatchParameter, JobState, PoolResizeParameter, TaskState};
use shipyard_batch_api::{
    BatchClient, ClientSecretCredential, Credential, ListOptions, SharedKeyCredential,
};

use crate::args::{
    Command, GlobalArgs, JobsCommand, OutputFormat, PoolCommand, RunArgs, TasksCommand,
};
use crate::config::{Config, ConfigError, LoadedJob, ENV_ACCOUNT_KEY, ENV_ACCOUNT_URL};
use crate::output::{cell, emit, Table};
use crate::render;
use crate::{CliError, CliResult};

/// Environment variable: milliseconds between polls while waiting (default 5000).
pub const ENV_POLL_MS: &str = "SHIPYARD_POLL_INTERVAL_MS";

fn poll_interval() -> Duration {
    std::env::var(ENV_POLL_MS)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(5), Duration::from_millis)
}

/// Builds a client from the configuration's `[credentials.batch]` (after env overrides).
pub fn client(config: &Config) -> CliResult<BatchClient> {
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

fn spinner(global: &GlobalArgs, msg: String) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    if global.quiet {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg}  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

fn to_values<T: serde::Serialize>(items: &[T]) -> Vec<Value> {
    items
        .iter()
        .map(|i| serde_json::to_value(i).unwrap_or(Value::Null))
        .collect()
}

fn plan_jobs<'a>(
    config: &'a Config,
    only: Option<&str>,
) -> CliResult<Vec<(&'a LoadedJob, shipyard_runtime::JobPlan)>> {
    config.validate()?;
    let pool = config.pool()?;
    let jobs: Vec<&LoadedJob> = match only {
        Some(id) => vec![config.job(Some(id))?],
        None => config.jobs.iter().collect(),
    };
    jobs.into_iter()
        .map(|j| {
            render::plan_job(&j.spec, pool)
                .map(|p| (j, p))
                .map_err(|e| CliError::Config(config.plan_error(j, e)))
        })
        .collect()
}

async fn add_pool(client: &BatchClient, config: &Config) -> CliResult<String> {
    let pool = config.pool()?;
    let plans = plan_jobs(config, None)?;
    let refs: Vec<_> = plans.iter().map(|(_, p)| p).collect();
    let param = pool.add_parameter(&refs).map_err(failed)?;
    client.add_pool(&param).await.map_err(failed)?;
    Ok(pool.id.clone())
}

async fn add_jobs(
    client: &BatchClient,
    config: &Config,
    only: Option<&str>,
) -> CliResult<Vec<(String, Vec<String>)>> {
    let pool = config.pool()?;
    let mut added = Vec::new();
    for (job, plan) in plan_jobs(config, only)? {
        let sub = render::job_submission(&job.spec, &plan, &pool.id).map_err(failed)?;
        let task_ids: Vec<String> = sub.tasks.iter().map(|t| t.id.clone()).collect();
        // Like Batch Shipyard, adding to an existing job adds its tasks, unless the job sets
        // `onAllTasksComplete` (it may already have completed).
        match client.add_job(&sub.job).await {
            Ok(_) => {}
            Err(e) if e.code() == Some("JobExists") && sub.patch.is_none() => {
                tracing::info!(job = %job.spec.id, "job exists; adding its tasks");
            }
            Err(e) => {
                return Err(failed(
                    anyhow::Error::from(e).context(format!("adding job `{}`", job.spec.id)),
                ))
            }
        }
        let report = client.add_task_collection(&job.spec.id, sub.tasks).await;
        if !report.all_succeeded() {
            let fails: Vec<String> = report
                .failures()
                .take(5)
                .map(|(id, e)| format!("{id}: {e}"))
                .collect();
            return Err(failed(anyhow::anyhow!(
                "job `{}`: {} of {} tasks could not be added: {}",
                job.spec.id,
                task_ids.len() - report.succeeded(),
                task_ids.len(),
                fails.join("; ")
            )));
        }
        if let Some(patch) = sub.patch {
            let patch: JobPatchParameter = serde_json::from_value(patch).map_err(failed)?;
            client
                .patch_job(&job.spec.id, &patch)
                .await
                .with_context(|| format!("setting onAllTasksComplete of job `{}`", job.spec.id))?;
        }
        added.push((job.spec.id.clone(), task_ids));
    }
    Ok(added)
}

fn pool_id_of(config: Option<&Config>, given: &Option<String>) -> CliResult<String> {
    match (given, config) {
        (Some(id), _) => Ok(id.clone()),
        (None, Some(c)) => Ok(c.pool()?.id.clone()),
        (None, None) => Err(CliError::Usage(
            "which pool? pass --pool-id or a configuration with [pool_specification]".into(),
        )),
    }
}

/// Every command but `run`.
pub(crate) fn command(global: &GlobalArgs, command: Command) -> CliResult {
    let config = crate::load(global, &[])?;
    let client = client(&config)?;
    let format = global.output;
    runtime()?.block_on(async move {
        match command {
            Command::Pool(PoolCommand::Add) => {
                let id = add_pool(&client, &config).await?;
                emit(format, &json!({"created": id}), || {
                    let mut t = Table::new(&["POOL", "STATUS"]);
                    t.row(vec![id.clone(), "created".into()]);
                    t
                });
                Ok(())
            }
            Command::Pool(PoolCommand::List) => {
                let pools: Vec<_> = client
                    .list_pools(&ListOptions::default())
                    .try_collect()
                    .await
                    .map_err(failed)?;
                let rows = to_values(&pools);
                emit(format, &rows, || {
                    let mut t = Table::new(&["POOL", "STATE", "ALLOCATION", "VM SIZE", "NODES"]);
                    for p in &rows {
                        t.row(vec![
                            cell(p, "/id"),
                            cell(p, "/state"),
                            cell(p, "/allocationState"),
                            cell(p, "/vmSize"),
                            cell(p, "/currentDedicatedNodes"),
                        ]);
                    }
                    t
                });
                Ok(())
            }
            Command::Pool(PoolCommand::Del { pool_id, .. }) => {
                let id = pool_id_of(Some(&config), &pool_id)?;
                client.delete_pool(&id).await.map_err(failed)?;
                println_status(format, &id, "deleting");
                Ok(())
            }
            Command::Pool(PoolCommand::Resize {
                dedicated,
                low_priority,
                pool_id,
            }) => {
                let id = pool_id_of(Some(&config), &pool_id)?;
                let resize: PoolResizeParameter = serde_json::from_value(json!({
                    "targetDedicatedNodes": dedicated,
                    "targetLowPriorityNodes": low_priority,
                }))
                .map_err(failed)?;
                client.resize_pool(&id, &resize).await.map_err(failed)?;
                println_status(format, &id, "resizing");
                Ok(())
            }
            Command::Pool(PoolCommand::Nodes { pool_id }) => {
                let id = pool_id_of(Some(&config), &pool_id)?;
                let nodes: Vec<_> = client
                    .list_nodes(&id, &ListOptions::default())
                    .try_collect()
                    .await
                    .map_err(failed)?;
                let rows = to_values(&nodes);
                emit(format, &rows, || {
                    let mut t = Table::new(&["NODE", "STATE", "IP", "VM SIZE"]);
                    for n in &rows {
                        t.row(vec![
                            cell(n, "/id"),
                            cell(n, "/state"),
                            cell(n, "/ipAddress"),
                            cell(n, "/vmSize"),
                        ]);
                    }
                    t
                });
                Ok(())
            }
            Command::Jobs(JobsCommand::Add { job }) => {
                let added = add_jobs(&client, &config, job.as_deref()).await?;
                let rows: Vec<Value> = added
                    .iter()
                    .map(|(id, tasks)| json!({"job": id, "tasks": tasks.len()}))
                    .collect();
                emit(format, &rows, || {
                    let mut t = Table::new(&["JOB", "TASKS ADDED"]);
                    for r in &rows {
                        t.row(vec![cell(r, "/job"), cell(r, "/tasks")]);
                    }
                    t
                });
                Ok(())
            }
            Command::Jobs(JobsCommand::List) => {
                let jobs: Vec<_> = client
                    .list_jobs(&ListOptions::default())
                    .try_collect()
                    .await
                    .map_err(failed)?;
                let rows = to_values(&jobs);
                emit(format, &rows, || {
                    let mut t = Table::new(&["JOB", "STATE", "POOL", "CREATED"]);
                    for j in &rows {
                        t.row(vec![
                            cell(j, "/id"),
                            cell(j, "/state"),
                            cell(j, "/poolInfo/poolId"),
                            cell(j, "/creationTime"),
                        ]);
                    }
                    t
                });
                Ok(())
            }
            Command::Jobs(JobsCommand::Del { job, .. }) => {
                client.delete_job(&job).await.map_err(failed)?;
                println_status(format, &job, "deleting");
                Ok(())
            }
            Command::Jobs(JobsCommand::Term { job }) => {
                client.terminate_job(&job, None).await.map_err(failed)?;
                println_status(format, &job, "terminating");
                Ok(())
            }
            Command::Jobs(JobsCommand::Cmi { job }) => {
                // The job release task of a non-native job removes its containers; terminating
                // the job runs it on every node that ran the job.
                let j = client.get_job(&job).await.map_err(failed)?;
                if j.state == Some(JobState::Active) {
                    client
                        .terminate_job(&job, Some("shipyard jobs cmi"))
                        .await
                        .map_err(failed)?;
                }
                println_status(
                    format,
                    &job,
                    "terminated; job release removes its containers",
                );
                Ok(())
            }
            Command::Jobs(JobsCommand::Tasks { job })
            | Command::Tasks(TasksCommand::List { job }) => {
                let tasks: Vec<_> = client
                    .list_tasks(&job, &ListOptions::default())
                    .try_collect()
                    .await
                    .map_err(failed)?;
                let rows = to_values(&tasks);
                emit(format, &rows, || task_table(&rows));
                Ok(())
            }
            Command::Tasks(TasksCommand::Get { job, task }) => {
                let t = client.get_task(&job, &task).await.map_err(failed)?;
                let v = serde_json::to_value(&t).unwrap_or(Value::Null);
                emit(format, &v, || task_table(std::slice::from_ref(&v)));
                Ok(())
            }
            Command::Tasks(TasksCommand::Term { job, task }) => {
                client.terminate_task(&job, &task).await.map_err(failed)?;
                println_status(format, &format!("{job}/{task}"), "terminated");
                Ok(())
            }
            Command::Files(f) => {
                let names = if f.file.is_empty() {
                    vec!["stdout.txt".to_string(), "stderr.txt".to_string()]
                } else {
                    f.file.clone()
                };
                let tmp = tempdir()?;
                for name in &names {
                    let dest: PathBuf = match &f.out {
                        Some(dir) => dir.join(name),
                        None => tmp.join(name.replace('/', "_")),
                    };
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent)
                            .with_context(|| format!("cannot create {}", parent.display()))?;
                    }
                    client
                        .download_task_file(&f.job, &f.task, name, &dest, None)
                        .await
                        .with_context(|| {
                            format!("downloading {name} of task {}/{}", f.job, f.task)
                        })?;
                    if f.out.is_some() {
                        eprintln!("{name} -> {}", dest.display());
                    } else {
                        if names.len() > 1 {
                            crate::output::print_stdout(format!("==> {name} <==\n").as_bytes());
                        }
                        let data = std::fs::read(&dest)
                            .with_context(|| format!("cannot read {}", dest.display()))?;
                        crate::output::print_stdout(&data);
                    }
                }
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Command::Run(_) | Command::Config(_) | Command::Completions { .. } => Err(
                CliError::Usage("internal: command dispatched to the wrong place".into()),
            ),
        }
    })
}

fn tempdir() -> CliResult<PathBuf> {
    let dir = std::env::temp_dir().join(format!("shipyard-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn println_status(format: OutputFormat, id: &str, status: &str) {
    emit(format, &json!({"id": id, "status": status}), || {
        let mut t = Table::new(&["ID", "STATUS"]);
        t.row(vec![id.to_string(), status.to_string()]);
        t
    });
}

fn task_table(rows: &[Value]) -> Table {
    let mut t = Table::new(&["TASK", "STATE", "EXIT", "NODE", "FAILURE"]);
    for r in rows {
        t.row(vec![
            cell(r, "/id"),
            cell(r, "/state"),
            cell(r, "/executionInfo/exitCode"),
            cell(r, "/nodeInfo/nodeId"),
            cell(r, "/executionInfo/failureInfo/message"),
        ]);
    }
    t
}

/// `run`: create the pool if it does not exist, add the job(s), wait for every task, exit with
/// the first failed task's exit code.
pub(crate) fn run(global: &GlobalArgs, config: &Config, args: &RunArgs) -> CliResult {
    let client = client(config)?;
    let format = global.output;
    let timeout = args.timeout.map(Duration::from_secs);
    runtime()?.block_on(async {
        let pool = config.pool()?;
        if !client.pool_exists(&pool.id).await.map_err(failed)? {
            let sp = spinner(global, format!("creating pool {}", pool.id));
            add_pool(&client, config).await?;
            sp.finish_and_clear();
        }
        let added = add_jobs(&client, config, args.job.as_deref()).await?;
        let total: usize = added.iter().map(|(_, t)| t.len()).sum();
        let bar = ProgressBar::new(total as u64);
        if global.quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} tasks completed  {msg}  {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        let started = Instant::now();
        let mut tails: std::collections::HashMap<(String, String), u64> = Default::default();
        let results = loop {
            let mut done = 0usize;
            let mut all = Vec::new();
            for (job, _) in &added {
                let tasks: Vec<_> = client
                    .list_tasks(job, &ListOptions::default())
                    .try_collect()
                    .await
                    .map_err(failed)?;
                for t in &tasks {
                    if t.state == Some(TaskState::Completed) {
                        done += 1;
                    }
                    if args.tail && t.state == Some(TaskState::Running) {
                        if let Some(id) = &t.id {
                            tail_task(&client, &bar, job, id, &mut tails).await;
                        }
                    }
                }
                all.extend(to_values(&tasks));
            }
            bar.set_position(done as u64);
            if done >= total {
                break all;
            }
            if timeout.is_some_and(|t| started.elapsed() > t) {
                bar.finish_and_clear();
                return Err(failed(anyhow::anyhow!(
                    "--timeout reached with {done}/{total} tasks completed; the job keeps running (`shipyard jobs term`)"
                )));
            }
            tokio::time::sleep(poll_interval()).await;
        };
        bar.finish_and_clear();
        if args.tail {
            for (job, ids) in &added {
                for id in ids {
                    tail_task(&client, &bar, job, id, &mut tails).await;
                }
            }
        }
        emit(format, &results, || task_table(&results));
        let code = results
            .iter()
            .filter_map(|t| {
                let failed = t.pointer("/executionInfo/result").and_then(Value::as_str) == Some("failure");
                let code = t.pointer("/executionInfo/exitCode").and_then(Value::as_i64);
                match code {
                    Some(0) if failed => Some(1),
                    Some(0) => None,
                    Some(c) => Some(if (1..=255).contains(&c) { c } else { 1 }),
                    None if failed => Some(1),
                    None => None,
                }
            })
            .next();
        match code {
            Some(c) => Err(CliError::TaskExit(u8::try_from(c).unwrap_or(1))),
            None => Ok(()),
        }
    })
}

/// Prints the new bytes of a task's stdout.txt (ranged download from the last offset).
async fn tail_task(
    client: &BatchClient,
    bar: &ProgressBar,
    job: &str,
    task: &str,
    offsets: &mut std::collections::HashMap<(String, String), u64>,
) {
    let Ok(dir) = tempdir() else { return };
    let dest = dir.join(format!("{job}-{task}-stdout.txt"));
    let from = *offsets
        .get(&(job.to_string(), task.to_string()))
        .unwrap_or(&0);
    let range = shipyard_batch_api::ByteRange {
        start: from,
        end: None,
    };
    if client
        .download_task_file(job, task, "stdout.txt", &dest, Some(range))
        .await
        .is_err()
    {
        return;
    }
    let Ok(data) = std::fs::read(&dest) else {
        return;
    };
    let _ = std::fs::remove_file(&dest);
    if data.is_empty() {
        return;
    }
    offsets.insert(
        (job.to_string(), task.to_string()),
        from + data.len() as u64,
    );
    let text = String::from_utf8_lossy(&data);
    bar.suspend(|| {
        for line in text.lines() {
            println!("[{task}] {line}");
        }
    });
}
