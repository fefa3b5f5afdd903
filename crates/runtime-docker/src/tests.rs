#![allow(clippy::unwrap_used)]

use super::*;
use shipyard_runtime::batch::OnAllTasksComplete;
use shipyard_runtime::registry;

fn pool(native: bool) -> PoolFacts {
    PoolFacts {
        pool_id: "p".into(),
        native_containers: native,
        os: OsFamily::Linux,
        subnet_pattern: "10.0.*".into(),
        node_count: 3,
        slots_per_node: 1,
        cores_per_node: Some(4),
    }
}

fn mi_job() -> JobSpec {
    toml::from_str(
        r#"
        id = "job1"
        auto_complete = true
        [[tasks]]
        id = "a"
        image = "shipyard/mpi:bookworm"
        command = "/opt/shipyard/bin/mpi-hello-openmpi"
        shm_size = "256m"
        infiniband = true
        gpus = "all"
        additional_docker_run_options = ["--cap-add=SYS_PTRACE"]
        [tasks.multi_instance]
        num_instances = 3
        pre_execution_command = "export X=1"
        [tasks.multi_instance.mpi]
        runtime = "openmpi"
        processes_per_node = 2
        [[tasks]]
        id = "b"
        image = "shipyard/mpi:bookworm"
        command = "/opt/shipyard/bin/mpi-hello-openmpi"
        [tasks.multi_instance]
        num_instances = "pool_current_dedicated"
        mpi = { runtime = "openmpi" }
        "#,
    )
    .unwrap()
}

