//! `shipyard serve` as a process: the Batch endpoint `--target azure` talks to.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("shipyard")
}

struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(state: &Path, key: Option<&str>) -> Serve {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .env_remove("SHIPYARD_SERVE_ACCOUNT")
            .env_remove("SHIPYARD_SERVE_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(k) = key {
            cmd.env("SHIPYARD_SERVE_KEY", k);
        }
        let mut child = cmd.spawn().expect("serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reads the URL");
        let url = line.trim().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url:?}");
        Serve { child, url }
    }

    /// SIGTERM, then the exit status and stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const KEY: &str = "c2h5cGFyZC1zZXJ2ZS10ZXN0LWtleS0wMTIzNDU2Nzg5";

/// A one-node pool with one task, small enough to run for real on the local engine.
const CONFIG: &str = r#"
[pool_specification]
id = "c2serve"
vm_size = "Standard_D2s_v5"
vm_count = 1

[pool_specification.vm_configuration.platform_image]
publisher = "microsoft-dsvm"
offer = "ubuntu-hpc"
sku = "2204"
node_agent_sku_id = "batch.node.ubuntu 22.04"
native = true

[[job_specifications]]
id = "c2hello"
runtime = "docker"
auto_complete = true

[[job_specifications.tasks]]
id = "hello"
image = "shipyard/mpi:bookworm"
command = "/bin/sh -c 'echo hello from serve; exit 3'"
"#;

#[test]
fn target_azure_runs_a_job_on_serve_with_the_local_engine() {
    if !shipyard_e2e::require_test_image() {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let cfg = state.path().join("c2serve.toml");
    std::fs::write(&cfg, CONFIG).expect("config");
    let serve = Serve::start(&state.path().join("state"), Some(KEY));
    let azure = |key: &str, args: &[&str]| {
        let mut cmd = Command::new(bin());
        for var in [
            "SHIPYARD_CONFIG",
            "SHIPYARD_CONFIGDIR",
            "SHIPYARD_AAD_TENANT_ID",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("SHIPYARD_BATCH_ACCOUNT_URL", &serve.url)
            .env("SHIPYARD_BATCH_ACCOUNT_NAME", "local")
            .env("SHIPYARD_BATCH_ACCOUNT_KEY", key)
            .env("SHIPYARD_POLL_INTERVAL_MS", "100")
            .args(["--target", "azure", "--output", "json", "-c"])
            .arg(&cfg)
            .args(args);
        cmd.output().expect("runs")
    };
    let out = azure(KEY, &["run", "--timeout", "120"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    // The task's own exit code, from a container the engine really ran.
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(tasks[0]["id"], "hello", "{tasks}");
    assert_eq!(tasks[0]["state"], "completed", "{tasks}");
    let out = azure(KEY, &["files", "--job", "c2hello", "--task", "hello"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello from serve"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The wrong key is refused by the server (403 to the first request).
    let out = azure(
        "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=",
        &["pool", "list"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Remove what this test created.
    let _ = azure(KEY, &["jobs", "del", "c2hello", "--yes"]);
    let out = azure(KEY, &["pool", "del", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = azure(KEY, &["pool", "list"]);
        let pools: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if pools.as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pool was never deleted: {pools}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, stderr) = serve.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        !stderr.contains(KEY),
        "the configured key is never printed: {stderr}"
    );
}

#[test]
fn without_a_key_serve_prints_a_random_one_once() {
    if !shipyard_e2e::require_docker() {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let serve = Serve::start(state.path(), None);
    let (status, stderr) = serve.stop();
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("generated account key"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let key = lines[0].rsplit(' ').next().expect("key");
    assert!(key.len() >= 40, "{key}");
    assert_eq!(stderr.matches(key).count(), 1, "{stderr}");
    assert!(stderr.contains("account `local`"), "{stderr}");
}
