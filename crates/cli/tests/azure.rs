//! `--target azure` against the strict local Batch server (`shipyard_batch_spec::server`):
//! every request the CLI sends must match the spec, or the server rejects it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;
use shipyard_batch_spec::server::{ServerConfig, TestServer};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

struct Env {
    // Declared first so the server shuts down before its runtime is dropped.
    server: TestServer,
    _rt: tokio::runtime::Runtime,
}

impl Env {
    fn start() -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let server = rt
            .block_on(TestServer::start(ServerConfig::default()))
            .expect("test server starts");
        Env { server, _rt: rt }
    }

    fn shipyard(&self) -> Command {
        Command::from_std(self.std_shipyard())
    }

    /// The binary, set up as [`Env::shipyard`], as a `std` command (for spawning).
    fn std_shipyard(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("shipyard"));
        for var in [
            "SHIPYARD_CONFIG",
            "SHIPYARD_CONFIGDIR",
            "SHIPYARD_AAD_TENANT_ID",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("SHIPYARD_BATCH_ACCOUNT_URL", self.server.url())
            .env("SHIPYARD_BATCH_ACCOUNT_NAME", self.server.account())
            .env("SHIPYARD_BATCH_ACCOUNT_KEY", self.server.key())
            .env("SHIPYARD_POLL_INTERVAL_MS", "50")
            .args(["--target", "azure", "--quiet"]);
        cmd
    }

    /// The rejected requests but those answered with error code `expected`.
    fn rejected_except(&self, expected: &str) -> Vec<String> {
        self.rejected()
            .into_iter()
            .filter(|r| !r.contains(expected))
            .collect()
    }

    fn rejected(&self) -> Vec<String> {
        self.server
            .requests()
            .into_iter()
            .filter(|r| r.status >= 400 && r.status != 404)
            .map(|r| format!("{} {} -> {} {:?}", r.method, r.path, r.status, r.error_code))
            .collect()
    }
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn pool_add_list_resize_nodes_del() {
    let env = Env::start();
    let ex = examples_dir().join("local-openmpi.toml");
    env.shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["pool", "add"])
        .assert()
        .success();
    let pool = env.server.pool("mpipool").expect("pool created");
    assert_eq!(pool["vmSize"], "Standard_D4s_v5");
    assert_eq!(pool["targetDedicatedNodes"], 3);
    assert_eq!(pool["enableInterNodeCommunication"], true);
    let out = env
        .shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["--output", "json", "pool", "list"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)[0]["id"], "mpipool");
    env.shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["pool", "resize", "--dedicated", "5"])
        .assert()
        .success();
    env.shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["pool", "nodes"])
        .assert()
        .success();
    // A second add of the same pool is a clear error (exit 1), not a crash.
    env.shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["pool", "add"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("PoolExists").or(predicate::str::contains("exists")));
    env.shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["pool", "del", "--yes"])
        .assert()
        .success();
    let rejected = env.rejected_except("PoolExists");
    assert!(rejected.is_empty(), "{rejected:#?}");
}

#[test]
fn jobs_add_then_list_tasks_and_get() {
    let env = Env::start();
    let ex = examples_dir().join("bag-of-tasks.toml");
    env.shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["pool", "add"])
        .assert()
        .success();
    env.shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["jobs", "add"])
        .assert()
        .success();
    assert_eq!(env.server.task_count("wordcount"), 5);
    let job = env.server.job("wordcount").expect("job created");
    assert_eq!(job["usesTaskDependencies"], true);
    assert_eq!(job["onAllTasksComplete"], "terminatejob");
    let out = env
        .shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["--output", "json", "tasks", "list", "--job", "wordcount"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out).as_array().map(Vec::len), Some(5));
    env.shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["tasks", "get", "--job", "wordcount", "reduce"])
        .assert()
        .success()
        .stdout(predicate::str::contains("reduce"));
    env.shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["tasks", "get", "--job", "wordcount", "nope"])
        .assert()
        .code(1);
    env.shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["jobs", "term", "wordcount"])
        .assert()
        .success();
    env.shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["jobs", "del", "wordcount", "--yes"])
        .assert()
        .success();
    let rejected = env.rejected();
    assert!(
        rejected.iter().all(|r| r.contains("/tasks/nope")),
        "{rejected:#?}"
    );
}

