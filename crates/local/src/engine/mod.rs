//! The local engine: runs what Azure Batch would run, on Batch model values.
//!
//! Pools persist (their nodes are long-lived holder containers on a per-pool bridge network);
//! every task runs in a fresh container of its image joined to its node's network namespace,
//! with the node root laid out as on Batch (`shared/`, `startup/`,
//! `workitems/<job>/job-1/<task>/wd`) and every `AZ_BATCH_*` variable. Every state transition is
//! written to a store (`engine.redb` in the state directory); [`Engine::open`] on an existing
//! directory recovers: nodes whose holder is gone become unusable, work that was running when
//! the previous engine stopped is failed with a reason.
//!
//! The method set is the contract with `shipyard serve` (see docs/ and plan interfaces).

mod agent;
mod error;
mod exec;
mod node;
mod pool_net;
mod state;
mod store;
mod vm;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bollard::Docker;
use shipyard_batch_api::models::{
    AllocationState, CloudJob, CloudPool, CloudTask, ComputeNode, ComputeNodeState,
    JobAddParameter, JobPatchParameter, JobPreparationAndReleaseTaskExecutionInformation, JobState,
    NodeFile, PoolAddParameter, PoolPatchParameter, PoolResizeParameter, PoolState,
    SchedulingState, SubtaskInformation, TaskAddParameter, TaskAddResult, TaskAddStatus,
    TaskCounts, TaskCountsResult, TaskExecutionResult, TaskSlotCounts, TaskState,
};
use shipyard_runtime::registry_auth::RegistryLogin;
use tokio::sync::Notify;

pub use error::{EngineError, Result};
/// The types of [`NodeKind`]'s signatures, for node kinds implemented outside this crate.
pub use futures::future::BoxFuture;
pub use node::{
    labels, ContainerNodes, NodeKind, NodeRef, PoolSetup, RunEnd, RunSpec, NODE_ROOT_DIR,
};
pub use pool_net::NETWORK_ENV;
pub use store::ENGINE_STORE_FILE;
/// See [`BoxFuture`].
pub use tokio_util::sync::CancellationToken;
pub use vm::{VmNodes, VmNodesOptions};

use state::{job_key, node_key, now, pool_key, task_key, JobRec, NodeRec, PoolRec, State, TaskRec};
use store::{encode, Store};

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// State directory: the store, and node roots under `pools/<pool>/<node>/`.
    pub state_dir: PathBuf,
    /// Image of node holder containers when the pool names no container image.
    pub holder_image: String,
    /// Account name in `AZ_BATCH_ACCOUNT_NAME` and URLs.
    pub account: String,
    /// Base URL of the (served) account, for `url` fields.
    pub account_url: String,
    /// Host images every VM-like pool's registry serves (pushed once per pool, pulled by the
    /// nodes' `docker pull`), besides the pool's `containerImageNames`.
    pub mirror_images: Vec<String>,
    /// Where VM-like pools live (used by [`Engine::open`] and [`Engine::open_with`]).
    pub vm_nodes: VmNodesOptions,
}

impl EngineOptions {
    /// Options with defaults for `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        EngineOptions {
            state_dir: state_dir.into(),
            holder_image: "shipyard/mpi:bookworm".into(),
            account: "local".into(),
            account_url: "http://127.0.0.1:8711".into(),
            mirror_images: vec!["shipyard/mpi:bookworm".into()],
            vm_nodes: VmNodesOptions::default(),
        }
    }
}

/// A file to serve: where it lies, its length and mtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    /// Host path.
    pub path: PathBuf,
    /// Bytes.
    pub len: u64,
    /// Last modification.
    pub modified: time::OffsetDateTime,
}

/// The engine (cheap to clone; all clones share one state).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    opts: EngineOptions,
    instance: String,
    store: Store,
    state: Mutex<State>,
    kind: Arc<dyn NodeKind>,
    vm: Arc<dyn NodeKind>,
    wake: Notify,
    cancels: Mutex<HashMap<(String, String), CancellationToken>>,
    prep_locks: Mutex<HashMap<(String, String), PrepLock>>,
    /// Task-container removals still running, by job.
    removals: Mutex<HashMap<String, Vec<tokio::task::JoinHandle<()>>>>,
    /// Nodes being made, by pool: each says when its node is made (or failed), before its
    /// start task. A pool's deletion waits for them.
    growing: Mutex<HashMap<String, Vec<tokio::sync::oneshot::Receiver<()>>>>,
    /// Jobs whose end runs ([`exec::end_job`]: one worker per job), and whether a deletion
    /// was asked for meanwhile (the worker then deletes the job at its end).
    ending: Mutex<HashMap<String, bool>>,
    http: Option<shipyard_storage::BlobClient>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("state_dir", &self.inner.opts.state_dir)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

type PrepLock = Arc<tokio::sync::Mutex<()>>;

/// A record to write back to the store.
pub(crate) enum Key {
    Pool(String),
    Node(String, String),
    Job(String),
    Task(String, String),
}

