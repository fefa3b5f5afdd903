//! Golden tests: each seed scenario rendered to the exact Batch `PoolAddParameter`,
//! `JobAddParameter` and `TaskAddParameter` JSON, compared with the checked-in files under
//! `tests/golden/`, and validated against the Batch Swagger spec (strict mode).
//!
//! Regenerate after an intended change with `SHIPYARD_UPDATE_GOLDEN=1 cargo test -p
//! shipyard-runtime-docker --test golden`, then review the diff.

use std::path::PathBuf;

use serde_json::{json, Value};
use shipyard_batch_spec::schema::Spec;
use shipyard_runtime::batch::{ImageReference, PoolAddParameter, VirtualMachineConfiguration};
use shipyard_runtime::{ContainerRuntime, JobSpec, OsFamily, PoolFacts, TaskSpec};
use shipyard_runtime_docker::DockerRuntime;
use shipyard_runtime_singularity::{SingularityEngine, SingularityRuntime};

fn pool_facts(id: &str, native: bool, os: OsFamily, nodes: u32) -> PoolFacts {
    PoolFacts {
        pool_id: id.into(),
        native_containers: native,
        os,
        subnet_pattern: "10.0.*".into(),
        node_count: nodes,
        slots_per_node: 1,
        cores_per_node: None,
    }
}

/// The user's pool definition before the plan's needs are merged in.
fn base_pool(facts: &PoolFacts, vm_size: &str) -> PoolAddParameter {
    let (image, sku) = match (facts.os, facts.native_containers) {
        (OsFamily::Windows, _) => (
            ImageReference::marketplace(
                "microsoftwindowsserver",
                "windowsserver",
                "2022-datacenter-core-smalldisk",
                "latest",
            ),
            "batch.node.windows amd64",
        ),
        (OsFamily::Linux, true) => (
            ImageReference::marketplace("microsoft-dsvm", "ubuntu-hpc", "2204", "latest"),
            "batch.node.ubuntu 22.04",
        ),
        (OsFamily::Linux, false) => (
            ImageReference::marketplace(
                "canonical",
                "0001-com-ubuntu-server-jammy",
                "22_04-lts",
                "latest",
            ),
            "batch.node.ubuntu 22.04",
        ),
    };
    PoolAddParameter {
        target_dedicated_nodes: Some(facts.node_count as i32),
        virtual_machine_configuration: Some(VirtualMachineConfiguration::new(image, sku)),
        ..PoolAddParameter::new(facts.pool_id.clone(), vm_size)
    }
}

fn render(rt: &dyn ContainerRuntime, job: &JobSpec, facts: &PoolFacts, vm_size: &str) -> Value {
    let plan = rt.plan(job, facts).unwrap_or_else(|e| panic!("plan: {e}"));
    let mut pool = base_pool(facts, vm_size);
    plan.apply_to_pool(&mut pool).expect("apply pool needs");
    let job_add = plan.job_add_parameter(&job.id, &facts.pool_id);
    let spec = Spec::shared();
    let check = |def: &str, v: &Value| {
        if let Err(violations) = spec.validate(def, v) {
            let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
            panic!(
                "{def} does not match the Batch spec:\n{}\n{v:#}",
                list.join("\n")
            );
        }
    };
    let pool_v = serde_json::to_value(&pool).expect("pool json");
    check("PoolAddParameter", &pool_v);
    let job_v = serde_json::to_value(&job_add).expect("job json");
    check("JobAddParameter", &job_v);
    let tasks: Vec<Value> = plan
        .tasks
        .iter()
        .map(|t| serde_json::to_value(t).expect("task json"))
        .collect();
    for t in &tasks {
        check("TaskAddParameter", t);
    }
    // Task_AddCollection takes at most 100 tasks per call: the bag fits one call.
    check("TaskAddCollectionParameter", &json!({ "value": tasks }));
    json!({ "pool": pool_v, "job": job_v, "tasks": tasks })
}

fn golden(name: &str, actual: &Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    let text = format!(
        "{}\n",
        serde_json::to_string_pretty(actual).expect("pretty")
    );
    if std::env::var_os("SHIPYARD_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (SHIPYARD_UPDATE_GOLDEN=1 creates it)",
            path.display()
        )
    });
    let expected: Value = serde_json::from_str(&expected).expect("golden json");
    pretty_assertions::assert_eq!(&expected, actual, "{} differs", path.display());
}

fn job(toml_text: &str) -> JobSpec {
    let job: JobSpec = toml::from_str(toml_text).expect("job toml");
    job.validate().expect("valid job");
    job
}

