#![allow(clippy::unwrap_used)]

use super::*;
use shipyard_runtime::registry;

fn pool() -> PoolFacts {
    PoolFacts {
        pool_id: "p".into(),
        native_containers: false,
        os: OsFamily::Linux,
        subnet_pattern: "10.0.*".into(),
        node_count: 2,
        slots_per_node: 1,
        cores_per_node: None,
    }
}

fn job() -> JobSpec {
    toml::from_str(
        r#"
        id = "sj"
        runtime = "singularity"
        [environment_variables]
        OMP_NUM_THREADS = "1"
        [[tasks]]
        id = "mpi"
        image = "docker://example/mpich:4"
        command = "/opt/app/solver --case 'a b'"
        gpus = "all"
        [tasks.multi_instance]
        num_instances = 2
        pre_execution_command = "module load mpi/mpich"
        [tasks.multi_instance.mpi]
        runtime = "mpich"
        processes_per_node = 2
        [[tasks]]
        id = "plain"
        image = "/shared/images/tool.sif"
        command = "tool --version"
        "#,
    )
    .unwrap()
}

fn bash_syntax_ok(command_line: &str) {
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
fn registered_as_singularity_and_apptainer() {
    assert_eq!(registry::get("singularity").unwrap().name(), "singularity");
    assert_eq!(registry::get("apptainer").unwrap().name(), "apptainer");
}

#[test]
fn mpi_task_wraps_exec_in_the_host_launcher() {
    let plan = SingularityRuntime::new(SingularityEngine::Singularity)
        .plan(&job(), &pool())
        .unwrap();
    let t = &plan.tasks[0];
    bash_syntax_ok(&t.command_line);
    let cl = &t.command_line;
    for want in [
        "command -v singularity",
        "module load mpi/mpich",
        "mpiexec",
        "singularity exec --pwd \"${AZ_BATCH_TASK_WORKING_DIR}\" --nv ./docker___example_mpich_4.sif /opt/app/solver --case",
        "-genv SINGULARITY_BIND \"${AZ_BATCH_NODE_ROOT_DIR}\":\"${AZ_BATCH_NODE_ROOT_DIR}\"",
        "-genv SINGULARITYENV_OMP_NUM_THREADS \"${OMP_NUM_THREADS}\"",
        "-wdir \"${AZ_BATCH_NODE_SHARED_DIR}\"/shipyard/images",
    ] {
        assert!(cl.contains(want), "missing {want:?} in {cl}");
    }
    let mis = t.multi_instance_settings.as_ref().unwrap();
    assert_eq!(mis.coordination_command_line, "/bin/true");
    assert_eq!(mis.number_of_instances, Some(2));
    assert!(plan.job.job_release_task.is_none(), "no cleanup");
    assert!(!plan.job.needs_ssh_key);
    let prep = plan.job.job_preparation_task.as_ref().unwrap();
    bash_syntax_ok(&prep.command_line);
    assert!(prep.command_line.contains("singularity pull --force"));
    assert!(prep
        .command_line
        .contains("test -e /shared/images/tool.sif"));
    // the plain task runs exec directly, apptainer flavour uses its own names
    let plan = SingularityRuntime::new(SingularityEngine::Apptainer)
        .plan(&job(), &pool())
        .unwrap();
    let p = &plan.tasks[1].command_line;
    bash_syntax_ok(p);
    assert!(
        p.contains("APPTAINERENV_OMP_NUM_THREADS=\"$OMP_NUM_THREADS\" APPTAINER_BIND="),
        "{p}"
    );
    assert!(
        p.contains(":$AZ_BATCH_NODE_ROOT_DIR\" exec apptainer exec --pwd"),
        "{p}"
    );
    assert!(
        p.ends_with("/shared/images/tool.sif tool --version'"),
        "{p}"
    );
}

#[test]
fn native_and_windows_pools_are_refused_with_the_field() {
    let mut p = pool();
    p.native_containers = true;
    let e = SingularityRuntime::new(SingularityEngine::Singularity)
        .plan(&job(), &p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pool.native_containers"), "{e}");
    let mut p = pool();
    p.os = OsFamily::Windows;
    let e = SingularityRuntime::new(SingularityEngine::Apptainer)
        .plan(&job(), &p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pool.os"), "{e}");
}

#[test]
fn missing_binary_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = check_binary_in("apptainer", dir.path().as_os_str())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`apptainer` not found"), "{e}");
    assert!(e.contains(&dir.path().display().to_string()), "{e}");
    // present and executable
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.path().join("apptainer");
    std::fs::write(&bin, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        check_binary_in("apptainer", dir.path().as_os_str()).unwrap(),
        bin
    );
    let e = check_binary_in("/nonexistent/singularity", dir.path().as_os_str())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`/nonexistent/singularity` not found at /nonexistent/singularity"),
        "{e}"
    );
}

#[test]
fn absent_binary_fails_the_command_line_naming_it() {
    let plan = SingularityRuntime::new(SingularityEngine::Singularity)
        .binary("shipyard-no-such-singularity")
        .plan(&job(), &pool())
        .unwrap();
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec {}", plan.tasks[1].command_line))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shipyard: shipyard-no-such-singularity not found on"),
        "{err}"
    );
}

