//! Recipe-shaped fixtures translate into TOML that parses, with the expected warnings.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pretty_assertions::assert_eq;
use shipyard_bs_config::{
    translate_dir, translate_sources, BsConfigError, SourceFile, TranslateOptions, Translation,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn translate(name: &str) -> Result<(Translation, toml::Table)> {
    let t = translate_dir(&fixture(name), TranslateOptions::default())
        .with_context(|| format!("fixture {name}"))?;
    let text = t.to_toml_string();
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("fixture {name} TOML:\n{text}"))?;
    Ok((t, table))
}

fn warning_fields(t: &Translation) -> Vec<String> {
    t.warnings.iter().map(|w| w.field.clone()).collect()
}

/// The jobs whose keys shipyard's domain already knows deserialize into `JobSpec`.
fn jobs_load_in_domain(table: &toml::Table) -> Result<usize> {
    let mut loaded = 0;
    let jobs = table
        .get("job_specifications")
        .and_then(|j| j.as_array())
        .cloned()
        .unwrap_or_default();
    for job in jobs {
        let spec: shipyard_runtime::JobSpec = job.try_into().context("JobSpec")?;
        spec.validate().context("validate")?;
        loaded += 1;
    }
    Ok(loaded)
}

/// Every top-level section of a translation is one shipyard's TOML loader reads.
fn assert_only_loader_sections(table: &toml::Table) {
    for key in table.keys() {
        assert!(
            [
                "credentials",
                "pool_specification",
                "job_specifications",
                "local"
            ]
            .contains(&key.as_str()),
            "section `{key}` is not read by shipyard"
        );
    }
}

#[test]
fn mpibench_openmpi() -> Result<()> {
    let (t, table) = translate("mpibench-openmpi")?;
    let text = t.to_toml_string();
    assert!(text.contains("account_name = \"shipyardtest\""), "{text}");
    assert!(
        text.contains("# derived from account_service_url"),
        "{text}"
    );
    assert!(text.contains("node_agent_sku_id = \"batch.node.ubuntu 22.04\""));
    assert!(text.contains("vm_count = 2\n"), "{text}");
    assert!(text.contains("runtime = \"docker\""));
    assert!(text.contains("image = \"vincentlabo/mpibench:openmpi\""));
    assert!(text.contains("# Batch Shipyard splits each entry into words"));
    assert!(text.contains("processes_per_node = \"nproc\""));
    // secrets are not copied without include_secrets
    for secret in [
        "c2VjcmV0LWtleS1ub3QtcmVhbA==",
        "c3RvcmFnZS1zZWNyZXQtbm90LXJlYWw=",
        "registry-password-not-real",
    ] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    assert!(text.contains("SHIPYARD_BATCH_ACCOUNT_KEY"), "{text}");
    assert_eq!(
        warning_fields(&t),
        ["batch_shipyard.storage_account_settings"]
    );
    // registry logins are read by shipyard's loader; global_resources leaves no TOML section
    assert!(
        text.contains("[credentials.docker_registry.\"myregistry.azurecr.io\"]")
            && text.contains("username = \"puller\""),
        "{text}"
    );
    assert_only_loader_sections(&table);
    assert_eq!(jobs_load_in_domain(&table)?, 1);
    // spans lead back to the YAML
    let loc = t
        .yaml_location("job_specifications[0].tasks[0].multi_instance.num_instances")
        .context("span")?;
    assert_eq!(
        (
            loc.file.file_name().and_then(|f| f.to_str()),
            loc.line,
            loc.column
        ),
        (Some("jobs.yaml"), 7, 22)
    );
    let with = translate_dir(
        &fixture("mpibench-openmpi"),
        TranslateOptions {
            include_secrets: true,
        },
    )?;
    assert!(with
        .to_toml_string()
        .contains("account_key = \"c2VjcmV0LWtleS1ub3QtcmVhbA==\""));
    Ok(())
}

