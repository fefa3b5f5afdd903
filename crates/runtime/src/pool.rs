//! The pool model: [`PoolSpec`] (the configuration's `[pool_specification]`, Batch Shipyard's
//! `pool.yaml`), the [`PoolFacts`] runtimes plan against ([`PoolSpec::facts`]), and the Batch
//! `PoolAddParameter` that creates it ([`PoolSpec::add_parameter`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::batch::{
    pool_admin, EnvironmentSetting, ImageReference, PoolAddParameter, StartTask,
    VirtualMachineConfiguration,
};
use crate::domain::ResourceFileSpec;
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
    /// Batch `resizeTimeout`: ISO 8601 or `HH:MM:SS`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::domain::wall_time"
    )]
    pub resize_timeout: Option<String>,
    /// Batch `taskSchedulingPolicy.nodeFillType`: `spread` (default) or `pack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_fill_type: Option<NodeFillType>,
    /// The pool's subnet (Batch `networkConfiguration.subnetId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_network: Option<VirtualNetwork>,
    /// The user `shipyard pool ssh` adds to nodes (read by the CLI; no effect on the pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<PoolSsh>,
    /// A general start task, run on every node when it joins the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_task: Option<StartTaskSpec>,
    /// Batch Shipyard's `additional_node_prep`: commands before (`pre`) and after (`post`)
    /// shipyard's own node preparation, in the pool's start task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_node_prep: Option<NodePrep>,
    /// Container runtimes installed by the start task where the image lacks them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_runtimes: Option<ContainerRuntimes>,
}

/// `node_fill_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeFillType {
    /// Tasks spread evenly over the nodes.
    Spread,
    /// Each node filled before the next.
    Pack,
}

/// `[pool_specification.virtual_network]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualNetwork {
    /// The ARM id of the subnet.
    pub subnet_id: String,
}

/// `[pool_specification.ssh]`: the node user of `shipyard pool ssh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSsh {
    /// The user name (Batch Shipyard's default `shipyard`).
    #[serde(default = "ssh_user")]
    pub username: String,
    /// Days the user stays valid (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_days: Option<u32>,
    /// Path of the public key to install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<String>,
    /// The public key itself (`ssh-ed25519 AAAA...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key_data: Option<String>,
}

fn ssh_user() -> String {
    "shipyard".to_string()
}

fn yes() -> bool {
    true
}

/// `[pool_specification.start_task]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartTaskSpec {
    /// The command, run with `/bin/bash -c` after shipyard's node preparation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Files downloaded into the start task's directory first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_files: Vec<ResourceFileSpec>,
    /// Its environment (numbers and booleans kept as their text).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::domain::scalar_env"
    )]
    pub environment_variables: BTreeMap<String, String>,
    /// Run as the pool's admin auto-user (default true; installing anything needs it).
    #[serde(default = "yes")]
    pub elevated: bool,
    /// Batch waits for it before scheduling tasks on the node (default true).
    #[serde(default = "yes")]
    pub wait_for_success: bool,
    /// Batch `maxTaskRetryCount` of the start task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_task_retries: Option<i32>,
}

/// `[pool_specification.additional_node_prep]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePrep {
    /// The commands.
    #[serde(default)]
    pub commands: NodePrepCommands,
    /// The start task's environment for them.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::domain::scalar_env"
    )]
    pub environment_variables: BTreeMap<String, String>,
}

/// `additional_node_prep.commands`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePrepCommands {
    /// Before shipyard's node preparation and the runtimes' installation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre: Vec<String>,
    /// After them (and after `start_task.command`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post: Vec<String>,
}

/// `[pool_specification.container_runtimes]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRuntimes {
    /// Runtimes the start task installs when missing: `docker`, `singularity`, `apptainer`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub install: Vec<String>,
    /// The runtime of jobs that name none (read by the CLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// The start-task line installing `runtime` when it is missing (apt or dnf/yum images).
