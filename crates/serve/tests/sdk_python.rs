//! The official azure-batch 15.1.0 Python SDK (tests/python/sdk_flow.py) against `shipyard
//! serve` over loopback with a Shared Key. Needs the venv from scripts/setup.sh
//! (`SHIPYARD_PYVENV`, default /opt/shipyard/pyvenv): under CI=true a missing venv or SDK fails.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use shipyard_serve::memory::MemoryBackend;
use shipyard_serve::{ServeOptions, Server};

fn python_with_sdk() -> Option<PathBuf> {
    let venv = std::env::var_os("SHIPYARD_PYVENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/shipyard/pyvenv"));
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args([
            "-c",
            "import azure.batch, sys; sys.exit(0 if azure.batch.__version__ == '15.1.0' else 1)",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    let what = format!("the azure-batch 15.1.0 Python SDK in {}", venv.display());
    let allow_skip = std::env::var("SHIPYARD_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1");
    if shipyard_e2e::in_ci() || !allow_skip {
        panic!("{what} is missing: run `bash scripts/setup.sh` (set SHIPYARD_TEST_ALLOW_SKIP=1 outside CI to skip)");
    }
    eprintln!("SKIPPED: {what} is missing (run `bash scripts/setup.sh`)");
    None
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/python")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_flow() {
    let Some(py) = python_with_sdk() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = ServeOptions::random_key();
    let opts = ServeOptions::new("sdkaccount", key.clone()).listen("127.0.0.1:0".parse().unwrap());
    let server = Server::bind(opts, MemoryBackend::new(dir.path()))
        .await
        .unwrap();
    let url = format!("http://{}", server.addr());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script("sdk_flow.py"))
            .env("SHIPYARD_SERVE_URL", url)
            .env("SHIPYARD_SERVE_ACCOUNT", "sdkaccount")
            .env("SHIPYARD_SERVE_KEY", key)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sdk_flow.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("SDK FLOW PASSED"), "{stdout}");
    // 20 exit-code checks and 20 stdout checks ran.
    assert_eq!(stdout.matches(": stdout.txt").count(), 20, "{stdout}");
    server.shutdown().await;
}
