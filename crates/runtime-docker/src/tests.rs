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
        "-v \"$AZ_BATCH_NODE_ROOT_DIR:$AZ_BATCH_NODE_ROOT_DIR\"",
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
    assert!(mis
        .coordination_command_line
        .contains("ssh-keygen -q -t ed25519"));
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
