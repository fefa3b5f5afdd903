//! `--target local`: this machine's Docker engine through `shipyard_local`.
//!
//! A job is planned by its runtime against the pool facts the local backend presents (a native
//! container pool of Linux nodes, [`shipyard_local::convert::pool_facts`]) and the plan is run with
//! [`LocalBackend::run_plan`] behind progress bars; Ctrl-C / SIGTERM cancel the run and the
//! backend removes everything.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shipyard_local::{
    Event, JobOutcome, LocalBackend, LocalOptions, TaskRecord, TaskResult, TaskState,
};
use shipyard_runtime::JobPlan;

use crate::args::{
    Command, FilesArgs, GlobalArgs, JobsCommand, PoolCommand, RunArgs, TasksCommand,
};
use crate::config::{Config, LoadedJob};
use crate::output::{emit, Table};
use crate::{CliError, CliResult};

/// The pool facts a job is planned against locally: the backend's (one node per instance of
/// the largest multi-instance task), with at least the configured pool's node count so that
/// `num_instances = "pool_current_dedicated"` means what it means on Azure.
pub fn local_facts(config: &Config, job: &LoadedJob) -> shipyard_runtime::PoolFacts {
    let mut facts = shipyard_local::convert::pool_facts(&job.spec);
    if let Some((pool, _)) = &config.pool {
        facts.node_count = facts.node_count.max(pool.vm_count.total());
        facts.pool_id = pool.id.clone();
    }
    facts
}

/// Plans `job` for this machine.
pub fn local_plan(config: &Config, job: &LoadedJob) -> CliResult<JobPlan> {
    plan_on(config, job, true).map_err(|e| CliError::Config(config.plan_error(job, e)))
}

/// Plans `job` against the local facts, with or without native container support.
pub(crate) fn plan_on(
    config: &Config,
    job: &LoadedJob,
    native: bool,
) -> Result<JobPlan, shipyard_runtime::RuntimeError> {
    // The same steps as on Azure up to the plan: validate, expand (task factories, merge
    // task), resolve against the configured pool; storage data and registry logins are Azure's.
    job.spec.validate()?;
    let mut spec = job.spec.expanded()?.into_owned();
    if let Some((pool, _)) = &config.pool {
        spec = pool.prepare_job(&spec, None)?;
    }
    let mut facts = local_facts(config, job);
    facts.native_containers = native;
    shipyard_runtime::registry::get(&spec.runtime)?.plan(&spec, &facts)
}

/// Whether `job` runs on the local engine rather than the per-run backend
/// ([`engine_reason`] names why).
pub fn needs_engine(config: &Config, job: &LoadedJob) -> CliResult<bool> {
    Ok(engine_reason(config, job)?.is_some())
}

/// Why `job` must run on the local engine rather than the per-run backend, or `None` when the
/// per-run backend runs it:
///
/// - its runtime plans a pool without container configuration (host MPI: singularity, plugin
///   runtimes such as charliecloud), or plans only for pools without container support: the
///   engine's VM-like nodes run it;
/// - a task, the job preparation or the job release has resource or output files
///   ([`file_transfer`]): the per-run backend does not download or upload them, the engine does.
pub fn engine_reason(config: &Config, job: &LoadedJob) -> CliResult<Option<String>> {
    Ok(match route(config, job)? {
        Route::Engine(reason) => Some(reason),
        Route::PerRun(_) => None,
    })
}

/// Where a job runs here: the per-run backend, with the plan it runs, or the local engine,
/// with the reason (see [`engine_reason`]). Each job is planned once.
enum Route {
    PerRun(Box<JobPlan>),
    Engine(String),
}

