//! Runs the MPI smoke test (or a bag of small tasks) through the local backend.
//!
//! ```text
//! cargo run -p shipyard-local --example local_hello -- --job hello1 --flavor openmpi --nodes 3 --ppn 2
//! ```
//!
//! Options: `--job ID` (required), `--flavor openmpi|mpich|impi`, `--nodes N`, `--ppn P`,
//! `--image IMG`, `--state-dir DIR`, `--label K=V` (repeatable), `--fail-rank R`,
//! `--sleep SECS` (the application sleeps first), `--stream` (print output with node prefixes),
//! `--quiet`. Ctrl-C / SIGTERM cancel the run; everything is removed before exiting (130).

use std::time::Instant;

use shipyard_local::{
    Event, LocalBackend, LocalJob, LocalOptions, LocalTask, MultiInstance, OnAllTasksComplete,
};

const COORDINATION: &str = "/bin/bash -c 'mkdir -p /run/sshd && \
     { test -f /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key; } && \
     /usr/sbin/sshd -p 23 -h /etc/ssh/ssh_host_ed25519_key'";

fn app_command(flavor: &str, nodes: u32, ppn: u32, sleep: u64) -> Result<String, String> {
    let np = nodes * ppn;
    let launch = match flavor {
        "openmpi" => format!(
            "mpirun.openmpi --allow-run-as-root -np {np} \
             --host $(echo $AZ_BATCH_HOST_LIST | sed \"s/,/:{ppn},/g\"):{ppn} \
             --mca btl tcp,self --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 \
             -x HELLO_EXPECT_SIZE -x HELLO_FAIL_RANK /opt/shipyard/bin/mpi-hello-openmpi"
        ),
        "mpich" => format!(
            "mpiexec.mpich -n {np} -ppn {ppn} -hosts $AZ_BATCH_HOST_LIST -launcher ssh -iface eth0 \
             /opt/shipyard/bin/mpi-hello-mpich"
        ),
        "impi" => format!(
            "/opt/intel/mpi/bin/mpiexec.hydra -n {np} -ppn {ppn} -hosts $AZ_BATCH_HOST_LIST \
             -bootstrap ssh /opt/shipyard/bin/mpi-hello-impi"
        ),
        other => return Err(format!("unknown --flavor `{other}` (openmpi, mpich, impi)")),
    };
    let pre = if sleep > 0 {
        format!("sleep {sleep}; ")
    } else {
        String::new()
    };
    Ok(format!("/bin/bash -c '{pre}{launch}'"))
}

fn flavor_env(flavor: &str) -> Vec<(String, String)> {
    if flavor != "impi" {
        return Vec::new();
    }
    [
        ("I_MPI_ROOT", "/opt/intel/mpi"),
        ("LD_LIBRARY_PATH", "/opt/intel/mpi/lib"),
        ("FI_PROVIDER", "tcp"),
        ("I_MPI_HYDRA_IFACE", "eth0"),
        ("FI_TCP_IFACE", "eth0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

struct Args {
    job: String,
    flavor: String,
    nodes: u32,
    ppn: u32,
    image: String,
    state_dir: Option<String>,
    labels: Vec<(String, String)>,
    fail_rank: Option<u32>,
    sleep: u64,
    stream: bool,
    quiet: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        job: String::new(),
        flavor: "openmpi".into(),
        nodes: 2,
        ppn: 1,
        image: "shipyard/mpi:bookworm".into(),
        state_dir: None,
        labels: Vec::new(),
        fail_rank: None,
        sleep: 0,
        stream: false,
        quiet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|_| format!("bad number `{v}`"));
        match flag.as_str() {
            "--job" => a.job = val()?,
            "--flavor" => a.flavor = val()?,
            "--nodes" => a.nodes = num(val()?)? as u32,
            "--ppn" => a.ppn = num(val()?)? as u32,
            "--image" => a.image = val()?,
            "--state-dir" => a.state_dir = Some(val()?),
            "--label" => {
                let v = val()?;
                let (k, x) = v.split_once('=').ok_or("--label takes K=V")?;
                a.labels.push((k.into(), x.into()));
            }
            "--fail-rank" => a.fail_rank = Some(num(val()?)? as u32),
            "--sleep" => a.sleep = num(val()?)?,
            "--stream" => a.stream = true,
            "--quiet" => a.quiet = true,
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    if a.job.is_empty() {
        return Err("--job is required".into());
    }
    Ok(a)
}

/// Ranks' output lines on stdout as `[task/node] line` (coordination output is dropped); any
/// other event on stderr unless `quiet`.
fn print_event(ev: &Event, quiet: bool) {
    match ev {
        Event::Output {
            coordination: true, ..
        } => {}
        Event::Output {
            task, node, line, ..
        } => println!("[{task}/{node}] {line}"),
        _ if quiet => {}
        _ => eprintln!("{ev:?}"),
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let code = match run().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn run() -> Result<i32, String> {
    let args = parse()?;
    let t0 = Instant::now();
    let mut opts = LocalOptions::default().stream_output(args.stream);
    if let Some(d) = &args.state_dir {
        opts = opts.state_dir(d);
    }
    for (k, v) in &args.labels {
        opts = opts.label(k, v);
    }
    let backend = LocalBackend::connect(opts)
        .await
        .map_err(|e| e.to_string())?;
    let cancel = backend.cancel_token();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("signal received: stopping and cleaning up");
        cancel.cancel();
    });

    let mut task = LocalTask::new(
        "hello",
        &args.image,
        app_command(&args.flavor, args.nodes, args.ppn, args.sleep)?,
    );
    task.multi_instance = Some(MultiInstance {
        number_of_instances: args.nodes,
        coordination_command_line: COORDINATION.into(),
    });
    task.environment = flavor_env(&args.flavor);
    task.environment.push((
        "HELLO_EXPECT_SIZE".into(),
        (args.nodes * args.ppn).to_string(),
    ));
    if let Some(r) = args.fail_rank {
        task.environment
            .push(("HELLO_FAIL_RANK".into(), r.to_string()));
    }
    let job = LocalJob {
        id: args.job.clone(),
        tasks: vec![task],
        uses_task_dependencies: false,
        on_all_tasks_complete: OnAllTasksComplete::TerminateJob,
        on_task_failure: Default::default(),
        max_parallel_tasks: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let quiet = args.quiet;
    let printer = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            print_event(&ev, quiet);
        }
    });
    let outcome = backend
        .run_spec(job, Some(tx))
        .await
        .map_err(|e| e.to_string())?;
    let _ = printer.await;
    for t in &outcome.tasks {
        eprintln!(
            "task {}: {:?} exit={:?} {}",
            t.id,
            t.result,
            t.exit_code,
            t.failure.as_deref().unwrap_or("")
        );
        if !args.stream {
            if let Ok(out) = std::fs::read_to_string(t.task_dir.join("stdout.txt")) {
                print!("{out}");
            }
        }
    }
    eprintln!("elapsed_ms={}", t0.elapsed().as_millis());
    Ok(outcome.exit_code())
}
