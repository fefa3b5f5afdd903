//! A private registry for real: Debian's `docker-registry` on loopback with htpasswd auth, an
//! image pushed by the test, then the job preparation task that
//! `shipyard_runtime::registry_auth::attach_registries` produces for a non-native pool run with
//! bash: the right credentials pull the image, wrong ones fail naming the registry and user,
//! and the password is in neither the command line nor the output.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shipyard_runtime::batch::JobPreparationTask;
use shipyard_runtime::registry_auth::{attach_registries, RegistryLogin};
use shipyard_runtime::{JobNeeds, JobPlan, PoolNeeds};

const USER: &str = "shipyard-test";
const LABEL: &str = "shipyard.test=registry";

struct Registry {
    child: Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn bcrypt(password: &str) -> Result<String> {
    // libxcrypt's bcrypt through perl's crypt(); the registry accepts $2b$ hashes.
    let salt: String = format!("{:022}", std::process::id())
        .chars()
        .map(|c| (b'a' + (c as u8 - b'0')) as char)
        .collect();
    let out = Command::new("perl")
        .args([
            "-e",
            "print crypt($ARGV[0], '$2b$05$' . $ARGV[1])",
            password,
            &salt,
        ])
        .output()?;
    let hash = String::from_utf8(out.stdout)?;
    if !out.status.success() || !hash.starts_with("$2b$") {
        bail!("perl crypt gave no bcrypt hash: {hash}");
    }
    Ok(hash)
}

/// Starts the registry on a free loopback port and returns it with that port. The port is
/// picked by binding and releasing it, so another process may take it before the registry
/// binds it: then the registry exits, and it is started again on another port.
fn start_registry(dir: &Path, password: &str) -> Result<(Registry, u16)> {
    std::fs::write(
        dir.join("htpasswd"),
        format!("{USER}:{}\n", bcrypt(password)?),
    )?;
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port()?;
        match start_registry_on(dir, port)? {
            Some(reg) => return Ok((reg, port)),
            None => last = format!("the registry exited at once on 127.0.0.1:{port}"),
        }
    }
    bail!("{last} (five ports tried)")
}

