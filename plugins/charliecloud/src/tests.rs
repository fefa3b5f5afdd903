use super::*;

fn pool(nodes: u32) -> PoolFacts {
    PoolFacts {
        pool_id: "p".into(),
        native_containers: false,
        os: OsFamily::Linux,
        subnet_pattern: "10.0.0.*".into(),
        node_count: nodes,
        slots_per_node: 1,
        cores_per_node: None,
    }
}

fn job(text: &str) -> JobSpec {
    toml::from_str(text).unwrap()
}

const MPI_JOB: &str = r#"
id = "cc"
runtime = "charliecloud"
environment_variables = { SHIPYARD_VALUE = "a b" }
[[tasks]]
id = "mpi"
image = "https://example.org/images/mpi.tar.gz"
command = "/opt/shipyard/bin/mpi-hello-openmpi"
[tasks.multi_instance]
num_instances = 2
[tasks.multi_instance.mpi]
runtime = "openmpi"
processes_per_node = 2
"#;

#[test]
fn mpi_task_wraps_ch_run_under_the_host_launcher() {
    let plan = CharliecloudRuntime::default()
        .plan(&job(MPI_JOB), &pool(2))
        .unwrap();
    assert_eq!(plan.runtime, "charliecloud");
    assert!(plan.pool.enable_inter_node_communication);
    let cl = &plan.tasks[0].command_line;
    assert!(cl.starts_with("/bin/bash -c "), "{cl}");
    assert!(cl.contains("command -v ch-run"), "{cl}");
    assert!(cl.contains("charliecloud-runtime"), "{cl}");
    assert!(cl.contains("mpirun"), "{cl}");
    assert!(cl.contains("--join-ct="), "{cl}");
    for forwarded in [
        "-x USER",
        "-x AZ_BATCH_NODE_ROOT_DIR",
        "-x AZ_BATCH_TASK_WORKING_DIR",
        "-x AZ_BATCH_NODE_SHARED_DIR",
        "-x SHIPYARD_VALUE",
    ] {
        assert!(cl.contains(forwarded), "{forwarded} in {cl}");
    }
    let name = image::unpacked_name("https://example.org/images/mpi.tar.gz");
    assert!(
        cl.contains(&format!("shipyard/charliecloud/{name}")),
        "{cl}"
    );
    let mi = plan.tasks[0].multi_instance_settings.as_ref().unwrap();
    assert_eq!(mi.number_of_instances, Some(2));
    // the preparation task downloads the tarball as a resource file and unpacks it
    let prep = plan.job.job_preparation_task.as_ref().unwrap();
    let files = prep.resource_files.as_ref().unwrap();
    assert_eq!(
        files[0].http_url.as_deref(),
        Some("https://example.org/images/mpi.tar.gz")
    );
    assert_eq!(
        files[0].file_path.as_deref(),
        Some(format!("shipyard-charliecloud/{name}.tar.gz").as_str())
    );
    assert!(
        prep.command_line.contains("tar -xf"),
        "{}",
        prep.command_line
    );
    assert_eq!(prep.wait_for_success, Some(true));
}

#[test]
fn image_sources_are_classified() {
    use image::ImageSource as S;
    assert_eq!(S::of("/srv/img"), S::Directory("/srv/img"));
    assert_eq!(
        S::of("/srv/img.tar.gz"),
        S::Tarball {
            source: "/srv/img.tar.gz",
            remote: false
        }
    );
    assert_eq!(
        S::of("https://x/y.tgz?sig=1"),
        S::Tarball {
            source: "https://x/y.tgz?sig=1",
            remote: true
        }
    );
    assert_eq!(
        S::of("docker://shipyard/mpi:bookworm"),
        S::Registry("shipyard/mpi:bookworm")
    );
    assert_eq!(
        S::of("shipyard/mpi:bookworm"),
        S::Registry("shipyard/mpi:bookworm")
    );
    assert_eq!(S::of("/srv/img").run_path("/srv/img"), "/srv/img");
    assert_ne!(image::unpacked_name("a/b"), image::unpacked_name("a_b"));
    assert!(image::unpacked_name("a/b").starts_with("a_b-"));
}

#[test]
fn refused_inputs_name_their_field() {
    let mut j = job(MPI_JOB);
    j.tasks[0]
        .multi_instance
        .as_mut()
        .unwrap()
        .mpi
        .as_mut()
        .unwrap()
        .runtime = MpiRuntime::MsMpi;
    let e = CharliecloudRuntime::default()
        .plan(&j, &pool(2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("job.tasks[0].multi_instance.mpi.runtime"), "{e}");
    let mut j = job(MPI_JOB);
    j.tasks[0].additional_singularity_options = vec!["--nv".into()];
    let e = CharliecloudRuntime::default()
        .plan(&j, &pool(2))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("job.tasks[0].additional_singularity_options"),
        "{e}"
    );
    let mut p = pool(2);
    p.native_containers = true;
    let e = CharliecloudRuntime::default()
        .plan(&job(MPI_JOB), &p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pool.native_containers"), "{e}");
    let e = CharliecloudRuntime::default()
        .plan(&job(MPI_JOB), &pool(1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("job.tasks[0].multi_instance.num_instances"),
        "{e}"
    );
}

#[test]
fn rank_argv_round_trips_through_the_launcher_word_splitting() {
    let ch = ChRun {
        binary: "ch-run".into(),
        image: "$AZ_BATCH_NODE_SHARED_DIR/shipyard/charliecloud/x".into(),
        join: true,
        cd_task_dir: true,
        set_env: vec!["A".into()],
        options: vec![],
    };
    let argv = ch.rank_argv(&["/app".into(), "it's".into()]);
    assert_eq!(
        shipyard_runtime::shell::split_plain(&join(&argv)),
        Some(argv.clone())
    );
    assert_eq!(
        ch.forwarded(),
        [
            "USER",
            "AZ_BATCH_NODE_ROOT_DIR",
            "AZ_BATCH_TASK_WORKING_DIR",
            "AZ_BATCH_NODE_SHARED_DIR",
            "A"
        ]
    );
}

#[test]
fn plan_survives_the_plugin_json_boundary() {
    let plan = CharliecloudRuntime::default()
        .plan(&job(MPI_JOB), &pool(2))
        .unwrap();
    let back: JobPlan = serde_json::from_value(serde_json::to_value(&plan).unwrap()).unwrap();
    assert_eq!(back, plan);
}
