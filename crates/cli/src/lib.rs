//! The `shipyard` command-line tool, as a library so tests and other tools can drive it.
//!
//! The CLI is thin: configuration ([`config`]) maps onto `shipyard_runtime`'s domain types,
//! planning is the runtime's, Azure Batch is reached through `shipyard_batch_api` and this
//! machine through `shipyard_local`. [`run`] parses nothing itself; [`main_with_args`] is the
//! whole program.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

pub mod args;
pub mod config;
pub mod endpoints;
pub mod output;
pub mod serve;
pub mod submission;

pub mod azure_target;
mod dry_run;
pub mod engine_target;
pub mod local_target;

use args::{Cli, Command, ConfigCommand, GlobalArgs, OutputFormat, RunArgs, Target};
use config::{Config, ConfigError};

/// Links the built-in runtimes so their registrations are in the registry.
fn link_runtimes() {
    shipyard_runtime_docker::link();
    shipyard_runtime_singularity::link();
}

/// Exit code of usage errors (bad flags, bad configuration).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a run stopped by Ctrl-C or SIGTERM.
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit code of operational failures (Docker/Azure errors).
pub const EXIT_FAILURE: u8 = 1;

/// How a command ended badly.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The user asked for something that cannot work (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The configuration is wrong (exit 2); printed with a source snippet.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Something failed while doing it (exit 1).
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
    /// A task failed: exit with this code (1..=255).
    #[error("task failed with exit code {0}")]
    TaskExit(u8),
    /// Ctrl-C or SIGTERM stopped the run (exit 130, as a shell after SIGINT); what was done
    /// about its jobs is said before.
    #[error("interrupted")]
    Interrupted,
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Config(_) => EXIT_USAGE,
            CliError::Failed(_) => EXIT_FAILURE,
            CliError::TaskExit(c) => *c,
            CliError::Interrupted => EXIT_INTERRUPTED,
        }
    }
}

/// Shorthand.
pub type CliResult<T = ()> = Result<T, CliError>;

/// Parses the process arguments, runs the command, prints errors; the process exit code.
pub fn main_with_args() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    init_logging(cli.global.verbose);
    link_runtimes();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHIPYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Prints an error for people (with a snippet for config errors).
pub fn report(e: &CliError) {
    match e {
        CliError::TaskExit(_) | CliError::Interrupted => eprintln!("error: {e}"),
        CliError::Config(c) => {
            eprintln!("error: {c}");
            let snippet = c.snippet();
            if !snippet.is_empty() {
                eprintln!("{snippet}");
            }
        }
        CliError::Failed(err) => {
            eprintln!("error: {err}");
            // A cause whose text the message above already holds says nothing new.
            let mut above = err.to_string();
            for cause in err.chain().skip(1) {
                let text = cause.to_string();
                if !above.contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                above = text;
            }
        }
        CliError::Usage(_) => eprintln!("error: {e}"),
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> CliResult {
    let Cli { global, command } = cli;
    for plugin in &global.plugins {
        shipyard_runtime::registry::load_plugin(plugin)
            .map_err(|e| CliError::Usage(format!("--plugin {}: {e}", plugin.display())))?;
    }
    match command {
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "shipyard", &mut std::io::stdout());
            Ok(())
        }
        Command::Config(ConfigCommand::Check { configs }) => {
            let config = load(&global, &configs)?;
            config_check(&global, &config)
        }
        Command::Config(ConfigCommand::Import { dir, out }) => config_import(&global, &dir, &out),
        Command::Serve(args) => serve::command(&args),
        Command::Run(args) => {
            let config = load(&global, &args.configs)?;
            if global.dry_run {
                return dry_run::run(&global, &config, args.job.as_deref());
            }
            run_command(&global, &config, &args)
        }
        command => {
            if global.dry_run {
                let config = load_optional(&global)?.unwrap_or_default();
                return dry_run::command(&global, &config, &command);
            }
            match global.target {
                Target::Local if global.per_run => local_target::command(&global, command),
                Target::Local => engine_target::command(&global, command),
                Target::Azure => azure_target::command(&global, command),
            }
        }
    }
}

/// Cancels `token` on Ctrl-C or SIGTERM, saying what happens next (`what`). Call inside the
/// async runtime.
pub(crate) fn cancel_on_signal(token: shipyard_submit::CancellationToken, what: &'static str) {
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("shipyard: signal received, {what}");
        token.cancel();
    });
}

fn run_command(global: &GlobalArgs, config: &Config, args: &RunArgs) -> CliResult {
    config.validate()?;
    match global.target {
        Target::Local if global.per_run => local_target::run(global, config, args),
        Target::Local => engine_target::run(global, config, args),
        Target::Azure => azure_target::run(global, config, args),
    }
}

/// The config files named by the flags, in order: `--configdir` files, `-c` files,
/// `--credentials`, `--pool`, `--jobs`, then `extra`.
pub fn config_paths(global: &GlobalArgs, extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(dir) = &global.configdir {
        paths.extend(Config::files_in_dir(dir));
    }
    paths.extend(global.config.iter().cloned());
    paths.extend(global.credentials.iter().cloned());
    paths.extend(global.pool.iter().cloned());
    paths.extend(global.jobs.iter().cloned());
    paths.extend(extra.iter().cloned());
    paths
}

