//! The engine pulls container-pool images with registry credentials, as Batch does: the
//! pool's `containerConfiguration.containerRegistries` for images of those registries, and a
//! task's `containerSettings.registry` over them. Against a real registry (Debian's
//! `docker-registry` on loopback with htpasswd auth, the test image pushed there by the test):
//! a wrong password fails the task naming image, registry and user (never the password); the
//! right one pulls and the task runs in the pulled image.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

#[path = "engine_support.rs"]
mod engine_support;
use engine_support::{completed, task_text, wait_for, wait_idle};

use shipyard_batch_api::models::{PoolAddParameter, TaskAddParameter, TaskExecutionResult};
use shipyard_e2e::TEST_IMAGE;
use shipyard_local::engine::{Engine, EngineOptions};

const USER: &str = "engine-reg-user";

/// `docker-registry serve` on 127.0.0.1 with one htpasswd user; killed on drop. Docker
/// commands run with a private `DOCKER_CONFIG`, so the test's login never touches the host's.
struct PrivateRegistry {
    child: Child,
    server: String,
    docker_config: PathBuf,
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PrivateRegistry {
    fn start(dir: &Path, password: &str) -> Result<PrivateRegistry> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // bcrypt ($2b$) through perl's crypt(), with a salt of 22 letters.
        let salt: String = (0..22)
            .map(|i| (b'a' + ((std::process::id() as usize + i * 7) % 26) as u8) as char)
            .collect();
        let hash = Command::new("perl")
            .args(["-e", "print crypt($ARGV[0], '$2b$05$'.$ARGV[1])"])
            .args([password, salt.as_str()])
            .output()?;
        let hash = String::from_utf8(hash.stdout)?;
        ensure!(hash.starts_with("$2b$"), "no bcrypt hash from perl: {hash}");
        std::fs::write(dir.join("users"), format!("{USER}:{hash}\n"))?;
        let yml = dir.join("registry.yml");
        std::fs::write(
            &yml,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: engine-test\n    path: {}\n",
                dir.join("blobs").display(),
                dir.join("users").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&yml)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry")?;
        let docker_config = dir.join("docker-config");
        std::fs::create_dir_all(&docker_config)?;
        let reg = PrivateRegistry {
            child,
            server: format!("127.0.0.1:{port}"),
            docker_config,
        };
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                t.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen on {}",
                reg.server
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(reg)
    }

