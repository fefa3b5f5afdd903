//! Turning the configuration into a [`Submission`]: what `--dry-run` prints and what
//! `--target azure` submits (through `shipyard_submit`).
//!
//! The planning itself is the runtime's ([`shipyard_runtime::ContainerRuntime::plan`]); this
//! module only adds the pool's own settings from `[pool_specification]`. Every job is planned
//! once per command.

use shipyard_batch_api::models::{ImageReference, PoolAddParameter, VirtualMachineConfiguration};
use shipyard_runtime::{JobPlan, JobSpec, RuntimeError};
use shipyard_submit::Submission;

use crate::config::{Config, LoadedJob, PoolSpecification};
use crate::{CliError, CliResult};

/// Plans `job` with its configured runtime on `pool`.
pub fn plan_job(job: &JobSpec, pool: &PoolSpecification) -> Result<JobPlan, RuntimeError> {
    let runtime = shipyard_runtime::registry::get(&job.runtime)?;
    runtime.plan(job, &pool.facts())
}

fn count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The `PoolAddParameter` of `pool`, with what the plans need merged in.
pub fn pool_add_parameter(
    pool: &PoolSpecification,
    plans: &[&JobPlan],
) -> Result<PoolAddParameter, RuntimeError> {
    let img = &pool.vm_configuration.platform_image;
    let image = ImageReference::marketplace(&img.publisher, &img.offer, &img.sku, &img.version);
    let mut param = PoolAddParameter {
        virtual_machine_configuration: Some(VirtualMachineConfiguration::new(
            image,
            &img.node_agent_sku_id,
        )),
        target_dedicated_nodes: Some(count(pool.vm_count.dedicated())),
        target_low_priority_nodes: Some(count(pool.vm_count.low_priority())),
        task_slots_per_node: Some(count(pool.task_slots_per_node)),
        enable_inter_node_communication: pool.inter_node_communication_enabled.then_some(true),
        ..PoolAddParameter::new(&pool.id, &pool.vm_size)
    };
    for plan in plans {
        plan.apply_to_pool(&mut param)?;
    }
    Ok(param)
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
        let param = pool_add_parameter(pool, &refs).map_err(|e| anyhow::anyhow!(e))?;
        submission = submission.create_pool(param);
    }
    for j in selected {
        if let Some((id, p)) = plans.iter().find(|(id, _)| *id == j.spec.id) {
            submission = submission.plan(id, p).map_err(anyhow::Error::from)?;
        }
    }
    Ok(submission)
}
