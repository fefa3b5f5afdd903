//! Output files of engine tasks uploaded to a real Azurite (started here on loopback, SAS
//! signed by shipyard-storage): `filePattern` with `**`, a container path, upload conditions,
//! bytes compared; an upload with a read-only SAS is a `FileUploadError`.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[path = "engine_support.rs"]
mod engine_support;
use engine_support::{completed, task_outputs, wait_for, wait_idle};

use anyhow::Context as _;
use shipyard_batch_api::models::{PoolAddParameter, TaskAddParameter, TaskExecutionResult};
use shipyard_e2e::TEST_IMAGE;
use shipyard_local::engine::{Engine, EngineOptions};
use shipyard_storage::{
    AccountKey, BlobClient, SasOptions, SasPermissions, SasProtocol, SasUrl, Secret,
    StorageAccount, StorageCredential,
};

const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key (not a secret).
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's blob service on a free loopback port; killed on drop.
struct Blob(Child, u16, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Blob {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn azurite() -> anyhow::Result<Option<Blob>> {
    let prefix =
        std::env::var("SHIPYARD_AZURITE_PREFIX").unwrap_or_else(|_| "/opt/shipyard/azurite".into());
    let bin = std::env::var("SHIPYARD_AZURITE")
        .unwrap_or_else(|_| format!("{prefix}/node_modules/.bin/azurite-blob"));
    if !std::path::Path::new(&bin).is_file() {
        if !shipyard_e2e::in_ci()
            && std::env::var("SHIPYARD_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1")
        {
            eprintln!("SKIPPED: Azurite is missing ({bin})");
            return Ok(None);
        }
        panic!("Azurite is missing ({bin}): run `bash scripts/setup.sh`");
    }
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(&bin)
        .args(["--blobHost", "127.0.0.1", "--blobPort", "0", "--silent"])
        .args([
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--disableProductStyleUrl",
        ])
        .arg("--location")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let port = line.split("listens on http://127.0.0.1:").nth(1);
            if let Some(p) = port.and_then(|p| p.trim().parse().ok()) {
                let _ = tx.send(p);
            }
        }
    });
    let port: u16 = rx
        .recv_timeout(Duration::from_secs(60))
        .context("Azurite's port")?;
    Ok(Some(Blob(child, port, dir)))
}

fn sas(p: SasPermissions) -> SasOptions {
    SasOptions {
        protocol: Some(SasProtocol::HttpsAndHttp),
        ..SasOptions::new(p, Duration::from_secs(3600))
    }
}

fn account(port: u16, cred: StorageCredential) -> anyhow::Result<StorageAccount> {
    let endpoint = format!("http://127.0.0.1:{port}/{ACCOUNT}");
    Ok(StorageAccount::with_endpoint(ACCOUNT, &endpoint, cred)?)
}

fn output(pattern: &str, url: &SasUrl, path: Option<&str>, when: &str) -> serde_json::Value {
    let mut container = serde_json::json!({"containerUrl": url.expose()});
    if let Some(p) = path {
        container["path"] = p.into();
    }
    serde_json::json!({
        "filePattern": pattern,
        "destination": {"container": container},
        "uploadOptions": {"uploadCondition": when}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_output_files_reach_azurite_and_a_refused_upload_is_a_file_upload_error(
) -> anyhow::Result<()> {
    if !shipyard_e2e::require_test_image() {
        return Ok(());
    }
    let Some(az) = azurite()? else {
        return Ok(());
    };
    let key = AccountKey::new(ACCOUNT, &Secret::new(DEV_KEY))?;
    let creator = account(
        az.1,
        StorageCredential::Sas(key.account_sas(&sas(SasPermissions {
            create: true,
            ..SasPermissions::default()
        }))),
    )?;
    let client = BlobClient::new()?;
    client
        .create_container(&creator.container_url("outs", &sas(SasPermissions::default()))?)
        .await?;
    let acct = account(az.1, StorageCredential::Key(key))?;
    let writer = acct.container_url("outs", &sas(SasPermissions::WRITE))?;
    let reader = acct.container_url("outs", &sas(SasPermissions::READ_LIST))?;

    let dir = tempfile::tempdir()?;
    let e = Engine::open(EngineOptions::new(dir.path())).await?;
    let pool: PoolAddParameter = model!({
        "id": "pf", "vmSize": "standard_d2s_v3", "targetDedicatedNodes": 1,
        "virtualMachineConfiguration": {
            "imageReference": {}, "nodeAgentSKUId": "batch.node.ubuntu 22.04",
            "containerConfiguration": {"type": "dockerCompatible", "containerImageNames": [TEST_IMAGE]}
        }
    });
    e.add_pool(pool).await?;
    wait_idle(&e, "pf", 1, 120).await;
    e.add_job(model!({"id": "jf", "poolInfo": {"poolId": "pf"}}))
        .await?;
    let make = "/bin/sh -c 'mkdir -p out/sub/deep && seq 1 5000 > out/a.txt && \
                seq 7 9 > out/sub/deep/b.txt && echo log > out/c.log && echo done'";
    let ok: TaskAddParameter = model!({
        "id": "up", "commandLine": make, "containerSettings": {"imageName": TEST_IMAGE},
        "outputFiles": [
            output("out/**/*.txt", &writer, Some("res"), "taskcompletion"),
            output("../stdout.txt", &writer, Some("up/stdout.txt"), "tasksuccess"),
            output("out/*.log", &writer, None, "taskfailure")
        ]
    });
    let refused: TaskAddParameter = model!({
        "id": "refused", "commandLine": make, "containerSettings": {"imageName": TEST_IMAGE},
        "outputFiles": [output("out/a.txt", &reader, None, "taskcompletion")]
    });
    e.add_tasks("jf", vec![ok, refused]).await?;
    let t = completed(&e, "jf", "up", 60).await;
    let info = t.execution_info.clone().unwrap_or_default();
    assert_eq!(
        info.result,
        Some(TaskExecutionResult::Success),
        "{:?} {}",
        info.failure_info,
        task_outputs(dir.path())
    );
    let mut names: Vec<String> = client
        .list_blobs(&reader, None, None)
        .await?
        .into_iter()
        .map(|b| b.name)
        .collect();
    names.sort();
    assert_eq!(names, ["res/a.txt", "res/sub/deep/b.txt", "up/stdout.txt"]);
    let check = tempfile::tempdir()?;
    for (blob, file) in [
        ("res/a.txt", "wd/out/a.txt"),
        ("res/sub/deep/b.txt", "wd/out/sub/deep/b.txt"),
        ("up/stdout.txt", "stdout.txt"),
    ] {
        let dest = check.path().join(blob);
        client.download_to_file(&reader.blob(blob)?, &dest).await?;
        let local = e.task_file("jf", "up", file)?;
        assert_eq!(std::fs::read(&dest)?, std::fs::read(&local.path)?, "{blob}");
    }

    let r = completed(&e, "jf", "refused", 60).await;
    let ri = r.execution_info.unwrap_or_default();
    assert_eq!(ri.result, Some(TaskExecutionResult::Failure));
    assert_eq!(ri.exit_code, Some(0), "the command itself succeeded");
    let f = ri.failure_info.context("failure info")?;
    assert_eq!(f.code.as_deref(), Some("FileUploadError"), "{f:?}");
    assert!(
        !f.message.unwrap_or_default().contains("sig="),
        "the SAS signature stays out of the message"
    );
    e.delete_pool("pf").await?;
    wait_for("pool deletion", 60, || e.get_pool("pf").is_err()).await;
    Ok(())
}