fn route(config: &Config, job: &LoadedJob) -> CliResult<Route> {
    let (plan, native_error) = match plan_on(config, job, true) {
        Ok(plan) => (plan, None),
        Err(native) => match plan_on(config, job, false) {
            Ok(plan) => (plan, Some(native)),
            Err(_) => return Err(CliError::Config(config.plan_error(job, native))),
        },
    };
    if plan.pool.container_configuration.is_none() {
        return Ok(Route::Engine(
            "the job's runtime plans a pool without container configuration: \
             running on the local engine (VM-like nodes)"
                .into(),
        ));
    }
    if let Some(what) = file_transfer(&plan) {
        return Ok(Route::Engine(format!(
            "{what}, which only the local engine downloads or uploads: running on the local engine"
        )));
    }
    match native_error {
        None => Ok(Route::PerRun(Box::new(plan))),
        Some(e) => Err(CliError::Config(config.plan_error(job, e))),
    }
}

/// The first part of `plan` with resource or output files (`task `1` has resource files`),
/// or `None`. Multi-instance common resource files count as resource files.
pub fn file_transfer(plan: &JobPlan) -> Option<String> {
    fn some<T>(v: &Option<Vec<T>>) -> bool {
        v.as_ref().is_some_and(|v| !v.is_empty())
    }
    let job = &plan.job;
    if job
        .job_preparation_task
        .as_ref()
        .is_some_and(|t| some(&t.resource_files))
    {
        return Some("the job preparation task has resource files".into());
    }
    if job
        .job_release_task
        .as_ref()
        .is_some_and(|t| some(&t.resource_files))
    {
        return Some("the job release task has resource files".into());
    }
    plan.tasks.iter().find_map(|t| {
        let common = t
            .multi_instance_settings
            .as_ref()
            .is_some_and(|m| some(&m.common_resource_files));
        if some(&t.resource_files) || common {
            Some(format!("task `{}` has resource files", t.id))
        } else if some(&t.output_files) {
            Some(format!("task `{}` has output files", t.id))
        } else {
            None
        }
    })
}

fn options(config: Option<&Config>, stream: bool) -> LocalOptions {
    let mut opts = LocalOptions::default().stream_output(stream);
    if let Some(c) = config {
        if let Some(d) = &c.local.state_dir {
            opts = opts.state_dir(d);
        }
        if let Some(n) = c.local.max_parallel_tasks {
            opts = opts.max_parallel_tasks(n);
        }
        for (k, v) in &c.local.labels {
            opts = opts.label(k, v);
        }
        // An image missing here is pulled with its registry's `credentials.docker_registry`.
        for login in crate::submission::registry_logins(c) {
            opts = opts.registry_login(login);
        }
    }
    opts
}

fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot start the async runtime: {e}")))
}

/// `run` on this machine: plan, run every selected job with progress, exit with the task code.
pub(crate) fn run(global: &GlobalArgs, config: &Config, args: &RunArgs) -> CliResult {
    let jobs: Vec<&LoadedJob> = match &args.job {
        Some(id) => vec![config.job(Some(id))?],
        None if config.jobs.is_empty() => {
            config.job(None)?;
            vec![]
        }
        None => config.jobs.iter().collect(),
    };
    // Host-MPI plans (singularity, charliecloud, ...) need nodes that are machines, not
    // containers, and resource/output files need the engine's file handling: the local engine
    // runs those jobs.
    let mut plans = Vec::new();
    for job in &jobs {
        match route(config, job)? {
            Route::PerRun(plan) => plans.push((job.spec.id.clone(), *plan)),
            Route::Engine(reason) => {
                tracing::info!(
                    job = %job.spec.id,
                    runtime = %job.spec.runtime,
                    "{reason}"
                );
                return crate::engine_target::run(global, config, args);
            }
        }
    }
    let rt = runtime()?;
    let opts = options(Some(config), args.tail).recreate(args.recreate);
    let quiet = global.quiet;
    let timeout = args.timeout.map(Duration::from_secs);
    let format = global.output;
    rt.block_on(async move {
        let backend = LocalBackend::connect(opts)
            .await
            .map_err(anyhow::Error::from)?;
        let cancel = backend.cancel_token();
        crate::cancel_on_signal(
            cancel.clone(),
            "stopping the job and removing its containers",
        );
        if let Some(t) = timeout {
            let c = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(t).await;
                eprintln!(
                    "shipyard: --timeout of {}s reached, stopping the job",
                    t.as_secs()
                );
                c.cancel();
            });
        }
        let mut outcomes = Vec::new();
        for (job_id, plan) in &plans {
            let outcome = run_one(&backend, job_id, plan, quiet).await?;
            let failed = !outcome.succeeded();
            outcomes.push(outcome);
            if failed || cancel.is_cancelled() {
                break;
            }
        }
        print_outcomes(format, &outcomes);
        let code = outcomes
            .iter()
            .map(JobOutcome::exit_code)
            .find(|c| *c != 0)
            .unwrap_or(0);
        if code != 0 {
            return Err(CliError::TaskExit(u8::try_from(code).unwrap_or(1)));
        }
        Ok(())
    })
}

