//! Turning the configuration into a [`Submission`]: what `--dry-run` prints and what
//! `--target azure` submits (through `shipyard_submit`).
//!
//! The planning itself is the runtime's ([`shipyard_runtime::ContainerRuntime::plan`]); this
//! module only adds the pool's own settings from `[pool_specification]`. Every job is planned
//! once per command.

use shipyard_runtime::data::{Access, ContainerUrls};
use shipyard_runtime::registry_auth::RegistryLogin;
use shipyard_runtime::{JobPlan, JobSpec, PoolSpec, RuntimeError};
use shipyard_storage::{SasOptions, SasPermissions, StorageAccount, StorageCredential};
use shipyard_submit::{JobSubmission, Submission};

use crate::config::{Config, LoadedJob};
use crate::{CliError, CliResult};

/// How long the SAS of a dry run or submission stays valid.
const SAS_VALIDITY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Container URLs signed with `credentials.storage.<link>` (the key also from
/// `SHIPYARD_STORAGE_ACCOUNT_KEY_<LINK>`). On a dry run (`dry_run`) a link that is not
/// configured gets a placeholder URL instead of an error: nothing is sent.
#[derive(Debug)]
pub struct ConfigUrls<'a> {
    /// The configuration with `[credentials.storage]`.
    pub config: &'a Config,
    /// Whether the URLs are only printed.
    pub dry_run: bool,
}

impl ContainerUrls for ConfigUrls<'_> {
    fn container_url(&self, link: &str, container: &str, access: Access) -> Result<String, String> {
        let at = format!("credentials.storage.{link}");
        let Some(c) = self.config.credentials.storage.get(link) else {
            if self.dry_run {
                tracing::warn!("`{at}` is not configured; a real submission needs it");
                return Ok(format!(
                    "https://{link}.blob.core.windows.net/{container}?<SAS from {at}>"
                ));
            }
            return Err(format!("`{at}` is not configured"));
        };
        let account = c
            .account
            .as_deref()
            .ok_or_else(|| format!("`{at}.account` is missing"))?;
        let env = format!(
            "SHIPYARD_STORAGE_ACCOUNT_KEY_{}",
            link.to_ascii_uppercase().replace(['-', '.'], "_")
        );
        let key = match std::env::var(&env) {
            Ok(k) if !k.is_empty() => shipyard_storage::Secret::new(k),
            _ => c
                .account_key
                .clone()
                .ok_or_else(|| format!("`{at}.account_key` (or {env}) is missing"))?,
        };
        let key = shipyard_storage::AccountKey::new(account, &key).map_err(|e| e.to_string())?;
        let endpoint = c.endpoint.as_deref().unwrap_or("core.windows.net");
        let acct = StorageAccount::new(account, endpoint, StorageCredential::Key(key))
            .map_err(|e| e.to_string())?;
        let perms = match access {
            Access::Read => SasPermissions::READ_LIST,
            Access::Write => SasPermissions::WRITE,
        };
        acct.container_url(container, &SasOptions::new(perms, SAS_VALIDITY))
            .map(|u| u.expose().to_string())
            .map_err(|e| e.to_string())
    }
}

/// The registry logins of `credentials.docker_registry`.
pub fn registry_logins(config: &Config) -> Vec<RegistryLogin> {
    config
        .credentials
        .docker_registry
        .iter()
        .map(|(server, c)| RegistryLogin {
            server: server.clone(),
            username: c.username.clone().unwrap_or_default(),
            password: c
                .password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default(),
        })
        .collect()
}

/// A job as submitted: the prepared spec (expanded, pool-resolved) and its plan with data and
/// registry logins attached.
#[derive(Debug)]
pub struct PreparedJob {
    /// The expanded job with the pool's values resolved.
    pub spec: JobSpec,
    /// Its plan.
    pub plan: JobPlan,
}

/// Plans `job` with its configured runtime on `pool`: validate, expand (task factories and
/// merge task), resolve against the pool (`live`: its current dedicated and low-priority
/// counts; `None` for dry runs), plan, then attach storage data and registry logins.
pub fn prepare_job(
    config: &Config,
    job: &JobSpec,
    pool: &PoolSpec,
    live: Option<(u32, u32)>,
    dry_run: bool,
) -> Result<PreparedJob, RuntimeError> {
    job.validate()?;
    let job = job.expanded()?.into_owned();
    let job = pool.prepare_job(&job, live)?;
    let runtime = shipyard_runtime::registry::get(&job.runtime)?;
    let mut facts = pool.facts();
    if let Some((dedicated, low_priority)) = live {
        // The nodes the existing pool has, not the ones the config would create.
        facts.node_count = (dedicated + low_priority).max(1);
    }
    let mut plan = runtime.plan(&job, &facts)?;
    shipyard_runtime::data::attach_data(&mut plan, &job, &ConfigUrls { config, dry_run })?;
    shipyard_runtime::registry_auth::attach_registries(
        &mut plan,
        pool.native(),
        &registry_logins(config),
        "docker",
    )?;
    Ok(PreparedJob { spec: job, plan })
}

/// The plan of `job` on `pool` for checks and dry runs (see [`prepare_job`]).
pub fn plan_job(config: &Config, job: &JobSpec, pool: &PoolSpec) -> Result<JobPlan, RuntimeError> {
    prepare_job(config, job, pool, None, true).map(|p| p.plan)
}

/// The jobs a command acts on: `only`, or every configured job.
pub fn selected_jobs<'a>(config: &'a Config, only: Option<&str>) -> CliResult<Vec<&'a LoadedJob>> {
    Ok(match only {
        Some(id) => vec![config.job(Some(id))?],
        None => config.jobs.iter().collect(),
    })
}

/// The submission of the selected jobs on the configured pool; with `create_pool`, the pool
/// (planned against every configured job) is created when missing. `dry_run`: only printed
/// (see [`ConfigUrls`]). `live`: the existing pool's dedicated and low-priority node counts,
/// which `pool_current_*` instance counts resolve against (`None`: from `vm_count`).
pub fn submission(
    config: &Config,
    only: Option<&str>,
    create_pool: bool,
    dry_run: bool,
    live: Option<(u32, u32)>,
) -> CliResult<Submission> {
    config.validate()?;
    let pool = config.pool()?;
    let plan = |j: &LoadedJob| {
        prepare_job(config, &j.spec, pool, live, dry_run)
            .map_err(|e| CliError::Config(config.plan_error(j, e)))
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
        let refs: Vec<&JobPlan> = plans.iter().map(|(_, p)| &p.plan).collect();
        let param = pool.add_parameter(&refs).map_err(|e| anyhow::anyhow!(e))?;
        submission = submission.create_pool(param);
    }
    for j in selected {
        if let Some((id, p)) = plans.iter().find(|(id, _)| *id == j.spec.id) {
            let mut js =
                JobSubmission::from_plan(id, &p.plan, &pool.id).map_err(anyhow::Error::from)?;
            shipyard_runtime::batch::apply_job_settings(&p.spec, &mut js.job);
            submission = submission.job(js);
        }
    }
    Ok(submission)
}
