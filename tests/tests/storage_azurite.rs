//! shipyard-storage against a real Azurite Blob service started by each test on loopback (random
//! port, temporary directory, the well-known `devstoreaccount1` key). Every SAS is signed by
//! shipyard's own code; Azurite checks the signatures.
//!
//! Azurite is installed by `bash scripts/setup.sh` (npm package `azurite`). Without it a test
//! fails under `CI=true`, and elsewhere too unless `SHIPYARD_TEST_ALLOW_SKIP=1`.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use shipyard_batch_api::models::{
    HttpHeader, OutputFile, OutputFileBlobContainerDestination, OutputFileDestination,
    OutputFileUploadCondition, OutputFileUploadOptions, ResourceFile,
};
use shipyard_storage::{
    fetch_resource_files, upload_output_files, AccountKey, BlobClient, BlobClientOptions,
    SasOptions, SasPermissions, SasProtocol, SasUrl, Secret, StorageAccount, StorageCredential,
    StorageError, TaskOutcome,
};

const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development account key (not a secret).
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Finds `azurite-blob`: `$SHIPYARD_AZURITE`, then setup.sh's prefix, then `PATH`.
fn find_azurite() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SHIPYARD_AZURITE") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let prefix = std::env::var_os("SHIPYARD_AZURITE_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/shipyard/azurite"));
    let bin = prefix.join("node_modules/.bin/azurite-blob");
    if bin.is_file() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("azurite-blob"))
            .find(|p| p.is_file())
    })
}

/// Demands Azurite: panics under CI=true or when skipping is not allowed, else a loud skip.
fn require_azurite() -> Option<PathBuf> {
    let found = find_azurite();
    if found.is_none() {
        let hint = "run `bash scripts/setup.sh` to install it";
        let may_skip = !shipyard_e2e::in_ci()
            && std::env::var("SHIPYARD_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1");
        if may_skip {
            eprintln!("SKIPPED: Azurite (azurite-blob) is missing ({hint})");
        } else {
            panic!("Azurite (azurite-blob) is missing: {hint} (set SHIPYARD_TEST_ALLOW_SKIP=1 outside CI to skip)");
        }
    }
    found
}

/// A running Azurite Blob service, killed on drop.
struct Azurite {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Azurite {
    fn start(bin: &Path) -> Result<Azurite> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "0",
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--disableProductStyleUrl",
                "--silent",
            ])
            .arg("--location")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("azurite stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keeps draining after the port is found so Azurite never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Some(rest) = line.split("listens on http://127.0.0.1:").nth(1) {
                    let _ = tx.send(rest.trim().parse::<u16>());
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(p)) => p,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("Azurite did not report its port within 60 s: {other:?}");
            }
        };
        Ok(Azurite {
            child,
            port,
            _dir: dir,
        })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// The account with the development key: shipyard signs service SAS itself.
    fn account(&self) -> Result<StorageAccount> {
        let key = AccountKey::new(ACCOUNT, &Secret::new(DEV_KEY))?;
        Ok(StorageAccount::with_endpoint(
            ACCOUNT,
            &self.endpoint(),
            StorageCredential::Key(key),
        )?)
    }

    /// Creates `name` through an account SAS signed by shipyard (`c` on all resource types).
    async fn create_container(&self, client: &BlobClient, name: &str) -> Result<()> {
        let key = AccountKey::new(ACCOUNT, &Secret::new(DEV_KEY))?;
        let token = key.account_sas(&opts(SasPermissions {
            create: true,
            ..SasPermissions::default()
        }));
        let account = StorageAccount::with_endpoint(
            ACCOUNT,
            &self.endpoint(),
            StorageCredential::Sas(token),
        )?;
        client
            .create_container(&account.container_url(name, &opts(SasPermissions::default()))?)
            .await?;
        Ok(())
    }
}