async fn run_one(
    backend: &LocalBackend,
    job_id: &str,
    plan: &JobPlan,
    quiet: bool,
) -> CliResult<JobOutcome> {
    let multi = MultiProgress::new();
    if quiet {
        multi.set_draw_target(ProgressDrawTarget::hidden());
    }
    let bar = multi.add(ProgressBar::new(plan.tasks.len() as u64));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix} [{bar:30}] {pos}/{len} tasks  {msg}  {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(job_id.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let printer_bar = bar.clone();
    let printer = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Output {
                    task,
                    node,
                    coordination,
                    line,
                    ..
                } => {
                    let tag = if coordination { " coord" } else { "" };
                    printer_bar.suspend(|| {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "[{task}/{node}{tag}] {line}");
                    });
                }
                Event::NodeStarted { task, node, .. } => {
                    printer_bar.set_message(format!("{task}: node {node} up"));
                }
                Event::NodesReady { task, nodes } => {
                    printer_bar.set_message(format!("{task}: {nodes} node(s) ready, running"));
                }
                Event::TaskState {
                    task,
                    state: TaskState::Completed,
                    exit_code,
                    failure,
                    ..
                } => {
                    printer_bar.inc(1);
                    let how = match (&failure, exit_code) {
                        (Some(f), _) => format!("failed: {f}"),
                        (None, Some(c)) => format!("exit {c}"),
                        (None, None) => "done".into(),
                    };
                    printer_bar.set_message(format!("{task}: {how}"));
                }
                Event::TaskState { task, state, .. } => {
                    printer_bar.set_message(format!("{task}: {}", state_name(state)));
                }
                Event::TaskRetry {
                    task,
                    attempt,
                    reason,
                } => {
                    printer_bar.set_message(format!("{task}: retry {attempt} ({reason})"));
                }
                _ => {}
            }
        }
    });
    let result = backend.run_plan(job_id, plan, Some(tx)).await;
    let _ = printer.await;
    bar.finish_and_clear();
    result.map_err(|e| match e {
        // Batch's JobExists is a usage error (exit 2): rerun with --recreate, or wait.
        e @ shipyard_local::LocalError::JobExists { .. } => CliError::Usage(e.to_string()),
        e => CliError::Failed(e.into()),
    })
}

fn state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Active => "active",
        TaskState::Preparing => "preparing",
        TaskState::Running => "running",
        TaskState::Completed => "completed",
    }
}

fn result_name(r: Option<TaskResult>) -> &'static str {
    match r {
        Some(TaskResult::Success) => "success",
        Some(TaskResult::Failure) => "failure",
        None => "-",
    }
}

fn print_outcomes(format: crate::args::OutputFormat, outcomes: &[JobOutcome]) {
    let tasks: Vec<&TaskRecord> = outcomes.iter().flat_map(|o| o.tasks.iter()).collect();
    emit(format, &tasks, || task_table(tasks.iter().copied()));
    if format == crate::args::OutputFormat::Table {
        for t in tasks
            .iter()
            .filter(|t| t.result != Some(TaskResult::Success))
        {
            eprintln!(
                "task {}/{} did not succeed; its output: {}",
                t.job_id,
                t.id,
                t.task_dir.display()
            );
        }
    }
}