#[test]
fn mpibench_mpich_low_priority_is_mapped() -> Result<()> {
    let (t, table) = translate("mpibench-mpich")?;
    let text = t.to_toml_string();
    assert!(
        text.contains("vm_count = { dedicated = 0, low_priority = 2 }"),
        "{text}"
    );
    assert!(text.contains("task_slots_per_node = 1"));
    assert!(text.contains("num_instances = \"pool_current_low_priority\""));
    assert!(
        text.contains("additional_docker_run_options = [\"-l\", \"app=mpibench\"]"),
        "{text}"
    );
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert!(table.contains_key("pool_specification"));
    Ok(())
}

#[test]
fn mpibench_intelmpi_aad_and_monitoring_warning() -> Result<()> {
    let (t, table) = translate("mpibench-intelmpi")?;
    let text = t.to_toml_string();
    assert!(
        text.contains("tenant_id = \"00000000-1111-2222-3333-444444444444\""),
        "{text}"
    );
    assert!(text.contains("client_id = \"55555555-6666-7777-8888-999999999999\""));
    assert!(!text.contains("aad-client-secret-not-real"));
    assert!(text.contains("SHIPYARD_AAD_CLIENT_SECRET"));
    assert!(text.contains("native = true"));
    assert_eq!(warning_fields(&t), ["pool_specification.prometheus"]);
    assert_eq!(jobs_load_in_domain(&table)?, 1);
    Ok(())
}

#[test]
fn hpcg_intelmpi_ofa_on_a_retired_image() -> Result<()> {
    let (t, table) = translate("hpcg-intelmpi-ofa")?;
    let text = t.to_toml_string();
    assert!(text.contains("runtime = \"intelmpi-ofa\""));
    assert!(text.contains("node_agent_sku_id = \"batch.node.centos 7\""));
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    let w = &t.warnings[0];
    assert_eq!(
        w.field,
        "pool_specification.vm_configuration.platform_image"
    );
    assert!(
        w.message.contains("microsoft-dsvm/ubuntu-hpc/2204"),
        "{}",
        w.message
    );
    assert_eq!(w.location.line, 5);
    assert_eq!(jobs_load_in_domain(&table)?, 1);
    Ok(())
}

#[test]
fn hplinpack_wall_times_and_scalar_environment() -> Result<()> {
    let (t, table) = translate("hplinpack-intelmpi")?;
    let text = t.to_toml_string();
    assert!(text.contains("max_wall_time = \"PT2H\""), "{text}");
    assert!(text.contains("# Batch Shipyard: 02:00:00"));
    assert!(text.contains("max_wall_time = \"P1D\""));
    assert!(text.contains("resize_timeout = \"PT20M\""));
    assert!(text.contains("OMP_NUM_THREADS = \"15\""), "{text}");
    assert!(text.contains("MKL_DEBUG = \"True\""));
    assert!(text.contains("PREP_LEVEL = \"2\""));
    assert!(text.contains("# was a YAML number/boolean"));
    let job = &table["job_specifications"][0];
    assert_eq!(
        job["environment_variables"]["RUN_LABEL"].as_str(),
        Some("hpl")
    );
    Ok(())
}

#[test]
fn openfoam_options_keep_their_vars() -> Result<()> {
    let (_, table) = translate("openfoam-intelmpi")?;
    let task = &table["job_specifications"][0]["tasks"][0];
    let options: Vec<&str> = task["multi_instance"]["mpi"]["options"]
        .as_array()
        .context("options")?
        .iter()
        .filter_map(|o| o.as_str())
        .collect();
    assert_eq!(
        options,
        ["-np $np", "-ppn $ppn", "-hosts $AZ_BATCH_HOST_LIST"]
    );
    assert_eq!(task["default_working_dir"].as_str(), Some("batch"));
    assert_eq!(
        task["resource_files"][0]["http_url"].as_str(),
        Some("https://example.invalid/recipes/OpenFOAM/set_up_sample.sh")
    );
    assert_eq!(
        task["output_data"]["azure_storage"][0]["condition"].as_str(),
        Some("tasksuccess")
    );
    assert_eq!(jobs_load_in_domain(&table)?, 1);
    Ok(())
}

