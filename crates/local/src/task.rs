//! Running one attempt of one task: node containers, coordination, sshd readiness, the
//! application on the master, failure detection, and cleanup that always happens.

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{select_all, BoxFuture, FutureExt, SelectAll};
use tokio_util::sync::CancellationToken;

use crate::cmdline::{parse_run_options, split_command_line, RunOptions};
use crate::docker::{labels, nth, ContainerSpec, Engine, OutputStream};
use crate::env::{batch_env, NodeAddr, TaskDirs};
use crate::error::{LocalError, Result};
use crate::events::{Event, Events};
use crate::keys::RunKeys;
use crate::spec::LocalTask;
use crate::LocalOptions;
use shipyard_runtime::ssh::SSHD_PORT;

/// What one run of a job shares between its tasks.
#[derive(Debug)]
pub(crate) struct RunCtx {
    pub(crate) engine: Engine,
    pub(crate) opts: LocalOptions,
    pub(crate) job: String,
    pub(crate) run_id: String,
    pub(crate) keys: Option<Arc<RunKeys>>,
    pub(crate) key_mount: crate::keys::KeyMount,
    pub(crate) events: Events,
}

impl RunCtx {
    fn short_run(&self) -> &str {
        &self.run_id[..8.min(self.run_id.len())]
    }

    /// Labels for objects of `task`.
    pub(crate) fn labels(&self, task: &str) -> HashMap<String, String> {
        let pid = std::process::id();
        let mut l: HashMap<String, String> = self.opts.extra_labels.clone().into_iter().collect();
        l.extend([
            (labels::BACKEND.to_string(), "local".to_string()),
            (labels::JOB.to_string(), self.job.clone()),
            (labels::TASK.to_string(), task.to_string()),
            (labels::RUN.to_string(), self.run_id.clone()),
            (labels::PID.to_string(), pid.to_string()),
        ]);
        let owner = crate::owner::RunOwner::current();
        if let Some(ns) = owner.pid_ns {
            l.insert(labels::PID_NS.to_string(), ns);
        }
        if let Some(start) = owner.pid_start {
            l.insert(labels::PID_START.to_string(), start.to_string());
        }
        if let Some(host) = owner.host {
            l.insert(labels::HOST.to_string(), host);
        }
        l
    }

    /// Host directory of a task (`<state>/jobs/<job>/tasks/<task>`).
    pub(crate) fn task_dir(&self, task: &str) -> PathBuf {
        self.opts
            .state_dir
            .join("jobs")
            .join(&self.job)
            .join("tasks")
            .join(task)
    }
}

/// How one attempt ended.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub(crate) exit_code: Option<i64>,
    pub(crate) failure: Option<String>,
    pub(crate) cancelled: bool,
    pub(crate) nodes: Vec<String>,
}

impl Attempt {
    pub(crate) fn succeeded(&self) -> bool {
        !self.cancelled && self.failure.is_none() && self.exit_code == Some(0)
    }
}

/// Docker objects of one attempt; removed by [`Resources::cleanup`], or on drop (a cancelled
/// future) by a blocking label-based removal.
struct Resources {
    engine: Engine,
    filter: Vec<String>,
    containers: Vec<String>,
    network: Option<String>,
    volume: Option<String>,
    armed: bool,
}

impl Resources {
    async fn cleanup(mut self) {
        self.armed = false;
        let removed = self.engine.remove_containers(&self.containers).await;
        tracing::debug!(removed, "node containers removed");
        if let Some(n) = self.network.take() {
            self.engine.remove_network(&n).await;
        }
        if let Some(v) = self.volume.take() {
            self.engine.remove_volume(&v).await;
        }
        // Anything created but not yet recorded (a create that raced a cancel).
        self.engine.remove_labelled(&self.filter).await;
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        if self.armed {
            blocking_remove_labelled(self.filter.clone());
        }
    }
}