fn task_table<'a>(tasks: impl Iterator<Item = &'a TaskRecord>) -> Table {
    let mut table = Table::new(&[
        "JOB", "TASK", "STATE", "RESULT", "EXIT", "NODES", "RETRIES", "FAILURE",
    ]);
    for t in tasks {
        table.row(vec![
            t.job_id.clone(),
            t.id.clone(),
            state_name(t.state).into(),
            result_name(t.result).into(),
            t.exit_code.map_or("-".into(), |c| c.to_string()),
            t.nodes.len().to_string(),
            t.retry_count.to_string(),
            t.failure.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    table
}

fn not_local(what: &str, instead: &str) -> CliError {
    CliError::Usage(format!(
        "`{what}` does not apply to --target local: {instead}"
    ))
}

/// Every other command on this machine.
pub(crate) fn command(global: &GlobalArgs, command: Command) -> CliResult {
    let config = crate::load_optional(global)?;
    let opts = options(config.as_ref(), false);
    let store = opts.store();
    let format = global.output;
    match command {
        Command::Pool(PoolCommand::Add) | Command::Pool(PoolCommand::List) => {
            let docker = runtime()?.block_on(async {
                LocalBackend::connect(opts.clone().sweep_on_connect(false)).await
            });
            let pool_id = config
                .as_ref()
                .and_then(|c| c.pool.as_ref().map(|(p, _)| p.id.clone()))
                .unwrap_or_else(|| "local".into());
            let row = serde_json::json!({
                "id": pool_id,
                "target": "local",
                "state": if docker.is_ok() { "active" } else { "unavailable" },
                "stateDir": opts.state_dir.display().to_string(),
                "taskSlots": opts.max_parallel_tasks,
            });
            emit(format, &vec![row.clone()], || {
                let mut t = Table::new(&["POOL", "TARGET", "STATE", "TASK SLOTS", "STATE DIR"]);
                t.row(vec![
                    crate::output::cell(&row, "/id"),
                    "local".into(),
                    crate::output::cell(&row, "/state"),
                    crate::output::cell(&row, "/taskSlots"),
                    crate::output::cell(&row, "/stateDir"),
                ]);
                t
            });
            docker.map_err(|e| CliError::Failed(e.into())).map(|_| ())
        }
        Command::Pool(PoolCommand::Del { .. }) => {
            let report = runtime()?.block_on(async {
                let b = LocalBackend::connect(opts.sweep_on_connect(false)).await?;
                b.sweep().await
            });
            let r = report.map_err(anyhow::Error::from)?;
            let v = serde_json::json!({
                "deadRuns": r.dead_runs, "objectsRemoved": r.objects_removed,
                "liveRuns": r.live_runs, "keyDirsRemoved": r.key_dirs_removed,
            });
            emit(format, &v, || {
                let mut t = Table::new(&["DEAD RUNS", "OBJECTS REMOVED", "LIVE RUNS"]);
                t.row(vec![
                    r.dead_runs.len().to_string(),
                    r.objects_removed.to_string(),
                    r.live_runs.to_string(),
                ]);
                t
            });
            Ok(())
        }
        Command::Pool(PoolCommand::Ssh(a)) => crate::azure_target::local_pool_ssh(&store, &a),
        Command::Pool(PoolCommand::Resize { .. }) => Err(not_local(
            "pool resize",
            "local nodes are containers created per task, sized by num_instances",
        )),
        Command::Pool(PoolCommand::Nodes { .. }) => {
            let jobs = store.list_jobs().map_err(anyhow::Error::from)?;
            let mut rows = Vec::new();
            for j in jobs.iter().filter(|j| j.end_time.is_none()) {
                for t in store.list_tasks(&j.id).map_err(anyhow::Error::from)? {
                    if matches!(t.state, TaskState::Preparing | TaskState::Running) {
                        for n in &t.nodes {
                            rows.push(serde_json::json!({"node": n, "job": t.job_id, "task": t.id}));
                        }
                    }
                }
            }
            emit(format, &rows, || {
                let mut t = Table::new(&["NODE", "JOB", "TASK"]);
                for r in &rows {
                    t.row(vec![
                        crate::output::cell(r, "/node"),
                        crate::output::cell(r, "/job"),
                        crate::output::cell(r, "/task"),
                    ]);
                }
                t
            });
            Ok(())
        }
        Command::Jobs(JobsCommand::Add { job, recreate }) => {
            let config = config.ok_or_else(|| CliError::Usage("jobs add needs a configuration (-c FILE)".into()))?;
            let args = RunArgs {
                configs: vec![],
                job,
                tail: false,
                timeout: None,
                recreate,
            };
            config.validate()?;
            run(global, &config, &args)
        }
        Command::Jobs(JobsCommand::List) => {
            let jobs = store.list_jobs().map_err(anyhow::Error::from)?;
            emit(format, &jobs, || {
                let mut t = Table::new(&["JOB", "STATE", "TASKS", "CREATED", "ENDED", "REASON"]);
                for j in &jobs {
                    let v = serde_json::to_value(j).unwrap_or_default();
                    t.row(vec![
                        j.id.clone(),
                        crate::output::cell(&v, "/state"),
                        j.task_count.to_string(),
                        crate::output::cell(&v, "/creationTime"),
                        crate::output::cell(&v, "/endTime"),
                        j.terminate_reason.clone().unwrap_or_else(|| "-".into()),
                    ]);
                }
                t
            });
            Ok(())
        }
        Command::Jobs(JobsCommand::Tasks { job }) | Command::Tasks(TasksCommand::List { job }) => {
            let tasks = known_job_tasks(&store, &job)?;
            emit(format, &tasks, || task_table(tasks.iter()));
            Ok(())
        }
        Command::Tasks(TasksCommand::Get { job, task }) => {
            let tasks = known_job_tasks(&store, &job)?;
            let t = find_task(&tasks, &job, &task)?;
            emit(format, t, || task_table(std::iter::once(t)));
            Ok(())
        }
        Command::Jobs(JobsCommand::Del { .. }) | Command::Jobs(JobsCommand::Term { .. }) | Command::Jobs(JobsCommand::Cmi { .. }) | Command::Tasks(TasksCommand::Term { .. }) => Err(not_local(
            "jobs del/term/cmi and tasks term",
            "a local job lives in the `shipyard run` process: stop it with Ctrl-C there (everything is removed); \
             `shipyard pool del` removes the leftovers of runs whose process died; \
             jobs run with `--engine` can be terminated with `shipyard --engine jobs term`",
        )),
        Command::Files(f) => files(&store, &f),
        Command::Run(_)
            | Command::Config(_)
            | Command::Serve(_)
            | Command::Completions { .. } => {
            Err(CliError::Usage("internal: command dispatched to the wrong place".into()))
        }
    }
}

fn known_job_tasks(store: &shipyard_local::Store, job: &str) -> CliResult<Vec<TaskRecord>> {
    if store.get_job(job).map_err(anyhow::Error::from)?.is_none() {
        let known: Vec<String> = store
            .list_jobs()
            .map_err(anyhow::Error::from)?
            .into_iter()
            .map(|j| j.id)
            .collect();
        let hint = crate::config::suggest(job, known.iter().map(String::as_str))
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        return Err(CliError::Usage(format!(
            "no local job `{job}`{hint}; `shipyard jobs list` shows the jobs"
        )));
    }
    Ok(store.list_tasks(job).map_err(anyhow::Error::from)?)
}

fn find_task<'a>(tasks: &'a [TaskRecord], job: &str, task: &str) -> CliResult<&'a TaskRecord> {
    tasks.iter().find(|t| t.id == task).ok_or_else(|| {
        let hint = crate::config::suggest(task, tasks.iter().map(|t| t.id.as_str()))
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        CliError::Usage(format!("job `{job}` has no task `{task}`{hint}"))
    })
}

fn files(store: &shipyard_local::Store, f: &FilesArgs) -> CliResult {
    let tasks = known_job_tasks(store, &f.job)?;
    let t = find_task(&tasks, &f.job, &f.task)?;
    if f.follow {
        let name = match f.file.as_slice() {
            [] => "stdout.txt",
            [one] => one.as_str(),
            _ => {
                return Err(CliError::Usage(
                    "--follow streams one file: give at most one --file".into(),
                ))
            }
        };
        let rel = crate::output::task_file_path(name)?;
        return runtime()?.block_on(async {
            shipyard_local::follow_task_file(
                store,
                &f.job,
                &t.id,
                rel,
                std::time::Duration::from_millis(200),
                crate::output::print_stdout,
            )
            .await
            .map(|_| ())
            .map_err(|e| CliError::Failed(e.into()))
        });
    }
    let names = if f.file.is_empty() {
        vec!["stdout.txt".to_string(), "stderr.txt".to_string()]
    } else {
        f.file.clone()
    };
    for name in &names {
        let rel = crate::output::task_file_path(name)?;
        let src = t.task_dir.join(rel);
        let data = std::fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
        match &f.out {
            Some(dir) => {
                let dest: PathBuf = dir.join(rel);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                std::fs::write(&dest, &data)
                    .with_context(|| format!("cannot write {}", dest.display()))?;
                eprintln!("{} -> {}", src.display(), dest.display());
            }
            None => {
                if names.len() > 1 {
                    crate::output::print_stdout(format!("==> {name} <==\n").as_bytes());
                }
                crate::output::print_stdout(&data);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> Config {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(name);
        Config::load(&[p]).expect("example loads")
    }

    #[test]
    fn resource_files_route_the_bag_of_tasks_to_the_engine() {
        crate::link_runtimes();
        let config = example("bag-of-tasks.toml");
        let job = config.job(None).expect("job");
        let reason = engine_reason(&config, job)
            .expect("plans")
            .expect("routed to the engine");
        assert!(reason.contains("task `1` has resource files"), "{reason}");
        assert!(needs_engine(&config, job).expect("plans"));
    }

    #[test]
    fn container_mpi_without_files_stays_on_the_per_run_backend() {
        crate::link_runtimes();
        for name in ["local-openmpi.toml", "native-intelmpi.toml"] {
            let config = example(name);
            let job = config.job(None).expect("job");
            assert_eq!(engine_reason(&config, job).expect("plans"), None, "{name}");
            assert!(!needs_engine(&config, job).expect("plans"), "{name}");
        }
    }

    #[test]
    fn output_files_and_preparation_resource_files_need_the_engine() {
        crate::link_runtimes();
        let config = example("local-openmpi.toml");
        let job = config.job(None).expect("job");
        let plan = local_plan(&config, job).expect("plans");
        assert_eq!(file_transfer(&plan), None);

        let mut outputs = plan.clone();
        outputs.tasks[0].output_files = Some(vec![serde_json::from_value(serde_json::json!({
            "filePattern": "*.txt",
            "destination": {"container": {"containerUrl": "http://127.0.0.1:1/c"}},
            "uploadOptions": {"uploadCondition": "tasksuccess"}
        }))
        .expect("output file")]);
        let id = &outputs.tasks[0].id;
        assert_eq!(
            file_transfer(&outputs),
            Some(format!("task `{id}` has output files"))
        );

        let resource: shipyard_batch_api::models::ResourceFile =
            serde_json::from_value(serde_json::json!({
                "httpUrl": "http://127.0.0.1:1/a.txt", "filePath": "a.txt"
            }))
            .expect("resource file");
        let mut prep = plan.clone();
        let mut task = prep.job.job_preparation_task.clone().unwrap_or_else(|| {
            serde_json::from_value(serde_json::json!({"commandLine": "true"})).expect("prep")
        });
        task.resource_files = Some(vec![resource.clone()]);
        prep.job.job_preparation_task = Some(task);
        assert_eq!(
            file_transfer(&prep),
            Some("the job preparation task has resource files".into())
        );

        // an empty list is no transfer
        let mut empty = plan;
        empty.tasks[0].resource_files = Some(vec![]);
        assert_eq!(file_transfer(&empty), None);
    }
}