/// Every fixture's translation has only sections shipyard reads, and every job loads into the
/// domain (nothing is left for a later phase).
#[test]
fn every_fixture_loads_in_the_domain() -> Result<()> {
    let mut jobs = 0;
    for entry in std::fs::read_dir(fixture(""))? {
        let name = entry?.file_name().to_string_lossy().to_string();
        let (_, table) = translate(&name)?;
        assert_only_loader_sections(&table);
        jobs += jobs_load_in_domain(&table).with_context(|| name.clone())?;
    }
    assert!(jobs >= 8, "only {jobs} jobs loaded");
    Ok(())
}

#[test]
fn osu_mvapich_singularity() -> Result<()> {
    let (t, table) = translate("osu-mvapich-singularity")?;
    let job = &table["job_specifications"][0];
    assert_eq!(job["runtime"].as_str(), Some("singularity"));
    assert_eq!(
        job["tasks"][0]["image"].as_str(),
        Some("library://alfpark/mvapich/mvapich:2.3.2")
    );
    assert_eq!(
        job["tasks"][0]["multi_instance"]["mpi"]["runtime"].as_str(),
        Some("mvapich")
    );
    assert_eq!(
        job["tasks"][0]["environment_variables"]["MV2_ENABLE_AFFINITY"].as_str(),
        Some("0")
    );
    assert!(t.warnings.is_empty());
    Ok(())
}

#[test]
fn json_sweep_with_task_factories_and_merge_task() -> Result<()> {
    let (t, table) = translate("sweep-json")?;
    let job = &table["job_specifications"][0];
    let tasks = job["tasks"].as_array().context("tasks")?;
    assert_eq!(tasks.len(), 3);
    let factory: shipyard_runtime::factory::TaskFactory =
        tasks[0]["task_factory"].clone().try_into()?;
    let cmd = tasks[0]["command"].as_str().context("command")?;
    assert_eq!(factory.expand(cmd)?.len(), 6);
    let random: shipyard_runtime::factory::TaskFactory =
        tasks[1]["task_factory"].clone().try_into()?;
    assert_eq!(
        random.expand(tasks[1]["command"].as_str().context("command")?)?[0],
        "/bin/sh -c \"sleep 81\""
    );
    assert_eq!(tasks[2]["task_factory"]["repeat"].as_integer(), Some(3));
    assert_eq!(job["merge_task"]["image"].as_str(), Some("alpine:3"));
    let loc = t
        .yaml_location("job_specifications[0].tasks[1].task_factory")
        .context("span")?;
    assert_eq!(
        loc.file.file_name().and_then(|f| f.to_str()),
        Some("jobs.json")
    );
    assert_eq!(loc.line, 17);
    // mapped onto the domain: the job loads and expands (6 + 5 + 3 + the merge task)
    assert_only_loader_sections(&table);
    let spec: shipyard_runtime::JobSpec = job.clone().try_into()?;
    spec.validate()?;
    let x = spec.expanded()?;
    assert_eq!(x.tasks.len(), 15);
    assert_eq!(x.tasks[14].depends_on.len(), 14);
    assert_eq!(
        x.tasks[6].command.as_deref(),
        Some("/bin/sh -c \"sleep 81\"")
    );
    Ok(())
}

fn one(name: &str, text: &str) -> Result<Translation, BsConfigError> {
    translate_sources(
        vec![SourceFile::new(name, text)],
        TranslateOptions::default(),
    )
}

