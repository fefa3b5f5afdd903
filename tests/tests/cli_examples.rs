//! The examples under `examples/` run for real on this machine, unmodified, through the real
//! `shipyard` binary with a private state directory (`SHIPYARD_STATE_DIR`):
//!
//! - `bag-of-tasks.toml` with its corpus served on the loopback port it names: resource files
//!   route it to the local engine, and every `count-N.txt` equals `wc -w` of its part;
//! - `bag-of-tasks.toml` with `--target azure` against `shipyard serve` on loopback (the
//!   account key only in the environment);
//! - `native-intelmpi.toml` with `--engine`: Intel MPI across 2 container nodes of the engine;
//! - `singularity-mpich.toml` fails (exit 1, the job preparation's 127) where `singularity` is
//!   missing, leaving nothing.
//!
//! Needs Docker with the test image and python3 (the corpus server); the singularity example
//! also what VM-like nodes need. Each `require_*` fails under CI.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use shipyard_e2e::{
    repo_root, require_program, require_test_image, require_vm_nodes, show, KillOnDrop,
};

/// The examples share port 8765 and the pool id `bag`, and the machine has 2 cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The port `examples/bag-of-tasks.toml` fetches its corpus from.
const CORPUS_PORT: u16 = 8765;

fn example(name: &str) -> PathBuf {
    repo_root().join("examples").join(name)
}

type Scratch = shipyard_e2e::EngineScratch;

/// A scratch directory whose engine already has `pool` of `example_file`, added with
/// `--engine pool add` so that task files outlive the run (a pool `run` makes is deleted when
/// the run ends); the pool is deleted on drop.
fn with_engine_pool(prefix: &str, pool: &str, example_file: &str) -> Scratch {
    let mut s = Scratch::new(prefix);
    s.pools.push(pool.into());
    let add = s
        .cli()
        .args(["--engine", "-c"])
        .arg(example(example_file))
        .args(["pool", "add"])
        .output()
        .expect("pool add");
    assert!(add.status.success(), "{}", show(&add));
    assert!(
        !s.pool_containers(pool).is_empty(),
        "the pool's holder containers are found (so that a check that none is left can fail)"
    );
    s
}

/// Waits until something accepts connections on `127.0.0.1:port`.
fn wait_listening(port: u16, what: &str, child: &mut KillOnDrop) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            child.0.try_wait().expect("try_wait").is_none(),
            "{what} exited before listening on {port}"
        );
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Serves `examples/corpus` on the example's loopback port, as its header comment says.
fn serve_corpus() -> KillOnDrop {
    assert!(
        TcpStream::connect(("127.0.0.1", CORPUS_PORT)).is_err(),
        "port {CORPUS_PORT} is taken: the bag-of-tasks example needs it for its corpus"
    );
    let mut child = KillOnDrop(
        Command::new("python3")
            .args(["-m", "http.server", &CORPUS_PORT.to_string()])
            .args(["--bind", "127.0.0.1", "--directory"])
            .arg(example("corpus"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server"),
    );
    wait_listening(CORPUS_PORT, "the corpus server", &mut child);
    child
}

/// `wc -w part-N.txt` in the corpus directory, for N = 1..=4: what each count file must hold.
fn expected_counts() -> Vec<String> {
    (1..=4)
        .map(|n| {
            let o = Command::new("wc")
                .args(["-w", &format!("part-{n}.txt")])
                .current_dir(example("corpus"))
                .output()
                .expect("wc");
            assert!(o.status.success(), "{}", show(&o));
            String::from_utf8_lossy(&o.stdout).into_owned()
        })
        .collect()
}

/// Downloads every map task's `wd/count-N.txt` with `shipyard <target> files` and compares it
/// with [`expected_counts`]; checks the reduce task's stdout.
fn assert_counts(s: &Scratch, target: &[&str], env: &[(&str, &str)]) {
    for (n, want) in (1..=4).zip(expected_counts()) {
        let o = s
            .cli()
            .args(target)
            .args(["files", "--job", "wordcount", "--task", &n.to_string()])
            .args(["--file", &format!("wd/count-{n}.txt")])
            .envs(env.iter().copied())
            .output()
            .expect("shipyard files");
        assert!(o.status.success(), "{}", show(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), want, "count-{n}.txt");
    }
    let o = s
        .cli()
        .args(target)
        .args(["files", "--job", "wordcount", "--task", "reduce"])
        .args(["--file", "stdout.txt"])
        .envs(env.iter().copied())
        .output()
        .expect("shipyard files");
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "all map tasks done\n");
}

fn timed(name: &str, start: Instant) {
    eprintln!("{name}: {:.1}s", start.elapsed().as_secs_f64());
}

#[test]
fn the_bag_of_tasks_runs_as_written_on_the_engine_with_its_resource_files() {
    if !require_test_image() || !require_program("python3", "python3 (serves the corpus)") {
        return;
    }
    let _serial = serial();
    let start = Instant::now();
    let _corpus = serve_corpus();
    let s = with_engine_pool("cli-examples-bag-", "bag", "bag-of-tasks.toml");
    let ex = example("bag-of-tasks.toml");
    // no flag: the default local path is the engine, which downloads the resource files
    let run = s.cli().args(["-v", "run"]).arg(&ex).output().expect("run");
    assert_eq!(run.status.code(), Some(0), "{}", show(&run));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("local engine"),
        "the run went to the local engine: {}",
        show(&run)
    );
    assert_counts(&s, &["--engine"], &[]);
    s.delete_pools();
    assert!(
        s.pool_containers("bag").is_empty(),
        "pool del left containers"
    );
    timed("bag-of-tasks on the engine", start);
}