impl Engine {
    /// Opens (or creates) the engine's state under `opts.state_dir` and recovers it.
    pub async fn open(opts: EngineOptions) -> Result<Engine> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| EngineError::docker("connecting to the Docker engine", e))?;
        Self::open_with(opts, Arc::new(ContainerNodes::new(docker))).await
    }

    /// Opens with a given node kind for container pools (VM-like pools use [`VmNodes`] with
    /// `opts.vm_nodes`, after sweeping pools of dead engines).
    pub async fn open_with(opts: EngineOptions, kind: Arc<dyn NodeKind>) -> Result<Engine> {
        let vm = VmNodes::new(opts.vm_nodes.clone());
        vm.sweep().await;
        Self::open_with_kinds(opts, kind, Arc::new(vm)).await
    }

    /// Opens with given node kinds: `kind` for pools with `containerConfiguration`, `vm` for
    /// the others (VM-like nodes).
    pub async fn open_with_kinds(
        opts: EngineOptions,
        kind: Arc<dyn NodeKind>,
        vm: Arc<dyn NodeKind>,
    ) -> Result<Engine> {
        std::fs::create_dir_all(&opts.state_dir)
            .map_err(|e| EngineError::io("creating state directory", &opts.state_dir, e))?;
        let dir = std::fs::canonicalize(&opts.state_dir)
            .map_err(|e| EngineError::io("resolving state directory", &opts.state_dir, e))?;
        let store = Store::open(&dir)?;
        let mut st = State::default();
        for p in store.load::<PoolRec>("pool/")? {
            st.pools.insert(p.params.id.clone(), p);
        }
        for n in store.load::<NodeRec>("node/")? {
            st.nodes.insert((n.pool.clone(), n.id().to_string()), n);
        }
        for j in store.load::<JobRec>("job/")? {
            st.seq = st.seq.max(j.seq);
            st.jobs.insert(j.params.id.clone(), j);
        }
        for t in store.load::<TaskRec>("task/")? {
            st.seq = st.seq.max(t.seq);
            st.tasks.insert((t.job.clone(), t.params.id.clone()), t);
        }
        let instance = format!("{:08x}", fnv(dir.to_string_lossy().as_bytes()) as u32);
        let http = shipyard_storage::BlobClient::new().ok();
        let mut opts = opts;
        opts.state_dir = dir;
        let engine = Engine {
            inner: Arc::new(Inner {
                opts,
                instance,
                store,
                state: Mutex::new(st),
                kind,
                vm,
                wake: Notify::new(),
                cancels: Mutex::new(HashMap::new()),
                prep_locks: Mutex::new(HashMap::new()),
                removals: Mutex::new(HashMap::new()),
                growing: Mutex::new(HashMap::new()),
                ending: Mutex::new(HashMap::new()),
                http,
                shutdown: CancellationToken::new(),
            }),
        };
        engine.recover().await?;
        engine.spawn_scheduler();
        engine.spawn_health_monitor();
        {
            let kind = engine.inner.kind.clone();
            tokio::spawn(async move { kind.sweep_abandoned().await });
        }
        Ok(engine)
    }

    /// Stops the engine as a dying process would: running work is abandoned (its containers
    /// are killed, its records stay as they are, to be recovered by the next [`Engine::open`]),
    /// and the store is closed once every worker has let go of it.
    pub async fn close(self) {
        self.inner.shutdown.cancel();
        for _ in 0..2000 {
            if Arc::strong_count(&self.inner) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The state directory (canonical).
    pub fn state_dir(&self) -> &Path {
        &self.inner.opts.state_dir
    }

    /// The value of the [`labels::INSTANCE`] label on everything this engine creates.
    pub fn instance_label(&self) -> &str {
        &self.inner.instance
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        match self.inner.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Writes records back (deleting the missing ones).
    pub(crate) fn save(&self, st: &State, keys: &[Key]) -> Result<()> {
        let items: Vec<(String, Option<Vec<u8>>)> = keys
            .iter()
            .map(|k| match k {
                Key::Pool(id) => (pool_key(id), st.pools.get(id).map(encode)),
                Key::Node(p, n) => (
                    node_key(p, n),
                    st.nodes.get(&(p.clone(), n.clone())).map(encode),
                ),
                Key::Job(id) => (job_key(id), st.jobs.get(id).map(encode)),
                Key::Task(j, t) => (
                    task_key(j, t),
                    st.tasks.get(&(j.clone(), t.clone())).map(encode),
                ),
            })
            .collect();
        self.inner.store.write(&items)
    }

    pub(crate) fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// The node kind of a pool: VM-like when it has no `containerConfiguration`.
    pub(crate) fn kind_of(&self, pool: &str) -> Arc<dyn NodeKind> {
        let vm = self
            .lock()
            .pools
            .get(pool)
            .is_some_and(|p| is_vm_pool(&p.params));
        if vm {
            self.inner.vm.clone()
        } else {
            self.inner.kind.clone()
        }
    }

    fn labels(&self, pool: &str) -> HashMap<String, String> {
        HashMap::from([
            (labels::ENGINE.to_string(), "1".to_string()),
            (labels::INSTANCE.to_string(), self.inner.instance.clone()),
            (
                labels::STATE_DIR.to_string(),
                self.inner.opts.state_dir.display().to_string(),
            ),
            (labels::HOST.to_string(), labels::host().to_string()),
            (labels::POOL.to_string(), pool.to_string()),
        ])
    }

    fn node_ref(&self, st: &State, pool: &str, node: &str) -> Option<NodeRef> {
        let p = st.pools.get(pool)?;
        let n = st.nodes.get(&(pool.to_string(), node.to_string()))?;
        let mut l = self.labels(pool);
        l.insert(labels::NODE.to_string(), format!("{pool}/{node}"));
        Some(n.node_ref(&p.network, l, pool_logins(&p.params)))
    }

    async fn recover(&self) -> Result<()> {
        let nodes: Vec<NodeRef> = {
            let st = self.lock();
            st.nodes
                .values()
                .filter_map(|n| self.node_ref(&st, &n.pool, n.id()))
                .collect()
        };
        let mut dead = Vec::new();
        for n in &nodes {
            if !self.kind_of(&n.pool).node_alive(n).await {
                dead.push((n.pool.clone(), n.id.clone()));
            }
        }
        let mut ending = Vec::new();
        let (stale_containers, deleting) = {
            let mut stale_containers = Vec::new();
            let mut st = self.lock();
            let vm_pools: std::collections::HashSet<String> = st
                .pools
                .values()
                .filter(|p| is_vm_pool(&p.params))
                .map(|p| p.params.id.clone())
                .collect();
            let mut keys = Vec::new();
            // Tasks still on nodes: a completed one's containers were still being ended.
            let on_nodes: Vec<String> = st.nodes.values().flat_map(|n| n.tasks.clone()).collect();
            for ((pool, id), n) in st.nodes.iter_mut() {
                n.used_slots = 0;
                n.tasks.clear();
                n.node.running_tasks_count = Some(0);
                n.node.running_task_slots_count = Some(0);
                if dead.contains(&(pool.clone(), id.clone())) {
                    set_node_state(&mut n.node, ComputeNodeState::Unusable);
                    let vm = vm_pools.contains(pool);
                    n.node.errors = Some(vec![exec::death_error(
                        vm,
                        id,
                        &n.holder,
                        "found when the engine reopened",
                    )]);
                } else if matches!(n.node.state, Some(ComputeNodeState::Running)) {
                    set_node_state(&mut n.node, ComputeNodeState::Idle);
                } else if matches!(
                    n.node.state,
                    Some(ComputeNodeState::Starting) | Some(ComputeNodeState::WaitingForStartTask)
                ) {
                    set_node_state(&mut n.node, ComputeNodeState::Unusable);
                    n.node.errors = Some(vec![shipyard_batch_api::models::ComputeNodeError {
                        code: Some("EngineRestarted".into()),
                        message: Some("the engine stopped while the node was starting".into()),
                        error_details: None,
                    }]);
                }
                keys.push(Key::Node(pool.clone(), id.clone()));
            }
            for key in &on_nodes {
                let Some((job, id)) = key.split_once('/') else {
                    continue;
                };
                if let Some(t) = st.tasks.get(&(job.to_string(), id.to_string())) {
                    if matches!(t.task.state, Some(TaskState::Completed)) {
                        stale_containers.extend(t.containers.iter().cloned());
                    }
                }
            }
            for ((job, id), t) in st.tasks.iter_mut() {
                if matches!(
                    t.task.state,
                    Some(TaskState::Running) | Some(TaskState::Preparing)
                ) {
                    stale_containers.append(&mut t.containers);
                    exec::complete_task_record(
                    t,
                    None,
                    Some(exec::failure(
                        "TaskInterrupted",
                        "the engine stopped while the task ran; its container was lost and it was not reattached",
                    )),
                );
                    keys.push(Key::Task(job.clone(), id.clone()));
                }
            }
            // Jobs that were ending: a release cut short by the stop is over, with a reason;
            // the rest of their end is resumed below.
            let stopped_release = || {
                let mut f = exec::failure(
                    "EngineRestarted",
                    "the engine stopped while the job release ran",
                );
                f.category = shipyard_batch_api::models::ErrorCategory::ServerError;
                f
            };
            for (id, j) in st.jobs.iter_mut() {
                let delete = match j.job.state {
                    Some(JobState::Terminating) => false,
                    Some(JobState::Deleting) => true,
                    _ => continue,
                };
                for p in j.prep.values_mut() {
                    if let Some(r) = p.job_release_task_execution_info.as_mut() {
                        if r.state == shipyard_batch_api::models::JobReleaseTaskState::Running {
                            r.state = shipyard_batch_api::models::JobReleaseTaskState::Completed;
                            r.end_time = Some(now());
                            r.result = Some(TaskExecutionResult::Failure);
                            r.failure_info = Some(stopped_release());
                        }
                    }
                }
                let reason = j
                    .job
                    .execution_info
                    .as_ref()
                    .and_then(|x| x.terminate_reason.clone())
                    .unwrap_or_else(|| "UserTerminate".into());
                ending.push((id.clone(), reason, delete));
                keys.push(Key::Job(id.clone()));
            }
            for p in st.pools.values_mut() {
                if matches!(p.pool.state, Some(PoolState::Deleting)) {
                    // finished below by delete_pool's worker
                } else if matches!(p.pool.allocation_state, Some(AllocationState::Resizing)) {
                    p.pool.allocation_state = Some(AllocationState::Steady);
                    keys.push(Key::Pool(p.params.id.clone()));
                }
            }
            self.save(&st, &keys)?;
            let deleting: Vec<String> = st
                .pools
                .values()
                .filter(|p| matches!(p.pool.state, Some(PoolState::Deleting)))
                .map(|p| p.params.id.clone())
                .collect();
            (stale_containers, deleting)
        };
        for c in stale_containers {
            let _ = self.inner.kind.remove_container(&c).await;
        }
        // Spare kept containers of an earlier engine of this state directory.
        if let Err(e) = self
            .inner
            .kind
            .remove_labelled(&[(labels::SPARE, self.inner.instance.as_str())])
            .await
        {
            tracing::warn!(error = %e, "removing spare containers");
        }
        for p in deleting {
            let e = self.clone();
            tokio::spawn(async move { e.finish_delete_pool(&p).await });
        }
        for (job, reason, delete) in ending {
            self.spawn_end_job(&job, reason, delete);
        }
        // Jobs whose tasks all ended while we were away.
        let jobs: Vec<String> = self.lock().jobs.keys().cloned().collect();
        for j in jobs {
            self.check_job_complete(&j).await;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- pools

    /// Adds a pool and starts creating its nodes (state `starting`, then `idle`).
    pub async fn add_pool(&self, p: PoolAddParameter) -> Result<()> {
        let r = self.add_pool_now(p).await;
        self.inner.store.durable().await;
        r
    }

    async fn add_pool_now(&self, p: PoolAddParameter) -> Result<()> {
        if p.id.is_empty() {
            return Err(EngineError::invalid("id", "the pool id is empty"));
        }
        let target =
            p.target_dedicated_nodes.unwrap_or(0) + p.target_low_priority_nodes.unwrap_or(0);
        if target < 0 {
            return Err(EngineError::invalid(
                "targetDedicatedNodes",
                "must not be negative",
            ));
        }
        let network = format!(
            "shipyard-engine-{}-{}",
            self.inner.instance,
            sanitize(&p.id)
        );
        {
            let mut st = self.lock();
            if st.pools.contains_key(&p.id) {
                return Err(EngineError::conflict("PoolExists", &p.id));
            }
            let t = now();
            let pool = CloudPool {
                id: Some(p.id.clone()),
                display_name: p.display_name.clone(),
                url: Some(format!("{}/pools/{}", self.inner.opts.account_url, p.id)),
                etag: Some(etag()),
                last_modified: Some(t.clone()),
                creation_time: Some(t.clone()),
                state: Some(PoolState::Active),
                state_transition_time: Some(t.clone()),
                allocation_state: Some(AllocationState::Resizing),
                allocation_state_transition_time: Some(t),
                vm_size: Some(p.vm_size.clone()),
                virtual_machine_configuration: p.virtual_machine_configuration.clone(),
                resize_timeout: p.resize_timeout.clone(),
                current_dedicated_nodes: Some(0),
                current_low_priority_nodes: Some(0),
                target_dedicated_nodes: Some(p.target_dedicated_nodes.unwrap_or(0)),
                target_low_priority_nodes: Some(p.target_low_priority_nodes.unwrap_or(0)),
                enable_auto_scale: Some(false),
                enable_inter_node_communication: p.enable_inter_node_communication,
                network_configuration: p.network_configuration.clone(),
                start_task: p.start_task.clone(),
                task_slots_per_node: Some(p.task_slots_per_node.unwrap_or(1).max(1)),
                task_scheduling_policy: p.task_scheduling_policy.clone(),
                user_accounts: p.user_accounts.clone(),
                metadata: p.metadata.clone(),
                mount_configuration: p.mount_configuration.clone(),
                resource_tags: p.resource_tags.clone(),
                ..Default::default()
            };
            st.pools.insert(
                p.id.clone(),
                PoolRec {
                    pool,
                    params: p.clone(),
                    network: network.clone(),
                    next_node: 0,
                },
            );
            self.save(&st, &[Key::Pool(p.id.clone())])?;
        }
        let mut images: Vec<String> = p
            .virtual_machine_configuration
            .as_ref()
            .and_then(|v| v.container_configuration.as_ref())
            .and_then(|c| c.container_image_names.clone())
            .unwrap_or_default();
        if is_vm_pool(&p) {
            images.extend(self.inner.opts.mirror_images.iter().cloned());
            images.dedup();
        }
        let setup = PoolSetup {
            pool: p.id.clone(),
            network,
            labels: self.labels(&p.id),
            nodes: target.max(0) as usize,
            images,
        };
        if let Err(e) = self.kind_of(&p.id).create_pool(&setup).await {
            let mut st = self.lock();
            st.pools.remove(&p.id);
            let _ = self.save(&st, &[Key::Pool(p.id.clone())]);
            return Err(e);
        }
        // As in Batch, the pool exists once added; its nodes start in the background (a job
        // and its tasks can be added meanwhile).
        self.spawn_grow(&p.id, target.max(0) as usize);
        Ok(())
    }

    /// Adds `n` nodes to the pool (state `starting`) now and starts them in the background.
    fn spawn_grow(&self, pool: &str, n: usize) {
        let refs = self.add_nodes(pool, n);
        let (e, id) = (self.clone(), pool.to_string());
        tokio::spawn(async move { e.start_nodes(&id, refs).await });
    }

    /// Records `n` more nodes of the pool (state `starting`); [`Engine::start_nodes`] starts
    /// them.
    fn add_nodes(&self, pool: &str, n: usize) -> Vec<(NodeRef, tokio::sync::oneshot::Sender<()>)> {
        let mut refs = Vec::new();
        {
            let mut st = self.lock();
            let Some(p) = st.pools.get_mut(pool) else {
                return refs;
            };
            if matches!(p.pool.state, Some(PoolState::Deleting)) {
                return refs;
            }
            let image = p
                .params
                .virtual_machine_configuration
                .as_ref()
                .and_then(|v| v.container_configuration.as_ref())
                .and_then(|c| c.container_image_names.as_ref())
                .and_then(|i| i.first().cloned())
                .unwrap_or_else(|| self.inner.opts.holder_image.clone());
            let first = p.next_node;
            p.next_node += n as u32;
            let vm_size = p.params.vm_size.clone();
            let start_task = p.params.start_task.clone();
            let mut keys = vec![Key::Pool(pool.to_string())];
            for k in first..first + n as u32 {
                let id = format!("{}-n{k}", sanitize(pool));
                let root = self
                    .inner
                    .opts
                    .state_dir
                    .join("pools")
                    .join(sanitize(pool))
                    .join(&id);
                let t = now();
                let node = ComputeNode {
                    id: Some(id.clone()),
                    url: Some(format!(
                        "{}/pools/{pool}/nodes/{id}",
                        self.inner.opts.account_url
                    )),
                    state: Some(ComputeNodeState::Starting),
                    scheduling_state: Some(SchedulingState::Enabled),
                    state_transition_time: Some(t.clone()),
                    allocation_time: Some(t),
                    affinity_id: Some(id.clone()),
                    vm_size: Some(vm_size.clone()),
                    total_tasks_run: Some(0),
                    running_tasks_count: Some(0),
                    running_task_slots_count: Some(0),
                    total_tasks_succeeded: Some(0),
                    start_task: start_task.clone(),
                    is_dedicated: Some(true),
                    ..Default::default()
                };
                let holder = format!("shipyard-engine-{}-{}", self.inner.instance, id);
                st.nodes.insert(
                    (pool.to_string(), id.clone()),
                    NodeRec {
                        pool: pool.to_string(),
                        node,
                        holder,
                        root,
                        image: image.clone(),
                        used_slots: 0,
                        tasks: vec![],
                    },
                );
                keys.push(Key::Node(pool.to_string(), id.clone()));
                if let Some(r) = self.node_ref(&st, pool, &id) {
                    let (made, wait) = tokio::sync::oneshot::channel();
                    // Under the state lock: a deletion that sees the nodes sees these too.
                    if let Ok(mut g) = self.inner.growing.lock() {
                        let v = g.entry(pool.to_string()).or_default();
                        v.retain_mut(|w| {
                            matches!(
                                w.try_recv(),
                                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                            )
                        });
                        v.push(wait);
                    }
                    refs.push((r, made));
                }
            }
            if let Err(e) = self.save(&st, &keys) {
                tracing::warn!(error = %e, "saving new nodes");
            }
        }
        refs
    }

    /// Starts the pool's new nodes (concurrently), running their start tasks.
    async fn start_nodes(
        &self,
        pool: &str,
        refs: Vec<(NodeRef, tokio::sync::oneshot::Sender<()>)>,
    ) {
        let futs = refs.into_iter().map(|(r, made)| {
            let e = self.clone();
            async move { e.start_node(r, made).await }
        });
        futures::future::join_all(futs).await;
        let mut st = self.lock();
        let count = st.nodes.keys().filter(|(p, _)| p == pool).count() as i32;
        if let Some(p) = st.pools.get_mut(pool) {
            p.pool.current_dedicated_nodes = Some(count);
            p.pool.allocation_state = Some(AllocationState::Steady);
            p.pool.allocation_state_transition_time = Some(now());
            let _ = self.save(&st, &[Key::Pool(pool.to_string())]);
        }
        drop(st);
        self.wake();
    }

    /// Makes the node, says so on `made`, then runs its start task.
    async fn start_node(&self, r: NodeRef, made_tx: tokio::sync::oneshot::Sender<()>) {
        let made = async {
            for d in ["shared", "startup/wd", "workitems"] {
                let p = r.root.join(d);
                std::fs::create_dir_all(&p)
                    .map_err(|e| EngineError::io("creating node directory", &p, e))?;
            }
            set_open_mode(&r.root);
            self.kind_of(&r.pool).create_node(&r).await
        }
        .await;
        let _ = made_tx.send(());
        let ip = match made {
            Ok(ip) => ip,
            Err(e) => {
                tracing::warn!(node = %r.id, error = %e, "node creation failed");
                self.update_node(&r.pool, &r.id, |n| {
                    set_node_state(&mut n.node, ComputeNodeState::Unusable);
                    n.node.errors = Some(vec![shipyard_batch_api::models::ComputeNodeError {
                        code: Some("NodeCreationFailed".into()),
                        message: Some(e.to_string()),
                        error_details: None,
                    }]);
                });
                return;
            }
        };
        self.update_node(&r.pool, &r.id, |n| {
            n.node.ip_address = Some(ip.clone());
            n.node.last_boot_time = Some(now());
        });
        exec::run_start_task(self, &r).await;
    }

    pub(crate) fn update_node(&self, pool: &str, id: &str, f: impl FnOnce(&mut NodeRec)) {
        let mut st = self.lock();
        if let Some(n) = st.nodes.get_mut(&(pool.to_string(), id.to_string())) {
            f(n);
            if let Err(e) = self.save(&st, &[Key::Node(pool.to_string(), id.to_string())]) {
                tracing::warn!(error = %e, "saving node");
            }
        }
    }

    /// The pool.
    pub fn get_pool(&self, id: &str) -> Result<CloudPool> {
        self.lock()
            .pools
            .get(id)
            .map(|p| p.pool.clone())
            .ok_or_else(|| EngineError::not_found("PoolNotFound", id))
    }

    /// Every pool.
    pub fn list_pools(&self) -> Result<Vec<CloudPool>> {
        Ok(self.lock().pools.values().map(|p| p.pool.clone()).collect())
    }

    /// Deletes a pool: state `deleting` at once, then nodes, network and directories go and the
    /// pool disappears (404). Returns when removal has been started.
    pub async fn delete_pool(&self, id: &str) -> Result<()> {
        let r = self.delete_pool_now(id).await;
        self.inner.store.durable().await;
        r
    }

    async fn delete_pool_now(&self, id: &str) -> Result<()> {
        {
            let mut st = self.lock();
            let p = st
                .pools
                .get_mut(id)
                .ok_or_else(|| EngineError::not_found("PoolNotFound", id))?;
            if matches!(p.pool.state, Some(PoolState::Deleting)) {
                return Ok(());
            }
            p.pool.state = Some(PoolState::Deleting);
            p.pool.state_transition_time = Some(now());
            self.save(&st, &[Key::Pool(id.to_string())])?;
        }
        let e = self.clone();
        let id = id.to_string();
        tokio::spawn(async move { e.finish_delete_pool(&id).await });
        Ok(())
    }

    /// Removes everything of a pool (the second half of [`Engine::delete_pool`]).
    pub(crate) async fn finish_delete_pool(&self, id: &str) {
        // Nodes still being made are removed once they are (else a holder made after the
        // removal would be left behind); their start tasks are not waited for.
        take_and_await(&self.inner.growing, id).await;
        let (refs, network): (Vec<NodeRef>, String) = {
            let st = self.lock();
            let Some(p) = st.pools.get(id) else { return };
            let refs = st
                .nodes
                .keys()
                .filter(|(pl, _)| pl == id)
                .filter_map(|(_, n)| self.node_ref(&st, id, n))
                .collect();
            (refs, p.network.clone())
        };
        // Stop the pool's running tasks.
        let tasks: Vec<(String, String)> = {
            let st = self.lock();
            st.nodes
                .values()
                .filter(|n| n.pool == id)
                .flat_map(|n| n.tasks.iter())
                .filter_map(|t| t.split_once('/'))
                .map(|(j, t)| (j.to_string(), t.to_string()))
                .collect()
        };
        for (j, t) in tasks {
            self.cancel_task(&j, &t);
        }
        let kind = self.kind_of(id);
        // A VM-like pool's removal removes all its nodes at once (in parallel).
        if !self
            .lock()
            .pools
            .get(id)
            .is_some_and(|p| is_vm_pool(&p.params))
        {
            futures::future::join_all(refs.iter().map(|r| kind.remove_node(r))).await;
        }
        let of_pool = [
            (labels::POOL, id),
            (labels::INSTANCE, self.inner.instance.as_str()),
        ];
        if let Err(e) = kind.remove_labelled(&of_pool).await {
            tracing::warn!(pool = id, error = %e, "removing pool containers");
        }
        if let Err(e) = kind.remove_pool(&network).await {
            tracing::warn!(pool = id, error = %e, "removing pool network");
        }
        let dir = self.inner.opts.state_dir.join("pools").join(sanitize(id));
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "removing pool directory");
            }
        }
        let mut st = self.lock();
        let mut keys = vec![Key::Pool(id.to_string())];
        let nodes: Vec<(String, String)> =
            st.nodes.keys().filter(|(p, _)| p == id).cloned().collect();
        for k in nodes {
            st.nodes.remove(&k);
            keys.push(Key::Node(k.0, k.1));
        }
        st.pools.remove(id);
        if let Err(e) = self.save(&st, &keys) {
            tracing::warn!(error = %e, "saving pool deletion");
        }
    }

    /// Resizes a pool to `targetDedicatedNodes + targetLowPriorityNodes`; shrinking removes idle
    /// nodes first (newest first).
    pub async fn resize_pool(&self, id: &str, r: PoolResizeParameter) -> Result<()> {
        let r = self.resize_pool_now(id, r).await;
        self.inner.store.durable().await;
        r
    }

    async fn resize_pool_now(&self, id: &str, r: PoolResizeParameter) -> Result<()> {
        let target = (r.target_dedicated_nodes.unwrap_or(0)
            + r.target_low_priority_nodes.unwrap_or(0))
        .max(0) as usize;
        let (current, victims) = {
            let mut st = self.lock();
            let p = st
                .pools
                .get_mut(id)
                .ok_or_else(|| EngineError::not_found("PoolNotFound", id))?;
            if matches!(p.pool.state, Some(PoolState::Deleting)) {
                return Err(EngineError::conflict("PoolBeingDeleted", id));
            }
            if matches!(p.pool.allocation_state, Some(AllocationState::Resizing)) {
                return Err(EngineError::conflict("PoolResizing", id));
            }
            p.pool.target_dedicated_nodes = r.target_dedicated_nodes.or(Some(0));
            p.pool.target_low_priority_nodes = r.target_low_priority_nodes.or(Some(0));
            p.pool.allocation_state = Some(AllocationState::Resizing);
            p.pool.allocation_state_transition_time = Some(now());
            let mut nodes: Vec<&NodeRec> = st.nodes.values().filter(|n| n.pool == id).collect();
            let current = nodes.len();
            // Unusable and start-task-failed nodes first, then idle ones, newest first.
            nodes.sort_by_key(|n| {
                let usable = !matches!(
                    n.node.state,
                    Some(ComputeNodeState::Unusable) | Some(ComputeNodeState::StartTaskFailed)
                );
                (usable, n.used_slots, std::cmp::Reverse(n.id().to_string()))
            });
            let victims: Vec<String> = nodes
                .iter()
                .take(current.saturating_sub(target))
                .map(|n| n.id().to_string())
                .collect();
            let mut keys = vec![Key::Pool(id.to_string())];
            // Leaving: nothing more is placed there, and its tasks' end is no node death.
            for v in &victims {
                if let Some(n) = st.nodes.get_mut(&(id.to_string(), v.clone())) {
                    set_node_state(&mut n.node, ComputeNodeState::LeavingPool);
                    keys.push(Key::Node(id.to_string(), v.clone()));
                }
            }
            self.save(&st, &keys)?;
            (current, victims)
        };
        if target > current {
            self.spawn_grow(id, target - current);
            return Ok(());
        }
        for v in victims {
            let r = {
                let st = self.lock();
                self.node_ref(&st, id, &v)
            };
            let tasks: Vec<String> = self
                .lock()
                .nodes
                .get(&(id.to_string(), v.clone()))
                .map(|n| n.tasks.clone())
                .unwrap_or_default();
            for t in tasks {
                if let Some((j, t)) = t.split_once('/') {
                    self.cancel_task(j, t);
                }
            }
            if let Some(r) = r {
                self.kind_of(id).remove_node(&r).await?;
                let _ = std::fs::remove_dir_all(&r.root);
            }
            let mut st = self.lock();
            st.nodes.remove(&(id.to_string(), v.clone()));
            self.save(&st, &[Key::Node(id.to_string(), v)])?;
        }
        let mut st = self.lock();
        let count = st.nodes.keys().filter(|(p, _)| p == id).count() as i32;
        if let Some(p) = st.pools.get_mut(id) {
            p.pool.current_dedicated_nodes = Some(count);
            p.pool.allocation_state = Some(AllocationState::Steady);
            p.pool.allocation_state_transition_time = Some(now());
        }
        self.save(&st, &[Key::Pool(id.to_string())])
    }

    /// Patches pool properties (start task for new nodes, metadata, display name, ...).
    pub fn patch_pool(&self, id: &str, p: PoolPatchParameter) -> Result<()> {
        let mut st = self.lock();
        let rec = st
            .pools
            .get_mut(id)
            .ok_or_else(|| EngineError::not_found("PoolNotFound", id))?;
        if let Some(s) = p.start_task {
            rec.params.start_task = Some(s.clone());
            rec.pool.start_task = Some(s);
        }
        if let Some(m) = p.metadata {
            rec.pool.metadata = Some(m);
        }
        if let Some(d) = p.display_name {
            rec.pool.display_name = Some(d);
        }
        if let Some(t) = p.resource_tags {
            rec.pool.resource_tags = Some(t);
        }
        rec.pool.etag = Some(etag());
        rec.pool.last_modified = Some(now());
        self.save(&st, &[Key::Pool(id.to_string())])
    }

    /// The pool's nodes.
    pub fn list_nodes(&self, pool: &str) -> Result<Vec<ComputeNode>> {
        let st = self.lock();
        if !st.pools.contains_key(pool) {
            return Err(EngineError::not_found("PoolNotFound", pool));
        }
        Ok(st
            .nodes
            .values()
            .filter(|n| n.pool == pool)
            .map(|n| n.node.clone())
            .collect())
    }

    /// One node.
    pub fn get_node(&self, pool: &str, node: &str) -> Result<ComputeNode> {
        let st = self.lock();
        if !st.pools.contains_key(pool) {
            return Err(EngineError::not_found("PoolNotFound", pool));
        }
        st.nodes
            .get(&(pool.to_string(), node.to_string()))
            .map(|n| n.node.clone())
            .ok_or_else(|| EngineError::not_found("NodeNotFound", node))
    }

    fn node_root(&self, pool: &str, node: &str) -> Result<PathBuf> {
        let st = self.lock();
        if !st.pools.contains_key(pool) {
            return Err(EngineError::not_found("PoolNotFound", pool));
        }
        st.nodes
            .get(&(pool.to_string(), node.to_string()))
            .map(|n| n.root.clone())
            .ok_or_else(|| EngineError::not_found("NodeNotFound", node))
    }

    /// Files under the node root (names relative to it, `/`-separated).
    pub fn list_node_files(
        &self,
        pool: &str,
        node: &str,
        recursive: bool,
    ) -> Result<Vec<NodeFile>> {
        let root = self.node_root(pool, node)?;
        let url = format!(
            "{}/pools/{pool}/nodes/{node}/files",
            self.inner.opts.account_url
        );
        list_files(&root, recursive, &url)
    }

    /// One file under the node root.
    pub fn node_file(&self, pool: &str, node: &str, path: &str) -> Result<FileContent> {
        let root = self.node_root(pool, node)?;
        file_content(&root, path)
    }

    // ----------------------------------------------------------------- jobs

    /// Adds a job on an existing pool.
    pub async fn add_job(&self, j: JobAddParameter) -> Result<()> {
        let r = self.add_job_now(j).await;
        self.inner.store.durable().await;
        r
    }

    async fn add_job_now(&self, j: JobAddParameter) -> Result<()> {
        if j.id.is_empty() {
            return Err(EngineError::invalid("id", "the job id is empty"));
        }
        let pool = j.pool_info.pool_id.clone().ok_or_else(|| {
            EngineError::invalid(
                "poolInfo.poolId",
                "the local engine needs an existing pool (autoPoolSpecification is not supported)",
            )
        })?;
        let mut st = self.lock();
        if st.jobs.contains_key(&j.id) {
            return Err(EngineError::conflict("JobExists", &j.id));
        }
        st.seq += 1;
        let t = now();
        let job = CloudJob {
            id: Some(j.id.clone()),
            display_name: j.display_name.clone(),
            uses_task_dependencies: Some(j.uses_task_dependencies.unwrap_or(false)),
            url: Some(format!("{}/jobs/{}", self.inner.opts.account_url, j.id)),
            etag: Some(etag()),
            last_modified: Some(t.clone()),
            creation_time: Some(t.clone()),
            state: Some(JobState::Active),
            state_transition_time: Some(t.clone()),
            priority: Some(j.priority.unwrap_or(0)),
            allow_task_preemption: j.allow_task_preemption,
            max_parallel_tasks: Some(j.max_parallel_tasks.unwrap_or(-1)),
            constraints: j.constraints.clone(),
            job_manager_task: j.job_manager_task.clone(),
            job_preparation_task: j.job_preparation_task.clone(),
            job_release_task: j.job_release_task.clone(),
            common_environment_settings: j.common_environment_settings.clone(),
            pool_info: Some(j.pool_info.clone()),
            on_all_tasks_complete: Some(j.on_all_tasks_complete.clone().unwrap_or_default()),
            on_task_failure: Some(j.on_task_failure.clone().unwrap_or_default()),
            network_configuration: j.network_configuration.clone(),
            metadata: j.metadata.clone(),
            execution_info: Some(shipyard_batch_api::models::JobExecutionInformation {
                start_time: t,
                pool_id: Some(pool),
                ..Default::default()
            }),
            ..Default::default()
        };
        let seq = st.seq;
        st.jobs.insert(
            j.id.clone(),
            JobRec {
                job,
                params: j.clone(),
                seq,
                prep: BTreeMap::new(),
            },
        );
        self.save(&st, &[Key::Job(j.id)])?;
        drop(st);
        self.wake();
        Ok(())
    }

    /// The job.
    pub fn get_job(&self, id: &str) -> Result<CloudJob> {
        self.lock()
            .jobs
            .get(id)
            .map(|j| j.job.clone())
            .ok_or_else(|| EngineError::not_found("JobNotFound", id))
    }

    /// Every job.
    pub fn list_jobs(&self) -> Result<Vec<CloudJob>> {
        Ok(self.lock().jobs.values().map(|j| j.job.clone()).collect())
    }

    /// Patches a job (priority, maxParallelTasks, onAllTasksComplete, constraints, metadata).
    pub async fn patch_job(&self, id: &str, p: JobPatchParameter) -> Result<()> {
        let r = self.patch_job_now(id, p).await;
        self.inner.store.durable().await;
        r
    }

    async fn patch_job_now(&self, id: &str, p: JobPatchParameter) -> Result<()> {
        {
            let mut st = self.lock();
            let j = st
                .jobs
                .get_mut(id)
                .ok_or_else(|| EngineError::not_found("JobNotFound", id))?;
            if matches!(
                j.job.state,
                Some(JobState::Completed) | Some(JobState::Terminating) | Some(JobState::Deleting)
            ) {
                return Err(EngineError::conflict("JobCompleted", id));
            }
            if let Some(v) = p.priority {
                j.job.priority = Some(v);
            }
            if let Some(v) = p.max_parallel_tasks {
                j.job.max_parallel_tasks = Some(v);
            }
            if let Some(v) = p.allow_task_preemption {
                j.job.allow_task_preemption = Some(v);
            }
            if let Some(v) = p.on_all_tasks_complete {
                j.job.on_all_tasks_complete = Some(v);
            }
            if let Some(v) = p.constraints {
                j.job.constraints = Some(v);
            }
            if let Some(v) = p.metadata {
                j.job.metadata = Some(v);
            }
            j.job.etag = Some(etag());
            j.job.last_modified = Some(now());
            self.save(&st, &[Key::Job(id.to_string())])?;
        }
        self.check_job_complete(id).await;
        self.wake();
        Ok(())
    }

    /// Terminates a job: running tasks are stopped, job release runs on every node that ran the
    /// job preparation, then the job is `completed`.
    pub async fn terminate_job(&self, id: &str, reason: Option<String>) -> Result<()> {
        let r = self.terminate_job_now(id, reason).await;
        self.inner.store.durable().await;
        r
    }

    async fn terminate_job_now(&self, id: &str, reason: Option<String>) -> Result<()> {
        {
            let st = self.lock();
            let j = st
                .jobs
                .get(id)
                .ok_or_else(|| EngineError::not_found("JobNotFound", id))?;
            match j.job.state {
                Some(JobState::Completed) => return Err(EngineError::conflict("JobCompleted", id)),
                Some(JobState::Terminating) => {
                    return Err(EngineError::conflict("JobBeingTerminated", id))
                }
                Some(JobState::Deleting) => {
                    return Err(EngineError::conflict("JobBeingDeleted", id))
                }
                _ => {}
            }
        }
        let reason = reason.unwrap_or_else(|| "UserTerminate".into());
        exec::begin_end_job(self, id, &reason, false);
        self.spawn_end_job(id, reason, false);
        Ok(())
    }

    /// Finishes ending job `id` in the background, as Batch does after answering a terminate
    /// or delete (the job is `terminating` or `deleting` meanwhile): its tasks stop, its
    /// release runs, then it is `completed` or gone. An engine that stops before that resumes
    /// it when it reopens.
    fn spawn_end_job(&self, id: &str, reason: String, delete: bool) {
        let (e, id) = (self.clone(), id.to_string());
        tokio::spawn(async move { exec::end_job(&e, &id, reason, delete).await });
    }

    /// Deletes a job (terminating it first), its tasks and their directories.
    pub async fn delete_job(&self, id: &str) -> Result<()> {
        let r = self.delete_job_now(id).await;
        self.inner.store.durable().await;
        r
    }

    async fn delete_job_now(&self, id: &str) -> Result<()> {
        match self.lock().jobs.get(id).map(|j| j.job.state.clone()) {
            None => return Err(EngineError::not_found("JobNotFound", id)),
            Some(Some(JobState::Deleting)) => {
                return Err(EngineError::conflict("JobBeingDeleted", id))
            }
            Some(_) => {}
        }
        exec::begin_end_job(self, id, "UserTerminate", true);
        self.spawn_end_job(id, "UserTerminate".into(), true);
        Ok(())
    }

    /// Task and slot counts of a job.
    pub fn task_counts(&self, job: &str) -> Result<TaskCountsResult> {
        let st = self.lock();
        if !st.jobs.contains_key(job) {
            return Err(EngineError::not_found("JobNotFound", job));
        }
        let mut c = TaskCounts::default();
        let mut s = TaskSlotCounts::default();
        for t in st.tasks.values().filter(|t| t.job == job) {
            let slots = t.params.required_slots.unwrap_or(1);
            match t.task.state {
                Some(TaskState::Completed) => {
                    c.completed += 1;
                    s.completed += slots;
                    let ok = matches!(
                        t.task
                            .execution_info
                            .as_ref()
                            .and_then(|e| e.result.as_ref()),
                        Some(TaskExecutionResult::Success)
                    );
                    if ok {
                        c.succeeded += 1;
                        s.succeeded += slots;
                    } else {
                        c.failed += 1;
                        s.failed += slots;
                    }
                }
                Some(TaskState::Running) | Some(TaskState::Preparing) => {
                    c.running += 1;
                    s.running += slots;
                }
                _ => {
                    c.active += 1;
                    s.active += slots;
                }
            }
        }
        Ok(TaskCountsResult {
            task_counts: c,
            task_slot_counts: s,
        })
    }

    /// Job preparation and release status per node.
    pub fn prep_release_status(
        &self,
        job: &str,
    ) -> Result<Vec<JobPreparationAndReleaseTaskExecutionInformation>> {
        let st = self.lock();
        let j = st
            .jobs
            .get(job)
            .ok_or_else(|| EngineError::not_found("JobNotFound", job))?;
        Ok(j.prep.values().cloned().collect())
    }

    // ---------------------------------------------------------------- tasks

    /// Adds tasks to a job; one result per task, in order.
    pub async fn add_tasks(
        &self,
        job: &str,
        tasks: Vec<TaskAddParameter>,
    ) -> Result<Vec<TaskAddResult>> {
        let r = self.add_tasks_now(job, tasks).await;
        self.inner.store.durable().await;
        r
    }

    async fn add_tasks_now(
        &self,
        job: &str,
        tasks: Vec<TaskAddParameter>,
    ) -> Result<Vec<TaskAddResult>> {
        let mut results = Vec::with_capacity(tasks.len());
        {
            let mut st = self.lock();
            let j = st
                .jobs
                .get(job)
                .ok_or_else(|| EngineError::not_found("JobNotFound", job))?;
            if !matches!(j.job.state, Some(JobState::Active)) {
                return Err(EngineError::conflict("JobCompleted", job));
            }
            let mut keys = Vec::new();
            for t in tasks {
                let key = (job.to_string(), t.id.clone());
                let error = if t.id.is_empty() {
                    Some(("InvalidPropertyValue", "the task id is empty".to_string()))
                } else if t.required_slots.is_some_and(|n| n < 1) {
                    Some((
                        "InvalidPropertyValue",
                        format!("task {}: requiredSlots must be at least 1", t.id),
                    ))
                } else if st.tasks.contains_key(&key) {
                    Some((
                        "TaskExists",
                        format!("The specified task already exists: {}", t.id),
                    ))
                } else {
                    None
                };
                if let Some((code, message)) = error {
                    results.push(TaskAddResult {
                        status: TaskAddStatus::ClientError,
                        task_id: t.id.clone(),
                        etag: None,
                        last_modified: None,
                        location: None,
                        error: Some(shipyard_batch_api::models::BatchError {
                            code: Some(code.into()),
                            message: Some(shipyard_batch_api::models::ErrorMessage {
                                lang: Some("en-US".into()),
                                value: Some(message),
                            }),
                            ..Default::default()
                        }),
                    });
                    continue;
                }
                st.seq += 1;
                let rec = exec::new_task_record(&self.inner.opts.account_url, job, t, st.seq);
                results.push(TaskAddResult {
                    status: TaskAddStatus::Success,
                    task_id: rec.params.id.clone(),
                    etag: rec.task.etag.clone(),
                    last_modified: rec.task.last_modified.clone(),
                    location: rec.task.url.clone(),
                    error: None,
                });
                keys.push(Key::Task(job.to_string(), rec.params.id.clone()));
                st.tasks.insert(key, rec);
                st.queues.remove(job);
            }
            self.save(&st, &keys)?;
        }
        self.wake();
        Ok(results)
    }

    /// The task.
    pub fn get_task(&self, job: &str, task: &str) -> Result<CloudTask> {
        let st = self.lock();
        if !st.jobs.contains_key(job) {
            return Err(EngineError::not_found("JobNotFound", job));
        }
        st.tasks
            .get(&(job.to_string(), task.to_string()))
            .map(|t| t.task.clone())
            .ok_or_else(|| EngineError::not_found("TaskNotFound", task))
    }

    /// The job's tasks, in the order they were added.
    pub fn list_tasks(&self, job: &str) -> Result<Vec<CloudTask>> {
        let st = self.lock();
        if !st.jobs.contains_key(job) {
            return Err(EngineError::not_found("JobNotFound", job));
        }
        let mut v: Vec<&TaskRec> = st
            .tasks
            .range((job.to_string(), String::new())..)
            .take_while(|(k, _)| k.0 == job)
            .map(|(_, t)| t)
            .collect();
        v.sort_by_key(|t| t.seq);
        Ok(v.into_iter().map(|t| t.task.clone()).collect())
    }

    /// A multi-instance task's subtasks (instances other than the primary).
    pub fn list_subtasks(&self, job: &str, task: &str) -> Result<Vec<SubtaskInformation>> {
        let st = self.lock();
        if !st.jobs.contains_key(job) {
            return Err(EngineError::not_found("JobNotFound", job));
        }
        st.tasks
            .get(&(job.to_string(), task.to_string()))
            .map(|t| t.subtasks.clone())
            .ok_or_else(|| EngineError::not_found("TaskNotFound", task))
    }

    /// Terminates a task (kills its containers; it completes with a failure).
    pub async fn terminate_task(&self, job: &str, task: &str) -> Result<()> {
        let r = self.terminate_task_now(job, task).await;
        self.inner.store.durable().await;
        r
    }

    async fn terminate_task_now(&self, job: &str, task: &str) -> Result<()> {
        let state = self.get_task(job, task)?.state;
        match state {
            Some(TaskState::Completed) => Ok(()),
            Some(TaskState::Active) | None => {
                {
                    let mut st = self.lock();
                    if let Some(t) = st.tasks.get_mut(&(job.to_string(), task.to_string())) {
                        exec::complete_task_record(
                            t,
                            None,
                            Some(exec::failure(
                                "TaskEnded",
                                "the task was terminated before it ran",
                            )),
                        );
                    }
                    self.save(&st, &[Key::Task(job.to_string(), task.to_string())])?;
                }
                self.check_job_complete(job).await;
                self.wake();
                Ok(())
            }
            _ => {
                self.cancel_task(job, task);
                Ok(())
            }
        }
    }

    /// Deletes a task (terminating it first) and its directory.
    pub async fn delete_task(&self, job: &str, task: &str) -> Result<()> {
        let r = self.delete_task_now(job, task).await;
        self.inner.store.durable().await;
        r
    }

    async fn delete_task_now(&self, job: &str, task: &str) -> Result<()> {
        self.get_task(job, task)?;
        self.cancel_task(job, task);
        let dirs = self.task_dirs(job, task);
        {
            let mut st = self.lock();
            st.tasks.remove(&(job.to_string(), task.to_string()));
            st.queues.remove(job);
            self.save(&st, &[Key::Task(job.to_string(), task.to_string())])?;
        }
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        self.check_job_complete(job).await;
        Ok(())
    }

    fn task_dirs(&self, job: &str, task: &str) -> Vec<PathBuf> {
        let st = self.lock();
        let Some(t) = st.tasks.get(&(job.to_string(), task.to_string())) else {
            return vec![];
        };
        let Some(pool) = st
            .jobs
            .get(job)
            .and_then(|j| j.params.pool_info.pool_id.clone())
        else {
            return vec![];
        };
        t.nodes
            .iter()
            .filter_map(|n| st.nodes.get(&(pool.clone(), n.clone())))
            .map(|n| exec::host_task_dir(&n.root, job, task))
            .collect()
    }

    fn task_dir(&self, job: &str, task: &str) -> Result<PathBuf> {
        let t = self.get_task(job, task)?;
        let st = self.lock();
        let info = t.node_info.ok_or_else(|| {
            EngineError::not_found(
                "FileNotFound",
                format!("{job}/{task}: the task has not run"),
            )
        })?;
        let root = st
            .nodes
            .get(&(
                info.pool_id.unwrap_or_default(),
                info.node_id.unwrap_or_default(),
            ))
            .map(|n| n.root.clone())
            .ok_or_else(|| {
                EngineError::not_found("NodeNotFound", format!("the node of task {task}"))
            })?;
        Ok(exec::host_task_dir(&root, job, task))
    }

    /// Files in the task's directory on its (primary) node: `stdout.txt`, `stderr.txt`, `wd/...`.
    pub fn list_task_files(&self, job: &str, task: &str, recursive: bool) -> Result<Vec<NodeFile>> {
        let dir = self.task_dir(job, task)?;
        let url = format!(
            "{}/jobs/{job}/tasks/{task}/files",
            self.inner.opts.account_url
        );
        list_files(&dir, recursive, &url)
    }

    /// One file of the task's directory.
    pub fn task_file(&self, job: &str, task: &str, path: &str) -> Result<FileContent> {
        let dir = self.task_dir(job, task)?;
        file_content(&dir, path)
    }

    pub(crate) fn cancel_task(&self, job: &str, task: &str) {
        if let Ok(c) = self.inner.cancels.lock() {
            if let Some(t) = c.get(&(job.to_string(), task.to_string())) {
                t.cancel();
            }
        }
    }
}

/// Whether a pool has VM-like nodes (no `containerConfiguration`: Batch Shipyard's
/// non-native mode).
/// The pool's `containerConfiguration.containerRegistries` as logins (entries without a user
/// name are anonymous and left out; no server means Docker Hub).
pub(crate) fn pool_logins(p: &PoolAddParameter) -> Vec<RegistryLogin> {
    p.virtual_machine_configuration
        .as_ref()
        .and_then(|v| v.container_configuration.as_ref())
        .and_then(|c| c.container_registries.as_ref())
        .into_iter()
        .flatten()
        .filter_map(login_of)
        .collect()
}

/// A Batch registry entry as a login, when it has a user name.
pub(crate) fn login_of(r: &shipyard_batch_api::models::ContainerRegistry) -> Option<RegistryLogin> {
    Some(RegistryLogin {
        server: r
            .registry_server
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| shipyard_runtime::registry_auth::DOCKER_HUB.into()),
        username: r.username.clone().filter(|u| !u.is_empty())?,
        password: r.password.clone().unwrap_or_default(),
    })
}

