//! Turning the configuration into a [`Submission`]: what `--dry-run` prints and what
//! `--target azure` submits (through `shipyard_submit`).
//!
//! The planning itself is the runtime's ([`shipyard_runtime::ContainerRuntime::plan`]); this
//! module only adds the pool's own settings from `[pool_specification]`. Every job is planned
//! once per command.

use shipyard_runtime::{JobPlan, JobSpec, PoolSpec, RuntimeError};
use shipyard_submit::Submission;

use crate::config::{Config, LoadedJob};
use crate::{CliError, CliResult};

/// Plans `job` with its configured runtime on `pool`.
pub fn plan_job(job: &JobSpec, pool: &PoolSpec) -> Result<JobPlan, RuntimeError> {
    let runtime = shipyard_runtime::registry::get(&job.runtime)?;
    runtime.plan(job, &pool.facts())
}

/// The jobs a command acts on: `only`, or every configured job.
pub fn selected_jobs<'a>(config: &'a Config, only: Option<&str>) -> CliResult<Vec<&'a LoadedJob>> {
    Ok(match only {
        Some(id) => vec![config.job(Some(id))?],
        None => config.jobs.iter().collect(),
    })
}

/// The submission of the selected jobs on the configured pool; with `create_pool`, the pool
/// (planned against every configured job) is created when missing.
pub fn submission(config: &Config, only: Option<&str>, create_pool: bool) -> CliResult<Submission> {
    config.validate()?;
    let pool = config.pool()?;
    let plan = |j: &LoadedJob| {
        plan_job(&j.spec, pool).map_err(|e| CliError::Config(config.plan_error(j, e)))
    };
    let selected = selected_jobs(config, only)?;
    // The pool is sized for every configured job; without it only the selected ones are planned.
    let planned: Vec<&LoadedJob> = if create_pool {
        config.jobs.iter().collect()
    } else {
        selected.clone()
    };
    let mut plans = Vec::with_capacity(planned.len());
    for j in planned {
        plans.push((j.spec.id.as_str(), plan(j)?));
    }
    let mut submission = Submission::new(&pool.id);
    if create_pool {
        let refs: Vec<&JobPlan> = plans.iter().map(|(_, p)| p).collect();
        let param = pool.add_parameter(&refs).map_err(|e| anyhow::anyhow!(e))?;
        submission = submission.create_pool(param);
    }
    for j in selected {
        if let Some((id, p)) = plans.iter().find(|(id, _)| *id == j.spec.id) {
            submission = submission.plan(id, p).map_err(anyhow::Error::from)?;
        }
    }
    Ok(submission)
}