impl Azurite {
    /// Creates `name` and returns the account and a write-only SAS URL of the container.
    async fn writable_container(
        &self,
        client: &BlobClient,
        name: &str,
    ) -> Result<(StorageAccount, SasUrl)> {
        self.create_container(client, name).await?;
        let account = self.account()?;
        let writer = account.container_url(name, &opts(SasPermissions::WRITE))?;
        Ok((account, writer))
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SAS options for an HTTP endpoint, valid for an hour.
fn opts(permissions: SasPermissions) -> SasOptions {
    SasOptions {
        protocol: Some(SasProtocol::HttpsAndHttp),
        ..SasOptions::new(permissions, Duration::from_secs(3600))
    }
}

fn all_permissions() -> SasPermissions {
    SasPermissions::parse("racwdl").unwrap_or_default()
}

/// Deterministic pseudo-random bytes (xorshift), so block boundaries carry distinct data.
fn pattern_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

macro_rules! azurite_or_skip {
    () => {
        match require_azurite() {
            Some(bin) => Azurite::start(&bin)?,
            None => return Ok(()),
        }
    };
}

fn small_block_client() -> Result<BlobClient> {
    Ok(BlobClient::with_options(BlobClientOptions {
        block_upload_threshold: 1024 * 1024,
        block_size: 256 * 1024,
        ..BlobClientOptions::default()
    })?)
}

#[tokio::test]
async fn put_and_get_blobs_round_trip_bytes_with_and_without_blocks() -> Result<()> {
    let az = azurite_or_skip!();
    let client = small_block_client()?;
    az.create_container(&client, "roundtrip").await?;
    let container = az
        .account()?
        .container_url("roundtrip", &opts(all_permissions()))?;
    let dir = tempfile::tempdir()?;

    let small = pattern_bytes(1000, 1);
    // 2.5 MiB + 3 bytes: above the 1 MiB threshold, 11 blocks of 256 KiB, the last partial.
    let large = pattern_bytes(10 * 256 * 1024 + 128 * 1024 + 3, 2);
    for (name, data) in [("small.bin", &small), ("dir/large file.bin", &large)] {
        let src = dir.path().join(name.replace('/', "_"));
        std::fs::write(&src, data)?;
        let url = container.blob(name)?;
        let sent = client.upload_file(&url, &src, &[]).await?;
        assert_eq!(sent, data.len() as u64);
        let dest = dir.path().join("down").join(name);
        let got = client.download_to_file(&url, &dest).await?;
        assert_eq!(got, data.len() as u64);
        assert!(
            std::fs::read(&dest)? == *data,
            "{name}: downloaded bytes differ"
        );
    }
    let blocks = client
        .committed_blocks(&container.blob("dir/large file.bin")?)
        .await?;
    assert_eq!(blocks.len(), 11, "the large file is uploaded as blocks");
    assert!(client
        .committed_blocks(&container.blob("small.bin")?)
        .await?
        .is_empty());
    Ok(())
}

#[tokio::test]
async fn lists_by_prefix_across_pages_and_checks_signatures() -> Result<()> {
    let az = azurite_or_skip!();
    let client = BlobClient::new()?;
    let (account, writer) = az.writable_container(&client, "listing").await?;
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("x");
    std::fs::write(&src, b"x")?;
    let mut want = Vec::new();
    for i in 0..7 {
        let name = format!("p/{i:02}.txt");
        client.upload_file(&writer.blob(&name)?, &src, &[]).await?;
        want.push(name);
    }
    for name in ["q/a", "pz"] {
        client.upload_file(&writer.blob(name)?, &src, &[]).await?;
    }

    let reader = account.container_url("listing", &opts(SasPermissions::READ_LIST))?;
    let first = client
        .list_blobs_page(&reader, Some("p/"), None, Some(2))
        .await?;
    assert_eq!(first.blobs.len(), 2);
    assert!(first.next_marker.is_some(), "a full page has a next marker");
    let all = client.list_blobs(&reader, Some("p/"), Some(2)).await?;
    let names: Vec<String> = all.iter().map(|b| b.name.clone()).collect();
    assert_eq!(names, want);
    assert!(all.iter().all(|b| b.size == 1));
    assert_eq!(client.list_blobs(&reader, None, Some(3)).await?.len(), 9);

    // A ready SAS token (an account SAS) works as well.
    let key = AccountKey::new(ACCOUNT, &Secret::new(DEV_KEY))?;
    let token = key.account_sas(&opts(SasPermissions::READ_LIST));
    let by_token =
        StorageAccount::with_endpoint(ACCOUNT, &az.endpoint(), StorageCredential::Sas(token))?;
    let c = by_token.container_url("listing", &opts(SasPermissions::default()))?;
    assert_eq!(client.list_blobs(&c, Some("q/"), None).await?.len(), 1);

    // Azurite checks signatures: a SAS signed with another key is refused.
    let other = AccountKey::new(ACCOUNT, &Secret::new("b3RoZXIta2V5"))?;
    let forged =
        StorageAccount::with_endpoint(ACCOUNT, &az.endpoint(), StorageCredential::Key(other))?
            .container_url("listing", &opts(SasPermissions::READ_LIST))?;
    let err = client.list_blobs(&forged, None, None).await.err();
    assert_eq!(
        err.as_ref().and_then(StorageError::status),
        Some(403),
        "{err:?}"
    );
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(!msg.contains("sig="), "no signature in: {msg}");
    Ok(())
}

#[tokio::test]
async fn resource_files_from_container_prefix_http_url_and_auto_storage() -> Result<()> {
    let az = azurite_or_skip!();
    let client = BlobClient::new()?;
    let (account, writer) = az.writable_container(&client, "inputs").await?;
    let src = tempfile::tempdir()?;
    let mut contents = Vec::new();
    for (i, name) in ["job/a.txt", "job/sub/b.bin", "other/c.txt"]
        .iter()
        .enumerate()
    {
        let data = pattern_bytes(500 + i * 77, i as u64 + 10);
        let path = src.path().join(format!("f{i}"));
        std::fs::write(&path, &data)?;
        client.upload_file(&writer.blob(name)?, &path, &[]).await?;
        contents.push((name.to_string(), data));
    }

    let reader = account.container_url("inputs", &opts(SasPermissions::READ_LIST))?;
    let blob_reader =
        account.blob_url("inputs", "other/c.txt", &opts(SasPermissions::READ_LIST))?;
    let files = vec![
        ResourceFile {
            storage_container_url: Some(reader.expose().to_string()),
            blob_prefix: Some("job/".into()),
            file_path: Some("data".into()),
            file_mode: Some("0750".into()),
            ..Default::default()
        },
        ResourceFile {
            http_url: Some(blob_reader.expose().to_string()),
            file_path: Some("single/c-copy.txt".into()),
            ..Default::default()
        },
        ResourceFile {
            auto_storage_container_name: Some("inputs".into()),
            blob_prefix: Some("other/".into()),
            ..Default::default()
        },
    ];
    let wd = tempfile::tempdir()?;
    let fetched = fetch_resource_files(&client, &files, wd.path(), Some(&account)).await?;
    assert_eq!(fetched.len(), 4);
    let expect = [
        ("data/job/a.txt", 0, 0o750),
        ("data/job/sub/b.bin", 1, 0o750),
        ("single/c-copy.txt", 2, 0o770),
        ("other/c.txt", 2, 0o770),
    ];
    for (rel, idx, mode) in expect {
        let path = wd.path().join(rel);
        assert!(
            std::fs::read(&path)? == contents[idx].1,
            "{rel}: bytes differ"
        );
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o7777,
            mode,
            "{rel}"
        );
    }
    assert!(
        !wd.path().join("data/other").exists(),
        "the prefix filters blobs"
    );
    Ok(())
}

#[tokio::test]
async fn unfetchable_resource_file_names_its_url_without_the_sas() -> Result<()> {
    let az = azurite_or_skip!();
    let client = BlobClient::new()?;
    az.create_container(&client, "present").await?;
    let account = az.account()?;
    let missing_blob = account.blob_url(
        "present",
        "nope/missing.txt",
        &opts(SasPermissions::READ_LIST),
    )?;
    let missing_container = account.container_url("absent", &opts(SasPermissions::READ_LIST))?;
    let wd = tempfile::tempdir()?;

    let by_http = ResourceFile {
        http_url: Some(missing_blob.expose().to_string()),
        file_path: Some("x.txt".into()),
        ..Default::default()
    };
    let err = fetch_resource_files(&client, &[by_http], wd.path(), None)
        .await
        .err()
        .context("a missing blob must fail")?;
    let msg = err.to_string();
    assert!(matches!(err, StorageError::ResourceFile { .. }), "{err:?}");
    assert_eq!(err.url(), Some(missing_blob.redacted().as_str()));
    assert!(
        msg.contains("/present/nope/missing.txt?<redacted>"),
        "{msg}"
    );
    assert!(msg.contains("404"), "{msg}");
    assert!(!msg.contains("sig="), "{msg}");
    assert!(!wd.path().join("x.txt").exists());

    let by_container = ResourceFile {
        storage_container_url: Some(missing_container.expose().to_string()),
        ..Default::default()
    };
    let err = fetch_resource_files(&client, &[by_container], wd.path(), None)
        .await
        .err()
        .context("a missing container must fail")?;
    let msg = err.to_string();
    assert!(
        msg.contains("/absent?<redacted>") && !msg.contains("sig="),
        "{msg}"
    );
    assert_eq!(err.status(), Some(404), "{msg}");
    Ok(())
}

fn output(
    pattern: &str,
    container: &SasUrl,
    path: Option<&str>,
    when: OutputFileUploadCondition,
) -> OutputFile {
    OutputFile {
        file_pattern: pattern.into(),
        destination: OutputFileDestination {
            container: Some(OutputFileBlobContainerDestination {
                path: path.map(str::to_string),
                container_url: container.expose().to_string(),
                upload_headers: Some(vec![HttpHeader {
                    name: "x-ms-blob-content-type".into(),
                    value: Some("text/plain".into()),
                }]),
                ..Default::default()
            }),
        },
        upload_options: OutputFileUploadOptions {
            upload_condition: when,
        },
    }
}

#[tokio::test]
async fn output_files_follow_patterns_paths_and_upload_conditions() -> Result<()> {
    let az = azurite_or_skip!();
    let client = BlobClient::new()?;
    let (account, writer) = az.writable_container(&client, "outputs").await?;
    let reader = account.container_url("outputs", &opts(SasPermissions::READ_LIST))?;

    let task = tempfile::tempdir()?;
    let wd = task.path().join("wd");
    let files = [
        ("wd/out/a.txt", 1usize),
        ("wd/out/sub/deep/b.txt", 2),
        ("wd/out/c.log", 3),
        ("stdout.txt", 4),
    ];
    for (rel, seed) in files {
        let p = task.path().join(rel);
        std::fs::create_dir_all(p.parent().context("parent")?)?;
        std::fs::write(&p, pattern_bytes(300 * seed, seed as u64))?;
    }
    use OutputFileUploadCondition as C;
    let outputs = vec![
        output("out/**/*.txt", &writer, Some("logs"), C::TaskCompletion),
        output(
            "../stdout.txt",
            &writer,
            Some("task/stdout-1.txt"),
            C::TaskSuccess,
        ),
        output("out/*.log", &writer, None, C::TaskFailure),
    ];

    let up = upload_output_files(&client, &outputs, &wd, TaskOutcome::Success).await?;
    let blobs: Vec<String> = up.iter().map(|u| u.blob.clone()).collect();
    assert_eq!(
        blobs,
        ["logs/a.txt", "logs/sub/deep/b.txt", "task/stdout-1.txt"]
    );
    let listed: Vec<String> = client
        .list_blobs(&reader, None, None)
        .await?
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(listed, blobs);
    let check = tempfile::tempdir()?;
    for (blob, rel) in [
        ("logs/sub/deep/b.txt", "wd/out/sub/deep/b.txt"),
        ("task/stdout-1.txt", "stdout.txt"),
    ] {
        let dest = check.path().join(blob);
        client.download_to_file(&reader.blob(blob)?, &dest).await?;
        assert!(
            std::fs::read(&dest)? == std::fs::read(task.path().join(rel))?,
            "{blob}"
        );
    }

    let up = upload_output_files(&client, &outputs, &wd, TaskOutcome::Failure).await?;
    let blobs: Vec<String> = up.iter().map(|u| u.blob.clone()).collect();
    assert_eq!(blobs, ["logs/a.txt", "logs/sub/deep/b.txt", "c.log"]);
    assert_eq!(client.list_blobs(&reader, None, None).await?.len(), 4);
    Ok(())
}

#[tokio::test]
async fn upload_without_write_permission_is_an_upload_error() -> Result<()> {
    let az = azurite_or_skip!();
    let client = BlobClient::new()?;
    az.create_container(&client, "readonly").await?;
    let read_only = az
        .account()?
        .container_url("readonly", &opts(SasPermissions::READ_LIST))?;
    let wd = tempfile::tempdir()?;
    std::fs::write(wd.path().join("result.dat"), b"result")?;
    let outputs = vec![output(
        "result.dat",
        &read_only,
        Some("r/result.dat"),
        OutputFileUploadCondition::TaskCompletion,
    )];
    let err = upload_output_files(&client, &outputs, wd.path(), TaskOutcome::Success)
        .await
        .err()
        .context("an upload without write permission must fail")?;
    let msg = err.to_string();
    assert!(
        matches!(&err, StorageError::Upload { file, .. } if file.ends_with("result.dat")),
        "{err:?}"
    );
    assert_eq!(err.status(), Some(403), "{msg}");
    assert!(msg.contains("/readonly/r/result.dat?<redacted>"), "{msg}");
    assert!(!msg.contains("sig="), "{msg}");
    assert!(client.list_blobs(&read_only, None, None).await?.is_empty());
    Ok(())
}
