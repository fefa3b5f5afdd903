//! Checking a job against the pool it runs on: the one implementation that the runtimes and
//! the CLI call.

use crate::domain::{JobSpec, MultiInstanceSpec, PoolFacts};
use crate::error::{Field, RuntimeError};

/// Checks `job` on its own ([`JobSpec::validate`]), the pool facts ([`PoolFacts::validate`]),
/// and the job against the pool: every multi-instance task fits in the pool's node count.
///
/// Settings the plan turns on itself when it is merged into the pool (inter-node
/// communication, task slots: [`crate::JobPlan::apply_to_pool`]) are not required here.
pub fn job_against_pool(job: &JobSpec, pool: &PoolFacts) -> Result<(), RuntimeError> {
    job.validate()?;
    pool.validate()?;
    let at = Field::job(&job.id);
    for (i, task) in job.tasks.iter().enumerate() {
        if let Some(mi) = &task.multi_instance {
            instances(mi, pool, &at.key("tasks").index(i))?;
        }
    }
    Ok(())
}

/// The Batch `numberOfInstances` of a multi-instance task on `pool`: its count, or the pool's
/// node count for `pool_current_dedicated` / `pool_specification_vm_count`. `task` is the
/// task's field (errors name its `multi_instance.num_instances`).
pub fn instances(
    mi: &MultiInstanceSpec,
    pool: &PoolFacts,
    task: &Field,
) -> Result<i32, RuntimeError> {
    let field = || task.key("multi_instance").key("num_instances");
    let n = mi.num_instances.resolve(pool.node_count);
    if n > pool.node_count {
        return Err(RuntimeError::invalid(
            field(),
            format!(
                "{n} instances but pool `{}` has {} node(s)",
                pool.pool_id, pool.node_count
            ),
        ));
    }
    i32::try_from(n).map_err(|_| RuntimeError::invalid(field(), format!("{n} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NumInstances, OsFamily};
    use crate::error::Scope;

    fn pool(nodes: u32) -> PoolFacts {
        PoolFacts {
            pool_id: "p".into(),
            native_containers: false,
            os: OsFamily::Linux,
            subnet_pattern: "10.*".into(),
            node_count: nodes,
            slots_per_node: 1,
            cores_per_node: None,
        }
    }

    #[test]
    fn instance_counts_must_fit_the_pool() {
        let job: JobSpec = toml::from_str(
            "id = \"j\"\n[[tasks]]\nimage = \"i\"\ncommand = \"c\"\n[[tasks]]\nimage = \"i\"\ncommand = \"c\"\n[tasks.multi_instance]\nnum_instances = 3\n",
        )
        .unwrap();
        job_against_pool(&job, &pool(3)).unwrap();
        let e = job_against_pool(&job, &pool(2)).unwrap_err();
        let f = e.field().unwrap();
        assert_eq!(f.scope, Scope::Job("j".into()));
        assert_eq!(f.path.to_string(), "tasks[1].multi_instance.num_instances");
        assert!(
            e.to_string()
                .contains("3 instances but pool `p` has 2 node(s)"),
            "{e}"
        );
        // pool-sized counts always fit
        let mut job = job;
        job.tasks[1].multi_instance.as_mut().unwrap().num_instances =
            NumInstances::Pool(crate::domain::PoolCount::PoolCurrentDedicated);
        job_against_pool(&job, &pool(2)).unwrap();
        // the pool facts are checked too
        let e = job_against_pool(&job, &pool(0)).unwrap_err();
        assert_eq!(e.field(), Some(&Field::pool().key("node_count")));
    }
}
