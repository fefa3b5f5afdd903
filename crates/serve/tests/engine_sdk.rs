//! `shipyard serve` over the real local engine (Docker + image shipyard/mpi:bookworm), driven by the official azure-batch 15.1.0 Python
//! SDK (tests/python/sdk_engine.py): (a) a container pool of 2 nodes, 20 tasks with HTTP
//! resource files served here on loopback, every stdout and exit code read back; (b) a
//! multi-instance Open MPI task whose coordination command sets up sshd from
//! `commonResourceFiles`, ranks checked; (c) deletion leaving no container or network with the
//! engine's labels. And `kill -9` of the serving process: after a restart on the same state
//! directory nothing is lost and the work that was running is failed with a reason.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use shipyard_e2e::{HelloReport, TEST_IMAGE};
use shipyard_local::engine::labels;
use shipyard_serve::ServeOptions;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn script() -> PathBuf {
    shipyard_e2e::repo_root().join("tests/python/sdk_engine.py")
}

fn suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("-{}-{nanos:x}", std::process::id())
}

/// A minimal HTTP/1.1 file server on loopback for the tasks' resource files (GET/HEAD of
/// `/<name>` answers the file's bytes, anything else 404).
async fn file_server(dir: PathBuf) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let dir = dir.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let mut words = head.split_whitespace();
                let method = words.next().unwrap_or("").to_string();
                let path = words.next().unwrap_or("/").split('?').next().unwrap_or("/");
                let name = path.trim_start_matches('/');
                let body = (!name.contains('/') && !name.is_empty())
                    .then(|| std::fs::read(dir.join(name)).ok())
                    .flatten();
                let (status, body) = match body {
                    Some(b) => ("200 OK", b),
                    None => ("404 Not Found", Vec::new()),
                };
                let mut reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                if method != "HEAD" {
                    reply.extend_from_slice(&body);
                }
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// The files the SDK user's tasks fetch: 20 inputs, the coordination script, an SSH key pair.
fn write_files(dir: &Path) {
    for i in 0..20 {
        std::fs::write(
            dir.join(format!("input-{i:02}.txt")),
            format!("payload {i}\n"),
        )
        .unwrap();
    }
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "serve-test", "-f"])
        .arg(dir.join("id_ed25519"))
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen failed");
    // What raw Batch users write: the key from the common resource files, sshd on port 23.
    std::fs::write(
        dir.join("coordination.sh"),
        r#"set -e
mkdir -p /run/sshd ~/.ssh
chmod 700 ~/.ssh
install -m 600 "$AZ_BATCH_TASK_DIR/id_ed25519" ~/.ssh/id_ed25519
cat "$AZ_BATCH_TASK_DIR/id_ed25519.pub" >> ~/.ssh/authorized_keys
chmod 600 ~/.ssh/authorized_keys
printf 'Host *\n  Port 23\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n' > ~/.ssh/config
test -f /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
/usr/sbin/sshd -p 23 -h /etc/ssh/ssh_host_ed25519_key
"#,
    )
    .unwrap();
}

fn docker_ids(filter: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for args in [&["ps", "-aq"][..], &["network", "ls", "-q"][..]] {
        let out = Command::new("docker")
            .args(args)
            .args(["--filter", &format!("label={filter}")])
            .output()
            .unwrap();
        ids.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned),
        );
    }
    ids
}

/// Removes what a failed run left behind (only objects with this test's label value).
fn cleanup(filter: &str) {
    for id in docker_ids(filter) {
        let _ = Command::new("docker").args(["rm", "-f", &id]).output();
        let _ = Command::new("docker").args(["network", "rm", &id]).output();
    }
}