/// Loads the configuration named by the flags; an error when none is named.
pub fn load(global: &GlobalArgs, extra: &[PathBuf]) -> CliResult<Config> {
    let paths = config_paths(global, extra);
    if paths.is_empty() {
        return Err(CliError::Usage(
            "no configuration given: pass -c FILE (or --configdir DIR, or --pool/--jobs FILE); \
             see examples/ for ready-made ones"
                .into(),
        ));
    }
    if let Some(dir) = &global.configdir {
        if Config::files_in_dir(dir).is_empty() && global.config.is_empty() {
            return Err(CliError::Usage(format!(
                "--configdir {}: none of {} (nor Batch Shipyard's credentials/config/pool/jobs .yaml/.json) found there",
                dir.display(),
                config::CONFIGDIR_FILES.join(", ")
            )));
        }
    }
    let config = Config::load(&paths)?;
    if !global.quiet {
        for w in &config.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(config)
}

/// `config import DIR --out DIR2`: DIR's Batch Shipyard files as `DIR2/config.toml`, without
/// secrets (the TOML names their environment variables).
fn config_import(global: &GlobalArgs, dir: &std::path::Path, out: &std::path::Path) -> CliResult {
    let t = shipyard_bs_config::translate_dir(dir, shipyard_bs_config::TranslateOptions::default())
        .map_err(|e| CliError::Config(ConfigError::BatchShipyard(Box::new(e))))?;
    std::fs::create_dir_all(out)
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot create {}: {e}", out.display())))?;
    let dest = out.join("config.toml");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&dest)
        .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", dest.display())))?;
    std::io::Write::write_all(&mut file, t.to_toml_string().as_bytes())
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot write {}: {e}", dest.display())))?;
    if !global.quiet {
        for w in &t.warnings {
            eprintln!("warning: {w}");
        }
    }
    match global.output {
        OutputFormat::Json => println!(
            "{}",
            output::to_json_string(&serde_json::json!({
                "written": dest.display().to_string(),
                "warnings": t.warnings.len(),
            }))
        ),
        OutputFormat::Table => println!("wrote {}", dest.display()),
    }
    Ok(())
}

/// Like [`load`], but `None` when no configuration is named.
pub fn load_optional(global: &GlobalArgs) -> CliResult<Option<Config>> {
    if config_paths(global, &[]).is_empty() {
        return Ok(None);
    }
    load(global, &[]).map(Some)
}

fn config_check(global: &GlobalArgs, config: &Config) -> CliResult {
    config.validate()?;
    config.check_endpoints()?;
    let mut jobs = Vec::new();
    for job in &config.jobs {
        // Against the configured pool; without one, against this machine (the local target).
        let plan = match &config.pool {
            Some((pool, _)) => submission::plan_job(config, &job.spec, pool)
                .map_err(|e| CliError::Config(config.plan_error(job, e)))?,
            None => local_target::local_plan(config, job)?,
        };
        let instances: u32 = plan
            .tasks
            .iter()
            .map(|t| {
                t.multi_instance_settings
                    .as_ref()
                    .map_or(1, |m| m.number_of_instances.unwrap_or(1).max(1) as u32)
            })
            .max()
            .unwrap_or(0);
        jobs.push(serde_json::json!({
            "id": job.spec.id,
            "runtime": job.spec.runtime,
            "tasks": plan.tasks.len(),
            "maxInstances": instances,
            "file": config.files[job.file].path.display().to_string(),
        }));
    }
    let summary = serde_json::json!({
        "valid": true,
        "files": config.files.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>(),
        "pool": config.pool.as_ref().map(|(p, _)| serde_json::json!({
            "id": p.id, "vmSize": p.vm_size, "nodes": p.vm_count.total(),
            "native": p.vm_configuration.platform_image.native,
            "os": if p.is_windows() { "windows" } else { "linux" },
        })),
        "jobs": jobs,
        "credentials": credentials_summary(config),
    });
    match global.output {
        OutputFormat::Json => println!("{}", output::to_json_string(&summary)),
        OutputFormat::Table => {
            println!(
                "configuration OK: {}",
                config
                    .files
                    .iter()
                    .map(|f| f.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let Some((p, _)) = &config.pool {
                println!(
                    "pool {}: {} x {} ({}, {})",
                    p.id,
                    p.vm_count.total(),
                    p.vm_size,
                    if p.is_windows() { "windows" } else { "linux" },
                    if p.vm_configuration.platform_image.native {
                        "native containers"
                    } else {
                        "shipyard-managed containers"
                    }
                );
            }
            let mut t = output::Table::new(&["JOB", "RUNTIME", "TASKS", "MAX NODES"]);
            for j in &jobs {
                t.row(vec![
                    output::cell(j, "/id"),
                    output::cell(j, "/runtime"),
                    output::cell(j, "/tasks"),
                    output::cell(j, "/maxInstances"),
                ]);
            }
            if !jobs.is_empty() {
                print!("{}", t.render());
            }
            println!("credentials: {}", credentials_summary(config));
        }
    }
    Ok(())
}

fn credentials_summary(config: &Config) -> String {
    match &config.credentials.batch {
        Some(b) if b.account_key.is_some() => format!(
            "shared key for account {} (key <redacted>)",
            b.account_name.as_deref().unwrap_or("?")
        ),
        Some(b) if b.aad.is_some() => format!(
            "Entra ID for account {}",
            b.account_service_url.as_deref().unwrap_or("?")
        ),
        _ => "none (only --target local works)".into(),
    }
}
