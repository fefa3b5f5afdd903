//! The official azure-batch 15.1.0 Python SDK (tests/python/sdk_flow.py) against `shipyard
//! serve` over loopback with a Shared Key. Needs the venv from scripts/setup.sh
//! (`SHIPYARD_PYVENV`, default /opt/shipyard/pyvenv; `shipyard_e2e::require_python_sdk`): under
//! CI=true a missing venv or SDK fails.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use shipyard_serve::memory::MemoryBackend;
use shipyard_serve::{ServeOptions, Server};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/python")
        .join(name)
}

/// Runs an SDK script against a fresh memory-backed server; its stdout once it succeeded and
/// printed `marker` (`None` when the SDK is not installed outside CI).
async fn run_sdk(script: PathBuf, marker: &str) -> Option<String> {
    let py = shipyard_e2e::require_python_sdk()?;
    let dir = tempfile::tempdir().unwrap();
    let key = ServeOptions::random_key();
    let opts = ServeOptions::new("sdkaccount", key.clone()).listen("127.0.0.1:0".parse().unwrap());
    let server = Server::bind(opts, MemoryBackend::new(dir.path()))
        .await
        .unwrap();
    let url = format!("http://{}", server.addr());
    let name = script.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .env("SHIPYARD_SERVE_URL", url)
            .env("SHIPYARD_SERVE_ACCOUNT", "sdkaccount")
            .env("SHIPYARD_SERVE_KEY", key)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains(marker), "{stdout}");
    server.shutdown().await;
    Some(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_flow() {
    let Some(stdout) = run_sdk(script("sdk_flow.py"), "SDK FLOW PASSED").await else {
        return;
    };
    // 20 exit-code checks and 20 stdout checks ran.
    assert_eq!(stdout.matches(": stdout.txt").count(), 20, "{stdout}");
}

/// `expand=["stats"]` and a 2025-only property through the SDK (crates/serve/tests/python/sdk_expand.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_expand_and_2025_properties() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/sdk_expand.py");
    let Some(stdout) = run_sdk(script, "SDK EXPAND PASSED").await else {
        return;
    };
    assert_eq!(stdout.matches("ok: ").count(), 7, "{stdout}");
}
