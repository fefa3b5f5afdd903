//! The pool model: [`PoolSpec`] (the configuration's `[pool_specification]`, Batch Shipyard's
//! `pool.yaml`), the [`PoolFacts`] runtimes plan against ([`PoolSpec::facts`]), and the Batch
//! `PoolAddParameter` that creates it ([`PoolSpec::add_parameter`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::batch::{ImageReference, PoolAddParameter, VirtualMachineConfiguration};
use crate::domain::{is_valid_batch_id, JobSpec, NumInstances, OsFamily, PoolCount, PoolFacts};
use crate::error::{Field, FieldPath, RuntimeError, Scope, Segment};
use crate::plan::JobPlan;

/// `[pool_specification]`: the nodes a job runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// The Batch pool id.
    pub id: String,
    /// Azure VM size, e.g. `Standard_HB120rs_v3` (Azure only).
    #[serde(default = "default_vm_size")]
    pub vm_size: String,
    /// Number of nodes: an integer (dedicated) or `{ dedicated = 2, low_priority = 0 }`.
    #[serde(default)]
    pub vm_count: VmCount,
    /// Inter-node communication (multi-instance tasks turn it on in any case, see
    /// [`JobPlan::apply_to_pool`]).
    #[serde(default)]
    pub inter_node_communication_enabled: bool,
    /// Batch task slots per node (Batch Shipyard's `task_slots_per_node`).
    #[serde(default = "one", alias = "max_tasks_per_node")]
    pub task_slots_per_node: u32,
    /// The node image.
    #[serde(default)]
    pub vm_configuration: VmConfiguration,
    /// ssh `Host` pattern matching the nodes' addresses (default `10.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_pattern: Option<String>,
    /// Cores per node, when known (used for `processes_per_node` defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores_per_node: Option<u32>,
}

fn default_vm_size() -> String {
    "Standard_D2s_v5".to_string()
}

fn one() -> u32 {
    1
}

/// `vm_count`: a plain integer or dedicated / low-priority counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum VmCount {
    /// Dedicated nodes only.
    Dedicated(u32),
    /// Both kinds.
    Split {
        /// Dedicated nodes.
        dedicated: u32,
        /// Low-priority (spot) nodes.
        low_priority: u32,
    },
}

impl Default for VmCount {
    fn default() -> Self {
        VmCount::Dedicated(1)
    }
}