#[test]
fn docker_non_native_openmpi_3_nodes() {
    let job = job(r#"
        id = "openmpi-3"
        auto_complete = true
        shm_size = "256m"
        [environment_variables]
        OMP_NUM_THREADS = "1"
        [[tasks]]
        id = "hello"
        image = "shipyard/mpi:bookworm"
        command = "/opt/shipyard/bin/mpi-hello-openmpi"
        max_task_retries = 1
        max_wall_time = "PT1H"
        [tasks.multi_instance]
        num_instances = 3
        pre_execution_command = "ulimit -s unlimited"
        resource_files = [{ http_url = "https://example.blob.core.windows.net/in/input.dat?sv=x", file_path = "input.dat" }]
        [tasks.multi_instance.mpi]
        runtime = "openmpi"
        processes_per_node = 2
        options = ["--mca", "btl_tcp_if_include", "eth0"]
        "#);
    let facts = pool_facts("mpi-openmpi", false, OsFamily::Linux, 3);
    golden(
        "docker_non_native_openmpi_3_nodes",
        &render(&DockerRuntime::new(), &job, &facts, "standard_d4s_v5"),
    );
}

#[test]
fn docker_native_intelmpi() {
    let job = job(r#"
        id = "intelmpi-native"
        [[tasks]]
        id = "impi"
        image = "shipyard/mpi:bookworm"
        command = "/opt/shipyard/bin/mpi-hello-impi"
        shm_size = "1g"
        infiniband = true
        environment_variables = { I_MPI_DEBUG = "5" }
        [tasks.multi_instance]
        num_instances = 2
        pre_execution_command = "source /opt/intel/mpi/env/vars.sh"
        [tasks.multi_instance.mpi]
        runtime = "intelmpi"
        processes_per_node = "nproc"
        executable_path = "/opt/intel/mpi/bin/mpiexec.hydra"
        "#);
    let facts = pool_facts("mpi-native", true, OsFamily::Linux, 2);
    golden(
        "docker_native_intelmpi",
        &render(&DockerRuntime::new(), &job, &facts, "standard_hb120rs_v3"),
    );
}

#[test]
fn singularity_mpich() {
    let job = job(r#"
        id = "mpich-singularity"
        runtime = "singularity"
        [[tasks]]
        id = "solver"
        image = "docker://shipyard/mpi:bookworm"
        command = "/opt/shipyard/bin/mpi-hello-mpich"
        additional_singularity_options = ["--writable-tmpfs"]
        environment_variables = { HELLO_EXPECT_SIZE = "4" }
        [tasks.multi_instance]
        num_instances = 2
        [tasks.multi_instance.mpi]
        runtime = "mpich"
        processes_per_node = 2
        "#);
    let facts = pool_facts("mpi-singularity", false, OsFamily::Linux, 2);
    let rt = SingularityRuntime::new(SingularityEngine::Singularity);
    golden(
        "singularity_mpich",
        &render(&rt, &job, &facts, "standard_d4s_v5"),
    );
}

/// A two-node MS-MPI job with one task running `command`, one rank per node.
fn msmpi_job(id: &str, task: &str, image: &str, command: &str) -> JobSpec {
    let mut job = job(&format!(
        r#"
        id = "{id}"
        auto_complete = true
        [[tasks]]
        id = "{task}"
        image = "{image}"
        command = "placeholder"
        [tasks.multi_instance]
        num_instances = 2
        [tasks.multi_instance.mpi]
        runtime = "msmpi"
        processes_per_node = 1
        "#
    ));
    job.tasks[0].command = Some(command.to_string());
    job
}

#[test]
fn msmpi_windows_pool() {
    let job = msmpi_job(
        "msmpi-win",
        "msmpi",
        "mcr.microsoft.com/windows/servercore:ltsc2022",
        "MPIHelloWorld.exe",
    );
    let facts = pool_facts("mpi-windows", true, OsFamily::Windows, 2);
    golden(
        "msmpi_windows_pool",
        &render(&DockerRuntime::new(), &job, &facts, "standard_d2s_v3"),
    );
}

#[test]
fn bag_of_100_container_tasks() {
    let mut job: JobSpec = toml::from_str(
        "id = \"bag-100\"\nauto_complete = true\nenvironment_variables = { SHARDS = \"100\" }\n",
    )
    .expect("job toml");
    job.tasks = (0..100)
        .map(|i| {
            let mut t = TaskSpec::new("python:3.12-slim", format!("python3 -c 'print({i} * {i})'"));
            t.environment_variables
                .insert("SHARD".into(), i.to_string());
            t
        })
        .collect();
    job.validate().expect("valid");
    let facts = pool_facts("bag", true, OsFamily::Linux, 4);
    let out = render(&DockerRuntime::new(), &job, &facts, "standard_d2s_v5");
    assert_eq!(out["tasks"].as_array().map(Vec::len), Some(100));
    golden("bag_of_100_container_tasks", &out);
}

/// Issue 13 #22: a Windows path keeps its backslashes, and the line has the form Microsoft
/// documents for MS-MPI multi-instance tasks (learn.microsoft.com/azure/batch/batch-mpi).
#[test]
fn msmpi_windows_path_keeps_its_backslashes() {
    // the task of examples/windows-msmpi.toml
    let job = msmpi_job(
        "hello-msmpi",
        "hello",
        "myregistry.azurecr.io/msmpi-hello:ltsc2022",
        r"C:\app\mpi-hello.exe",
    );
    let facts = pool_facts("win-msmpi", true, OsFamily::Windows, 2);
    let out = render(&DockerRuntime::new(), &job, &facts, "standard_d4s_v5");
    assert_eq!(
        out["tasks"][0]["commandLine"],
        r#"cmd /c ""%MSMPI_BIN%\mpiexec.exe"" -c 1 -wdir %AZ_BATCH_TASK_SHARED_DIR% C:\app\mpi-hello.exe"#
    );
    assert_eq!(
        out["tasks"][0]["multiInstanceSettings"]["coordinationCommandLine"],
        r#"cmd /c start cmd /c ""%MSMPI_BIN%\smpd.exe"" -d"#
    );
}