/// Removes everything labelled with all of `filter` from a private thread and runtime, and
/// waits for it: used when a future is dropped mid-flight, so nothing outlives the caller's
/// `run` future.
pub(crate) fn blocking_remove_labelled(filter: Vec<String>) {
    let handle = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            if let Ok(engine) = Engine::connect().await {
                engine.remove_labelled(&filter).await;
            }
        });
    });
    let _ = handle.join();
}

/// Writes output chunks to a pair of files and, when asked, emits lines as events.
struct Sink {
    out: std::fs::File,
    err: std::fs::File,
    bufs: [Vec<u8>; 2],
    events: Events,
    stream_lines: bool,
    task: String,
    node: String,
    coordination: bool,
    tail: Vec<u8>,
    dir: PathBuf,
    /// The first write that failed (a full disk): the output is truncated from there on.
    lost: Option<(PathBuf, std::io::Error)>,
}

impl Sink {
    fn create(
        dir: &Path,
        events: &Events,
        stream: bool,
        task: &str,
        node: &str,
        coordination: bool,
    ) -> Result<Self> {
        crate::private::create_dir_all(dir)?;
        let open = |name: &str| crate::private::create_file(&dir.join(name));
        Ok(Sink {
            out: open("stdout.txt")?,
            err: open("stderr.txt")?,
            bufs: [Vec::new(), Vec::new()],
            events: events.clone(),
            stream_lines: stream && events.enabled(),
            task: task.to_string(),
            node: node.to_string(),
            coordination,
            tail: Vec::new(),
            dir: dir.to_path_buf(),
            lost: None,
        })
    }

    fn write(&mut self, stream: OutputStream, chunk: &[u8]) {
        let (file, idx) = match stream {
            OutputStream::Stdout => (&mut self.out, 0),
            OutputStream::Stderr => (&mut self.err, 1),
        };
        if self.lost.is_none() {
            if let Err(e) = file.write_all(chunk) {
                tracing::error!(task = %self.task, error = %e, "could not write task output");
                let name = if idx == 0 { "stdout.txt" } else { "stderr.txt" };
                self.lost = Some((self.dir.join(name), e));
            }
        }
        if idx == 1 {
            self.tail.extend_from_slice(chunk);
            if self.tail.len() > 2048 {
                let cut = self.tail.len() - 2048;
                self.tail.drain(..cut);
            }
        }
        if !self.stream_lines {
            return;
        }
        self.bufs[idx].extend_from_slice(chunk);
        while let Some(pos) = self.bufs[idx].iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.bufs[idx].drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            self.emit(stream, text);
        }
    }

    fn emit(&self, stream: OutputStream, line: String) {
        self.events.emit(Event::Output {
            task: self.task.clone(),
            node: self.node.clone(),
            coordination: self.coordination,
            stream,
            line,
        });
    }

    /// Fails with [`LocalError::OutputLost`] when some output could not be written.
    fn check(&mut self) -> Result<()> {
        match self.lost.take() {
            Some((path, source)) => Err(LocalError::OutputLost {
                task: self.task.clone(),
                path,
                source,
            }),
            None => Ok(()),
        }
    }

    fn finish(self) -> String {
        for (idx, stream) in [(0, OutputStream::Stdout), (1, OutputStream::Stderr)] {
            if self.stream_lines && !self.bufs[idx].is_empty() {
                let text = String::from_utf8_lossy(&self.bufs[idx]).into_owned();
                self.emit(stream, text);
            }
        }
        String::from_utf8_lossy(&self.tail).trim().to_string()
    }
}

fn node_id(i: usize) -> String {
    format!("node-{i}")
}

