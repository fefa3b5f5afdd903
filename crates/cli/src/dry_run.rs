//! `--dry-run`: print the Azure Batch REST requests a command would send; send nothing.
//!
//! The requests are `shipyard_batch_api::request` descriptions (a submission's own
//! [`Submission::requests`], and the description of every other operation), which the client
//! sends as they are: what is printed is what is sent.
//!
//! [`Submission::requests`]: shipyard_submit::Submission::requests

use shipyard_batch_api::request::{self, ListOptions, Request};

use crate::args::{
    Command, FilesArgs, GlobalArgs, JobsCommand, OutputFormat, PoolCommand, TasksCommand,
};
use crate::config::Config;
use crate::{CliError, CliResult};

fn print(global: &GlobalArgs, config: &Config, requests: &[Request]) {
    let text = match global.output {
        OutputFormat::Json => format!("{}\n", crate::output::to_json_string(&requests)),
        OutputFormat::Table => request::render_text(requests),
    };
    crate::output::print_stdout(redact_secrets(config, &text).as_bytes());
}

/// `text` with every SAS signature (`sig=...`) and every configured registry password
/// replaced by `<redacted>`: the requests carry them, what is printed does not.
pub fn redact_secrets(config: &Config, text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("sig=") {
        out.push_str(&rest[..i + 4]);
        out.push_str(shipyard_submit::redact::REDACTED);
        let tail = &rest[i + 4..];
        let end = tail
            .find(|c: char| c == '&' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    for c in config.credentials.docker_registry.values() {
        if let Some(p) = c
            .password
            .as_ref()
            .map(|p| p.expose())
            .filter(|p| !p.is_empty())
        {
            out = out.replace(p, shipyard_submit::redact::REDACTED);
        }
    }
    out
}

/// `run --dry-run`: pool add, job add, task collections and job patch.
pub(crate) fn run(global: &GlobalArgs, config: &Config, job: Option<&str>) -> CliResult {
    let submission = crate::submission::submission(config, job, true, true, None)?;
    print(global, config, &submission.requests());
    Ok(())
}

fn pool_id(config: &Config, given: &Option<String>) -> CliResult<String> {
    match given {
        Some(id) => Ok(id.clone()),
        None => Ok(config.pool()?.id.clone()),
    }
}

fn pool_requests(config: &Config, command: &PoolCommand) -> CliResult<Vec<Request>> {
    Ok(match command {
        PoolCommand::Add => crate::submission::submission(config, None, true, true, None)?
            .pool
            .iter()
            .map(request::add_pool)
            .collect(),
        PoolCommand::List => vec![request::list_pools(&ListOptions::default())],
        PoolCommand::Del { pool_id: id, .. } => vec![request::delete_pool(&pool_id(config, id)?)],
        PoolCommand::Resize {
            dedicated,
            low_priority,
            pool_id: id,
        } => vec![request::resize_pool(
            &pool_id(config, id)?,
            &crate::azure_target::resize_parameter(*dedicated, *low_priority),
        )],
        PoolCommand::Nodes { pool_id: id } => vec![request::list_nodes(
            &pool_id(config, id)?,
            &ListOptions::default(),
        )],
        PoolCommand::Ssh(a) => {
            crate::azure_target::ssh_requests(config, &pool_id(config, &a.pool_id)?, a)
        }
    })
}

fn jobs_requests(config: &Config, command: &JobsCommand) -> CliResult<Vec<Request>> {
    Ok(match command {
        JobsCommand::Add { job, .. } => {
            crate::submission::submission(config, job.as_deref(), false, true, None)?.requests()
        }
        JobsCommand::List => vec![request::list_jobs(&ListOptions::default())],
        JobsCommand::Del { job, .. } => vec![request::delete_job(job)],
        JobsCommand::Term { job } => vec![request::terminate_job(job, None)],
        JobsCommand::Tasks { job } => vec![request::list_tasks(job, &ListOptions::default())],
        // Terminated only while active (what `jobs cmi` sends for an active job).
        JobsCommand::Cmi { job } => vec![
            request::get_job(job),
            request::terminate_job(job, Some(crate::azure_target::CMI_REASON)),
        ],
    })
}

fn tasks_requests(command: &TasksCommand) -> Vec<Request> {
    match command {
        TasksCommand::List { job } => vec![request::list_tasks(job, &ListOptions::default())],
        TasksCommand::Get { job, task } => vec![request::get_task(job, task)],
        TasksCommand::Term { job, task } => vec![request::terminate_task(job, task)],
    }
}

fn files_requests(f: &FilesArgs) -> Vec<Request> {
    crate::azure_target::file_names(f)
        .iter()
        .map(|name| request::get_task_file(&f.job, &f.task, name))
        .collect()
}

/// Every other command under `--dry-run`.
pub(crate) fn command(global: &GlobalArgs, config: &Config, command: &Command) -> CliResult {
    let requests = match command {
        Command::Pool(p) => pool_requests(config, p)?,
        Command::Jobs(j) => jobs_requests(config, j)?,
        Command::Tasks(t) => tasks_requests(t),
        Command::Files(f) => files_requests(f),
        Command::Run(_) | Command::Config(_) | Command::Serve(_) | Command::Completions { .. } => {
            return Err(CliError::Usage("this command has no dry run".into()))
        }
    };
    print(global, config, &requests);
    Ok(())
}
