//! The job/task domain: what a user asks to run, independent of where it runs.
//!
//! Names follow Batch Shipyard's jobs configuration (`multi_instance`, `num_instances`,
//! `coordination_command`, `mpi.runtime`, `processes_per_node`, `auto_complete`, ...) so a
//! Batch Shipyard user recognizes them. Every struct denies unknown fields, so a typo in a TOML
//! config or a plugin's JSON is an error naming the field instead of being silently ignored.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Field, RuntimeError};

/// A job: a set of tasks sharing a runtime, environment and container options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The Batch job id (`[A-Za-z0-9_-]`, at most 64 characters).
    pub id: String,
    /// Name of the container runtime that plans this job (`docker`, `singularity`,
    /// `apptainer`, or a loaded plugin's name).
    #[serde(default = "default_runtime")]
    pub runtime: String,
    /// Terminate the job once all its tasks completed (Batch `onAllTasksComplete=terminatejob`);
    /// termination runs the job release task, which removes non-native containers.
    #[serde(default)]
    pub auto_complete: bool,
    /// Environment variables of every task (a task's own value wins). Numbers and booleans
    /// are accepted and kept as their text (`OMP_NUM_THREADS = 1`), as in Batch Shipyard.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "scalar_env"
    )]
    pub environment_variables: BTreeMap<String, String>,
    /// Batch job `constraints.maxWallClockTime`: ISO 8601 (`PT2H`) or Batch Shipyard's
    /// `HH:MM:SS` / `D.HH:MM:SS`, stored as ISO 8601.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wall_time"
    )]
    pub max_wall_time: Option<String>,
    /// Batch task `constraints.retentionTime` of every task (a task's own value wins); same
    /// forms as `max_wall_time`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wall_time"
    )]
    pub retention_time: Option<String>,
    /// Batch job priority, -1000 (lowest) to 1000 (highest); Batch's default is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Docker `--shm-size` for every task (a task's own value wins), e.g. `256m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<String>,
    /// Expose the RDMA (InfiniBand) devices to every task's containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infiniband: Option<bool>,
    /// GPUs for every task: `all`, a count, or `disable` (Docker `--gpus`, Singularity `--nv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<String>,
    /// Remove exited task containers (`--rm`); defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_container_after_exit: Option<bool>,
    /// Batch `constraints.maxTaskRetryCount` of every task (a task's own value wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_task_retries: Option<i32>,
    /// Host command appended to the job preparation task (runs once per node before tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_preparation: Option<HostCommand>,
    /// Host command appended to the job release task (runs per node when the job ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_release: Option<HostCommand>,
    /// The tasks of the job.
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
    /// A task that runs after every other task of the job succeeded (Batch Shipyard's
    /// `merge_task`); added last by [`JobSpec::expanded`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_task: Option<Box<TaskSpec>>,
    /// Blobs the job preparation task downloads on every node ([`crate::data::attach_data`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_data: Option<crate::data::InputData>,
}

fn default_runtime() -> String {
    "docker".to_string()
}

/// A host command for the job preparation or release task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostCommand {
    /// The command, run with `/bin/bash -c` (Linux) or `cmd /c` (Windows).
    pub command: String,
}

/// Where a task's container starts: Batch's task working directory or the image's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkingDir {
    /// `$AZ_BATCH_TASK_WORKING_DIR` (default).
    #[default]
    Batch,
    /// The image's `WORKDIR`.
    Container,
}

/// One task of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The Batch task id; `task-NNNNN` (its index) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Container image (Docker reference, or a Singularity/Apptainer image reference or path).
    pub image: String,
    /// The command (for MPI tasks: the program and its arguments that the launcher starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Environment variables of this task (win over the job's); numbers and booleans are kept
    /// as their text.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "scalar_env"
    )]
    pub environment_variables: BTreeMap<String, String>,
    /// Docker `--shm-size`, e.g. `256m` (Docker's 64 MB default crashes Intel MPI shm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<String>,
    /// Expose the RDMA (InfiniBand) devices and unlimited memlock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infiniband: Option<bool>,
    /// GPUs: `all`, a count, or `disable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<String>,
    /// Extra `docker run` options, passed through verbatim (one option or `--opt=value` each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_docker_run_options: Vec<String>,
    /// Extra `singularity exec` options, passed through verbatim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_singularity_options: Vec<String>,
    /// Remove the exited container (`--rm`); task value wins over the job's; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_container_after_exit: Option<bool>,
    /// Batch `constraints.maxTaskRetryCount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_task_retries: Option<i32>,
    /// Batch `constraints.maxWallClockTime`: an ISO 8601 duration such as `PT1H`, or Batch
    /// Shipyard's `HH:MM:SS` / `D.HH:MM:SS` (stored as ISO 8601).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wall_time"
    )]
    pub max_wall_time: Option<String>,
    /// Batch `constraints.retentionTime` (how long Batch keeps the task directory); same forms
    /// as `max_wall_time`; wins over the job's.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wall_time"
    )]
    pub retention_time: Option<String>,
    /// Where the container starts (`batch` or `container`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub default_working_dir: WorkingDir,
    /// Ids of tasks of the same job this task waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// An inclusive `[start, end]` range of integer task ids this task waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on_range: Option<[u32; 2]>,
    /// Files downloaded into the task directory (the master node only for multi-instance tasks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_files: Vec<ResourceFileSpec>,
    /// Run on several nodes (MPI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_instance: Option<MultiInstanceSpec>,
    /// Expand this task into many ([`crate::factory`]): its `command` is the template
    /// (`{0}`, `{1}`, ...); see [`JobSpec::expanded`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_factory: Option<crate::factory::TaskFactory>,
    /// Blobs downloaded before the task ([`crate::data::attach_data`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_data: Option<crate::data::InputData>,
    /// Files uploaded to Azure Storage when the task ends ([`crate::data::attach_data`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_data: Option<crate::data::OutputData>,
    /// How a Singularity/Apptainer task runs its image (`exec` or `run`, and as which user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub singularity_execution: Option<SingularityExecution>,
}