fn bash_syntax_ok(command_line: &str) {
    // command lines are `/bin/bash -c '<script>'`: let sh split them, then bash -n the script.
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("set -- {command_line}; [ \"$1\" = /bin/bash ] && [ \"$2\" = -c ] && printf '%s' \"$3\" | bash -n"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bad script: {command_line}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn registered_under_docker() {
    let rt = registry::get("docker").unwrap();
    assert_eq!(rt.name(), "docker");
    let e = registry::get("dockr").unwrap_err().to_string();
    assert!(e.contains("docker"), "{e}");
}

#[test]
fn non_native_multi_instance_plan() {
    let plan = DockerRuntime::new().plan(&mi_job(), &pool(false)).unwrap();
    assert_eq!(plan.tasks.len(), 2);
    let a = &plan.tasks[0];
    let mis = a.multi_instance_settings.as_ref().unwrap();
    assert_eq!(mis.number_of_instances, Some(3));
    let coord = &mis.coordination_command_line;
    for want in [
        "run -d --net=host --name shipyard-job1-a",
        "--label shipyard.job=job1 --label shipyard.task=a --label shipyard.role=mpi-node",
        "--cap-add=SYS_PTRACE --shm-size=256m --ulimit=memlock=-1:-1 --device=/dev/infiniband/rdma_cm --device=/dev/infiniband/uverbs0 --gpus=all",
        "\"${shipyard_mounts[@]}\"",
        "\"$AZ_BATCH_NODE_SHARED_DIR/shipyard/ssh/job1:/root/.ssh:ro\"",
        "--env-file \"$AZ_BATCH_TASK_WORKING_DIR/.shipyard.env\"",
        "sshd -D -e -p 23",
    ] {
        assert!(coord.contains(want), "missing {want:?} in {coord}");
    }
    assert!(!coord.contains("--rm"), "{coord}");
    assert!(a.container_settings.is_none());
    assert!(a.command_line.contains("docker exec"), "{}", a.command_line);
    assert!(a.command_line.contains("shipyard-job1-a"));
    assert!(a.command_line.contains("export X=1"));
    assert!(a.command_line.contains("AZ_BATCH_HOST_LIST"));
    bash_syntax_ok(&a.command_line);
    bash_syntax_ok(coord);
    // the second task has its own container and resolves its instance count from the pool
    let b = &plan.tasks[1];
    assert_eq!(
        b.multi_instance_settings
            .as_ref()
            .unwrap()
            .number_of_instances,
        Some(3)
    );
    assert!(b.command_line.contains("shipyard-job1-b"));
    // job and pool needs
    assert_eq!(
        plan.job.on_all_tasks_complete,
        Some(OnAllTasksComplete::TerminateJob)
    );
    assert!(plan.job.needs_ssh_key);
    let prep = plan.job.job_preparation_task.as_ref().unwrap();
    bash_syntax_ok(&prep.command_line);
    assert!(prep
        .command_line
        .contains("docker pull shipyard/mpi:bookworm"));
    let rel = plan.job.job_release_task.as_ref().unwrap();
    bash_syntax_ok(&rel.command_line);
    assert!(rel.command_line.contains("label=shipyard.job=job1"));
    assert!(plan.pool.enable_inter_node_communication);
    assert_eq!(plan.pool.task_slots_per_node, Some(1));
    assert!(plan.pool.container_configuration.is_none());
}

#[test]
fn native_multi_instance_plan() {
    let plan = DockerRuntime::new().plan(&mi_job(), &pool(true)).unwrap();
    let a = &plan.tasks[0];
    let cs = a.container_settings.as_ref().unwrap();
    assert_eq!(cs.image_name, "shipyard/mpi:bookworm");
    let opts = cs.container_run_options.as_deref().unwrap();
    assert!(
        opts.starts_with("--rm --cap-add=SYS_PTRACE --shm-size=256m"),
        "{opts}"
    );
    assert!(!opts.contains("--net=host"));
    let mis = a.multi_instance_settings.as_ref().unwrap();
    bash_syntax_ok(&mis.coordination_command_line);
    // the job key pair is the host key (issue 13 #9), no per-container key any more
    assert!(mis
        .coordination_command_line
        .contains("-h /root/.ssh/id_ed25519"));
    assert!(!mis.coordination_command_line.contains("ssh-keygen"));
    assert!(mis
        .coordination_command_line
        .contains("/usr/sbin/sshd -p 23"));
    bash_syntax_ok(&a.command_line);
    assert!(!a.command_line.contains("docker"), "{}", a.command_line);
    let cc = plan.pool.container_configuration.as_ref().unwrap();
    assert_eq!(
        cc.container_image_names.as_deref(),
        Some(&["shipyard/mpi:bookworm".to_string()][..])
    );
    assert!(plan.job.needs_ssh_key);
    let prep = plan.job.job_preparation_task.as_ref().unwrap();
    assert!(!prep.command_line.contains("docker pull"));
}

#[test]
fn errors_name_fields() {
    let mut job = mi_job();
    job.tasks[0].multi_instance.as_mut().unwrap().num_instances =
        shipyard_runtime::NumInstances::Count(9);
    let e = DockerRuntime::new()
        .plan(&job, &pool(false))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("job.tasks[0].multi_instance.num_instances"),
        "{e}"
    );

    let mut job = mi_job();
    job.tasks[1]
        .multi_instance
        .as_mut()
        .unwrap()
        .mpi
        .as_mut()
        .unwrap()
        .runtime = MpiRuntime::MsMpi;
    let e = DockerRuntime::new()
        .plan(&job, &pool(false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("job.tasks[1].multi_instance.mpi.runtime"), "{e}");
}

#[test]
fn ssh_key_lands_in_the_preparation_task_only() {
    let mut plan = DockerRuntime::new().plan(&mi_job(), &pool(false)).unwrap();
    let key = shipyard_runtime::ssh::JobSshKey::generate("t").unwrap();
    plan.install_ssh_key(&key).unwrap();
    let prep = plan.job.job_preparation_task.as_ref().unwrap();
    let env = prep.environment_settings.as_ref().unwrap();
    assert!(env.iter().any(|e| e.name == "SHIPYARD_SSH_PRIVATE_KEY"
        && e.value.as_deref() == Some(key.private_openssh())));
    let tasks = serde_json::to_string(&plan.tasks).unwrap();
    assert!(!tasks.contains("PRIVATE KEY"));
    assert!(!prep.command_line.contains("PRIVATE KEY"));
}

/// Issue 13 #13: the coordination removes this job's finished node containers only.
#[test]
fn coordination_removes_only_this_jobs_node_containers() {
    let plan = DockerRuntime::new().plan(&mi_job(), &pool(false)).unwrap();
    let coord = first_coordination(&plan);
    assert!(
        coord.contains("ps -aq --filter label=shipyard.job=job1 --filter label=shipyard.role=mpi-node | xargs -r docker rm -f -v"),
        "{coord}"
    );
    assert_eq!(coord.matches(" ps -aq ").count(), 1, "{coord}");
}

/// Issue 13 #2: the preparation script unsets the key variables once the files are written,
/// before the pulls and the user's command (`env` here) run.
#[test]
fn preparation_unsets_the_key_before_pull_and_user_command() {
    let mut job = mi_job();
    job.job_preparation = Some(toml::from_str("command = \"env\"").unwrap());
    let mut plan = DockerRuntime::new().plan(&job, &pool(false)).unwrap();
    let key = shipyard_runtime::ssh::JobSshKey::generate("t").unwrap();
    plan.install_ssh_key(&key).unwrap();
    let prep = plan.job.job_preparation_task.as_ref().unwrap();
    // run the script for real, in a scratch node directory, with `docker` a stub
    let dir = ScratchDir::new("prep");
    // `image inspect` fails, so the script pulls; `pull` prints its environment
    dir.stub("docker", "[ \"$1\" = pull ] || exit 1\nenv\n");
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("exec {}", prep.command_line))
        .env("AZ_BATCH_NODE_SHARED_DIR", dir.path())
        .env("PATH", dir.path_first());
    for e in prep.environment_settings.iter().flatten() {
        cmd.env(&e.name, e.value.clone().unwrap_or_default());
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the stub and the user's `env` both ran, and neither printed the key
    assert!(
        stdout.matches("AZ_BATCH_NODE_SHARED_DIR=").count() >= 2,
        "{stdout}"
    );
    assert!(!stdout.contains("PRIVATE KEY"), "{stdout}");
    assert!(!stdout.contains("SHIPYARD_SSH_"), "{stdout}");
    let written = std::fs::read_to_string(dir.path().join("shipyard/ssh/job1/id_ed25519")).unwrap();
    assert_eq!(written.trim(), key.private_openssh().trim());
    // the same files SshFiles::new describes (issue 13 #8, #9)
    for (name, content) in shipyard_runtime::ssh::SshFiles::new(&key, "10.0.*").files() {
        let on_node =
            std::fs::read_to_string(dir.path().join("shipyard/ssh/job1").join(name)).unwrap();
        assert_eq!(on_node.trim_end(), content.trim_end(), "{name}");
    }
}

/// A scratch directory under the temp dir, removed on drop (no tempfile dependency here).
struct ScratchDir(std::path::PathBuf);
impl ScratchDir {
    fn new(what: &str) -> ScratchDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "shipyard-rtdocker-{what}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&p).unwrap();
        ScratchDir(p)
    }
    fn path(&self) -> &std::path::Path {
        &self.0
    }
    /// Writes an executable `#!/bin/sh` script `name` holding `body` into the directory.
    fn stub(&self, name: &str, body: &str) {
        let stub = self.0.join(name);
        std::fs::write(&stub, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    /// `PATH` with this directory first.
    fn path_first(&self) -> String {
        format!(
            "{}:{}",
            self.0.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

/// The coordination command line of the plan's first task.
fn first_coordination(plan: &JobPlan) -> &str {
    &plan.tasks[0]
        .multi_instance_settings
        .as_ref()
        .unwrap()
        .coordination_command_line
}
impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Issue 13 #3: a non-native container sees its task directory, the multi-instance shared
/// directory and the job preparation's directory (read-only), never the node root.
#[test]
fn non_native_containers_mount_only_their_own_directories() {
    let plan = DockerRuntime::new().plan(&mi_job(), &pool(false)).unwrap();
    let coord = first_coordination(&plan);
    assert!(!coord.contains("NODE_ROOT_DIR"), "{coord}");
    let script = super::non_native::mounts_script();
    let mounts = |shared: &str| {
        let out = std::process::Command::new("/bin/bash")
            .arg("-c")
            .arg(format!(
                "{script}; printf '%s\\n' \"${{shipyard_mounts[@]}}\""
            ))
            .env("AZ_BATCH_NODE_ROOT_DIR", "/b")
            .env("AZ_BATCH_TASK_DIR", "/b/w/j/t")
            .env("AZ_BATCH_TASK_SHARED_DIR", shared)
            .env("AZ_BATCH_JOB_PREP_WORKING_DIR", "/b/w/j/jobpreparation/wd")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(
        mounts("/b/w/j/shared"),
        "-v\n/b/w/j/t:/b/w/j/t\n-v\n/b/w/j/shared:/b/w/j/shared\n-v\n/b/w/j/jobpreparation/wd:/b/w/j/jobpreparation/wd:ro\n"
    );
    // a shared directory inside the task directory is mounted once
    assert_eq!(
        mounts("/b/w/j/t/shared"),
        "-v\n/b/w/j/t:/b/w/j/t\n-v\n/b/w/j/jobpreparation/wd:/b/w/j/jobpreparation/wd:ro\n"
    );
}

/// Runs `command_line` (`/bin/bash -c ...`) with a stub `docker` whose `run`/`exec` block like
/// the CLI does, sends SIGTERM to the task's shell once the stub runs, and returns the exit
/// code and the stub's log of calls.
fn terminate_task(command_line: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = ScratchDir::new("term");
    let log = dir.path().join("calls");
    dir.stub(
        "docker",
        &format!(
            "echo \"$*\" >> {log}\ncase \"$1\" in run|exec) exec sleep 30;; esac\n",
            log = log.display()
        ),
    );
    let mut child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec {command_line}"))
        .current_dir(dir.path())
        .env("PATH", dir.path_first())
        .env("AZ_BATCH_TASK_DIR", dir.path())
        .env("AZ_BATCH_TASK_WORKING_DIR", dir.path())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("run") || l.starts_with("exec"))
    {
        assert!(
            started.elapsed().as_secs() < 10,
            "the task never started docker"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(
        started.elapsed().as_secs() < 10,
        "the task did not stop on SIGTERM"
    );
    (
        status.code(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

/// Issue 13 #14: when Batch terminates a non-native task, its shell removes the container
/// (plain task) or the node container the `docker exec` runs in (multi-instance).
#[test]
fn terminated_non_native_tasks_stop_their_containers() {
    let job: JobSpec = toml::from_str(
        "id = \"j\"\n[[tasks]]\nid = \"t\"\nimage = \"busybox\"\ncommand = \"sleep 300\"\n",
    )
    .unwrap();
    let plan = DockerRuntime::new().plan(&job, &pool(false)).unwrap();
    let (code, log) = terminate_task(&plan.tasks[0].command_line, &[]);
    assert_eq!(code, Some(143), "{log}");
    assert_eq!(log.lines().last(), Some("rm -f -v shipyard-j-t"), "{log}");

    let plan = DockerRuntime::new().plan(&mi_job(), &pool(false)).unwrap();
    let (code, log) = terminate_task(&plan.tasks[0].command_line, &[]);
    assert_eq!(code, Some(143), "{log}");
    assert!(log.starts_with("exec "), "{log}");
    assert_eq!(
        log.lines().last(),
        Some("rm -f -v shipyard-job1-a"),
        "{log}"
    );
}

/// Issue 13 #8, #9, #10: sshd's policy is on its command line, it serves the job's host key on
/// the node's own address, and the launcher checks host keys against the job's known_hosts.
#[test]
fn sshd_policy_host_key_and_address_are_the_plans() {
    for native in [false, true] {
        let plan = DockerRuntime::new().plan(&mi_job(), &pool(native)).unwrap();
        let a = &plan.tasks[0];
        let coord = &a
            .multi_instance_settings
            .as_ref()
            .unwrap()
            .coordination_command_line;
        for want in [
            "-h /root/.ssh/id_ed25519 -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no -o PermitRootLogin=prohibit-password -o PubkeyAuthentication=yes -o AuthorizedKeysFile=/root/.ssh/authorized_keys -o \"ListenAddress=$SHIPYARD_SSHD_ADDRESS\"",
            "for shipyard_l in $(hostname -I 2>/dev/null)",
        ] {
            assert!(coord.contains(want), "native={native}: missing {want:?} in {coord}");
        }
        assert!(
            a.command_line.contains("StrictHostKeyChecking=yes"),
            "{}",
            a.command_line
        );
        assert!(a
            .command_line
            .contains("UserKnownHostsFile=/root/.ssh/known_hosts"));
        assert!(
            !a.command_line.contains("StrictHostKeyChecking=no"),
            "{}",
            a.command_line
        );
        let prep = &plan.job.job_preparation_task.as_ref().unwrap().command_line;
        assert!(!prep.contains("StrictHostKeyChecking no"), "{prep}");
    }
    // the address is this node's entry of AZ_BATCH_HOST_LIST, or nothing starts
    let pick = |hosts: &str, local: &str| {
        let dir = ScratchDir::new("addr");
        dir.stub("hostname", &format!("echo '{local}'\n"));
        let out = std::process::Command::new("/bin/bash")
            .arg("-c")
            .arg(format!(
                "{}; echo \"$SHIPYARD_SSHD_ADDRESS\"",
                node_address_script()
            ))
            .env("AZ_BATCH_HOST_LIST", hosts)
            .env("PATH", dir.path_first())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_eq!(
        pick("10.0.0.4,10.0.0.5", "172.17.0.1 10.0.0.5").1,
        "10.0.0.5"
    );
    let (code, _, err) = pick("10.0.0.4,10.0.0.5", "172.17.0.1 10.0.0.6");
    assert_eq!(code, Some(1));
    assert!(err.contains("no address of this node (172.17.0.1 10.0.0.6) is in AZ_BATCH_HOST_LIST (10.0.0.4,10.0.0.5)"), "{err}");
}

/// An MPI task on SR-IOV InfiniBand: its non-native container gets the node's partition key
/// file (read-only, that file only, when the node has it) and the launcher reads the key from
/// it; without InfiniBand there is neither.
#[test]
fn sriov_containers_see_the_partition_key_file() {
    let mut job = mi_job();
    if let Some(m) = job.tasks[0]
        .multi_instance
        .as_mut()
        .and_then(|mi| mi.mpi.as_mut())
    {
        m.rdma = Some(shipyard_runtime::vmsize::Rdma::SrIov);
    }
    let plan = DockerRuntime::new().plan(&job, &pool(false)).unwrap();
    let coord = first_coordination(&plan);
    assert!(coord.contains("/wd/UCX_IB_PKEY:ro"), "{coord}");
    let app = plan.tasks[0].command_line.as_str();
    assert!(app.contains("UCX_IB_PKEY="), "{app}");
    assert!(app.contains("-x UCX_IB_PKEY"), "{app}");
    bash_syntax_ok(coord);
    bash_syntax_ok(app);
    // task b (no InfiniBand): neither
    let b = plan.tasks[1]
        .multi_instance_settings
        .as_ref()
        .unwrap()
        .coordination_command_line
        .as_str();
    assert!(!b.contains("UCX_IB_PKEY"), "{b}");
    assert!(!plan.tasks[1].command_line.contains("UCX_IB_PKEY"));
    // the mount itself, with and without the file on the node
    let stmt = super::non_native::partition_key_mount(&job, &job.tasks[0]).unwrap();
    assert!(super::non_native::partition_key_mount(&job, &job.tasks[1]).is_none());
    let dir = std::env::temp_dir().join(format!("shipyard-pkey-mount-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("wd")).unwrap();
    let mounts = || {
        let out = std::process::Command::new("/bin/bash")
            .arg("-c")
            .arg(format!(
                "shipyard_mounts=(); {stmt}; printf '%s\\n' \"${{shipyard_mounts[@]}}\""
            ))
            .env("AZ_BATCH_NODE_STARTUP_DIR", &dir)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(mounts(), "\n");
    std::fs::write(dir.join("wd/UCX_IB_PKEY"), "UCX_IB_PKEY=0x0001\n").unwrap();
    let f = dir.join("wd/UCX_IB_PKEY").display().to_string();
    assert_eq!(mounts(), format!("-v\n{f}:{f}:ro\n"));
    std::fs::remove_dir_all(&dir).unwrap();
}