impl<'de> Deserialize<'de> for VmCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Split {
            #[serde(default)]
            dedicated: u32,
            #[serde(default)]
            low_priority: u32,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = VmCount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a node count (integer) or a table `{ dedicated = N, low_priority = M }`",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<VmCount, E> {
                u32::try_from(v)
                    .map(VmCount::Dedicated)
                    .map_err(|_| E::custom(format!("{v} nodes is too many")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<VmCount, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is not a node count")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<VmCount, A::Error> {
                let s = Split::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(VmCount::Split {
                    dedicated: s.dedicated,
                    low_priority: s.low_priority,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl VmCount {
    /// Dedicated nodes.
    pub fn dedicated(self) -> u32 {
        match self {
            VmCount::Dedicated(n) => n,
            VmCount::Split { dedicated, .. } => dedicated,
        }
    }

    /// Low-priority nodes.
    pub fn low_priority(self) -> u32 {
        match self {
            VmCount::Dedicated(_) => 0,
            VmCount::Split { low_priority, .. } => low_priority,
        }
    }

    /// All nodes.
    pub fn total(self) -> u32 {
        self.dedicated().saturating_add(self.low_priority())
    }
}

/// `[pool_specification.vm_configuration]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfiguration {
    /// A marketplace image.
    #[serde(default)]
    pub platform_image: PlatformImage,
}

/// `[pool_specification.vm_configuration.platform_image]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformImage {
    /// Image publisher, e.g. `microsoft-dsvm`.
    pub publisher: String,
    /// Image offer, e.g. `ubuntu-hpc`.
    pub offer: String,
    /// Image SKU, e.g. `2204`.
    pub sku: String,
    /// Image version (default `latest`).
    #[serde(default = "latest")]
    pub version: String,
    /// Batch node agent SKU, e.g. `batch.node.ubuntu 22.04` or `batch.node.windows amd64`.
    pub node_agent_sku_id: String,
    /// Batch runs the containers (pool `containerConfiguration`); otherwise shipyard drives
    /// Docker on the nodes ("non-native").
    #[serde(default)]
    pub native: bool,
}

fn latest() -> String {
    "latest".to_string()
}

impl Default for PlatformImage {
    fn default() -> Self {
        PlatformImage {
            publisher: "microsoft-dsvm".into(),
            offer: "ubuntu-hpc".into(),
            sku: "2204".into(),
            version: latest(),
            node_agent_sku_id: "batch.node.ubuntu 22.04".into(),
            native: false,
        }
    }
}

impl PoolSpec {
    /// A pool `id` with every other setting at its default.
    pub fn new(id: impl Into<String>) -> PoolSpec {
        PoolSpec {
            id: id.into(),
            vm_size: default_vm_size(),
            vm_count: VmCount::default(),
            inter_node_communication_enabled: false,
            task_slots_per_node: 1,
            vm_configuration: VmConfiguration::default(),
            subnet_pattern: None,
            cores_per_node: None,
        }
    }

    /// True for Windows node agents.
    pub fn is_windows(&self) -> bool {
        self.vm_configuration
            .platform_image
            .node_agent_sku_id
            .to_ascii_lowercase()
            .contains("windows")
    }

    /// The facts a runtime plans against.
    pub fn facts(&self) -> PoolFacts {
        PoolFacts {
            pool_id: self.id.clone(),
            native_containers: self.vm_configuration.platform_image.native,
            os: if self.is_windows() {
                OsFamily::Windows
            } else {
                OsFamily::Linux
            },
            subnet_pattern: self
                .subnet_pattern
                .clone()
                .unwrap_or_else(|| "10.*".to_string()),
            node_count: self.vm_count.total().max(1),
            slots_per_node: self.task_slots_per_node.max(1),
            cores_per_node: self.cores_per_node,
        }
    }

    /// The spec key a [`PoolFacts`] field comes from (`node_count` → `vm_count`,
    /// `native_containers` → `vm_configuration.platform_image.native`, ...), for errors of
    /// runtimes, which only see the facts. Paths that are no fact are returned as they are.
    pub fn field_of_fact(path: &FieldPath) -> FieldPath {
        let Some((Segment::Key(first), rest)) = path.segments().split_first() else {
            return path.clone();
        };
        let image = || {
            FieldPath::root()
                .key("vm_configuration")
                .key("platform_image")
        };
        let spec = match first.as_str() {
            "pool_id" => FieldPath::root().key("id"),
            "native_containers" => image().key("native"),
            "os" => image().key("node_agent_sku_id"),
            "node_count" => FieldPath::root().key("vm_count"),
            "slots_per_node" => FieldPath::root().key("task_slots_per_node"),
            _ => return path.clone(),
        };
        spec.join(&FieldPath::from(rest.to_vec()))
    }

    /// `job` with what this pool implies filled in, as Batch Shipyard did before submitting:
    ///
    /// - every `num_instances` keyword becomes the count: `pool_specification_vm_count*` from
    ///   `vm_count`, `pool_current_*` from `current` (the live pool's dedicated and
    ///   low-priority node counts) or, without it, from `vm_count`; a count of 0 is an error
    ///   naming the task's `num_instances`;
    /// - `gpus = "all"` on GPU sizes (N-series) where neither the task nor the job set `gpus`;
    /// - `infiniband = true` on RDMA sizes when inter-node communication is on, where neither
    ///   the task nor the job set it, and for MPI tasks on InfiniBand the fabric variables of
    ///   [`crate::vmsize::fabric_env`] — each only where the job and task environment lack
    ///   it, so the user's value wins (Batch Shipyard issue #339).
    pub fn prepare_job(
        &self,
        job: &JobSpec,
        current: Option<(u32, u32)>,
    ) -> Result<JobSpec, RuntimeError> {
        let facts = crate::vmsize::facts(&self.vm_size);
        let spec = (self.vm_count.dedicated(), self.vm_count.low_priority());
        let mut out = job.clone();
        let job_env = job.environment_variables.clone();
        let at = Field::job(&job.id);
        for (i, task) in out.tasks.iter_mut().enumerate() {
            if task.gpus.is_none() && job.gpus.is_none() && facts.gpu {
                task.gpus = Some("all".to_string());
            }
            if task.infiniband.is_none()
                && job.infiniband.is_none()
                && facts.rdma.is_some()
                && self.inter_node_communication_enabled
            {
                task.infiniband = Some(true);
            }
            let ib = task.infiniband.or(job.infiniband).unwrap_or(false);
            let Some(mi) = task.multi_instance.as_mut() else {
                continue;
            };
            if let NumInstances::Pool(kw) = mi.num_instances {
                let (d, l) = match kw {
                    PoolCount::PoolCurrentDedicated | PoolCount::PoolCurrentLowPriority => {
                        current.unwrap_or(spec)
                    }
                    _ => spec,
                };
                let n = mi.num_instances.resolve_counts(d, l);
                if n == 0 {
                    let which = if kw.is_low_priority() {
                        "low-priority"
                    } else {
                        "dedicated"
                    };
                    return Err(RuntimeError::invalid(
                        at.key("tasks")
                            .index(i)
                            .key("multi_instance")
                            .key("num_instances"),
                        format!("pool `{}` has no {which} nodes", self.id),
                    ));
                }
                mi.num_instances = NumInstances::Count(n);
            }
            if let (Some(mpi), Some(rdma), true) = (&mi.mpi, facts.rdma, ib) {
                for (k, v) in crate::vmsize::fabric_env(mpi.runtime, rdma) {
                    if !job_env.contains_key(k) && !task.environment_variables.contains_key(k) {
                        task.environment_variables
                            .insert(k.to_string(), v.to_string());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Checks the pool; errors are in [`Scope::Pool`] and name spec keys (`vm_count`).
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let at = Field::pool();
        if !is_valid_batch_id(&self.id) {
            return Err(RuntimeError::invalid(
                at.key("id"),
                format!("`{}` is not 1-64 characters of [A-Za-z0-9_-]", self.id),
            ));
        }
        if self.vm_count.total() == 0 {
            return Err(RuntimeError::invalid(
                at.key("vm_count"),
                "the pool needs at least one node",
            ));
        }
        if self.task_slots_per_node == 0 {
            return Err(RuntimeError::invalid(
                at.key("task_slots_per_node"),
                "must be at least 1",
            ));
        }
        self.facts().validate().map_err(|e| match e {
            RuntimeError::Invalid { field, reason } if field.scope == Scope::Pool => {
                RuntimeError::Invalid {
                    field: Field {
                        scope: Scope::Pool,
                        path: Self::field_of_fact(&field.path),
                    },
                    reason,
                }
            }
            other => other,
        })
    }

    /// The Batch `PoolAddParameter` creating this pool, with what `plans` need merged in
    /// ([`JobPlan::apply_to_pool`]: container configuration, start task, inter-node
    /// communication, task slots).
    pub fn add_parameter(&self, plans: &[&JobPlan]) -> Result<PoolAddParameter, RuntimeError> {
        let img = &self.vm_configuration.platform_image;
        let count = |n: u32, key: &str| {
            i32::try_from(n).map_err(|_| {
                RuntimeError::invalid(Field::pool().key(key), format!("{n} is too large"))
            })
        };
        let mut param = PoolAddParameter {
            virtual_machine_configuration: Some(VirtualMachineConfiguration::new(
                ImageReference::marketplace(&img.publisher, &img.offer, &img.sku, &img.version),
                &img.node_agent_sku_id,
            )),
            target_dedicated_nodes: Some(count(self.vm_count.dedicated(), "vm_count")?),
            target_low_priority_nodes: Some(count(self.vm_count.low_priority(), "vm_count")?),
            task_slots_per_node: Some(count(self.task_slots_per_node, "task_slots_per_node")?),
            enable_inter_node_communication: self.inter_node_communication_enabled.then_some(true),
            ..PoolAddParameter::new(&self.id, &self.vm_size)
        };
        for plan in plans {
            plan.apply_to_pool(&mut param)?;
        }
        Ok(param)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{JobNeeds, PoolNeeds};

    fn spec(text: &str) -> PoolSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn prepare_job_fills_counts_infiniband_gpus_and_fabrics() {
        let job: JobSpec = toml::from_str(
            r#"
            id = "j"
            [[tasks]]
            image = "i"
            command = "/app"
            environment_variables = { FI_PROVIDER = "verbs" }
            [tasks.multi_instance]
            num_instances = "pool_specification_vm_count_low_priority"
            mpi = { runtime = "intelmpi", processes_per_node = 1 }
            [[tasks]]
            image = "i"
            command = "/app"
            infiniband = false
            [tasks.multi_instance]
            num_instances = "pool_current_dedicated"
            mpi = { runtime = "openmpi" }
            "#,
        )
        .unwrap();
        let mut p = PoolSpec::new("p");
        p.vm_size = "Standard_HC44rs".into();
        p.inter_node_communication_enabled = true;
        p.vm_count = VmCount::Split {
            dedicated: 3,
            low_priority: 2,
        };
        let j = p.prepare_job(&job, None).unwrap();
        let t0 = &j.tasks[0];
        assert_eq!(t0.infiniband, Some(true));
        assert_eq!(t0.gpus, None);
        assert_eq!(
            t0.multi_instance.as_ref().unwrap().num_instances,
            NumInstances::Count(2)
        );
        // the user's FI_PROVIDER (issue #339) stays; the others are filled in
        assert_eq!(t0.environment_variables["FI_PROVIDER"], "verbs");
        assert_eq!(t0.environment_variables["I_MPI_FABRICS"], "shm:ofi");
        assert_eq!(t0.environment_variables["I_MPI_FALLBACK"], "0");
        let t1 = &j.tasks[1];
        assert_eq!(t1.infiniband, Some(false));
        assert!(t1.environment_variables.is_empty());
        assert_eq!(
            t1.multi_instance.as_ref().unwrap().num_instances,
            NumInstances::Count(3)
        );
        let j = p.prepare_job(&job, Some((4, 0))).unwrap();
        assert_eq!(
            j.tasks[1].multi_instance.as_ref().unwrap().num_instances,
            NumInstances::Count(4)
        );
        // no low-priority nodes: the error names the field
        p.vm_count = VmCount::Dedicated(2);
        let e = p.prepare_job(&job, None).unwrap_err().to_string();
        assert!(
            e.contains("job.tasks[0].multi_instance.num_instances"),
            "{e}"
        );
        assert!(e.contains("no low-priority nodes"), "{e}");
        // GPU sizes get gpus = all; no inter-node communication, no infiniband
        p.vm_size = "Standard_NC24rs_v3".into();
        p.vm_count = VmCount::Split {
            dedicated: 2,
            low_priority: 2,
        };
        p.inter_node_communication_enabled = false;
        let j = p.prepare_job(&job, None).unwrap();
        assert_eq!(j.tasks[0].gpus.as_deref(), Some("all"));
        assert_eq!(j.tasks[0].infiniband, None);
    }

    #[test]
    fn defaults_and_facts() {
        let p = spec("id = \"p\"\n");
        assert_eq!(p, PoolSpec::new("p"));
        let f = p.facts();
        assert_eq!(f.node_count, 1);
        assert_eq!(f.subnet_pattern, "10.*");
        assert_eq!(f.os, OsFamily::Linux);
        assert!(!f.native_containers);
        let p = spec(
            "id = \"w\"\nvm_count = { dedicated = 2, low_priority = 3 }\nmax_tasks_per_node = 4\n\
             [vm_configuration.platform_image]\npublisher = \"MicrosoftWindowsServer\"\n\
             offer = \"WindowsServer\"\nsku = \"2022-datacenter\"\n\
             node_agent_sku_id = \"batch.node.windows amd64\"\nnative = true\n",
        );
        let f = p.facts();
        assert_eq!((f.node_count, f.slots_per_node), (5, 4));
        assert_eq!(f.os, OsFamily::Windows);
        assert!(f.native_containers);
    }

    #[test]
    fn vm_count_errors_say_what_is_allowed() {
        for bad in ["true", "\"x\"", "-1", "{ dedicatd = 1 }"] {
            let e = toml::from_str::<PoolSpec>(&format!("id = \"p\"\nvm_count = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(!e.contains("untagged"), "{bad}: {e}");
            assert!(
                e.contains("a node count (integer) or a table")
                    || e.contains("not a node count")
                    || e.contains("unknown field `dedicatd`"),
                "{bad}: {e}"
            );
        }
        let p = spec("id = \"p\"\nvm_count = { low_priority = 2 }\n");
        assert_eq!(
            p.vm_count,
            VmCount::Split {
                dedicated: 0,
                low_priority: 2
            }
        );
        assert_eq!(p.vm_count.total(), 2);
    }

    #[test]
    fn validate_names_spec_keys() {
        let mut p = PoolSpec::new("p");
        p.validate().unwrap();
        p.vm_count = VmCount::Dedicated(0);
        let e = p.validate().unwrap_err();
        assert_eq!(e.field(), Some(&Field::pool().key("vm_count")));
        let mut p = PoolSpec::new("p");
        p.subnet_pattern = Some("10. 0".into());
        let e = p.validate().unwrap_err();
        assert_eq!(e.field(), Some(&Field::pool().key("subnet_pattern")));
        let mut p = PoolSpec::new("bad id");
        p.task_slots_per_node = 0;
        assert_eq!(
            p.validate().unwrap_err().field(),
            Some(&Field::pool().key("id"))
        );
        assert_eq!(
            PoolSpec::field_of_fact(&FieldPath::root().key("native_containers")).to_string(),
            "vm_configuration.platform_image.native"
        );
        assert_eq!(
            PoolSpec::field_of_fact(&FieldPath::root().key("node_count")).to_string(),
            "vm_count"
        );
    }

    #[test]
    fn add_parameter_is_typed_and_merges_plans() {
        let mut p = PoolSpec::new("p");
        p.vm_count = VmCount::Split {
            dedicated: 2,
            low_priority: 1,
        };
        let json = serde_json::to_value(p.add_parameter(&[]).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "p",
                "vmSize": "Standard_D2s_v5",
                "virtualMachineConfiguration": {
                    "imageReference": {
                        "publisher": "microsoft-dsvm",
                        "offer": "ubuntu-hpc",
                        "sku": "2204",
                        "version": "latest"
                    },
                    "nodeAgentSKUId": "batch.node.ubuntu 22.04"
                },
                "targetDedicatedNodes": 2,
                "targetLowPriorityNodes": 1,
                "taskSlotsPerNode": 1
            })
        );
        let plan = JobPlan {
            runtime: "x".into(),
            pool: PoolNeeds {
                enable_inter_node_communication: true,
                task_slots_per_node: Some(1),
                ..Default::default()
            },
            job: JobNeeds::default(),
            tasks: vec![],
        };
        p.task_slots_per_node = 4;
        let param = p.add_parameter(&[&plan]).unwrap();
        assert_eq!(param.enable_inter_node_communication, Some(true));
        assert_eq!(param.task_slots_per_node, Some(1));
        p.vm_count = VmCount::Dedicated(u32::MAX);
        let e = p.add_parameter(&[]).unwrap_err();
        assert_eq!(e.field(), Some(&Field::pool().key("vm_count")));
    }
}