/// Runs one attempt of `task`. Never leaves Docker objects behind, whatever happens (including
/// the future being dropped).
pub(crate) async fn run_attempt(
    ctx: &RunCtx,
    task: &LocalTask,
    attempt: u32,
    cancel: &CancellationToken,
    on_running: &(dyn Fn() + Send + Sync),
) -> Attempt {
    let n = task.instances() as usize;
    let multi = task.multi_instance.is_some();
    let nodes: Vec<String> = (0..n).map(node_id).collect();
    let filter = vec![
        format!("{}={}", labels::RUN, ctx.run_id),
        format!("{}={}", labels::TASK, task.id),
    ];
    let mut res = Resources {
        engine: ctx.engine.clone(),
        filter,
        containers: Vec::new(),
        network: None,
        volume: None,
        armed: true,
    };
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(LocalError::Cancelled),
        r = attempt_inner(ctx, task, attempt, multi, &mut res, on_running) => r,
    };
    res.cleanup().await;
    match outcome {
        Ok(code) => Attempt {
            exit_code: Some(code),
            failure: None,
            cancelled: false,
            nodes,
        },
        Err(LocalError::Cancelled) => Attempt {
            exit_code: None,
            failure: Some("cancelled".into()),
            cancelled: true,
            nodes,
        },
        Err(e) => Attempt {
            exit_code: match &e {
                LocalError::Coordination { code, .. } => Some(*code),
                _ => None,
            },
            failure: Some(e.to_string()),
            cancelled: false,
            nodes,
        },
    }
}

/// What an attempt needs before it creates anything: parsed command lines and run options,
/// object names, labels and directories.
struct AttemptSetup {
    multi: bool,
    labels: HashMap<String, String>,
    /// Prefix of the attempt's Docker object names.
    prefix: String,
    dirs: TaskDirs,
    app_argv: Vec<String>,
    coord_argv: Option<Vec<String>>,
    run_opts: RunOptions,
    /// Host directory of the task's output.
    task_dir: PathBuf,
}

impl AttemptSetup {
    /// Parses the task's command lines and run options and creates its host directory.
    fn new(ctx: &RunCtx, task: &LocalTask, multi: bool) -> Result<Self> {
        let labels = ctx.labels(&task.id);
        let prefix = format!("shipyard-{}-{}-{}", ctx.job, task.id, ctx.short_run());
        let dirs = TaskDirs::new(&ctx.job, &task.id);
        let app_argv = split_command_line(&task.command_line, "commandLine")?;
        let coord_argv = match &task.multi_instance {
            Some(m) if !m.coordination_command_line.trim().is_empty() => Some(split_command_line(
                &m.coordination_command_line,
                "multiInstanceSettings.coordinationCommandLine",
            )?),
            _ => None,
        };
        let run_opts = parse_run_options(&task.container_run_options)?;
        let task_dir = ctx.task_dir(&task.id);
        crate::private::create_dir_all(&task_dir)?;
        Ok(AttemptSetup {
            multi,
            labels,
            prefix,
            dirs,
            app_argv,
            coord_argv,
            run_opts,
            task_dir,
        })
    }
}

async fn attempt_inner(
    ctx: &RunCtx,
    task: &LocalTask,
    attempt: u32,
    multi: bool,
    res: &mut Resources,
    on_running: &(dyn Fn() + Send + Sync),
) -> Result<i64> {
    let setup = AttemptSetup::new(ctx, task, multi)?;
    let mut addrs: Vec<NodeAddr> = (0..task.instances() as usize)
        .map(|i| NodeAddr {
            id: node_id(i),
            ip: Ipv4Addr::UNSPECIFIED,
        })
        .collect();
    let mut binds_common = setup.run_opts.binds.clone();
    if multi {
        binds_common.push(create_network_and_volume(ctx, &setup, res, &mut addrs).await?);
    }
    let specs = node_specs(ctx, task, &setup, &addrs, &binds_common, &res.network);
    res.containers = specs.iter().map(|s| s.name.clone()).collect();
    start_nodes(ctx, task, &specs, &addrs, multi).await?;

    // From now on, a node that stops fails the task.
    let mut node_lost = watch_nodes(&ctx.engine, &specs);
    let lost = |i: usize| LocalError::NodeLost {
        task: task.id.clone(),
        node: addrs[i].id.clone(),
        container: specs[i].name.clone(),
    };
    let code = tokio::select! {
        biased;
        (i, _, _) = &mut node_lost => return Err(lost(i)),
        r = coordinate_and_run(ctx, task, attempt, &setup, &specs, &addrs, on_running) => r?,
    };
    // A killed master ends the exec with an error code before its watcher fires: check.
    if code != 0 {
        if let Ok((i, _, _)) =
            tokio::time::timeout(Duration::from_millis(300), &mut node_lost).await
        {
            return Err(lost(i));
        }
    }
    Ok(code)
}