fn run_script(
    py: &Path,
    phase: &str,
    url: &str,
    key: &str,
    files: &str,
    sfx: &str,
) -> (bool, String, String) {
    let out = Command::new(py)
        .arg(script())
        .arg(phase)
        .env("SHIPYARD_SERVE_URL", url)
        .env("SHIPYARD_SERVE_ACCOUNT", "engineacct")
        .env("SHIPYARD_SERVE_KEY", key)
        .env("SHIPYARD_FILES_URL", files)
        .env("SHIPYARD_IMAGE", TEST_IMAGE)
        .env("SHIPYARD_ID_SUFFIX", sfx)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_pool_tasks_mpi_and_deletion_on_the_engine() {
    if !shipyard_e2e::require_test_image() {
        return;
    }
    let Some(py) = shipyard_e2e::require_python_sdk() else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    write_files(files.path());
    let files_url = file_server(files.path().to_path_buf()).await;
    let key = ServeOptions::random_key();
    let opts = ServeOptions::new("engineacct", key.clone()).listen("127.0.0.1:0".parse().unwrap());
    let served = shipyard_serve::engine::serve_engine(opts, state.path().to_path_buf())
        .await
        .unwrap();
    let filter = format!("{}={}", labels::INSTANCE, served.engine.instance_label());
    let url = format!("http://{}", served.server.addr());
    let sfx = suffix();
    let (ok, stdout, stderr) = {
        let (py, url, key, sfx) = (py.clone(), url.clone(), key.clone(), sfx.clone());
        tokio::task::spawn_blocking(move || run_script(&py, "flow", &url, &key, &files_url, &sfx))
            .await
            .unwrap()
    };
    let left = docker_ids(&filter);
    cleanup(&filter);
    assert!(ok, "sdk_engine.py flow failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("SDK ENGINE PASSED"), "{stdout}");
    // (a) 20 exit codes and 20 stdouts were checked.
    let task_checks = |what: &str| {
        stdout
            .lines()
            .filter(|l| l.starts_with("ok: task-") && l.contains(what))
            .count()
    };
    assert_eq!(task_checks(": exit code "), 20, "{stdout}");
    assert_eq!(task_checks(": stdout.txt "), 20, "{stdout}");
    // (b) 4 ranks over the 2 nodes.
    let mpi = stdout
        .split("MPI-STDOUT-BEGIN\n")
        .nth(1)
        .and_then(|s| s.split("MPI-STDOUT-END").next())
        .unwrap_or_default();
    let report = HelloReport::parse(mpi);
    report.assert_complete(4);
    assert_eq!(report.hosts().len(), 2, "ranks on both nodes:\n{mpi}");
    // (c) nothing left with the engine's labels.
    assert_eq!(
        left,
        Vec::<String>::new(),
        "containers/networks left behind"
    );
    served.shutdown().await;
}

/// Builds and locates the `serve_engine` example (what `shipyard serve` runs).
fn serve_engine_binary() -> PathBuf {
    let root = shipyard_e2e::repo_root();
    let st = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "shipyard-serve",
            "--features",
            "engine",
            "--example",
            "serve_engine",
        ])
        .current_dir(&root)
        .env("CARGO_INCREMENTAL", "0")
        .status()
        .unwrap();
    assert!(st.success(), "building the serve_engine example failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug/examples/serve_engine")
}

/// Starts the server process; returns it and its URL.
fn spawn_server(
    bin: &Path,
    state: &Path,
    key: &str,
    listen: &str,
) -> (std::process::Child, String) {
    let mut child = Command::new(bin)
        .env("SHIPYARD_SERVE_LISTEN", listen)
        .env("SHIPYARD_SERVE_ACCOUNT", "engineacct")
        .env("SHIPYARD_SERVE_KEY", key)
        .env("SHIPYARD_SERVE_STATE_DIR", state)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, url)
}

