//! `--dry-run`: print the Azure Batch REST requests a command would send; send nothing.
//!
//! The requests come from `shipyard_submit` (a submission's own [`Submission::requests`], and
//! the request description of every other operation), so what is printed is what is sent.
//!
//! [`Submission::requests`]: shipyard_submit::Submission::requests

use shipyard_submit::requests::{self, RestRequest};

use crate::args::{
    Command, FilesArgs, GlobalArgs, JobsCommand, OutputFormat, PoolCommand, TasksCommand,
};
use crate::config::Config;
use crate::{CliError, CliResult};

fn print(global: &GlobalArgs, requests: &[RestRequest]) {
    let text = match global.output {
        OutputFormat::Json => format!("{}\n", crate::output::to_json_string(&requests)),
        OutputFormat::Table => requests::requests_text(requests),
    };
    crate::output::print_stdout(text.as_bytes());
}

/// `run --dry-run`: pool add, job add, task collections and job patch.
pub(crate) fn run(global: &GlobalArgs, config: &Config, job: Option<&str>) -> CliResult {
    let submission = crate::submission::submission(config, job, true)?;
    print(global, &submission.requests());
    Ok(())
}

fn pool_id(config: &Config, given: &Option<String>) -> CliResult<String> {
    match given {
        Some(id) => Ok(id.clone()),
        None => Ok(config.pool()?.id.clone()),
    }
}

fn pool_requests(config: &Config, command: &PoolCommand) -> CliResult<Vec<RestRequest>> {
    Ok(match command {
        PoolCommand::Add => crate::submission::submission(config, None, true)?
            .pool
            .iter()
            .map(requests::add_pool)
            .collect(),
        PoolCommand::List => vec![requests::list_pools()],
        PoolCommand::Del { pool_id: id, .. } => vec![requests::delete_pool(&pool_id(config, id)?)],
        PoolCommand::Resize {
            dedicated,
            low_priority,
            pool_id: id,
        } => vec![requests::resize_pool(
            &pool_id(config, id)?,
            &crate::azure_target::resize_parameter(*dedicated, *low_priority),
        )],
        PoolCommand::Nodes { pool_id: id } => vec![requests::list_nodes(&pool_id(config, id)?)],
    })
}

fn jobs_requests(config: &Config, command: &JobsCommand) -> CliResult<Vec<RestRequest>> {
    Ok(match command {
        JobsCommand::Add { job } => {
            crate::submission::submission(config, job.as_deref(), false)?.requests()
        }
        JobsCommand::List => vec![requests::list_jobs()],
        JobsCommand::Del { job, .. } => vec![requests::delete_job(job)],
        JobsCommand::Term { job } => vec![requests::terminate_job(job)],
        JobsCommand::Tasks { job } => vec![requests::list_tasks(job)],
        JobsCommand::Cmi { job } => vec![requests::list_completed_tasks(job)],
    })
}

fn tasks_requests(command: &TasksCommand) -> Vec<RestRequest> {
    match command {
        TasksCommand::List { job } => vec![requests::list_tasks(job)],
        TasksCommand::Get { job, task } => vec![requests::get_task(job, task)],
        TasksCommand::Term { job, task } => vec![requests::terminate_task(job, task)],
    }
}

fn files_requests(f: &FilesArgs) -> Vec<RestRequest> {
    crate::azure_target::file_names(f)
        .iter()
        .map(|name| requests::get_task_file(&f.job, &f.task, name))
        .collect()
}

/// Every other command under `--dry-run`.
pub(crate) fn command(global: &GlobalArgs, config: &Config, command: &Command) -> CliResult {
    let requests = match command {
        Command::Pool(p) => pool_requests(config, p)?,
        Command::Jobs(j) => jobs_requests(config, j)?,
        Command::Tasks(t) => tasks_requests(t),
        Command::Files(f) => files_requests(f),
        Command::Run(_) | Command::Config(_) | Command::Completions { .. } => {
            return Err(CliError::Usage("this command has no dry run".into()))
        }
    };
    print(global, &requests);
    Ok(())
}