/// `singularity_execution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SingularityExecution {
    /// `exec` (default: run `command` in the image) or `run` (the image's runscript, with
    /// `command` as its arguments).
    #[serde(default)]
    pub cmd: SingularityCmd,
    /// Run as the pool's admin auto-user instead of the runtime's default (non-admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elevated: Option<bool>,
}

/// `singularity_execution.cmd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SingularityCmd {
    /// `singularity exec IMAGE COMMAND`.
    #[default]
    Exec,
    /// `singularity run IMAGE ARGS`.
    Run,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Batch Shipyard's wall-time forms (`HH:MM:SS`, `D.HH:MM:SS`, hours may exceed 23) → ISO 8601
/// (`PT2H`, `P1DT12H30M`). A value already in ISO 8601 (`PT1H`) is returned as is.
pub fn wall_time_to_iso8601(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.starts_with('P') {
        return Ok(t.to_string());
    }
    let bad = || format!("`{text}` is not a time span of the form `HH:MM:SS` or `D.HH:MM:SS`");
    let (days, hms) = match t.split_once('.') {
        Some((d, rest)) => (d.parse::<u64>().map_err(|_| bad())?, rest),
        None => (0, t),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let [h, m, s] = parts.as_slice() else {
        return Err(bad());
    };
    let num = |x: &str| x.parse::<u64>().map_err(|_| bad());
    let total = days * 86_400 + num(h)? * 3_600 + num(m)? * 60 + num(s)?;
    let (d, rest) = (total / 86_400, total % 86_400);
    let (h, m, s) = (rest / 3_600, rest % 3_600 / 60, rest % 60);
    let mut out = String::from("P");
    if d > 0 {
        out.push_str(&format!("{d}D"));
    }
    if rest > 0 || d == 0 {
        out.push('T');
        if h > 0 {
            out.push_str(&format!("{h}H"));
        }
        if m > 0 {
            out.push_str(&format!("{m}M"));
        }
        if s > 0 || rest == 0 {
            out.push_str(&format!("{s}S"));
        }
    }
    Ok(out)
}

pub(crate) fn wall_time<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    let raw = Option::<String>::deserialize(d)?;
    raw.map(|r| wall_time_to_iso8601(&r).map_err(serde::de::Error::custom))
        .transpose()
}

pub(crate) fn scalar_env<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }
    let raw = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::S(s) => s,
                Scalar::I(i) => i.to_string(),
                Scalar::U(u) => u.to_string(),
                Scalar::F(f) => f.to_string(),
                Scalar::B(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// A file Batch downloads before the task runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceFileSpec {
    /// The URL to download (a blob URL with SAS, or any https URL). Batch Shipyard's
    /// `blob_source` is accepted as an alias.
    #[serde(alias = "blob_source")]
    pub http_url: String,
    /// Destination path relative to the task directory.
    pub file_path: String,
    /// Octal file mode on Linux, e.g. `0755`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<String>,
}

/// Multi-instance (MPI) settings of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiInstanceSpec {
    /// Number of nodes: an integer or `pool_current_dedicated` / `pool_specification_vm_count`
    /// (resolved from the pool's node count when planning).
    pub num_instances: NumInstances,
    /// Command every node runs before the application starts (default: start sshd on port 23).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordination_command: Option<String>,
    /// Files downloaded on every node (Batch `commonResourceFiles`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_files: Vec<ResourceFileSpec>,
    /// Run on the master, in the same shell, right before the application command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_execution_command: Option<String>,
    /// Launch the task's command with an MPI launcher; without it `command` runs as-is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpi: Option<MpiSpec>,
}

/// The number of instances of a multi-instance task: an integer, or a [`PoolCount`] name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum NumInstances {
    /// A fixed number of nodes.
    Count(u32),
    /// Taken from the pool when planning.
    Pool(PoolCount),
}