pub fn install_runtime_script(runtime: &str) -> Option<String> {
    match runtime {
        "docker" => Some(
            "command -v docker >/dev/null 2>&1 || { curl -fsSL https://get.docker.com | sh; \
             systemctl enable --now docker; }"
                .to_string(),
        ),
        "singularity" | "apptainer" => Some(
            "command -v singularity >/dev/null 2>&1 || command -v apptainer >/dev/null 2>&1 || \
             if command -v apt-get >/dev/null 2>&1; then export DEBIAN_FRONTEND=noninteractive; \
             apt-get update -y && apt-get install -y software-properties-common && \
             add-apt-repository -y ppa:apptainer/ppa && apt-get update -y && \
             apt-get install -y apptainer; else (dnf install -y epel-release || yum install -y \
             epel-release) && (dnf install -y apptainer || yum install -y apptainer); fi"
                .to_string(),
        ),
        _ => None,
    }
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
    /// A custom image (Azure Compute Gallery); replaces `platform_image` when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_image: Option<CustomImage>,
}

/// `[pool_specification.vm_configuration.custom_image]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomImage {
    /// The ARM id of the image (Batch `imageReference.virtualMachineImageId`).
    pub virtual_machine_image_id: String,
    /// Batch node agent SKU, e.g. `batch.node.ubuntu 22.04`.
    pub node_agent_sku_id: String,
    /// Batch runs the containers (the image has Docker and Batch's container support).
    #[serde(default)]
    pub native: bool,
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
            resize_timeout: None,
            node_fill_type: None,
            virtual_network: None,
            ssh: None,
            start_task: None,
            additional_node_prep: None,
            container_runtimes: None,
        }
    }

    /// The node agent SKU (custom image first).
    pub fn node_agent_sku_id(&self) -> &str {
        match &self.vm_configuration.custom_image {
            Some(c) => &c.node_agent_sku_id,
            None => &self.vm_configuration.platform_image.node_agent_sku_id,
        }
    }

    /// Whether Batch runs the containers (custom image first).
    pub fn native(&self) -> bool {
        match &self.vm_configuration.custom_image {
            Some(c) => c.native,
            None => self.vm_configuration.platform_image.native,
        }
    }

    /// Sets whether Batch runs the containers (on the custom image when there is one).
    pub fn set_native(&mut self, native: bool) {
        match &mut self.vm_configuration.custom_image {
            Some(c) => c.native = native,
            None => self.vm_configuration.platform_image.native = native,
        }
    }

    /// True for Windows node agents.
    pub fn is_windows(&self) -> bool {
        self.node_agent_sku_id()
            .to_ascii_lowercase()
            .contains("windows")
    }

    /// The facts a runtime plans against.
    pub fn facts(&self) -> PoolFacts {
        PoolFacts {
            pool_id: self.id.clone(),
            native_containers: self.native(),
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
    ///   it, so the user's value wins (Batch Shipyard issue #339) — and the size's kind of
    ///   InfiniBand in `mpi.rdma`, for the launcher's settings.
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
            if let (Some(mpi), Some(rdma), true) = (mi.mpi.as_mut(), facts.rdma, ib) {
                mpi.rdma = Some(rdma);
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
        let image = match &self.vm_configuration.custom_image {
            Some(c) => ImageReference {
                virtual_machine_image_id: Some(c.virtual_machine_image_id.clone()),
                ..Default::default()
            },
            None => ImageReference::marketplace(&img.publisher, &img.offer, &img.sku, &img.version),
        };
        let count = |n: u32, key: &str| {
            i32::try_from(n).map_err(|_| {
                RuntimeError::invalid(Field::pool().key(key), format!("{n} is too large"))
            })
        };
        let mut param = PoolAddParameter {
            virtual_machine_configuration: Some(VirtualMachineConfiguration::new(
                image,
                self.node_agent_sku_id(),
            )),
            resize_timeout: self.resize_timeout.clone(),
            task_scheduling_policy: self.node_fill_type.map(|f| {
                crate::batch::TaskSchedulingPolicy {
                    node_fill_type: match f {
                        NodeFillType::Spread => crate::batch::ComputeNodeFillType::Spread,
                        NodeFillType::Pack => crate::batch::ComputeNodeFillType::Pack,
                    },
                }
            }),
            network_configuration: self.virtual_network.as_ref().map(|v| {
                crate::batch::NetworkConfiguration {
                    subnet_id: Some(v.subnet_id.clone()),
                    ..Default::default()
                }
            }),
            target_dedicated_nodes: Some(count(self.vm_count.dedicated(), "vm_count")?),
            target_low_priority_nodes: Some(count(self.vm_count.low_priority(), "vm_count")?),
            task_slots_per_node: Some(count(self.task_slots_per_node, "task_slots_per_node")?),
            enable_inter_node_communication: self.inter_node_communication_enabled.then_some(true),
            ..PoolAddParameter::new(&self.id, &self.vm_size)
        };
        for plan in plans {
            plan.apply_to_pool(&mut param)?;
        }
        param.start_task = self.start_task(param.start_task.take())?;
        Ok(param)
    }

    /// The pool's start task: `additional_node_prep.commands.pre`, the installation of
    /// `container_runtimes.install`, on SR-IOV InfiniBand sizes the partition key files
    /// ([`crate::vmsize::partition_key_script`]), the runtimes' own start task (`planned`), the user's
    /// `start_task.command`, then `additional_node_prep.commands.post`, in one
    /// `/bin/bash -c 'set -e; ...'`; resource files and environment merged (the planned
    /// task's values win on a name clash).
    pub fn start_task(
        &self,
        planned: Option<StartTask>,
    ) -> Result<Option<StartTask>, RuntimeError> {
        let prep = self.additional_node_prep.clone().unwrap_or_default();
        let install = self
            .container_runtimes
            .as_ref()
            .map(|c| c.install.clone())
            .unwrap_or_default();
        let user = self.start_task.as_ref();
        let sriov = crate::vmsize::facts(&self.vm_size).rdma == Some(crate::vmsize::Rdma::SrIov);
        if prep.commands.pre.is_empty()
            && prep.commands.post.is_empty()
            && install.is_empty()
            && user.is_none()
            && !sriov
        {
            return Ok(planned);
        }
        let mut lines = vec!["set -e".to_string()];
        lines.extend(prep.commands.pre.iter().cloned());
        for (i, r) in install.iter().enumerate() {
            let script = install_runtime_script(r).ok_or_else(|| {
                RuntimeError::invalid(
                    Field::pool()
                        .key("container_runtimes")
                        .key("install")
                        .index(i),
                    format!("`{r}` is not one of docker, singularity, apptainer"),
                )
            })?;
            lines.push(script);
        }
        if sriov {
            lines.push(crate::vmsize::partition_key_script());
        }
        if let Some(p) = &planned {
            lines.push(p.command_line.clone());
        }
        if let Some(c) = user.and_then(|u| u.command.as_ref()) {
            lines.push(c.clone());
        }
        lines.extend(prep.commands.post.iter().cloned());
        let mut env: BTreeMap<String, String> = prep.environment_variables.clone();
        if let Some(u) = user {
            env.extend(u.environment_variables.clone());
        }
        let mut settings: Vec<EnvironmentSetting> = env
            .into_iter()
            .map(|(k, v)| EnvironmentSetting::new(k, v))
            .collect();
        let mut files = user
            .map(|u| crate::batch::resource_files(&u.resource_files).unwrap_or_default())
            .unwrap_or_default();
        let elevated = planned.is_some()
            || !install.is_empty()
            || !prep.commands.pre.is_empty()
            || !prep.commands.post.is_empty()
            || user.is_none_or(|u| u.elevated);
        let mut st = planned.unwrap_or_default();
        for e in st.environment_settings.take().unwrap_or_default() {
            settings.retain(|s| s.name != e.name);
            settings.push(e);
        }
        files.extend(st.resource_files.take().unwrap_or_default());
        st.command_line = crate::shell::bash_c(&lines.join("; "));
        st.environment_settings = (!settings.is_empty()).then_some(settings);
        st.resource_files = (!files.is_empty()).then_some(files);
        if elevated {
            st.user_identity = Some(pool_admin());
        }
        st.wait_for_success = Some(user.is_none_or(|u| u.wait_for_success));
        if let Some(n) = user.and_then(|u| u.max_task_retries) {
            st.max_task_retry_count = Some(n);
        }
        Ok(Some(st))
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
        // the size's kind of InfiniBand, for the launcher; none for a task without it
        let rdma = |j: &JobSpec, i: usize| {
            j.tasks[i]
                .multi_instance
                .as_ref()
                .and_then(|m| m.mpi.as_ref())
                .and_then(|m| m.rdma)
        };
        assert_eq!(rdma(&j, 0), Some(crate::vmsize::Rdma::SrIov));
        assert_eq!(rdma(&j, 1), None);
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
        p.vm_count = VmCount::Split {
            dedicated: 3,
            low_priority: 2,
        };
        p.vm_size = "Standard_H16r".into();
        let j = p.prepare_job(&job, None).unwrap();
        assert_eq!(rdma(&j, 0), Some(crate::vmsize::Rdma::NetworkDirect));
        p.vm_size = "Standard_D4s_v5".into();
        let j = p.prepare_job(&job, None).unwrap();
        assert_eq!(rdma(&j, 0), None);
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
        assert_eq!(rdma(&j, 0), None);
    }

    #[test]
    fn sriov_pools_write_the_partition_key_in_node_prep() {
        let mut p = PoolSpec::new("p");
        p.vm_count = VmCount::Dedicated(2);
        for size in [
            "Standard_HB120rs_v3",
            "Standard_HC44rs",
            "Standard_ND96asr_v4",
        ] {
            p.vm_size = size.into();
            let st = p.start_task(None).unwrap().unwrap();
            assert!(
                st.command_line
                    .contains("/sys/class/infiniband/mlx5_0/ports/1/pkeys/0")
                    && st.command_line.contains("/wd/UCX_IB_PKEY"),
                "{size}: {}",
                st.command_line
            );
            assert_eq!(st.user_identity, Some(pool_admin()), "{size}");
        }
        // NetworkDirect and plain sizes: no key file, and no start task at all without one
        for size in ["Standard_H16r", "Standard_NC24r", "Standard_D4s_v5"] {
            p.vm_size = size.into();
            assert_eq!(p.start_task(None).unwrap(), None, "{size}");
        }
    }

    #[test]
    fn start_task_node_prep_runtimes_and_custom_image() {
        let p = spec(
            r#"
            id = "p"
            resize_timeout = "00:20:00"
            node_fill_type = "pack"
            [vm_configuration.custom_image]
            virtual_machine_image_id = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/galleries/x/images/y"
            node_agent_sku_id = "batch.node.ubuntu 22.04"
            native = true
            [start_task]
            command = "echo user"
            environment_variables = { LEVEL = 2 }
            resource_files = [{ http_url = "https://example.invalid/a.sh", file_path = "a.sh" }]
            [additional_node_prep]
            commands = { pre = ["echo pre"], post = ["echo post"] }
            environment_variables = { LEVEL = 1, PREP = "x" }
            [container_runtimes]
            install = ["singularity"]
            "#,
        );
        assert!(p.facts().native_containers);
        let planned = StartTask {
            command_line: "/bin/bash -c 'echo planned'".into(),
            environment_settings: Some(vec![EnvironmentSetting::new("PREP", "planned")]),
            ..Default::default()
        };
        let plan = JobPlan {
            runtime: "x".into(),
            pool: PoolNeeds {
                start_task: Some(planned),
                ..Default::default()
            },
            job: JobNeeds::default(),
            tasks: vec![],
        };
        let v = serde_json::to_value(p.add_parameter(&[&plan]).unwrap()).unwrap();
        assert_eq!(
            v["virtualMachineConfiguration"]["imageReference"],
            serde_json::json!({"virtualMachineImageId": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/galleries/x/images/y"})
        );
        assert_eq!(v["resizeTimeout"], "PT20M");
        assert_eq!(v["taskSchedulingPolicy"]["nodeFillType"], "pack");
        let st = &v["startTask"];
        let cmd = st["commandLine"].as_str().unwrap();
        let order: Vec<usize> = [
            "set -e",
            "echo pre",
            "apptainer",
            "echo planned",
            "echo user",
            "echo post",
        ]
        .iter()
        .map(|n| cmd.find(n).unwrap_or_else(|| panic!("{n} missing: {cmd}")))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{cmd}");
        assert!(cmd.starts_with("/bin/bash -c "), "{cmd}");
        let env: Vec<(String, String)> = st["environmentSettings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().into(),
                    e["value"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert!(env.contains(&("LEVEL".into(), "2".into())), "{env:?}");
        assert!(env.contains(&("PREP".into(), "planned".into())), "{env:?}");
        assert_eq!(st["resourceFiles"][0]["filePath"], "a.sh");
        assert_eq!(st["userIdentity"]["autoUser"]["elevationLevel"], "admin");
        assert_eq!(st["waitForSuccess"], true);
        let mut bad = p.clone();
        bad.container_runtimes = Some(ContainerRuntimes {
            install: vec!["podman".into()],
            default: None,
        });
        let e = bad.add_parameter(&[]).unwrap_err().to_string();
        assert!(e.contains("pool.container_runtimes.install[0]"), "{e}");
        // nothing configured: the planned start task is kept as it is
        let plain = PoolSpec::new("p");
        assert_eq!(plain.start_task(None).unwrap(), None);
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