/// The registry listening on `port`, or `None` when it exited instead (the port was taken).
fn start_registry_on(dir: &Path, port: u16) -> Result<Option<Registry>> {
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: shipyard-test\n    path: {htpasswd}\n",
        data = dir.join("data").display(),
        htpasswd = dir.join("htpasswd").display(),
    );
    std::fs::write(dir.join("config.yml"), config)?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("docker-registry")?;
    let mut reg = Registry { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // exited: the port was taken (by the time it connects, a listener could be another's)
        if reg.child.try_wait()?.is_some() {
            return Ok(None);
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the registry did not listen on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // the listener is the registry's: it asks for the realm of this test's htpasswd
    let probe = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-"])
        .arg(format!("http://127.0.0.1:{port}/v2/"))
        .output();
    if let Ok(p) = probe {
        let headers = String::from_utf8_lossy(&p.stdout);
        if p.status.success() && !headers.contains("realm=\"shipyard-test\"") {
            bail!("127.0.0.1:{port} answers, but not as this test's registry:\n{headers}");
        }
    }
    Ok(Some(reg))
}

fn docker(config: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut c = Command::new("docker");
    c.env("DOCKER_CONFIG", config).args(args);
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn()?;
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// Logs in to `server`, pushes `image`, logs out and removes the local copy (each step must
/// succeed), so that only the registry holds the image.
fn push_then_forget(config: &Path, server: &str, password: &str, image: &str) -> Result<()> {
    let out = docker(
        config,
        &["login", "--username", USER, "--password-stdin", server],
        Some(password),
    )?;
    assert!(
        out.status.success(),
        "login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = Instant::now();
    let out = docker(config, &["push", "-q", image], None)?;
    assert!(
        out.status.success(),
        "push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("pushed {image} in {:.1}s", pushed.elapsed().as_secs_f64());
    docker(config, &["logout", server], None)?;
    let out = docker(config, &["image", "rm", image], None)?;
    assert!(
        out.status.success(),
        "rm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs the preparation task the way Batch would: its environment settings set, its command
/// line through bash.
fn run_prep(prep: &JobPreparationTask, config: &Path) -> Result<Output> {
    let words = shipyard_runtime::shell::split(&prep.command_line)?;
    let mut c = Command::new(&words[0]);
    c.args(&words[1..]).env("DOCKER_CONFIG", config);
    for e in prep.environment_settings.iter().flatten() {
        c.env(&e.name, e.value.as_deref().unwrap_or_default());
    }
    Ok(c.output()?)
}

fn prep_for(image: &str, password: &str) -> Result<JobPreparationTask> {
    let mut plan = JobPlan {
        runtime: "docker".into(),
        pool: PoolNeeds::default(),
        job: JobNeeds {
            job_preparation_task: Some(JobPreparationTask {
                command_line: shipyard_runtime::shell::bash_c(&format!(
                    "set -e; docker image inspect {image} >/dev/null 2>&1 || docker pull {image}"
                )),
                ..Default::default()
            }),
            ..Default::default()
        },
        tasks: vec![],
    };
    let server = image.split('/').next().unwrap_or_default().to_string();
    let login = RegistryLogin {
        server,
        username: USER.into(),
        password: password.into(),
    };
    attach_registries(&mut plan, false, &[login], "docker")?;
    plan.job.job_preparation_task.context("prep")
}

#[test]
fn private_registry_login_pull_and_logout() -> Result<()> {
    if !shipyard_e2e::require_docker()
        || !shipyard_e2e::require_program("docker-registry", "Debian's docker-registry package")
        || !shipyard_e2e::require_program("perl", "perl (bcrypt for htpasswd)")
    {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("docker-config");
    std::fs::create_dir_all(&config)?;
    let password = format!("pw-{}-not-real", std::process::id());
    let (_registry, port) = start_registry(tmp.path(), &password)?;
    let image = format!("127.0.0.1:{port}/shipyard-test/tiny:{}", std::process::id());

    // a tiny image, pushed by the test
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx)?;
    std::fs::write(ctx.join("hello.txt"), "hello from the private registry\n")?;
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM scratch\nLABEL {LABEL}\nCOPY hello.txt /hello.txt\n"),
    )?;
    let ctx_s = ctx.to_string_lossy().to_string();
    let out = docker(&config, &["build", "-q", "-t", &image, &ctx_s], None)?;
    assert!(
        out.status.success(),
        "build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = format!("127.0.0.1:{port}");
    push_then_forget(&config, &server, &password, &image)?;

    // without credentials the pull is refused
    let out = docker(&config, &["pull", "-q", &image], None)?;
    assert!(!out.status.success(), "pulled without credentials");

    // wrong credentials: the preparation task fails, naming the registry and the user
    let prep = prep_for(&image, "wrong-password")?;
    let out = run_prep(&prep, &config)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "wrong password pulled");
    assert!(
        stderr.contains(&format!("docker login to {server} as user {USER} failed")),
        "{stderr}"
    );

    // right credentials: pulled; logged out afterwards; the password never in argv or output
    let prep = prep_for(&image, &password)?;
    assert!(!prep.command_line.contains(&password));
    let out = run_prep(&prep, &config)?;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "prep failed: {all}");
    assert!(!all.contains(&password), "{all}");
    let out = docker(&config, &["image", "inspect", &image], None)?;
    assert!(out.status.success(), "image not pulled");
    let auths = std::fs::read_to_string(config.join("config.json")).unwrap_or_default();
    assert!(
        !auths.contains(&server) || !auths.contains("\"auth\""),
        "still logged in: {auths}"
    );

    let _ = docker(&config, &["image", "rm", "-f", &image], None);
    Ok(())
}

/// The local backend pulls a task image it lacks with the login of its registry
/// (`credentials.docker_registry`): the test image, pushed to the real registry under a new
/// name, runs a task after the pull; a wrong password fails the run naming image, registry and
/// user, and never shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_runs_pull_task_images_with_the_registry_login() -> Result<()> {
    use shipyard_local::{LocalBackend, LocalError, LocalJob, LocalOptions, LocalTask};
    if !shipyard_e2e::require_test_image()
        || !shipyard_e2e::require_program("docker-registry", "Debian's docker-registry package")
        || !shipyard_e2e::require_program("perl", "perl (bcrypt for htpasswd)")
    {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("docker-config");
    std::fs::create_dir_all(&config)?;
    let password = format!("pw-{}-local-not-real", std::process::id());
    let (_registry, port) = start_registry(tmp.path(), &password)?;
    let server = format!("127.0.0.1:{port}");
    let image = format!("{server}/shipyard-test/mpi:local-{}", std::process::id());
    let out = docker(&config, &["tag", shipyard_e2e::TEST_IMAGE, &image], None)?;
    assert!(
        out.status.success(),
        "tag: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The test's tag goes with the test, passed or failed.
    struct Untag<'a>(&'a Path, &'a str);
    impl Drop for Untag<'_> {
        fn drop(&mut self) {
            let _ = docker(self.0, &["image", "rm", "-f", self.1], None);
        }
    }
    let _untag = Untag(&config, &image);
    push_then_forget(&config, &server, &password, &image)?;

    let job = |id: &str| LocalJob {
        id: id.into(),
        tasks: vec![LocalTask::new(
            "pulled",
            image.clone(),
            "/bin/sh -c 'echo ran-from-the-private-registry'",
        )],
        uses_task_dependencies: false,
        on_all_tasks_complete: shipyard_local::OnAllTasksComplete::TerminateJob,
        on_task_failure: Default::default(),
        max_parallel_tasks: None,
    };
    let backend = |pw: &str| {
        LocalBackend::connect(
            LocalOptions::default()
                .state_dir(tmp.path().join("state"))
                .label("shipyard.test", "1")
                .registry_login(RegistryLogin {
                    server: server.clone(),
                    username: USER.into(),
                    password: pw.into(),
                }),
        )
    };
    let id = format!("reg-local-{}", std::process::id());

    // wrong password: no pull, an error naming image, registry and user, not the password
    let err = backend("wrong-password")
        .await?
        .run_spec(job(&format!("{id}-bad")), None)
        .await
        .expect_err("pulled with a wrong password");
    let msg = err.to_string();
    assert!(matches!(err, LocalError::ImagePull { .. }), "{msg}");
    for part in [image.as_str(), server.as_str(), USER] {
        assert!(msg.contains(part), "{part} missing from: {msg}");
    }
    assert!(!msg.contains("wrong-password"), "{msg}");

    // right password: pulled, and the task runs in it
    let outcome = backend(&password).await?.run_spec(job(&id), None).await?;
    let task = outcome.task("pulled").context("task record")?;
    // (first: a task that never started has no stdout.txt to read)
    assert_eq!(task.exit_code, Some(0), "{:?}", task.failure);
    let stdout = std::fs::read_to_string(task.task_dir.join("stdout.txt"))?;
    assert_eq!(stdout.trim(), "ran-from-the-private-registry");
    let out = docker(&config, &["image", "inspect", &image], None)?;
    assert!(out.status.success(), "image not present after the run");
    Ok(())
}