pub(crate) fn is_vm_pool(p: &PoolAddParameter) -> bool {
    p.virtual_machine_configuration
        .as_ref()
        .and_then(|v| v.container_configuration.as_ref())
        .is_none()
}

fn set_node_state(n: &mut ComputeNode, s: ComputeNodeState) {
    if n.state.as_ref() != Some(&s) {
        n.state = Some(s);
        n.state_transition_time = Some(now());
    }
}

fn etag() -> String {
    format!("0x{:016X}", rand::random::<u64>())
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// Takes the futures `map` holds under `key` and awaits them all.
pub(crate) async fn take_and_await<F: std::future::Future>(
    map: &Mutex<HashMap<String, Vec<F>>>,
    key: &str,
) {
    let pending = map
        .lock()
        .map(|mut m| m.remove(key).unwrap_or_default())
        .unwrap_or_default();
    futures::future::join_all(pending).await;
}

fn set_open_mode(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777));
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                set_open_mode(&e.path());
            }
        }
    }
}

fn file_content(base: &Path, rel: &str) -> Result<FileContent> {
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|s| s == "..") {
        return Err(EngineError::not_found("FileNotFound", rel));
    }
    let path = base.join(rel);
    let md = std::fs::metadata(&path).map_err(|_| EngineError::not_found("FileNotFound", rel))?;
    if md.is_dir() {
        return Err(EngineError::not_found("FileNotFound", rel));
    }
    let modified = md
        .modified()
        .map(time::OffsetDateTime::from)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    Ok(FileContent {
        path,
        len: md.len(),
        modified,
    })
}

fn list_files(base: &Path, recursive: bool, url: &str) -> Result<Vec<NodeFile>> {
    let mut out = Vec::new();
    walk(base, "", recursive, url, &mut out);
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, recursive: bool, url: &str, out: &mut Vec<NodeFile>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let Ok(md) = e.metadata() else { continue };
        let fmt = |t: std::io::Result<std::time::SystemTime>| {
            t.ok().map(time::OffsetDateTime::from).and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
        };
        out.push(NodeFile {
            name: Some(name.clone()),
            url: Some(format!("{url}/{name}")),
            is_directory: Some(md.is_dir()),
            properties: Some(shipyard_batch_api::models::FileProperties {
                creation_time: fmt(md.created()),
                last_modified: fmt(md.modified()).unwrap_or_default(),
                content_length: if md.is_dir() { 0 } else { md.len() as i64 },
                content_type: Some("application/octet-stream".into()),
                file_mode: {
                    use std::os::unix::fs::PermissionsExt;
                    Some(format!("{:o}", md.permissions().mode()))
                },
            }),
        });
        if md.is_dir() && recursive {
            walk(&e.path(), &format!("{name}/"), recursive, url, out);
        }
    }
}