/// The SDK's Python and the `serve_engine` binary, once `deps` (a `require_*` helper) holds.
async fn sdk_and_server_binary(deps: fn() -> bool) -> Option<(PathBuf, PathBuf)> {
    if !deps() {
        return None;
    }
    let py = shipyard_e2e::require_python_sdk()?;
    let bin = tokio::task::spawn_blocking(serve_engine_binary)
        .await
        .unwrap();
    Some((py, bin))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_survives_kill_9_on_the_same_state_dir() {
    let Some((py, bin)) = sdk_and_server_binary(shipyard_e2e::require_test_image).await else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let key = ServeOptions::random_key();
    let sfx = suffix();
    let filter = format!("{}=kill-pool{sfx}", labels::POOL);
    let result = tokio::task::spawn_blocking({
        let (state, key, sfx) = (state.path().to_path_buf(), key.clone(), sfx.clone());
        move || {
            let (mut child, url) = spawn_server(&bin, &state, &key, "127.0.0.1:0");
            let before = run_script(&py, "before-kill", &url, &key, "", &sfx);
            // kill -9: no shutdown code runs.
            let _ = child.kill();
            let _ = child.wait();
            if !before.0 || !before.1.contains("READY-TO-KILL") {
                return (before, None);
            }
            // Restart on the same address (the SDK user's endpoint does not change).
            let listen = url.trim_start_matches("http://").to_owned();
            let (mut child, url) = spawn_server(&bin, &state, &key, &listen);
            let after = run_script(&py, "after-restart", &url, &key, "", &sfx);
            let _ = child.kill();
            let _ = child.wait();
            (before, Some(after))
        }
    })
    .await
    .unwrap();
    let left = docker_ids(&filter);
    cleanup(&filter);
    let (before, after) = result;
    assert!(before.0, "before-kill failed:\n{}\n{}", before.1, before.2);
    let after = after.unwrap();
    assert!(after.0, "after-restart failed:\n{}\n{}", after.1, after.2);
    assert!(after.1.contains("SDK ENGINE PASSED"), "{}", after.1);
    assert!(
        after.1.contains("ok: running task failed with a reason"),
        "{}",
        after.1
    );
    assert_eq!(
        left,
        Vec::<String>::new(),
        "containers/networks left behind"
    );
}

/// Properties only api-version 2025-06-01 has (`jobDefaultOrder`, `ipFamilies`) are kept under
/// the engine's state directory: after `kill -9` and a restart the SDK reads them back
/// (crates/serve/tests/python/sdk_engine_2025.py; a pool of 0 nodes, so Docker only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_2025_properties_survive_kill_9() {
    let Some((py, bin)) = sdk_and_server_binary(shipyard_e2e::require_docker).await else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let key = ServeOptions::random_key();
    let pool = format!("p25-pool{}", suffix());
    let filter = format!("{}={pool}", labels::POOL);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/sdk_engine_2025.py");
    let phases = tokio::task::spawn_blocking({
        let (state, key, pool) = (state.path().to_path_buf(), key.clone(), pool.clone());
        move || {
            let run = |phase: &str, url: &str| {
                let out = Command::new(&py)
                    .arg(&script)
                    .args([phase, pool.as_str()])
                    .env("SHIPYARD_SERVE_URL", url)
                    .env("SHIPYARD_SERVE_ACCOUNT", "engineacct")
                    .env("SHIPYARD_SERVE_KEY", &key)
                    .output()
                    .unwrap();
                let text = format!(
                    "{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                (out.status.success(), text)
            };
            let (mut child, url) = spawn_server(&bin, &state, &key, "127.0.0.1:0");
            let before = run("before", &url);
            let _ = child.kill();
            let _ = child.wait();
            let (mut child, url) = spawn_server(&bin, &state, &key, "127.0.0.1:0");
            let after = run("after", &url);
            let _ = child.kill();
            let _ = child.wait();
            (before, after)
        }
    })
    .await
    .unwrap();
    let left = docker_ids(&filter);
    cleanup(&filter);
    let ((ok_before, before), (ok_after, after)) = phases;
    assert!(
        ok_before && before.contains("PHASE before PASSED"),
        "{before}"
    );
    assert!(ok_after && after.contains("PHASE after PASSED"), "{after}");
    assert!(
        after.contains("ok: after: jobDefaultOrder and ipFamilies"),
        "{after}"
    );
    assert_eq!(
        left,
        Vec::<String>::new(),
        "containers/networks left behind"
    );
}