impl<'de> Deserialize<'de> for NumInstances {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = NumInstances;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a node count (integer) or one of `pool_current_dedicated`, \
                     `pool_current_low_priority`, `pool_specification_vm_count`, \
                     `pool_specification_vm_count_low_priority`",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<NumInstances, E> {
                u32::try_from(v)
                    .map(NumInstances::Count)
                    .map_err(|_| E::custom(format!("{v} nodes is too many")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<NumInstances, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is not a node count")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NumInstances, E> {
                match v {
                    "pool_current_dedicated" => {
                        Ok(NumInstances::Pool(PoolCount::PoolCurrentDedicated))
                    }
                    "pool_specification_vm_count" | "pool_specification_vm_count_dedicated" => {
                        Ok(NumInstances::Pool(PoolCount::PoolSpecificationVmCount))
                    }
                    "pool_current_low_priority" => {
                        Ok(NumInstances::Pool(PoolCount::PoolCurrentLowPriority))
                    }
                    "pool_specification_vm_count_low_priority" => Ok(NumInstances::Pool(
                        PoolCount::PoolSpecificationVmCountLowPriority,
                    )),
                    other => Err(E::custom(format!(
                        "`{other}` is not a node count; use an integer, \
                         `pool_current_dedicated`, `pool_current_low_priority`, \
                         `pool_specification_vm_count_dedicated` (or \
                         `pool_specification_vm_count`) or \
                         `pool_specification_vm_count_low_priority`"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Symbolic instance counts taken from the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolCount {
    /// The pool's current node count.
    PoolCurrentDedicated,
    /// The pool's node count (Batch Shipyard's `pool.yaml` vm_count).
    #[serde(alias = "pool_specification_vm_count_dedicated")]
    PoolSpecificationVmCount,
    /// The pool's current low-priority (spot) node count.
    PoolCurrentLowPriority,
    /// The low-priority count of the pool's `vm_count`.
    PoolSpecificationVmCountLowPriority,
}

impl PoolCount {
    /// True for the low-priority keywords.
    pub fn is_low_priority(self) -> bool {
        matches!(
            self,
            PoolCount::PoolCurrentLowPriority | PoolCount::PoolSpecificationVmCountLowPriority
        )
    }
}

impl NumInstances {
    /// The concrete count for a pool of `node_count` nodes, when only the total is known
    /// (every keyword means all of them; [`NumInstances::resolve_counts`] tells dedicated and
    /// low-priority nodes apart).
    pub fn resolve(self, node_count: u32) -> u32 {
        match self {
            NumInstances::Count(n) => n,
            NumInstances::Pool(_) => node_count,
        }
    }

    /// The concrete count given the pool's dedicated and low-priority node counts (from the
    /// pool specification, or the live pool for the `pool_current_*` keywords).
    pub fn resolve_counts(self, dedicated: u32, low_priority: u32) -> u32 {
        match self {
            NumInstances::Count(n) => n,
            NumInstances::Pool(p) if p.is_low_priority() => low_priority,
            NumInstances::Pool(_) => dedicated,
        }
    }
}

/// MPI launch settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MpiSpec {
    /// The MPI flavour of the launcher.
    pub runtime: MpiRuntime,
    /// Extra launcher options placed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Ranks per node: an integer, or a shell command evaluated on the master (e.g. `nproc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes_per_node: Option<ProcessesPerNode>,
    /// The launcher executable (default: the flavour's usual name); kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable_path: Option<String>,
    /// How the pool's nodes reach InfiniBand when the task uses it: not configurable, filled
    /// in from the pool's VM size by [`crate::PoolSpec::prepare_job`] (the launcher's fabric
    /// settings depend on it, see [`crate::vmsize::fi_provider`]).
    #[serde(skip)]
    pub rdma: Option<crate::vmsize::Rdma>,
}

/// MPI flavours (Batch Shipyard's `mpi.runtime` values plus `msmpi` for Windows pools).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MpiRuntime {
    /// Open MPI (`mpirun`).
    #[serde(rename = "openmpi")]
    OpenMpi,
    /// Intel MPI (`mpiexec.hydra`).
    #[serde(rename = "intelmpi")]
    IntelMpi,
    /// Intel MPI with the OFA fabric (older Intel MPI on InfiniBand).
    #[serde(rename = "intelmpi-ofa", alias = "intelmpi_ofa")]
    IntelMpiOfa,
    /// MPICH (`mpiexec` hydra).
    #[serde(rename = "mpich")]
    Mpich,
    /// MVAPICH (hydra, MPICH-compatible flags).
    #[serde(rename = "mvapich")]
    Mvapich,
    /// Microsoft MPI (Windows pools).
    #[serde(rename = "msmpi")]
    MsMpi,
}

impl MpiRuntime {
    /// The configuration spelling (`openmpi`, `intelmpi`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            MpiRuntime::OpenMpi => "openmpi",
            MpiRuntime::IntelMpi => "intelmpi",
            MpiRuntime::IntelMpiOfa => "intelmpi-ofa",
            MpiRuntime::Mpich => "mpich",
            MpiRuntime::Mvapich => "mvapich",
            MpiRuntime::MsMpi => "msmpi",
        }
    }
}

impl fmt::Display for MpiRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ranks per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProcessesPerNode {
    /// A fixed count.
    Count(u32),
    /// A shell command printing the count on the master (e.g. `nproc`).
    Command(String),
}

/// The operating system family of a pool's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OsFamily {
    /// Linux nodes (`/bin/bash -c` command lines).
    #[default]
    Linux,
    /// Windows nodes (`cmd /c` command lines).
    Windows,
}

/// What a runtime needs to know about the pool a job runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFacts {
    /// The Batch pool id.
    pub pool_id: String,
    /// Batch runs containers itself (pool `containerConfiguration`): tasks get
    /// `containerSettings`. Otherwise shipyard drives Docker on the nodes.
    pub native_containers: bool,
    /// The nodes' OS family.
    #[serde(default)]
    pub os: OsFamily,
    /// An ssh `Host` pattern matching the nodes' addresses (e.g. `10.0.*`); the ssh client
    /// settings (port 23, no host-key prompts) apply only to it.
    pub subnet_pattern: String,
    /// Number of nodes in the pool.
    pub node_count: u32,
    /// Batch task slots per node.
    #[serde(default = "one")]
    pub slots_per_node: u32,
    /// Cores per node, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores_per_node: Option<u32>,
}

fn one() -> u32 {
    1
}

/// Batch's limit on the total length of a task's `dependsOn.taskIds`.
pub const MAX_DEPENDS_ON_CHARS: usize = 64_000;

impl PoolFacts {
    /// Checks the facts themselves; errors name the field under `pool.`.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if self.pool_id.is_empty() {
            return Err(invalid(Field::pool().key("pool_id"), "must not be empty"));
        }
        if self.node_count == 0 {
            return Err(invalid(
                Field::pool().key("node_count"),
                "must be at least 1",
            ));
        }
        if self.slots_per_node == 0 {
            return Err(invalid(
                Field::pool().key("slots_per_node"),
                "must be at least 1",
            ));
        }
        if self.subnet_pattern.trim().is_empty()
            || self.subnet_pattern.contains(char::is_whitespace)
        {
            return Err(invalid(
                Field::pool().key("subnet_pattern"),
                "must be one ssh Host pattern without spaces, e.g. 10.0.*",
            ));
        }
        Ok(())
    }
}