#[test]
fn plain_task_line_runs_with_a_stand_in_binary() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("singularity");
    std::fs::write(
        &bin,
        "#!/bin/sh\necho \"args:$*\"\necho \"env:$SINGULARITYENV_OMP_NUM_THREADS bind:$SINGULARITY_BIND\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let plan = SingularityRuntime::new(SingularityEngine::Singularity)
        .plan(&job(), &pool())
        .unwrap();
    let t = &plan.tasks[1];
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("exec {}", t.command_line))
        .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
        .env("AZ_BATCH_NODE_ROOT_DIR", "/mnt/batch/tasks")
        .env("AZ_BATCH_TASK_WORKING_DIR", "/mnt/batch/tasks/wd");
    for e in t.environment_settings.iter().flatten() {
        cmd.env(&e.name, e.value.as_deref().unwrap_or_default());
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .contains("args:exec --pwd /mnt/batch/tasks/wd /shared/images/tool.sif tool --version"),
        "{stdout}"
    );
    assert!(
        stdout.contains("env:1 bind:/mnt/batch/tasks:/mnt/batch/tasks"),
        "{stdout}"
    );
}

#[test]
fn cleanenv_is_refused_for_mpi_tasks() {
    let mut j = job();
    j.tasks[0].additional_singularity_options = vec!["--nv".into(), "--cleanenv".into()];
    let e = SingularityRuntime::new(SingularityEngine::Singularity)
        .plan(&j, &pool())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("job.tasks[0].additional_singularity_options[1]"),
        "{e}"
    );
    assert!(e.contains("silent singleton"), "{e}");
}

#[test]
fn singularity_execution_run_elevated_and_factories() {
    let mut j = job();
    j.tasks[1].singularity_execution = Some(shipyard_runtime::domain::SingularityExecution {
        cmd: SingularityCmd::Run,
        elevated: Some(true),
    });
    j.tasks[1].task_factory = Some(shipyard_runtime::factory::TaskFactory::Repeat(2));
    j.tasks[1].id = None;
    let rt = SingularityRuntime::new(SingularityEngine::Singularity);
    let plan = rt.plan(&j, &pool()).unwrap();
    // the factory expanded into two tasks, numbered by position
    let ids: Vec<&str> = plan.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["mpi", "task-00001", "task-00002"]);
    let plain = &plan.tasks[1];
    assert!(
        plain.command_line.contains("singularity run"),
        "{}",
        plain.command_line
    );
    let v = serde_json::to_value(plain).unwrap();
    assert_eq!(v["userIdentity"]["autoUser"]["elevationLevel"], "admin");
    let v = serde_json::to_value(&plan.tasks[0]).unwrap();
    assert_eq!(v["userIdentity"]["autoUser"]["elevationLevel"], "nonadmin");
    // `run` cannot start MPI ranks: the error names the field
    j.tasks[0].singularity_execution = Some(shipyard_runtime::domain::SingularityExecution {
        cmd: SingularityCmd::Run,
        elevated: None,
    });
    let e = rt.plan(&j, &pool()).unwrap_err().to_string();
    assert!(e.contains("job.tasks[0].singularity_execution.cmd"), "{e}");
}