/// Creates the task's private network (giving `addrs` their addresses on it) and its shared
/// volume, recorded in `res`; returns the volume's bind at the task's shared directory.
async fn create_network_and_volume(
    ctx: &RunCtx,
    setup: &AttemptSetup,
    res: &mut Resources,
    addrs: &mut [NodeAddr],
) -> Result<String> {
    let net = format!("{}-net", setup.prefix);
    res.network = Some(net.clone());
    let base = ctx.engine.create_network(&net, &setup.labels).await?;
    for (i, a) in addrs.iter_mut().enumerate() {
        a.ip = nth(base, 2 + i as u32);
    }
    let vol = format!("{}-shared", setup.prefix);
    res.volume = Some(vol.clone());
    ctx.engine.create_volume(&vol, &setup.labels).await?;
    Ok(format!("{vol}:{}", setup.dirs.shared_dir))
}

/// The container of every node: Batch environment, binds (keys on multi-instance nodes),
/// labels, and for multi-instance tasks the network, fixed address and every node in
/// `/etc/hosts`.
fn node_specs(
    ctx: &RunCtx,
    task: &LocalTask,
    setup: &AttemptSetup,
    addrs: &[NodeAddr],
    binds_common: &[String],
    network: &Option<String>,
) -> Vec<ContainerSpec> {
    let multi = setup.multi;
    let extra_hosts: Vec<String> = if multi {
        addrs.iter().map(|a| format!("{}:{}", a.id, a.ip)).collect()
    } else {
        Vec::new()
    };
    let run_opts = &setup.run_opts;
    (0..addrs.len())
        .map(|i| {
            let mut env: Vec<String> = batch_env(&ctx.job, &task.id, addrs, i, multi)
                .into_iter()
                .chain(task.environment.iter().cloned())
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            env.extend(run_opts.env.iter().cloned());
            let mut binds = binds_common.to_vec();
            if multi {
                if let Some(keys) = &ctx.keys {
                    binds.extend(keys.binds(i == 0 || ctx.opts.keys_on_all_nodes, &ctx.key_mount));
                }
            }
            let mut l = setup.labels.clone();
            l.insert(labels::NODE.to_string(), addrs[i].id.clone());
            for (k, v) in &run_opts.labels {
                l.entry(k.clone()).or_insert_with(|| v.clone());
            }
            ContainerSpec {
                name: format!("{}-{i}", setup.prefix),
                hostname: addrs[i].id.clone(),
                image: task.image.clone(),
                env,
                working_dir: setup.dirs.working_dir.clone(),
                labels: l,
                binds,
                extra_hosts: extra_hosts.clone(),
                network: if multi { network.clone() } else { None },
                ip: multi.then_some(addrs[i].ip),
                run: run_opts.clone(),
            }
        })
        .collect()
}

/// Creates and starts every node at once, then emits [`Event::NodeStarted`] for each.
async fn start_nodes(
    ctx: &RunCtx,
    task: &LocalTask,
    specs: &[ContainerSpec],
    addrs: &[NodeAddr],
    multi: bool,
) -> Result<()> {
    let t0 = Instant::now();
    let started =
        futures::future::join_all(specs.iter().map(|s| ctx.engine.create_and_start(s))).await;
    for r in started {
        r?;
    }
    for a in addrs {
        ctx.events.emit(Event::NodeStarted {
            task: task.id.clone(),
            node: a.id.clone(),
            ip: multi.then_some(a.ip),
        });
    }
    tracing::debug!(task = %task.id, nodes = specs.len(), ms = t0.elapsed().as_millis() as u64, "nodes started");
    Ok(())
}