fn invalid(field: Field, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::invalid(field, reason)
}

/// True when `id` is a valid Batch job/task id: 1..=64 of `[A-Za-z0-9_-]`.
pub fn is_valid_batch_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn validate_env(at: &Field, env: &BTreeMap<String, String>) -> Result<(), RuntimeError> {
    for (k, v) in env {
        if !is_valid_env_name(k) {
            return Err(invalid(
                at.key("environment_variables").key(k.clone()),
                "not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)",
            ));
        }
        if v.contains('\n') || v.contains('\0') {
            return Err(invalid(
                at.key("environment_variables").key(k.clone()),
                "values must not contain newlines or NUL",
            ));
        }
    }
    Ok(())
}

fn validate_duration(at: &Field, key: &str, v: &Option<String>) -> Result<(), RuntimeError> {
    if let Some(t) = v {
        if !t.starts_with('P') || t.len() < 3 {
            return Err(invalid(
                at.key(key),
                format!("`{t}` is not an ISO 8601 duration such as PT1H (or HH:MM:SS)"),
            ));
        }
    }
    Ok(())
}

fn validate_shm(at: &Field, shm: &Option<String>) -> Result<(), RuntimeError> {
    if let Some(s) = shm {
        let digits = s.trim_end_matches(['b', 'k', 'm', 'g', 'B', 'K', 'M', 'G']);
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || s.len() - digits.len() > 1
        {
            return Err(invalid(
                at.key("shm_size"),
                format!("`{s}` is not a size such as 256m or 1g"),
            ));
        }
    }
    Ok(())
}

fn validate_gpus(at: &Field, gpus: &Option<String>) -> Result<(), RuntimeError> {
    if let Some(g) = gpus {
        let ok = g == "all" || g == "disable" || g.parse::<u32>().is_ok_and(|n| n > 0);
        if !ok {
            return Err(invalid(
                at.key("gpus"),
                format!("`{g}` is not `all`, `disable` or a positive count"),
            ));
        }
    }
    Ok(())
}

impl JobSpec {
    /// The id of task `index`: its own id or `task-NNNNN`.
    pub fn task_id(&self, index: usize) -> String {
        self.tasks
            .get(index)
            .and_then(|t| t.id.clone())
            .unwrap_or_else(|| format!("task-{index:05}"))
    }

    /// The effective `--shm-size` of a task (task wins over job).
    pub fn shm_size<'a>(&'a self, task: &'a TaskSpec) -> Option<&'a str> {
        task.shm_size.as_deref().or(self.shm_size.as_deref())
    }

    /// Whether a task uses InfiniBand (task wins over job; default false).
    pub fn infiniband(&self, task: &TaskSpec) -> bool {
        task.infiniband.or(self.infiniband).unwrap_or(false)
    }

    /// The effective GPU setting (`None` or `disable` means no GPUs).
    pub fn gpus<'a>(&'a self, task: &'a TaskSpec) -> Option<&'a str> {
        task.gpus
            .as_deref()
            .or(self.gpus.as_deref())
            .filter(|g| *g != "disable")
    }

    /// Whether exited containers are removed (task wins over job; default true).
    pub fn remove_container_after_exit(&self, task: &TaskSpec) -> bool {
        task.remove_container_after_exit
            .or(self.remove_container_after_exit)
            .unwrap_or(true)
    }

    /// The task's environment: the job's variables overlaid with the task's.
    pub fn environment(&self, task: &TaskSpec) -> BTreeMap<String, String> {
        let mut env = self.environment_variables.clone();
        env.extend(task.environment_variables.clone());
        env
    }

    /// The effective task retention time (task wins over job).
    pub fn retention_time<'a>(&'a self, task: &'a TaskSpec) -> Option<&'a str> {
        task.retention_time
            .as_deref()
            .or(self.retention_time.as_deref())
    }

