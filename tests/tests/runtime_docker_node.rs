//! The rendered NON-NATIVE Docker plan executed for real on this machine as one Batch node:
//! job preparation (writes the per-job SSH key files), coordination (a detached host-network
//! container running sshd on port 23), application (`docker exec` of `mpirun.openmpi` over ssh
//! to the node itself, 2 ranks) and job release (removes the job's containers).
//!
//! The container's sshd listens on 127.0.0.23 only (other tests use 127.0.0.2-.9), and the host
//! list names that address, so Open MPI treats it as a remote node and really starts its
//! daemon over ssh with the job's key. Command lines run as Batch would run them: split like a
//! shell (Batch does not interpret them otherwise), with the AZ_BATCH_* variables of the task
//! set and the Batch directories created in a temporary node root.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use shipyard_e2e::{require_test_image, HelloReport, MpiKind, TEST_IMAGE};
use shipyard_runtime::ssh::JobSshKey;
use shipyard_runtime::{ContainerRuntime, JobSpec, OsFamily, PoolFacts};
use shipyard_runtime_docker::{container_name, DockerRuntime, LABEL_JOB};

const NODE_IP: &str = "127.0.0.23";

/// Removes every container of the job, also when the test fails.
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = docker_ps(&self.0);
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
    }
}

fn docker_ps(job_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label={LABEL_JOB}={job_id}"))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Runs a Batch command line (`/bin/bash -c '...'`) like a Batch node: split by a shell, in
/// `cwd`, with `env` added.
fn run_batch(command_line: &str, cwd: &Path, env: &BTreeMap<String, String>) -> Output {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec {command_line}"))
        .current_dir(cwd)
        .envs(env)
        .output()
        .expect("spawn /bin/sh")
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn non_native_plan_runs_on_one_docker_node() {
    if !require_test_image() {
        return;
    }
    assert!(
        TcpStream::connect_timeout(&(NODE_IP, 23).into_addr(), Duration::from_millis(500)).is_err(),
        "something already listens on {NODE_IP}:23 (or 0.0.0.0:23); this test needs the port"
    );

    let job_id = format!("rtnode-{}-{}", std::process::id(), nanos());
    let _cleanup = Cleanup(job_id.clone());
    let job: JobSpec = toml::from_str(&format!(
        r#"
        id = "{job_id}"
        auto_complete = true
        [job_preparation]
        command = "env"
        [environment_variables]
        SHIPYARD_TEST_VALUE = "hello world"
        [[tasks]]
        id = "mpi"
        image = "{TEST_IMAGE}"
        command = "{hello}"
        shm_size = "256m"
        additional_docker_run_options = ["--label", "shipyard.test=1"]
        [tasks.multi_instance]
        num_instances = 1
        pre_execution_command = "test \"$SHIPYARD_TEST_VALUE\" = 'hello world' && echo pre-exec-ran"
        [tasks.multi_instance.mpi]
        runtime = "openmpi"
        executable_path = "mpirun.openmpi"
        processes_per_node = 2
        options = ["--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo"]
        [[tasks]]
        id = "mpi2"
        image = "{TEST_IMAGE}"
        command = "{hello}"
        additional_docker_run_options = ["--label", "shipyard.test=1"]
        [tasks.multi_instance]
        num_instances = 1
        [tasks.multi_instance.mpi]
        runtime = "openmpi"
        executable_path = "mpirun.openmpi"
        processes_per_node = 1
        options = ["--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo"]
        [[tasks]]
        id = "plain"
        image = "{TEST_IMAGE}"
        command = "echo \"plain:$SHIPYARD_TEST_VALUE:$AZ_BATCH_TASK_ID\"; pwd"
        additional_docker_run_options = ["--label", "shipyard.test=1"]
        [[tasks]]
        id = "sleeper"
        image = "{TEST_IMAGE}"
        command = "sleep 300"
        additional_docker_run_options = ["--label", "shipyard.test=1"]
        "#,
        hello = shipyard_e2e::image_hello_path(MpiKind::OpenMpi),
    ))
    .expect("job toml");
    let pool = PoolFacts {
        pool_id: "local".into(),
        native_containers: false,
        os: OsFamily::Linux,
        subnet_pattern: "127.0.0.*".into(),
        node_count: 1,
        slots_per_node: 1,
        cores_per_node: None,
    };
    // sshd finds its address itself (issue 13 #10): this node's entry of AZ_BATCH_HOST_LIST
    // among `hostname -I`, which here is a stub naming 127.0.0.23 as one of the node's.
    let runtime = DockerRuntime::new().readiness_timeout_secs(60);
    let mut plan = runtime.plan(&job, &pool).expect("plan");
    let key = JobSshKey::generate(&format!("shipyard-{job_id}")).expect("key");
    plan.install_ssh_key(&key).expect("install key");
    let task = &plan.tasks[0];
    let mis = task
        .multi_instance_settings
        .as_ref()
        .expect("multi-instance");

    // The node's Batch directories, as Batch lays them out.
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let shared = r.join("shared");
    let startup = r.join("startup");
    let prep_dir = r.join(format!("workitems/{job_id}/job-1/jobpreparation"));
    let task_dir = r.join(format!("workitems/{job_id}/job-1/mpi"));
    let task_wd = task_dir.join("wd");
    let task_shared = r.join(format!("workitems/{job_id}/job-1/mpi/shared"));
    let release_dir = r.join(format!("workitems/{job_id}/job-1/jobrelease"));
    for d in [
        &shared,
        &startup,
        &prep_dir.join("wd"),
        &task_wd,
        &task_shared,
        &release_dir.join("wd"),
    ] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let s = |p: &Path| p.display().to_string();
    let mut base = BTreeMap::new();
    base.insert("AZ_BATCH_NODE_ROOT_DIR".to_string(), s(r));
    base.insert("AZ_BATCH_NODE_SHARED_DIR".into(), s(&shared));
    base.insert("AZ_BATCH_NODE_STARTUP_DIR".into(), s(&startup));
    base.insert("AZ_BATCH_POOL_ID".into(), "local".into());
    base.insert("AZ_BATCH_NODE_ID".into(), "node-0".into());
    base.insert("AZ_BATCH_JOB_ID".into(), job_id.clone());

    // 1. job preparation: key files (mode 0600) and the image check.
    let prep = plan.job.job_preparation_task.as_ref().expect("prep");
    let mut env = base.clone();
    env.insert("AZ_BATCH_TASK_DIR".into(), s(&prep_dir));
    env.insert("AZ_BATCH_TASK_WORKING_DIR".into(), s(&prep_dir.join("wd")));
    for e in prep.environment_settings.iter().flatten() {
        env.insert(e.name.clone(), e.value.clone().unwrap_or_default());
    }
    let out = run_batch(&prep.command_line, &prep_dir.join("wd"), &env);
    assert!(
        out.status.success(),
        "job preparation failed: {}",
        show(&out)
    );
    // issue 13 #2: the user's `env` ran after the key files were written, and saw no key
    let prep_out = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        prep_out.contains("AZ_BATCH_NODE_SHARED_DIR="),
        "{}",
        show(&out)
    );
    assert!(
        !prep_out.contains("PRIVATE KEY"),
        "the key leaked into the prep output"
    );
    assert!(!prep_out.contains("SHIPYARD_SSH_"), "{}", show(&out));
    let key_dir = shared.join(format!("shipyard/ssh/{job_id}"));
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [
            "id_ed25519",
            "id_ed25519.pub",
            "authorized_keys",
            "known_hosts",
            "config",
        ] {
            let mode = std::fs::metadata(key_dir.join(f))
                .expect(f)
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let written = std::fs::read_to_string(key_dir.join("id_ed25519")).expect("key");
        assert_eq!(written.trim(), key.private_openssh().trim());
    }

    // 2. coordination on the node (it is the only one, so also the master).
    let mut env = base.clone();
    env.insert("AZ_BATCH_TASK_ID".into(), "mpi".into());
    env.insert("AZ_BATCH_TASK_DIR".into(), s(&task_dir));
    env.insert("AZ_BATCH_TASK_WORKING_DIR".into(), s(&task_wd));
    env.insert("AZ_BATCH_TASK_SHARED_DIR".into(), s(&task_shared));
    env.insert("AZ_BATCH_HOST_LIST".into(), NODE_IP.into());
    env.insert("AZ_BATCH_NODE_LIST".into(), NODE_IP.into());
    env.insert("AZ_BATCH_MASTER_NODE".into(), format!("{NODE_IP}:6000"));
    env.insert("AZ_BATCH_IS_CURRENT_NODE_MASTER".into(), "true".into());
    for e in task.environment_settings.iter().flatten() {
        env.insert(e.name.clone(), e.value.clone().unwrap_or_default());
    }
    let fake_bin = r.join("fake-bin");
    std::fs::create_dir_all(&fake_bin).expect("mkdir");
    {
        use std::os::unix::fs::PermissionsExt;
        let stub = fake_bin.join("hostname");
        std::fs::write(&stub, format!("#!/bin/sh\necho 192.0.2.7 {NODE_IP}\n")).expect("stub");
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    env.insert(
        "PATH".into(),
        format!(
            "{}:{}",
            fake_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    env.insert(
        "AZ_BATCH_JOB_PREP_WORKING_DIR".into(),
        s(&prep_dir.join("wd")),
    );
    // issue 13 #13: another job's live node container on this node survives the coordination
    let other_job = format!("{job_id}-other");
    let _cleanup_other = Cleanup(other_job.clone());
    let decoy = Command::new("docker")
        .args(["run", "-d", "--label"])
        .arg(format!("{LABEL_JOB}={other_job}"))
        .args([
            "--label",
            "shipyard.role=mpi-node",
            "--label",
            "shipyard.test=1",
        ])
        .args([TEST_IMAGE, "sleep", "300"])
        .output()
        .expect("docker run decoy");
    assert!(decoy.status.success(), "{}", show(&decoy));
    let started = Instant::now();
    let out = run_batch(&mis.coordination_command_line, &task_wd, &env);
    assert!(out.status.success(), "coordination failed: {}", show(&out));
    let coordination_secs = started.elapsed().as_secs_f64();
    let name = container_name(&job_id, "mpi");
    assert_eq!(docker_ps(&job_id).len(), 1, "one node container");
    let inspect = Command::new("docker")
        .args(["inspect", "--format", "{{.HostConfig.NetworkMode}} {{.HostConfig.ShmSize}} {{index .Config.Labels \"shipyard.test\"}}", &name])
        .output()
        .expect("inspect");
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        format!("host {} 1", 256 * 1024 * 1024),
        "{}",
        show(&inspect)
    );
    assert_eq!(
        docker_ps(&other_job).len(),
        1,
        "the coordination removed another job's node container"
    );
    // issue 13 #3: the container sees its task directory, the job preparation's directory
    // (read-only) and its own key directory (read-only), not the node root.
    let mounts = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{range .Mounts}}{{.Source}}|{{.Destination}}|{{.RW}}\n{{end}}",
            &name,
        ])
        .output()
        .expect("inspect mounts");
    let mut mounts: Vec<String> = String::from_utf8_lossy(&mounts.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    mounts.sort();
    let mut want = vec![
        format!("{}|{}|true", s(&task_dir), s(&task_dir)),
        format!("{}|/root/.ssh|false", s(&key_dir)),
        format!(
            "{}|{}|false",
            s(&prep_dir.join("wd")),
            s(&prep_dir.join("wd"))
        ),
    ];
    want.sort();
    assert_eq!(mounts, want);
    // issue 13 #10: sshd listens on the node's address only, not on every interface
    let up = Instant::now();
    while TcpStream::connect_timeout(&(NODE_IP, 23).into_addr(), Duration::from_millis(200))
        .is_err()
    {
        assert!(
            up.elapsed() < Duration::from_secs(20),
            "sshd never listened on {NODE_IP}:23"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        TcpStream::connect_timeout(&("127.0.0.1", 23).into_addr(), Duration::from_millis(500))
            .is_err(),
        "sshd also listens on 127.0.0.1"
    );

    // 3a. readiness: with a second node whose sshd never comes up, the application gives up
    // after its (here 3 s) bound and names that node.
    let impatient = DockerRuntime::new()
        .readiness_timeout_secs(3)
        .plan(&job, &pool)
        .expect("plan");
    let mut env2 = env.clone();
    env2.insert("AZ_BATCH_HOST_LIST".into(), format!("{NODE_IP},127.0.0.29"));
    let started = Instant::now();
    let out = run_batch(&impatient.tasks[0].command_line, &task_wd, &env2);
    let waited = started.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("did not accept connections within 3s on: 127.0.0.29"),
        "{}",
        show(&out)
    );
    assert!(!stderr.contains("on: 127.0.0.23"), "{}", show(&out));
    assert!((3.0..20.0).contains(&waited), "waited {waited:.1}s");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("pre-exec-ran"));

    // 3. application on the master: waits for sshd, runs mpirun over ssh, 2 ranks.
    let started = Instant::now();
    let out = run_batch(&task.command_line, &task_wd, &env);
    let app_secs = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "application failed: {}", show(&out));
    assert!(stdout.contains("pre-exec-ran"), "{}", show(&out));
    let report = HelloReport::parse(&stdout);
    report.assert_complete(2);
    // ranks ran in the node container (host networking: the host's name), started by orted
    // that mpirun reached over ssh: sshd logged the job key's accepted login.
    let logs = Command::new("docker")
        .args(["logs", &name])
        .output()
        .expect("logs");
    let logs =
        String::from_utf8_lossy(&logs.stderr).to_string() + &String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("Accepted publickey for root"),
        "mpirun did not log in over ssh:\n{logs}"
    );
    // issue 13 #9: that login checked the host key against the job's known_hosts
    assert!(task.command_line.contains("StrictHostKeyChecking=yes"));
    assert!(!task.command_line.contains("StrictHostKeyChecking=no"));
    let ssh_in_node = |args: &[&str]| -> Output {
        Command::new("docker")
            .args(["exec", &name, "ssh"])
            .args(args)
            .output()
            .expect("docker exec ssh")
    };
    let ok = ssh_in_node(&[NODE_IP, "echo", "in-node-ok"]);
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "in-node-ok",
        "{}",
        show(&ok)
    );
    let unpinned = ssh_in_node(&["-o", "UserKnownHostsFile=/dev/null", NODE_IP, "true"]);
    assert_ne!(unpinned.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&unpinned.stderr).contains("Host key verification failed"),
        "{}",
        show(&unpinned)
    );
    // issue 13 #8: sshd offers public keys only (no password, no keyboard-interactive) ...
    let nopass = ssh_in_node(&["-v", "-o", "PubkeyAuthentication=no", NODE_IP, "true"]);
    assert_ne!(nopass.status.code(), Some(0));
    let err = String::from_utf8_lossy(&nopass.stderr);
    assert!(
        err.contains("Authentications that can continue: publickey\n")
            || err.contains("Authentications that can continue: publickey\r\n"),
        "{}",
        show(&nopass)
    );
    assert!(!err.contains("continue: publickey,"), "{}", show(&nopass));
    // ... and refuses the job key from an address outside the nodes' pattern (127.0.0.*)
    let outside = Command::new("hostname")
        .arg("-I")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
                .map(str::to_string)
        })
        .expect("this test needs a non-loopback IPv4 address on the host (hostname -I)");
    let refused = ssh_in_node(&["-b", &outside, NODE_IP, "true"]);
    assert_ne!(refused.status.code(), Some(0), "{}", show(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Permission denied"),
        "from {outside}: {}",
        show(&refused)
    );
    // the env file carried the task's variables into the container
    let envfile = std::fs::read_to_string(task_wd.join(".shipyard.env")).expect("env file");
    assert!(
        envfile.contains("SHIPYARD_TEST_VALUE=hello world"),
        "{envfile}"
    );
    assert!(
        envfile.contains("AZ_BATCH_HOST_LIST=127.0.0.23"),
        "{envfile}"
    );

    // 3b. a second multi-instance task of the same job on the same node: its coordination
    // replaces the finished first task's sshd container (which holds port 23), then it runs.
    let coordination_env = env.clone();
    let run_task = |index: usize, id: &str| -> (BTreeMap<String, String>, std::path::PathBuf) {
        let t = &plan.tasks[index];
        assert_eq!(t.id, id);
        let dir = r.join(format!("workitems/{job_id}/job-1/{id}"));
        let wd = dir.join("wd");
        std::fs::create_dir_all(&wd).expect("mkdir");
        let mut env = base.clone();
        env.insert("AZ_BATCH_TASK_ID".into(), id.into());
        env.insert("AZ_BATCH_TASK_DIR".into(), s(&dir));
        env.insert("AZ_BATCH_TASK_WORKING_DIR".into(), s(&wd));
        if t.multi_instance_settings.is_some() {
            env.insert("AZ_BATCH_TASK_SHARED_DIR".into(), s(&dir.join("shared")));
            env.insert("AZ_BATCH_HOST_LIST".into(), NODE_IP.into());
            env.insert("AZ_BATCH_NODE_LIST".into(), NODE_IP.into());
            env.insert("AZ_BATCH_MASTER_NODE".into(), format!("{NODE_IP}:6000"));
            env.insert("AZ_BATCH_IS_CURRENT_NODE_MASTER".into(), "true".into());
        }
        for e in t.environment_settings.iter().flatten() {
            env.insert(e.name.clone(), e.value.clone().unwrap_or_default());
        }
        for k in ["PATH", "AZ_BATCH_JOB_PREP_WORKING_DIR"] {
            if let Some(v) = coordination_env.get(k) {
                env.insert(k.to_string(), v.clone());
            }
        }
        (env, wd)
    };
    let (env2, wd2) = run_task(1, "mpi2");
    let t2 = &plan.tasks[1];
    let coord2 = &t2
        .multi_instance_settings
        .as_ref()
        .expect("mi")
        .coordination_command_line;
    let out = run_batch(coord2, &wd2, &env2);
    assert!(
        out.status.success(),
        "second coordination failed: {}",
        show(&out)
    );
    let names = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
        .arg(format!("label={LABEL_JOB}={job_id}"))
        .output()
        .expect("docker ps");
    assert_eq!(
        String::from_utf8_lossy(&names.stdout).trim(),
        container_name(&job_id, "mpi2"),
        "the first task's node container must be gone"
    );
    let out = run_batch(&t2.command_line, &wd2, &env2);
    assert!(
        out.status.success(),
        "second application failed: {}",
        show(&out)
    );
    HelloReport::parse(&String::from_utf8_lossy(&out.stdout)).assert_complete(1);

    // 3c. a plain (single-node) task: `docker run --rm` in the foreground, Batch variables and
    // the task environment inside, the task working directory as the container's, no leftover.
    let (env3, wd3) = run_task(2, "plain");
    let out = run_batch(&plan.tasks[2].command_line, &wd3, &env3);
    assert!(out.status.success(), "plain task failed: {}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("plain:hello world:plain\n{}\n", wd3.display()),
        "{}",
        show(&out)
    );
    assert_eq!(
        docker_ps(&job_id).len(),
        1,
        "the plain task's container was not removed"
    );

    // 3d. issue 13 #14: Batch terminates a running task (SIGTERM): its container goes too.
    let (env4, wd4) = run_task(3, "sleeper");
    let sleeper = container_name(&job_id, "sleeper");
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec {}", plan.tasks[3].command_line))
        .current_dir(&wd4)
        .envs(&env4)
        .spawn()
        .expect("spawn sleeper");
    let running = |n: &str| {
        let o = Command::new("docker")
            .args(["ps", "-q", "--filter"])
            .arg(format!("name=^{n}$"))
            .output()
            .expect("docker ps");
        !String::from_utf8_lossy(&o.stdout).trim().is_empty()
    };
    let t0 = Instant::now();
    while !running(&sleeper) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the sleeper never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(143));
    let t0 = Instant::now();
    while running(&sleeper) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the terminated task's container is still running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 4. job release: no container of the job remains, the key directory is gone.
    let rel = plan.job.job_release_task.as_ref().expect("release");
    let mut env = base.clone();
    env.insert("AZ_BATCH_TASK_DIR".into(), s(&release_dir));
    env.insert(
        "AZ_BATCH_TASK_WORKING_DIR".into(),
        s(&release_dir.join("wd")),
    );
    let out = run_batch(&rel.command_line, &release_dir.join("wd"), &env);
    assert!(out.status.success(), "release failed: {}", show(&out));
    assert!(
        docker_ps(&job_id).is_empty(),
        "release left containers behind"
    );
    assert!(!key_dir.exists(), "release left the key directory");
    eprintln!(
        "runtime_docker_node: coordination {coordination_secs:.2}s, application (incl. sshd wait) {app_secs:.2}s, readiness give-up {waited:.2}s"
    );
}

trait IntoAddr {
    fn into_addr(self) -> std::net::SocketAddr;
}
impl IntoAddr for (&str, u16) {
    fn into_addr(self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.0.parse().expect("ip"), self.1)
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}