#[test]
fn unknown_key_names_file_line_col_and_a_hint() {
    let e = one(
        "jobs.yaml",
        "job_specifications:\n- id: a\n  tasks:\n  - docker_image: x\n    multi_instance:\n      nmu_instances: 2\n",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "jobs.yaml:6:7: `job_specifications[0].tasks[0].multi_instance.nmu_instances`: unknown key `nmu_instances` (did you mean `num_instances`?)"
    );
    assert_eq!(
        e.snippet(),
        "  |\n6 |       nmu_instances: 2\n  |       ^^^^^^^^^^^^^"
    );
    let e = one("pool.yaml", "pool_specification:\n  id: p\n  vm_sise: x\n").unwrap_err();
    assert!(e.to_string().contains("(did you mean `vm_size`?)"), "{e}");
    let e = one("jobs.yaml", "job_specifications:\n- id: a\n  tasks:\n  - docker_image: x\n    multi_instance:\n      num_instances: pool_curent_dedicated\n").unwrap_err();
    assert!(e.to_string().contains("jobs.yaml:6:22"), "{e}");
    assert!(
        e.to_string()
            .contains("did you mean `pool_current_dedicated`"),
        "{e}"
    );
    let e = one("jobs.yaml", "job_specifications:\n- id: a\n  tasks:\n  - docker_image: x\n    multi_instance:\n      num_instances: 2\n      mpi:\n        runtime: intelmpi_ofa\n").unwrap_err();
    assert!(e.to_string().contains("did you mean `intelmpi-ofa`"), "{e}");
}

#[test]
fn refused_and_mixed_runtime_errors_say_why() {
    let e = one(
        "pool.yaml",
        "pool_specification:\n  id: p\n  autoscale:\n    formula: x\n",
    )
    .unwrap_err();
    assert!(matches!(e, BsConfigError::Refused { .. }));
    assert_eq!(
        e.to_string(),
        "pool.yaml:3:3: `pool_specification.autoscale` is not supported: autoscale pools are not supported; give a fixed vm_count"
    );
    let e = one(
        "jobs.yaml",
        "job_specifications:\n- id: a\n  tasks:\n  - docker_image: x\n  - singularity_image: y\n",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("one container runtime per job"),
        "{e}"
    );
    let e = one(
        "jobs.yaml",
        "job_specifications:\n- id: a\n  tasks:\n  - docker_image: x\n    max_wall_time: 2h\n",
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("jobs.yaml:5:20:"), "{e}");
}

#[test]
fn secrets_never_appear_in_error_snippets() {
    let secret = "TOP-SECRET-KEY-VALUE";
    // an unknown key on the same line as a secret (flow mapping)
    let e = one(
        "credentials.yaml",
        &format!("credentials:\n  batch: {{account_key: {secret}, acount_service_url: https://a.b.batch.azure.com}}\n"),
    )
    .unwrap_err();
    let shown = format!("{e}\n{}", e.snippet());
    assert!(shown.contains("credentials.yaml:2:"), "{shown}");
    assert!(
        shown.contains("did you mean `account_service_url`"),
        "{shown}"
    );
    assert!(!shown.contains(secret), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    // a syntax error in a credentials file hides the line altogether
    let e = one(
        "credentials.yaml",
        &format!("credentials:\n  batch:\n    account_key: \"{secret}\n"),
    )
    .unwrap_err();
    let shown = format!("{e}\n{}", e.snippet());
    assert!(matches!(e, BsConfigError::Syntax { .. }), "{shown}");
    assert!(!shown.contains(secret), "{shown}");
    // a bad value next to a secret: the secret's line is redacted too
    let e = one(
        "credentials.yaml",
        &format!("credentials:\n  docker_registry:\n    r.io: {{username: u, password: {secret}, pasword: x}}\n"),
    )
    .unwrap_err();
    let shown = format!("{e}\n{}", e.snippet());
    assert!(!shown.contains(secret), "{shown}");
    // and Debug of the error does not carry it either
    assert!(!format!("{e:?}").contains(secret));
}

#[test]
fn every_fixture_translates() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir)? {
        let name = entry?.file_name().to_string_lossy().to_string();
        translate(&name)?;
        n += 1;
    }
    assert_eq!(n, 9);
    Ok(())
}