/// A future that resolves with the index of the first node container that stops.
fn watch_nodes<'a>(engine: &'a Engine, specs: &[ContainerSpec]) -> SelectAll<BoxFuture<'a, usize>> {
    let watchers: Vec<BoxFuture<'a, usize>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = s.name.clone();
            async move {
                engine.wait_stopped(&name).await;
                i
            }
            .boxed()
        })
        .collect();
    select_all(watchers)
}

/// The coordination command on every node and sshd readiness (multi-instance tasks), then the
/// application on the master (bounded by `maxWallClockTime`); returns its exit code.
async fn coordinate_and_run(
    ctx: &RunCtx,
    task: &LocalTask,
    attempt: u32,
    setup: &AttemptSetup,
    specs: &[ContainerSpec],
    addrs: &[NodeAddr],
    on_running: &(dyn Fn() + Send + Sync),
) -> Result<i64> {
    if let Some(argv) = &setup.coord_argv {
        coordinate(ctx, task, specs, addrs, argv, &setup.task_dir).await?;
        wait_sshd(ctx, task, addrs, &specs[0].name).await?;
        ctx.events.emit(Event::NodesReady {
            task: task.id.clone(),
            nodes: addrs.len(),
        });
    }
    on_running();
    ctx.events.emit(Event::TaskState {
        task: task.id.clone(),
        state: crate::store::TaskState::Running,
        attempt,
        exit_code: None,
        failure: None,
    });
    let mut sink = Sink::create(
        &setup.task_dir,
        &ctx.events,
        ctx.opts.stream_output,
        &task.id,
        &addrs[0].id,
        false,
    )?;
    let code = {
        let mut f = |s: OutputStream, c: &[u8]| sink.write(s, c);
        let exec = ctx.engine.exec(
            &specs[0].name,
            setup.app_argv.clone(),
            Some(setup.dirs.working_dir.clone()),
            &mut f,
        );
        match task.max_wall_clock_secs {
            Some(secs) => tokio::time::timeout(Duration::from_secs(secs), exec)
                .await
                .map_err(|_| LocalError::WallClockExceeded {
                    task: task.id.clone(),
                    secs,
                })??,
            None => exec.await?,
        }
    };
    sink.check()?;
    sink.finish();
    Ok(code)
}

/// Runs the coordination command on every node at once; its output goes to
/// `<task dir>/nodes/<node>/std{out,err}.txt`.
async fn coordinate(
    ctx: &RunCtx,
    task: &LocalTask,
    specs: &[ContainerSpec],
    addrs: &[NodeAddr],
    argv: &[String],
    task_dir: &Path,
) -> Result<()> {
    let runs = specs.iter().zip(addrs).map(|(s, a)| async move {
        let mut sink = Sink::create(
            &task_dir.join("nodes").join(&a.id),
            &ctx.events,
            ctx.opts.stream_output,
            &task.id,
            &a.id,
            true,
        )?;
        let code = {
            let mut f = |st: OutputStream, c: &[u8]| sink.write(st, c);
            tokio::time::timeout(
                ctx.opts.coordination_timeout,
                ctx.engine.exec(&s.name, argv.to_vec(), None, &mut f),
            )
            .await
            .map_err(|_| LocalError::Coordination {
                task: task.id.clone(),
                node: a.id.clone(),
                code: -1,
                stderr: format!(
                    "did not return within {}s (it must daemonize)",
                    ctx.opts.coordination_timeout.as_secs()
                ),
            })??
        };
        sink.check()?;
        let tail = sink.finish();
        if code != 0 {
            return Err(LocalError::Coordination {
                task: task.id.clone(),
                node: a.id.clone(),
                code,
                stderr: tail,
            });
        }
        Ok(())
    });
    for r in futures::future::join_all(runs).await {
        r?;
    }
    Ok(())
}