/// The URL `shipyard serve` prints alone on stdout once it listens (it binds the port itself:
/// `--listen 127.0.0.1:0`, no port picked beforehand that another process could take).
fn served_url(serve: &mut KillOnDrop) -> String {
    use std::io::BufRead;
    let stdout = serve.0.stdout.take().expect("serve's stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // keeps draining, so that serve never blocks on a full pipe
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.starts_with("http://") => return line.trim().to_string(),
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("shipyard serve exited before printing its URL")
            }
        }
        assert!(
            serve.0.try_wait().expect("try_wait").is_none(),
            "shipyard serve exited before printing its URL"
        );
        assert!(
            Instant::now() < deadline,
            "shipyard serve printed no URL in 60 s"
        );
    }
}

#[test]
fn the_bag_of_tasks_runs_with_target_azure_against_shipyard_serve() {
    if !require_test_image() || !require_program("python3", "python3 (serves the corpus)") {
        return;
    }
    let _serial = serial();
    let start = Instant::now();
    let _corpus = serve_corpus();
    let mut s = Scratch::new("cli-examples-serve-");
    // a throwaway test key (base64 of "shipyard-cli-examples-test-key-0")
    let key = "c2hpcHlhcmQtY2xpLWV4YW1wbGVzLXRlc3Qta2V5LTA=".to_string();
    let mut serve = KillOnDrop(
        s.cli()
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(s.path().join("serve"))
            .env("SHIPYARD_SERVE_KEY", &key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shipyard serve"),
    );
    let url = served_url(&mut serve);
    let creds = s.path().join("credentials.toml");
    std::fs::write(
        &creds,
        format!("[credentials.batch]\naccount_name = \"local\"\naccount_service_url = \"{url}\"\n"),
    )
    .expect("write credentials");
    let creds_arg = creds.display().to_string();
    s.pools.push("bag".into());
    s.del_args = vec![
        "--target".into(),
        "azure".into(),
        "-c".into(),
        creds_arg.clone(),
    ];
    let azure = |c: &mut Command| -> Output {
        c.env("SHIPYARD_BATCH_ACCOUNT_KEY", &key)
            .output()
            .expect("shipyard --target azure")
    };
    let target = ["--target", "azure", "-c", creds_arg.as_str()];
    let run = azure(
        s.cli()
            .args(target)
            .arg("-c")
            .arg(example("bag-of-tasks.toml"))
            .arg("run"),
    );
    assert_eq!(run.status.code(), Some(0), "{}", show(&run));
    assert_counts(&s, &target, &[("SHIPYARD_BATCH_ACCOUNT_KEY", key.as_str())]);
    assert!(
        !s.pool_containers("bag").is_empty(),
        "the pool's holder containers are found (so that the check that none is left can fail)"
    );
    let del = azure(
        s.cli()
            .args(target)
            .args(["pool", "del", "--pool-id", "bag", "--yes"]),
    );
    assert!(del.status.success(), "{}", show(&del));
    // Batch deletes a pool in the background (state `deleting`): wait until serve no longer
    // lists it, so that the SIGTERM below does not cut the removal of its nodes short.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = azure(s.cli().args(target).args(["-o", "json", "pool", "list"]));
        assert!(list.status.success(), "{}", show(&list));
        let listed = serde_json::from_slice::<serde_json::Value>(&list.stdout)
            .unwrap_or_else(|e| panic!("pool list is not JSON ({e}): {}", show(&list)));
        if !listed
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["id"] == "bag"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pool bag still listed: {}",
            show(&list)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // SIGTERM: serve stops cleanly
    let pid = serve.0.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .output()
        .expect("kill");
    assert!(kill.status.success(), "{}", show(&kill));
    let deadline = Instant::now() + Duration::from_secs(60);
    while serve.0.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = serve.wait_output().expect("serve output");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(&key),
        "the key leaked to serve's output"
    );
    assert!(s.pool_containers("bag").is_empty(), "containers left");
    s.pools.clear();
    timed(
        "bag-of-tasks with --target azure against shipyard serve",
        start,
    );
}