    fn docker(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        use std::io::Write;
        let mut child = Command::new("docker")
            .env("DOCKER_CONFIG", &self.docker_config)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "docker {}: {}",
                args.first().copied().unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Tags `from` as `to` (an image of this registry), pushes it with the password (stdin)
    /// and removes the local tag, so that only the registry holds `to`.
    fn push_only_there(&self, from: &str, to: &str, password: &str) -> Result<()> {
        self.docker(&["tag", from, to], None)?;
        self.docker(
            &[
                "login",
                "-u",
                USER,
                "--password-stdin",
                self.server.as_str(),
            ],
            Some(password),
        )?;
        self.docker(&["push", "-q", to], None)?;
        self.docker(&["logout", self.server.as_str()], None)?;
        self.forget(to)
    }

    fn forget(&self, image: &str) -> Result<()> {
        self.docker(&["image", "rm", image], None).map(|_| ())
    }
}

fn pool(id: &str, registries: serde_json::Value) -> PoolAddParameter {
    model!({
        "id": id, "vmSize": "standard_d2s_v3", "targetDedicatedNodes": 1, "taskSlotsPerNode": 1,
        "virtualMachineConfiguration": {
            "imageReference": {}, "nodeAgentSKUId": "batch.node.ubuntu 22.04",
            "containerConfiguration": {
                "type": "dockerCompatible", "containerImageNames": [TEST_IMAGE],
                "containerRegistries": registries
            }
        }
    })
}

fn task(id: &str, image: &str, registry: Option<serde_json::Value>) -> TaskAddParameter {
    let mut settings = serde_json::json!({"imageName": image});
    if let Some(r) = registry {
        settings["registry"] = r;
    }
    model!({
        "id": id, "commandLine": "/bin/sh -c 'echo ran-in-the-pulled-image'",
        "containerSettings": settings
    })
}

fn login(server: &str, password: &str) -> serde_json::Value {
    serde_json::json!({"registryServer": server, "username": USER, "password": password})
}

/// Every regular file under `dir` whose bytes contain `needle` (the store is not a log:
/// skipped; FIFOs, like the command agents', are not files to read).
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in rd.flatten() {
        let p = entry.path();
        if p.is_dir() {
            found.extend(files_containing(&p, needle));
        } else if entry.file_type().is_ok_and(|t| t.is_file())
            && p.file_name().is_some_and(|n| n != "engine.redb")
            && std::fs::read(&p)
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            found.push(p);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_pulls_task_images_with_pool_and_task_registry_logins() -> Result<()> {
    if !shipyard_e2e::require_test_image()
        || !shipyard_e2e::require_program("docker-registry", "Debian's docker-registry package")
        || !shipyard_e2e::require_program("perl", "perl (bcrypt for htpasswd)")
    {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let password = format!("engine-pw-{}-not-real", std::process::id());
    let wrong = format!("wrong-{}-pw", std::process::id());
    let reg = PrivateRegistry::start(tmp.path(), &password)?;
    let image = format!(
        "{}/shipyard-test/mpi:engine-{}",
        reg.server,
        std::process::id()
    );
    reg.push_only_there(TEST_IMAGE, &image, &password)?;

    let state = tmp.path().join("engine");
    let e = Engine::open(EngineOptions::new(&state)).await?;
    let result = async {
        // The pool's login has the wrong password: the pull fails, and so does the task.
        e.add_pool(pool(
            "regwrong",
            serde_json::json!([login(&reg.server, &wrong)]),
        ))
        .await?;
        wait_idle(&e, "regwrong", 1, 120).await;
        e.add_job(model!({"id": "rj1", "poolInfo": {"poolId": "regwrong"}}))
            .await?;
        e.add_tasks("rj1", vec![task("bad", &image, None)]).await?;
        let bad = completed(&e, "rj1", "bad", 120).await;
        let info = bad.execution_info.unwrap_or_default();
        assert_eq!(info.result, Some(TaskExecutionResult::Failure));
        let msg = info
            .failure_info
            .and_then(|f| f.message)
            .unwrap_or_default();
        for part in [image.as_str(), reg.server.as_str(), USER] {
            assert!(msg.contains(part), "{part} missing from: {msg}");
        }
        assert!(!msg.contains(&wrong) && !msg.contains(&password), "{msg}");

        // The task's own registry login wins over the pool's: pulled, and the task runs.
        e.add_tasks(
            "rj1",
            vec![task("good", &image, Some(login(&reg.server, &password)))],
        )
        .await?;
        let good = completed(&e, "rj1", "good", 300).await;
        let info = good.execution_info.unwrap_or_default();
        assert_eq!(info.result, Some(TaskExecutionResult::Success), "{info:?}");
        assert_eq!(
            task_text(&e, "rj1", "good", "stdout.txt").trim(),
            "ran-in-the-pulled-image"
        );
        e.delete_pool("regwrong").await?;
        wait_for("pool deletion", 120, || e.get_pool("regwrong").is_err()).await;
        reg.forget(&image)?;

        // The pool's login with the right password pulls a task image of that registry.
        e.add_pool(pool(
            "regright",
            serde_json::json!([login(&reg.server, &password)]),
        ))
        .await?;
        wait_idle(&e, "regright", 1, 120).await;
        e.add_job(model!({"id": "rj2", "poolInfo": {"poolId": "regright"}}))
            .await?;
        e.add_tasks("rj2", vec![task("pooled", &image, None)])
            .await?;
        let pooled = completed(&e, "rj2", "pooled", 300).await;
        let info = pooled.execution_info.unwrap_or_default();
        assert_eq!(info.result, Some(TaskExecutionResult::Success), "{info:?}");
        assert_eq!(
            task_text(&e, "rj2", "pooled", "stdout.txt").trim(),
            "ran-in-the-pulled-image"
        );
        for pw in [&password, &wrong] {
            let leaked = files_containing(&state, pw);
            assert!(leaked.is_empty(), "the password is in {leaked:?}");
        }
        e.delete_pool("regright").await?;
        wait_for("pool deletion", 120, || e.get_pool("regright").is_err()).await;
        anyhow::Ok(())
    }
    .await;
    let _ = reg.forget(&image);
    for p in ["regwrong", "regright"] {
        let _ = e.delete_pool(p).await;
    }
    wait_for("pools gone", 120, || {
        e.list_pools().is_ok_and(|v| v.is_empty())
    })
    .await;
    result
}