/// Waits until every node's sshd accepts connections on port 23 (bounded). Probes from this
/// process; when the nodes' network is not reachable from here at all (the backend itself runs
/// in a container), probes from inside the master instead.
async fn wait_sshd(ctx: &RunCtx, task: &LocalTask, addrs: &[NodeAddr], master: &str) -> Result<()> {
    let started = Instant::now();
    let deadline = started + ctx.opts.sshd_timeout;
    if ctx.opts.probe_from_master {
        return wait_sshd_from_master(ctx, task, addrs, master, deadline).await;
    }
    let mut pending: Vec<&NodeAddr> = addrs.iter().collect();
    let mut reachable = false;
    loop {
        let checks = pending.iter().map(|a| async move {
            let addr = (a.ip, SSHD_PORT);
            let r = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
            .await;
            let (up, seen) = match r {
                Ok(Ok(_)) => (true, true),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => (false, true),
                _ => (false, false),
            };
            (*a, up, seen)
        });
        let results = futures::future::join_all(checks).await;
        reachable |= results.iter().any(|r| r.2);
        pending = results.into_iter().filter(|r| !r.1).map(|r| r.0).collect();
        if pending.is_empty() {
            return Ok(());
        }
        if !reachable && started.elapsed() > Duration::from_secs(2) {
            tracing::debug!(task = %task.id, "node network unreachable from here; probing from the master");
            return wait_sshd_from_master(ctx, task, addrs, master, deadline).await;
        }
        if Instant::now() >= deadline {
            return Err(sshd_timeout(ctx, task, &pending));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sshd_timeout(ctx: &RunCtx, task: &LocalTask, down: &[&NodeAddr]) -> LocalError {
    LocalError::SshdTimeout {
        task: task.id.clone(),
        nodes: down
            .iter()
            .map(|a| format!("{} ({})", a.id, a.ip))
            .collect::<Vec<_>>()
            .join(", "),
        port: SSHD_PORT,
        secs: ctx.opts.sshd_timeout.as_secs(),
    }
}

/// The in-master probe: a bash loop over the node addresses, printing the ones still down at
/// the deadline.
async fn wait_sshd_from_master(
    ctx: &RunCtx,
    task: &LocalTask,
    addrs: &[NodeAddr],
    master: &str,
    deadline: Instant,
) -> Result<()> {
    let secs = deadline
        .saturating_duration_since(Instant::now())
        .as_secs()
        .max(1);
    let ips: Vec<String> = addrs.iter().map(|a| a.ip.to_string()).collect();
    let script = format!(
        "end=$((SECONDS + {secs})); down=; for h in {hosts}; do \
         until (exec 3<>/dev/tcp/$h/{port}) 2>/dev/null; do \
         if [ $SECONDS -ge $end ]; then down=\"$down $h\"; break; fi; sleep 0.1; done; done; \
         [ -z \"$down\" ] || {{ echo $down; exit 1; }}",
        hosts = ips.join(" "),
        port = SSHD_PORT,
    );
    let mut out = Vec::new();
    let code = {
        let mut f = |st: OutputStream, c: &[u8]| {
            if st == OutputStream::Stdout {
                out.extend_from_slice(c)
            }
        };
        ctx.engine
            .exec(
                master,
                vec!["/bin/bash".into(), "-c".into(), script],
                None,
                &mut f,
            )
            .await?
    };
    if code == 0 {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out);
    let down: Vec<&NodeAddr> = addrs
        .iter()
        .filter(|a| text.split_whitespace().any(|w| w == a.ip.to_string()))
        .collect();
    let down = if down.is_empty() {
        addrs.iter().collect()
    } else {
        down
    };
    Err(sshd_timeout(ctx, task, &down))
}