    /// The effective retry count (task wins over job).
    pub fn max_task_retries(&self, task: &TaskSpec) -> Option<i32> {
        task.max_task_retries.or(self.max_task_retries)
    }

    /// The job with every `task_factory` expanded (each generated task a copy of its template
    /// task with the generated command and no id, so it is numbered `task-NNNNN` by position)
    /// and the `merge_task` appended, depending on every other task. Borrowed when there is
    /// nothing to expand. Errors name the factory's task (`job.tasks[1].task_factory`).
    pub fn expanded(&self) -> Result<std::borrow::Cow<'_, JobSpec>, RuntimeError> {
        use std::borrow::Cow;
        if self.merge_task.is_none() && self.tasks.iter().all(|t| t.task_factory.is_none()) {
            return Ok(Cow::Borrowed(self));
        }
        let at = Field::job(&self.id);
        let mut tasks = Vec::with_capacity(self.tasks.len());
        for (i, task) in self.tasks.iter().enumerate() {
            let Some(f) = &task.task_factory else {
                tasks.push(task.clone());
                continue;
            };
            let fat = at.key("tasks").index(i);
            if task.id.is_some() {
                return Err(invalid(
                    fat.key("id"),
                    "a task with a task_factory gets generated ids; remove `id`",
                ));
            }
            let template = task.command.as_deref().ok_or_else(|| {
                invalid(
                    fat.key("command"),
                    "a task_factory needs a command template",
                )
            })?;
            let commands = f
                .expand(template)
                .map_err(|e| invalid(fat.key("task_factory"), e.to_string()))?;
            let mut base = task.clone();
            base.task_factory = None;
            tasks.reserve(commands.len());
            for c in commands {
                let mut t = base.clone();
                t.command = Some(c);
                tasks.push(t);
            }
        }
        let mut job = JobSpec {
            tasks,
            merge_task: None,
            ..self.clone()
        };
        if let Some(m) = &self.merge_task {
            let mat = at.key("merge_task");
            if m.task_factory.is_some() {
                return Err(invalid(mat.key("task_factory"), "a merge task is one task"));
            }
            let mut m = (**m).clone();
            let deps: Vec<String> = (0..job.tasks.len()).map(|i| job.task_id(i)).collect();
            // Batch limits a task's dependency list to 64000 characters of ids.
            let chars: usize = deps.iter().map(String::len).sum();
            if chars > MAX_DEPENDS_ON_CHARS {
                return Err(invalid(
                    mat,
                    format!(
                        "it would depend on {} tasks ({chars} characters of ids; Batch allows \
                         {MAX_DEPENDS_ON_CHARS}); split the job",
                        deps.len()
                    ),
                ));
            }
            m.depends_on = deps;
            job.tasks.push(m);
        }
        Ok(Cow::Owned(job))
    }

    /// The tasks' images, each once, in the order of first use.
    pub fn images(&self) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        self.tasks
            .iter()
            .filter(|t| seen.insert(t.image.as_str()))
            .map(|t| t.image.clone())
            .collect()
    }

    /// True when any task is a multi-instance task.
    pub fn any_multi_instance(&self) -> bool {
        self.tasks.iter().any(|t| t.multi_instance.is_some())
    }

    /// True when any task depends on another.
    pub fn uses_task_dependencies(&self) -> bool {
        self.tasks
            .iter()
            .any(|t| !t.depends_on.is_empty() || t.depends_on_range.is_some())
    }

    /// Checks the job on its own (see [`crate::validate::job_against_pool`] for the checks
    /// against a pool); errors locate the field in the job's scope, e.g.
    /// `job.tasks[2].multi_instance.num_instances`.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let at = Field::job(&self.id);
        if !is_valid_batch_id(&self.id) {
            return Err(invalid(
                at.key("id"),
                format!("`{}` is not 1-64 characters of [A-Za-z0-9_-]", self.id),
            ));
        }
        if self.runtime.trim().is_empty() {
            return Err(invalid(at.key("runtime"), "must not be empty"));
        }
        validate_env(&at, &self.environment_variables)?;
        validate_duration(&at, "max_wall_time", &self.max_wall_time)?;
        validate_duration(&at, "retention_time", &self.retention_time)?;
        if self.priority.is_some_and(|p| !(-1000..=1000).contains(&p)) {
            return Err(invalid(
                at.key("priority"),
                "must be between -1000 and 1000",
            ));
        }
        validate_shm(&at, &self.shm_size)?;
        validate_gpus(&at, &self.gpus)?;
        if self.max_task_retries.is_some_and(|n| n < -1) {
            return Err(invalid(
                at.key("max_task_retries"),
                "must be -1 (unlimited) or more",
            ));
        }
        if self.tasks.is_empty() {
            return Err(invalid(at.key("tasks"), "a job needs at least one task"));
        }
        if let Some(m) = &self.merge_task {
            m.validate_at(&at.key("merge_task"))?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, task) in self.tasks.iter().enumerate() {
            let tat = at.key("tasks").index(i);
            task.validate_at(&tat)?;
            let id = self.task_id(i);
            if !seen.insert(id.clone()) {
                return Err(invalid(
                    tat.key("id"),
                    format!("task id `{id}` is used twice in job `{}`", self.id),
                ));
            }
        }
        for (i, task) in self.tasks.iter().enumerate() {
            for (d, dep) in task.depends_on.iter().enumerate() {
                if !seen.contains(dep) {
                    return Err(invalid(
                        at.key("tasks").index(i).key("depends_on").index(d),
                        format!("no task `{dep}` in job `{}`", self.id),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl TaskSpec {
    /// A task running `command` in `image`, with every other setting at its default.
    pub fn new(image: impl Into<String>, command: impl Into<String>) -> TaskSpec {
        TaskSpec {
            id: None,
            image: image.into(),
            command: Some(command.into()),
            environment_variables: BTreeMap::new(),
            shm_size: None,
            infiniband: None,
            gpus: None,
            additional_docker_run_options: Vec::new(),
            additional_singularity_options: Vec::new(),
            remove_container_after_exit: None,
            max_task_retries: None,
            max_wall_time: None,
            retention_time: None,
            default_working_dir: WorkingDir::Batch,
            depends_on: Vec::new(),
            depends_on_range: None,
            resource_files: Vec::new(),
            multi_instance: None,
            task_factory: None,
            input_data: None,
            output_data: None,
            singularity_execution: None,
        }
    }

    /// Checks the task; errors name the field under `at` (the task's own field).
    pub fn validate_at(&self, at: &Field) -> Result<(), RuntimeError> {
        if let Some(id) = &self.id {
            if !is_valid_batch_id(id) {
                return Err(invalid(
                    at.key("id"),
                    format!("`{id}` is not 1-64 characters of [A-Za-z0-9_-]"),
                ));
            }
        }
        if self.image.trim().is_empty() || self.image.contains(char::is_whitespace) {
            return Err(invalid(
                at.key("image"),
                "must be a non-empty image reference without spaces",
            ));
        }
        if self.command.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(invalid(at.key("command"), "must not be empty when given"));
        }
        validate_env(at, &self.environment_variables)?;
        validate_shm(at, &self.shm_size)?;
        validate_gpus(at, &self.gpus)?;
        if self.max_task_retries.is_some_and(|n| n < -1) {
            return Err(invalid(
                at.key("max_task_retries"),
                "must be -1 (unlimited) or more",
            ));
        }
        validate_duration(at, "max_wall_time", &self.max_wall_time)?;
        validate_duration(at, "retention_time", &self.retention_time)?;
        if let Some([start, end]) = self.depends_on_range {
            if start > end {
                return Err(invalid(
                    at.key("depends_on_range"),
                    format!("start {start} is after end {end}"),
                ));
            }
        }
        for (i, rf) in self.resource_files.iter().enumerate() {
            rf.validate_at(&at.key("resource_files").index(i))?;
        }
        if let Some(mi) = &self.multi_instance {
            let mat = at.key("multi_instance");
            if let NumInstances::Count(n) = mi.num_instances {
                if n == 0 {
                    return Err(invalid(mat.key("num_instances"), "must be at least 1"));
                }
            }
            if self.command.is_none() {
                return Err(invalid(
                    at.key("command"),
                    "a multi-instance task needs a command",
                ));
            }
            if mi
                .coordination_command
                .as_deref()
                .is_some_and(|c| c.trim().is_empty())
            {
                return Err(invalid(
                    mat.key("coordination_command"),
                    "must not be empty when given",
                ));
            }
            for (i, rf) in mi.resource_files.iter().enumerate() {
                rf.validate_at(&mat.key("resource_files").index(i))?;
            }
            if let Some(mpi) = &mi.mpi {
                match &mpi.processes_per_node {
                    Some(ProcessesPerNode::Count(0)) => {
                        return Err(invalid(
                            mat.key("mpi").key("processes_per_node"),
                            "must be at least 1",
                        ))
                    }
                    Some(ProcessesPerNode::Command(c)) if c.trim().is_empty() => {
                        return Err(invalid(
                            mat.key("mpi").key("processes_per_node"),
                            "must be a count or a non-empty command",
                        ))
                    }
                    _ => {}
                }
                if mpi
                    .executable_path
                    .as_deref()
                    .is_some_and(|p| p.trim().is_empty())
                {
                    return Err(invalid(
                        mat.key("mpi").key("executable_path"),
                        "must not be empty when given",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl ResourceFileSpec {
    fn validate_at(&self, at: &Field) -> Result<(), RuntimeError> {
        if !(self.http_url.starts_with("https://") || self.http_url.starts_with("http://")) {
            return Err(invalid(
                at.key("http_url"),
                format!("`{}` is not an http(s) URL", self.http_url),
            ));
        }
        if self.file_path.is_empty()
            || self.file_path.starts_with('/')
            || self.file_path.contains("..")
        {
            return Err(invalid(
                at.key("file_path"),
                "must be a relative path inside the task directory",
            ));
        }
        if let Some(m) = &self.file_mode {
            if m.is_empty() || m.len() > 4 || !m.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                return Err(invalid(
                    at.key("file_mode"),
                    format!("`{m}` is not an octal mode such as 0755"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(toml_text: &str) -> JobSpec {
        toml::from_str(toml_text).unwrap()
    }

    const MI: &str = r#"
        id = "j1"
        auto_complete = true
        shm_size = "256m"
        [environment_variables]
        A = "1"
        [[tasks]]
        image = "img:1"
        command = "/app"
        [[tasks]]
        id = "mpi"
        image = "img:1"
        command = "/app -x"
        environment_variables = { A = "2" }
        depends_on = ["task-00000"]
        [tasks.multi_instance]
        num_instances = "pool_current_dedicated"
        coordination_command = "/usr/sbin/sshd -p 23"
        pre_execution_command = "source /opt/env.sh"
        [tasks.multi_instance.mpi]
        runtime = "intelmpi"
        options = ["-genv", "I_MPI_DEBUG", "5"]
        processes_per_node = "nproc"
    "#;

    #[test]
    fn batch_shipyard_names_parse_and_validate() {
        let j = job(MI);
        j.validate().unwrap();
        assert_eq!(j.runtime, "docker");
        assert_eq!(j.task_id(0), "task-00000");
        assert_eq!(j.task_id(1), "mpi");
        let t = &j.tasks[1];
        assert_eq!(j.environment(t)["A"], "2");
        assert_eq!(j.shm_size(t), Some("256m"));
        let mi = t.multi_instance.as_ref().unwrap();
        assert_eq!(mi.num_instances.resolve(7), 7);
        let mpi = mi.mpi.as_ref().unwrap();
        assert_eq!(mpi.runtime, MpiRuntime::IntelMpi);
        assert_eq!(
            mpi.processes_per_node,
            Some(ProcessesPerNode::Command("nproc".into()))
        );
        assert!(j.uses_task_dependencies());
        // JSON round trip (the plugin wire format).
        let back: JobSpec = serde_json::from_str(&serde_json::to_string(&j).unwrap()).unwrap();
        assert_eq!(back, j);
    }

    #[test]
    fn num_instances_errors_say_what_is_accepted() {
        let err = toml::from_str::<JobSpec>(
            "id = \"j\"\n[[tasks]]\nimage = \"i\"\ncommand = \"c\"\n[tasks.multi_instance]\nnum_instances = \"pool_current_low_prio\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pool_current_low_prio"), "{err}");
        assert!(err.contains("pool_current_dedicated"), "{err}");
        let err = toml::from_str::<JobSpec>(
            "id = \"j\"\n[[tasks]]\nimage = \"i\"\n[tasks.multi_instance]\nnum_instances = -2\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("-2 is not a node count"), "{err}");
        let j: JobSpec = serde_json::from_str(
            r#"{"id":"j","tasks":[{"image":"i","command":"c","multi_instance":{"num_instances":"pool_specification_vm_count_dedicated"}}]}"#,
        )
        .unwrap();
        let mi = j.tasks[0].multi_instance.as_ref().unwrap();
        assert_eq!(
            mi.num_instances,
            NumInstances::Pool(PoolCount::PoolSpecificationVmCount)
        );
        assert_eq!(
            serde_json::to_value(mi.num_instances).unwrap(),
            "pool_specification_vm_count"
        );
        assert_eq!(serde_json::to_value(NumInstances::Count(4)).unwrap(), 4);
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let err = toml::from_str::<JobSpec>("id = \"j\"\nauto_completee = true\n").unwrap_err();
        assert!(err.to_string().contains("auto_completee"), "{err}");
        let err = toml::from_str::<JobSpec>(
            "id = \"j\"\n[[tasks]]\nimage = \"i\"\n[tasks.multi_instance]\nnum_instance = 2\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("num_instance"), "{err}");
    }

    #[test]
    fn validation_errors_name_the_field_path() {
        let mut j = job(MI);
        j.tasks[1].multi_instance.as_mut().unwrap().num_instances = NumInstances::Count(0);
        let e = j.validate().unwrap_err();
        let field = e.field().unwrap();
        assert_eq!(field.scope, crate::error::Scope::Job("j1".into()));
        assert_eq!(
            field.path.to_string(),
            "tasks[1].multi_instance.num_instances"
        );
        let e = e.to_string();
        assert!(
            e.contains("`job.tasks[1].multi_instance.num_instances`"),
            "{e}"
        );

        let mut j = job(MI);
        j.tasks[0].shm_size = Some("lots".into());
        let e = j.validate().unwrap_err().to_string();
        assert!(e.contains("`job.tasks[0].shm_size`"), "{e}");

        let mut j = job(MI);
        j.tasks[1].depends_on = vec!["ghost".into()];
        let e = j.validate().unwrap_err().to_string();
        assert!(e.contains("`job.tasks[1].depends_on[0]`"), "{e}");

        let mut j = job(MI);
        j.tasks[0].id = Some("mpi".into());
        let e = j.validate().unwrap_err().to_string();
        assert!(e.contains("used twice"), "{e}");

        let mut j = job(MI);
        j.id = "bad id".into();
        assert!(j.validate().unwrap_err().to_string().contains("`job.id`"));

        let mut j = job(MI);
        j.tasks[1].command = None;
        let e = j.validate().unwrap_err().to_string();
        assert!(e.contains("`job.tasks[1].command`"), "{e}");

        let mut j = job(MI);
        j.environment_variables.insert("1BAD".into(), "x".into());
        let e = j.validate().unwrap_err().to_string();
        assert!(e.contains("job.environment_variables.1BAD"), "{e}");
    }

    #[test]
    fn batch_shipyard_wall_times_scalar_env_and_low_priority_counts() {
        let j = job(r#"
            id = "j"
            max_wall_time = "1.12:30:00"
            retention_time = "PT1H"
            priority = 100
            environment_variables = { OMP_NUM_THREADS = 1, DEBUG = true, F = 0.5, S = "x" }
            [[tasks]]
            image = "i"
            command = "c"
            max_wall_time = "02:00:00"
            [tasks.multi_instance]
            num_instances = "pool_current_low_priority"
        "#);
        j.validate().unwrap();
        assert_eq!(j.max_wall_time.as_deref(), Some("P1DT12H30M"));
        assert_eq!(j.tasks[0].max_wall_time.as_deref(), Some("PT2H"));
        assert_eq!(j.retention_time(&j.tasks[0]), Some("PT1H"));
        let env = j.environment(&j.tasks[0]);
        assert_eq!(
            (
                env["OMP_NUM_THREADS"].as_str(),
                env["DEBUG"].as_str(),
                env["F"].as_str()
            ),
            ("1", "true", "0.5")
        );
        let n = j.tasks[0].multi_instance.as_ref().unwrap().num_instances;
        assert_eq!(n, NumInstances::Pool(PoolCount::PoolCurrentLowPriority));
        assert_eq!(n.resolve_counts(3, 5), 5);
        assert_eq!(
            NumInstances::Pool(PoolCount::PoolSpecificationVmCount).resolve_counts(3, 5),
            3
        );
        let n: NumInstances =
            serde_json::from_str("\"pool_specification_vm_count_low_priority\"").unwrap();
        assert_eq!(n.resolve_counts(0, 2), 2);
        let e = toml::from_str::<JobSpec>("id = \"j\"\nmax_wall_time = \"2h\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("HH:MM:SS"), "{e}");
        let mut j = j;
        j.priority = Some(5000);
        assert!(j
            .validate()
            .unwrap_err()
            .to_string()
            .contains("job.priority"));
        let mut add = crate::batch::JobAddParameter::default();
        j.priority = Some(10);
        crate::batch::apply_job_settings(&j, &mut add);
        assert_eq!(add.priority, Some(10));
        assert_eq!(
            add.constraints
                .and_then(|c| c.max_wall_clock_time)
                .as_deref(),
            Some("P1DT12H30M")
        );
        let c = crate::batch::constraints(&j, &j.tasks[0]).unwrap();
        assert_eq!(c.retention_time.as_deref(), Some("PT1H"));
    }

    #[test]
    fn task_factories_expand_and_the_merge_task_depends_on_all() {
        let j: JobSpec = serde_json::from_str(
            r#"{"id":"sweep","tasks":[
                {"image":"alpine:3","command":"echo {0} {1}","task_factory":{"parametric_sweep":{"product":[{"start":0,"stop":2,"step":1},{"start":10,"stop":30,"step":10}]}}},
                {"id":"solo","image":"alpine:3","command":"/bin/true"},
                {"image":"alpine:3","command":"/bin/true","task_factory":{"repeat":2}}],
              "merge_task":{"image":"alpine:3","command":"echo merged"}}"#,
        )
        .unwrap();
        j.validate().unwrap();
        let x = j.expanded().unwrap();
        x.validate().unwrap();
        let got: Vec<(String, String)> = (0..x.tasks.len())
            .map(|i| (x.task_id(i), x.tasks[i].command.clone().unwrap()))
            .collect();
        let want: Vec<(String, String)> = [
            ("task-00000", "echo 0 10"),
            ("task-00001", "echo 0 20"),
            ("task-00002", "echo 1 10"),
            ("task-00003", "echo 1 20"),
            ("solo", "/bin/true"),
            ("task-00005", "/bin/true"),
            ("task-00006", "/bin/true"),
            ("task-00007", "echo merged"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
        assert_eq!(x.tasks[7].depends_on.len(), 7);
        assert_eq!(x.tasks[7].depends_on[4], "solo");
        assert!(x.tasks.iter().all(|t| t.task_factory.is_none()));
        assert!(x.merge_task.is_none());
        // nothing to expand: borrowed
        let plain = job(MI);
        assert!(matches!(
            plain.expanded().unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
        // errors name the factory
        let mut bad = j.clone();
        bad.tasks[0].task_factory = Some(crate::factory::TaskFactory::ParametricSweep(
            crate::factory::ParametricSweep::Product(vec![crate::factory::RangeSpec {
                start: 0,
                stop: 2,
                step: 0,
            }]),
        ));
        let e = bad.expanded().unwrap_err().to_string();
        assert!(e.contains("job.tasks[0].task_factory"), "{e}");
        let mut big = j.clone();
        big.tasks[2].task_factory = Some(crate::factory::TaskFactory::Repeat(10_000));
        let e = big.expanded().unwrap_err().to_string();
        assert!(e.contains("job.merge_task") && e.contains("64000"), "{e}");
        big.merge_task = None;
        assert_eq!(big.expanded().unwrap().tasks.len(), 10_005);
    }

    #[test]
    fn pool_facts_validate() {
        let mut p = PoolFacts {
            pool_id: "p".into(),
            native_containers: false,
            os: OsFamily::Linux,
            subnet_pattern: "10.0.*".into(),
            node_count: 3,
            slots_per_node: 1,
            cores_per_node: None,
        };
        p.validate().unwrap();
        p.node_count = 0;
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("pool.node_count"));
    }
}