#[test]
fn missing_credentials_are_a_usage_error() {
    let mut cmd = Command::cargo_bin("shipyard").expect("binary built");
    for var in [
        "SHIPYARD_BATCH_ACCOUNT_URL",
        "SHIPYARD_BATCH_ACCOUNT_NAME",
        "SHIPYARD_BATCH_ACCOUNT_KEY",
        "SHIPYARD_AAD_CLIENT_SECRET",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(["--target", "azure", "-c"])
        .arg(examples_dir().join("local-openmpi.toml"))
        .args(["pool", "list"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("account_service_url")
                .or(predicate::str::contains("credentials")),
        );
}

/// Runs `shipyard run` while completing the task on the server with `exit_code`.
fn run_with_exit(exit_code: i32) -> (std::process::Output, Env) {
    let env = Env::start();
    let ex = examples_dir().join("native-intelmpi.toml");
    let mut cmd = env.shipyard();
    cmd.arg("--output").arg("json").arg("run").arg(&ex);
    let child = std::thread::spawn(move || cmd.output().expect("runs"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.server.task_count("hello-intelmpi") < 1 {
        assert!(
            Instant::now() < deadline,
            "the task never arrived: {:#?}",
            env.rejected()
        );
        assert!(
            !child.is_finished(),
            "shipyard exited before adding the task"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(env
        .server
        .set_task_state("hello-intelmpi", "hello", "running", None));
    std::thread::sleep(Duration::from_millis(200));
    assert!(env
        .server
        .set_task_state("hello-intelmpi", "hello", "completed", Some(exit_code)));
    let out = child.join().expect("join");
    (out, env)
}

#[test]
fn run_creates_pool_and_job_waits_and_succeeds() {
    let (out, env) = run_with_exit(0);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tasks = json(&out);
    assert_eq!(tasks[0]["id"], "hello");
    assert_eq!(tasks[0]["state"], "completed");
    let pool = env.server.pool("impi-native").expect("pool created by run");
    assert_eq!(
        pool["virtualMachineConfiguration"]["containerConfiguration"]["type"],
        "dockerCompatible"
    );
    let task = env.server.task("hello-intelmpi", "hello").expect("task");
    assert_eq!(task["multiInstanceSettings"]["numberOfInstances"], 2);
    assert!(env.rejected().is_empty(), "{:#?}", env.rejected());
}

#[test]
fn run_exits_with_the_failed_task_exit_code() {
    let (out, _env) = run_with_exit(7);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn jobs_add_to_an_existing_job_adds_its_tasks() {
    let env = Env::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = |task: &str, auto: bool| {
        let p = dir.path().join(format!("{task}.toml"));
        std::fs::write(
            &p,
            format!(
                "[pool_specification]\nid = \"p\"\n[pool_specification.vm_configuration.platform_image]\n\
                 publisher = \"microsoft-dsvm\"\noffer = \"ubuntu-hpc\"\nsku = \"2204\"\n\
                 node_agent_sku_id = \"batch.node.ubuntu 22.04\"\nnative = true\n\
                 [[job_specifications]]\nid = \"grow\"\nauto_complete = {auto}\n\
                 [[job_specifications.tasks]]\nid = \"{task}\"\nimage = \"busybox\"\ncommand = \"true\"\n"
            ),
        )
        .expect("write");
        p
    };
    env.shipyard()
        .arg("-c")
        .arg(cfg("a", false))
        .args(["jobs", "add"])
        .assert()
        .success();
    env.shipyard()
        .arg("-c")
        .arg(cfg("b", false))
        .args(["jobs", "add"])
        .assert()
        .success();
    assert_eq!(env.server.task_count("grow"), 2);
    // With auto_complete the job may already be done: adding to it is the user's conflict to
    // resolve (exit 2, with the --recreate hint), as for a finished job.
    env.shipyard()
        .arg("-c")
        .arg(cfg("c", true))
        .args(["jobs", "add"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("grow"))
        .stderr(predicate::str::contains("--recreate"));
    assert_eq!(env.server.task_count("grow"), 2);
}

/// Runs `cmd`, asserting success; its output.
fn succeeds(mut cmd: Command, what: &str) -> std::process::Output {
    let out = cmd.output().expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: {err}");
    out
}

#[test]
fn no_command_prints_the_ssh_key_or_the_account_key() {
    let env = Env::start();
    let ex = examples_dir().join("local-openmpi.toml");
    let with_config = || {
        let mut cmd = env.shipyard();
        cmd.arg("-c").arg(&ex);
        cmd
    };
    let mut add = with_config();
    add.args(["jobs", "add"]);
    succeeds(add, "jobs add");
    let job = env.server.job("hello-openmpi").expect("job created");
    let stored = job.to_string();
    assert!(
        stored.contains("PRIVATE KEY"),
        "the job carries its key: {job}"
    );
    let commands: [&[&str]; 5] = [
        &["jobs", "list"],
        &["jobs", "tasks", "hello-openmpi"],
        &["tasks", "list", "--job", "hello-openmpi"],
        &["tasks", "get", "--job", "hello-openmpi", "hello"],
        &["pool", "list"],
    ];
    for format in ["json", "table"] {
        for args in commands {
            let mut cmd = with_config();
            cmd.args(["--output", format]).args(args);
            let out = succeeds(cmd, &args.join(" "));
            for text in [&out.stdout, &out.stderr].map(|b| String::from_utf8_lossy(b)) {
                assert!(
                    !text.contains("PRIVATE KEY"),
                    "{args:?} printed the key: {text}"
                );
                assert!(
                    !text.contains(env.server.key()),
                    "{args:?} printed the account key"
                );
            }
        }
    }
    let mut list = with_config();
    list.args(["--output", "json", "jobs", "list"]);
    assert_eq!(json(&succeeds(list, "jobs list"))[0]["id"], "hello-openmpi");
}

#[test]
fn files_refuses_a_path_that_escapes_the_out_dir() {
    let env = Env::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    env.shipyard()
        .arg("-c")
        .arg(examples_dir().join("local-openmpi.toml"))
        .args([
            "files", "--job", "j", "--task", "t", "--file", "../x", "--out",
        ])
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("inside the task directory"));
    assert!(!dir.path().join("x").exists());
    assert!(env.server.requests().is_empty(), "nothing was requested");
}

/// One request as it went over the wire.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    body: Option<Value>,
}

/// A recording HTTP/1.1 proxy in front of the strict server: it forwards every byte and
/// records each request's method, path and query, and JSON body.
struct Recorder {
    url: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
}

impl Recorder {
    fn start(env: &Env) -> Recorder {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = env.server.addr();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = env
            ._rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("proxy binds");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shared = log.clone();
        env._rt.spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let log = shared.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut from_server, mut to_server) = server.into_split();
                    let (mut from_client, mut to_client) = client.split();
                    let replies = tokio::io::copy(&mut from_server, &mut to_client);
                    let requests = async {
                        let mut buf: Vec<u8> = Vec::new();
                        let mut chunk = [0u8; 65536];
                        loop {
                            // One request: the head, then Content-Length bytes of body.
                            let head_end = loop {
                                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                    break i + 4;
                                }
                                match from_client.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            };
                            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                            let mut lines = head.split("\r\n");
                            let mut first = lines.next().unwrap_or("").split(' ');
                            let method = first.next().unwrap_or("").to_string();
                            let path = first.next().unwrap_or("").to_string();
                            let len: usize = lines
                                .filter_map(|l| l.split_once(':'))
                                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                                .and_then(|(_, v)| v.trim().parse().ok())
                                .unwrap_or(0);
                            assert!(
                                !head.to_ascii_lowercase().contains("transfer-encoding"),
                                "chunked request bodies are not recorded: {head}"
                            );
                            while buf.len() < head_end + len {
                                match from_client.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                            let body = &buf[head_end..head_end + len];
                            let body = (!body.is_empty())
                                .then(|| serde_json::from_slice(body).expect("JSON body"));
                            log.lock()
                                .expect("log")
                                .push(Recorded { method, path, body });
                            if to_server.write_all(&buf[..head_end + len]).await.is_err() {
                                return;
                            }
                            buf.drain(..head_end + len);
                        }
                    };
                    tokio::select! {
                        _ = replies => {}
                        () = requests => {}
                    }
                });
            }
        });
        Recorder { url, log }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.log.lock().expect("log").clone()
    }
}

