//! `--dry-run`: print the Azure Batch REST requests a command would send; send nothing.

use serde_json::{json, Value};

use crate::args::{Command, GlobalArgs, JobsCommand, OutputFormat, PoolCommand, TasksCommand};
use crate::config::{Config, LoadedJob};
use crate::render::{self, RestRequest, API_VERSION};
use crate::{CliError, CliResult};
use shipyard_runtime::PoolSpec;

fn print(global: &GlobalArgs, requests: &[RestRequest]) {
    let text = match global.output {
        OutputFormat::Json => format!("{}\n", crate::output::to_json_string(&requests)),
        OutputFormat::Table => render::requests_text(requests),
    };
    crate::output::print_stdout(text.as_bytes());
}

fn plan_error(config: &Config, job: &LoadedJob, e: shipyard_runtime::RuntimeError) -> CliError {
    CliError::Config(config.plan_error(job, e))
}

/// The pool requests plus job requests of `jobs` (all jobs when `None`).
pub(crate) fn submission(
    config: &Config,
    job: Option<&str>,
    with_pool: bool,
    dry_run: bool,
) -> CliResult<Vec<RestRequest>> {
    config.validate()?;
    let pool = config.pool()?;
    let jobs: Vec<&LoadedJob> = match job {
        Some(id) => vec![config.job(Some(id))?],
        None => config.jobs.iter().collect(),
    };
    let mut plans = Vec::with_capacity(jobs.len());
    for j in &jobs {
        let plan = render::plan_job(&j.spec, pool).map_err(|e| plan_error(config, j, e))?;
        plans.push(plan);
    }
    let mut out = Vec::new();
    if with_pool {
        let refs: Vec<_> = plans.iter().collect();
        out.push(render::pool_request(pool, &refs).map_err(|e| anyhow::anyhow!(e))?);
    }
    for (j, plan) in jobs.iter().zip(&plans) {
        out.extend(
            render::job_requests(&j.spec, plan, &pool.id, dry_run)
                .map_err(|e| plan_error(config, j, e))?,
        );
    }
    Ok(out)
}

/// `run --dry-run`: pool add, job add and task collections.
pub(crate) fn run(global: &GlobalArgs, config: &Config, job: Option<&str>) -> CliResult {
    let requests = submission(config, job, true, true)?;
    print(global, &requests);
    Ok(())
}

fn req(method: &'static str, path: String, definition: &'static str, body: Value) -> RestRequest {
    let sep = if path.contains('?') { '&' } else { '?' };
    RestRequest {
        method,
        path: format!("{path}{sep}api-version={API_VERSION}"),
        definition,
        body,
    }
}

fn pool_id(config: &Config, given: &Option<String>) -> CliResult<String> {
    match given {
        Some(id) => Ok(id.clone()),
        None => Ok(config.pool()?.id.clone()),
    }
}

/// Every other command under `--dry-run`.
pub(crate) fn command(global: &GlobalArgs, config: &Config, command: &Command) -> CliResult {
    let requests = match command {
        Command::Pool(PoolCommand::Add) => {
            config.validate()?;
            let pool: &PoolSpec = config.pool()?;
            let mut plans = Vec::new();
            for j in &config.jobs {
                plans.push(render::plan_job(&j.spec, pool).map_err(|e| plan_error(config, j, e))?);
            }
            let refs: Vec<_> = plans.iter().collect();
            vec![render::pool_request(pool, &refs).map_err(|e| anyhow::anyhow!(e))?]
        }
        Command::Pool(PoolCommand::List) => vec![req("GET", "/pools".into(), "-", Value::Null)],
        Command::Pool(PoolCommand::Del { pool_id: id, .. }) => {
            let id = pool_id(config, id)?;
            vec![req("DELETE", format!("/pools/{id}"), "-", Value::Null)]
        }
        Command::Pool(PoolCommand::Resize {
            dedicated,
            low_priority,
            pool_id: id,
        }) => {
            let id = pool_id(config, id)?;
            vec![req(
                "POST",
                format!("/pools/{id}/resize"),
                "PoolResizeParameter",
                json!({"targetDedicatedNodes": dedicated, "targetLowPriorityNodes": low_priority}),
            )]
        }
        Command::Pool(PoolCommand::Nodes { pool_id: id }) => {
            let id = pool_id(config, id)?;
            vec![req("GET", format!("/pools/{id}/nodes"), "-", Value::Null)]
        }
        Command::Jobs(JobsCommand::Add { job }) => submission(config, job.as_deref(), false, true)?,
        Command::Jobs(JobsCommand::List) => vec![req("GET", "/jobs".into(), "-", Value::Null)],
        Command::Jobs(JobsCommand::Del { job, .. }) => {
            vec![req("DELETE", format!("/jobs/{job}"), "-", Value::Null)]
        }
        Command::Jobs(JobsCommand::Term { job }) => vec![req(
            "POST",
            format!("/jobs/{job}/terminate"),
            "JobTerminateParameter",
            json!({"terminateReason": "UserTerminate"}),
        )],
        Command::Jobs(JobsCommand::Tasks { job }) | Command::Tasks(TasksCommand::List { job }) => {
            vec![req("GET", format!("/jobs/{job}/tasks"), "-", Value::Null)]
        }
        Command::Jobs(JobsCommand::Cmi { job }) => vec![req(
            "GET",
            format!("/jobs/{job}/tasks?$filter=state%20eq%20'completed'"),
            "-",
            Value::Null,
        )],
        Command::Tasks(TasksCommand::Get { job, task }) => {
            vec![req(
                "GET",
                format!("/jobs/{job}/tasks/{task}"),
                "-",
                Value::Null,
            )]
        }
        Command::Tasks(TasksCommand::Term { job, task }) => vec![req(
            "POST",
            format!("/jobs/{job}/tasks/{task}/terminate"),
            "-",
            Value::Null,
        )],
        Command::Files(f) => {
            let files = if f.file.is_empty() {
                vec!["stdout.txt".to_string(), "stderr.txt".to_string()]
            } else {
                f.file.clone()
            };
            files
                .iter()
                .map(|name| {
                    req(
                        "GET",
                        format!("/jobs/{}/tasks/{}/files/{name}", f.job, f.task),
                        "-",
                        Value::Null,
                    )
                })
                .collect()
        }
        Command::Run(_) | Command::Config(_) | Command::Completions { .. } => {
            return Err(CliError::Usage("this command has no dry run".into()))
        }
    };
    print(global, &requests);
    Ok(())
}