#[test]
fn the_singularity_example_fails_clearly_without_singularity() {
    if !require_vm_nodes() {
        return;
    }
    let _serial = serial();
    let start = Instant::now();
    let mut s = Scratch::new("cli-examples-sing-");
    s.pools.push("sing-mpich".into());
    let run = s
        .cli()
        .arg("run")
        .arg(example("singularity-mpich.toml"))
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(1), "{}", show(&run));
    let stderr = String::from_utf8_lossy(&run.stderr);
    // `singularity` is not on the VM-like nodes: the job preparation's command is not found
    // (127), and the error quotes the end of the preparation's stderr, which names it.
    assert!(
        stderr.contains("the job preparation task failed on node")
            && stderr.contains("exit code 127")
            && stderr.contains("hello-mpich")
            && stderr.contains("its stderr ends")
            && stderr.contains("singularity"),
        "{}",
        show(&run)
    );
    assert!(
        !s.path().join("state/engine/endpoint.json").exists(),
        "the engine host ended"
    );
    assert!(
        s.pool_containers("sing-mpich").is_empty(),
        "containers left"
    );
    timed("singularity-mpich fails", start);
}

/// `shipyard --engine run examples/native-intelmpi.toml`: Intel MPI over the native plan on a
/// container pool of 2 engine nodes (each on a 10.x /24, which the job's sshd trust covers),
/// 2 ranks per node, rank count, sizes, both hosts and the allreduce checked.
#[test]
fn native_intelmpi_runs_on_the_engine() {
    if !require_test_image() {
        return;
    }
    let _serial = serial();
    let start = Instant::now();
    let s = with_engine_pool("cli-examples-impi-", "impi-native", "native-intelmpi.toml");
    let ex = example("native-intelmpi.toml");
    let run = s
        .cli()
        .args(["--engine", "run"])
        .arg(&ex)
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(0), "{}", show(&run));
    let out = s
        .cli()
        .args([
            "--engine",
            "files",
            "--job",
            "hello-intelmpi",
            "--task",
            "hello",
        ])
        .args(["--file", "stdout.txt"])
        .output()
        .expect("shipyard files");
    assert!(out.status.success(), "{}", show(&out));
    let report = shipyard_e2e::HelloReport::parse(&String::from_utf8_lossy(&out.stdout));
    report.assert_complete(4);
    assert_eq!(
        report.hosts().len(),
        2,
        "ranks on both nodes: {:?}",
        report.ranks
    );
    s.delete_pools();
    assert!(
        s.pool_containers("impi-native").is_empty(),
        "pool del left containers"
    );
    timed("native-intelmpi on the engine", start);
}