/// Issue 10: for every example, the submission requests a real `run` sends equal what
/// `--dry-run` prints (method, path with query, body), the SSH key placeholder aside.
#[test]
fn every_example_sends_exactly_what_its_dry_run_prints() {
    const SUBMISSION: &[&str] = &["Pool_Add", "Job_Add", "Task_AddCollection", "Job_Patch"];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 5, "{examples:?}");
    for ex in examples {
        let env = Env::start();
        let dry = env
            .shipyard()
            .args(["--output", "json", "--dry-run", "run"])
            .arg(&ex)
            .output()
            .expect("runs");
        assert!(
            dry.status.success(),
            "{}",
            String::from_utf8_lossy(&dry.stderr)
        );
        let dry = json(&dry);
        let dry = dry.as_array().expect("requests");
        // Tasks per job, to complete them once they arrive.
        let mut tasks: Vec<(String, Vec<String>)> = Vec::new();
        for r in dry
            .iter()
            .filter(|r| r["definition"] == "TaskAddCollectionParameter")
        {
            let path = r["path"].as_str().expect("path");
            let job = path.split('/').nth(2).expect("job id").to_string();
            let ids = r["body"]["value"]
                .as_array()
                .expect("tasks")
                .iter()
                .map(|t| t["id"].as_str().expect("id").to_string());
            match tasks.iter_mut().find(|(j, _)| *j == job) {
                Some((_, v)) => v.extend(ids),
                None => tasks.push((job, ids.collect())),
            }
        }
        let recorder = Recorder::start(&env);
        let mut cmd = env.shipyard();
        cmd.env("SHIPYARD_BATCH_ACCOUNT_URL", &recorder.url)
            .args(["--output", "json", "run"])
            .arg(&ex);
        let child = std::thread::spawn(move || cmd.output().expect("runs"));
        let deadline = Instant::now() + Duration::from_secs(60);
        for (job, ids) in &tasks {
            while env.server.task_count(job) < ids.len() {
                assert!(
                    Instant::now() < deadline,
                    "{}: {:#?}",
                    ex.display(),
                    env.rejected()
                );
                assert!(
                    !child.is_finished(),
                    "{}: shipyard exited early",
                    ex.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for (job, ids) in &tasks {
            for id in ids {
                assert!(env.server.set_task_state(job, id, "completed", Some(0)));
            }
        }
        let out = child.join().expect("join");
        assert!(
            out.status.success(),
            "{}: {}",
            ex.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let spec = shipyard_batch_spec::schema::Spec::shared();
        let sent: Vec<Value> = recorder
            .requests()
            .into_iter()
            .filter(|r| {
                let path = r.path.split('?').next().unwrap_or(&r.path);
                spec.operation(&r.method, path)
                    .is_some_and(|op| SUBMISSION.contains(&op.id))
            })
            .map(|r| {
                let mut body = r.body.unwrap_or(Value::Null);
                shipyard_submit::redact::redact_in_place(
                    &mut body,
                    shipyard_submit::redact::KEY_PLACEHOLDER,
                );
                serde_json::json!({"method": r.method, "path": r.path, "body": body})
            })
            .collect();
        let printed: Vec<Value> = dry
            .iter()
            .map(|r| serde_json::json!({"method": r["method"], "path": r["path"], "body": r["body"]}))
            .collect();
        assert_eq!(sent, printed, "{}", ex.display());
        assert!(
            env.rejected().is_empty(),
            "{}: {:#?}",
            ex.display(),
            env.rejected()
        );
    }
}

/// Creates the pool of `local-openmpi.toml` on the strict server; its node ids.
fn pool_with_nodes(env: &Env) -> (PathBuf, Vec<String>) {
    let ex = examples_dir().join("local-openmpi.toml");
    env.shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["pool", "add"])
        .assert()
        .success();
    let nodes = env.server.node_ids("mpipool");
    assert!(!nodes.is_empty(), "the pool has nodes");
    (ex, nodes)
}

#[test]
fn pool_nodes_shows_state_and_start_task_errors() {
    let env = Env::start();
    let (ex, nodes) = pool_with_nodes(&env);
    assert!(env
        .server
        .set_node_start_task_failed("mpipool", &nodes[0], 42));
    let out = succeeds(
        {
            let mut c = env.shipyard();
            c.arg("-c").arg(&ex).args(["pool", "nodes"]);
            c
        },
        "pool nodes",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("START TASK EXIT"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains(&nodes[0]))
        .unwrap_or_else(|| panic!("no row for {}: {text}", nodes[0]));
    for part in [
        "starttaskfailed",
        "42",
        "The start task exited with exit code 42",
    ] {
        assert!(line.contains(part), "{part} missing from: {line}");
    }
    let out = succeeds(
        {
            let mut c = env.shipyard();
            c.arg("-c")
                .arg(&ex)
                .args(["--output", "json", "pool", "nodes"]);
            c
        },
        "pool nodes json",
    );
    let v = json(&out);
    let failed = v
        .as_array()
        .and_then(|a| a.iter().find(|n| n["id"] == nodes[0].as_str()))
        .expect("the node");
    assert_eq!(failed["startTaskInfo"]["exitCode"], 42);
    assert_eq!(
        failed["startTaskInfo"]["failureInfo"]["code"],
        "FailureExitCode"
    );
}

/// A recorder standing in for ssh: writes its argv, one per line, to `$0.args`.
fn recorder(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("ssh-recorder");
    std::fs::write(
        &path,
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > \"$0.args\"\nexit 7\n",
    )
    .expect("write recorder");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn pool_ssh_adds_a_node_user_with_the_public_key_and_runs_ssh_to_the_login_port() {
    let env = Env::start();
    let (ex, nodes) = pool_with_nodes(&env);
    let home = tempfile::tempdir().expect("tempdir");
    let ssh_dir = home.path().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).expect("mkdir .ssh");
    let key = ssh_dir.join("id_ed25519");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test@shipyard", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen runs");
    assert!(made.success());
    let ssh = recorder(home.path());
    let run = |extra: &[&str]| {
        env.shipyard()
            .env("HOME", home.path())
            .env("SHIPYARD_SSH", &ssh)
            .arg("-c")
            .arg(&ex)
            .args(["pool", "ssh"])
            .args(extra)
            .output()
            .expect("runs")
    };
    let out = run(&["--node", &nodes[1], "--", "hostname"]);
    // The recorder's exit code is ours: the CLI replaced itself with ssh.
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = std::fs::read_to_string(home.path().join("ssh-recorder.args")).expect("ssh ran");
    let args: Vec<&str> = args.lines().collect();
    let private = key.display().to_string();
    assert_eq!(
        args,
        [
            "-p",
            "50001",
            "-i",
            private.as_str(),
            "shipyard@127.0.0.1",
            "--",
            "hostname"
        ]
    );
    // No private key material on the command line or in the output.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    // Without --node: the first idle node, an interactive login.
    let out = run(&[]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = std::fs::read_to_string(home.path().join("ssh-recorder.args")).expect("ssh ran");
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        ["-p", "50000", "-i", private.as_str(), "shipyard@127.0.0.1"]
    );
    // Again on the node of the first login: the user exists already, which is fine.
    let out = run(&["--node", &nodes[1]]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let adds: Vec<(String, u16)> = env
        .server
        .requests()
        .into_iter()
        .filter(|r| r.operation.as_deref() == Some("ComputeNode_AddUser"))
        .map(|r| (r.path, r.status))
        .collect();
    let statuses: Vec<u16> = adds.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses, [201, 201, 409], "{adds:#?}");
    assert!(adds[0].0.ends_with(&format!("/nodes/{}/users", nodes[1])));
    assert!(adds[1].0.ends_with(&format!("/nodes/{}/users", nodes[0])));
    // A private key given as --key is refused before anything is sent.
    let out = run(&["--key", &private]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("private key"));
    let rejected = env.rejected_except("NodeUserExists");
    assert!(rejected.is_empty(), "{rejected:#?}");
}

#[test]
fn files_follow_streams_a_growing_task_file_until_the_task_completes() {
    let env = Env::start();
    let ex = examples_dir().join("bag-of-tasks.toml");
    for cmd in [["pool", "add"], ["jobs", "add"]] {
        env.shipyard()
            .arg("-c")
            .arg(&ex)
            .args(cmd)
            .assert()
            .success();
    }
    let (job, task) = ("wordcount", "reduce");
    assert!(env.server.set_task_state(job, task, "running", None));
    assert!(env
        .server
        .put_task_file(job, task, "stdout.txt", b"first\n".to_vec()));
    let mut child = env
        .std_shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["files", "--job", job, "--task", task, "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(400));
    assert!(env
        .server
        .put_task_file(job, task, "stdout.txt", b"first\nsecond\n".to_vec()));
    std::thread::sleep(Duration::from_millis(400));
    assert!(env
        .server
        .put_task_file(job, task, "stdout.txt", b"first\nsecond\nthird\n".to_vec()));
    assert!(env.server.set_task_state(job, task, "completed", Some(0)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "--follow did not end with the task"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every byte once: each read starts at the last offset.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "first\nsecond\nthird\n"
    );
    let reads = env
        .server
        .requests()
        .into_iter()
        .filter(|r| r.operation.as_deref() == Some("File_GetFromTask"))
        .count();
    assert!(reads >= 2, "{reads} reads: the file was not streamed");
    assert!(env.rejected().is_empty(), "{:#?}", env.rejected());
}

/// `num_instances = "pool_current_dedicated"` resolves against the live pool when it exists:
/// native-intelmpi.toml says `vm_count = 2`, the pool was resized to 3, so `jobs add` sends a
/// multi-instance task of 3 instances (and `--dry-run`, which asks nothing, still says 2).
#[test]
fn pool_current_dedicated_counts_the_live_pool() {
    let env = Env::start();
    let ex = examples_dir().join("native-intelmpi.toml");
    for args in [
        &["pool", "add"][..],
        &["pool", "resize", "--dedicated", "3"][..],
    ] {
        env.shipyard()
            .arg("-c")
            .arg(&ex)
            .args(args)
            .assert()
            .success();
    }
    let dry = env
        .shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["--output", "json", "--dry-run", "jobs", "add"])
        .output()
        .expect("runs");
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let dry = json(&dry);
    let instances = |task: &Value| task["multiInstanceSettings"]["numberOfInstances"].clone();
    let dry_task = dry
        .as_array()
        .and_then(|rs| {
            rs.iter()
                .find(|r| r["definition"] == "TaskAddCollectionParameter")
        })
        .map(|r| r["body"]["value"][0].clone())
        .expect("a task collection in the dry run");
    assert_eq!(instances(&dry_task), 2, "{dry_task}");
    env.shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["jobs", "add"])
        .assert()
        .success();
    let task = env
        .server
        .task("hello-intelmpi", "hello")
        .expect("task added");
    assert_eq!(instances(&task), 3, "{task}");
    let rejected = env.rejected();
    assert!(rejected.is_empty(), "{rejected:#?}");
}
