//! Each recipe-shaped fixture, as written: translated, loaded into shipyard's domain, planned by
//! its container runtime, and the pool/job/task bodies checked against the Batch spec (strict).
//! The MPI lines carry what Batch Shipyard generated for the same recipe
//! (shared/reference/batch-shipyard.md, section 3).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use shipyard_batch_spec::schema::Spec;
use shipyard_bs_config::{translate_dir, TranslateOptions};
use shipyard_runtime::batch::apply_job_settings;
use shipyard_runtime::data::{attach_data, Access, ContainerUrls};
use shipyard_runtime::shell::split;
use shipyard_runtime::{ContainerRuntime, JobSpec, PoolSpec};
use shipyard_runtime_docker::DockerRuntime;
use shipyard_runtime_singularity::{SingularityEngine, SingularityRuntime};

/// Signs nothing: a container URL with a placeholder SAS, for the link `mystorageaccount`.
struct FakeStorage;

impl ContainerUrls for FakeStorage {
    fn container_url(&self, link: &str, c: &str, a: Access) -> Result<String, String> {
        if link != "mystorageaccount" {
            return Err(format!("no storage link `{link}`"));
        }
        let sp = if a == Access::Write { "cw" } else { "rl" };
        Ok(format!(
            "https://mystorageaccount.blob.core.windows.net/{c}?sv=2022-11-02&sp={sp}&sig=x"
        ))
    }
}

struct DryRun {
    pool: Value,
    job: Value,
    tasks: Vec<Value>,
}

impl DryRun {
    fn env(&self, task: usize, name: &str) -> Option<String> {
        self.tasks[task]["environmentSettings"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str().map(str::to_string))
    }
}

fn dry_run(name: &str) -> Result<Vec<DryRun>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let t = translate_dir(&dir, TranslateOptions::default())?;
    let text = t.to_toml_string();
    let table: toml::Table = toml::from_str(&text).context("TOML")?;
    // (every section is one shipyard reads: fixtures.rs, every_fixture_loads_in_the_domain)
    let pool: PoolSpec = table
        .get("pool_specification")
        .cloned()
        .context("pool_specification")?
        .try_into()
        .with_context(|| format!("PoolSpec of {name}:\n{text}"))?;
    pool.validate()?;
    let jobs = table
        .get("job_specifications")
        .and_then(|j| j.as_array())
        .cloned()
        .context("job_specifications")?;
    let spec = Spec::shared();
    let check = |def: &str, v: &Value| -> Result<()> {
        if let Err(violations) = spec.validate(def, v) {
            let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
            bail!(
                "{name}: {def} does not match the Batch spec:\n{}\n{v:#}",
                list.join("\n")
            );
        }
        Ok(())
    };
    let mut out = Vec::new();
    for job in jobs {
        let job: JobSpec = job
            .try_into()
            .with_context(|| format!("JobSpec of {name}:\n{text}"))?;
        job.validate()?;
        let job = job.expanded()?.into_owned();
        let job = pool.prepare_job(&job, None)?;
        job.validate()?;
        let rt: Box<dyn ContainerRuntime> = match job.runtime.as_str() {
            "docker" => Box::new(DockerRuntime::new()),
            "singularity" => Box::new(SingularityRuntime::new(SingularityEngine::Singularity)),
            other => bail!("runtime {other}"),
        };
        let mut plan = rt.plan(&job, &pool.facts())?;
        attach_data(&mut plan, &job, &FakeStorage)?;
        let pool_add = pool.add_parameter(&[&plan])?;
        let mut job_add = plan.job_add_parameter(&job.id, &pool.id);
        apply_job_settings(&job, &mut job_add);
        let pool_v = serde_json::to_value(&pool_add)?;
        check("PoolAddParameter", &pool_v)?;
        let job_v = serde_json::to_value(&job_add)?;
        check("JobAddParameter", &job_v)?;
        let mut tasks = Vec::new();
        for task in &plan.tasks {
            let v = serde_json::to_value(task)?;
            check("TaskAddParameter", &v)?;
            tasks.push(v);
        }
        out.push(DryRun {
            pool: pool_v,
            job: job_v,
            tasks,
        });
    }
    Ok(out)
}

/// The innermost shell script of a Batch command line: through `/bin/bash -c '...'` and
/// `docker exec ... /bin/bash -c '...'`.
fn innermost_script(command_line: &str) -> String {
    let mut words = split(command_line).unwrap();
    loop {
        let Some(i) = words
            .windows(2)
            .position(|w| w[0] == "/bin/bash" && w[1] == "-c")
        else {
            return words.join(" ");
        };
        let script = words[i + 2].clone();
        match split(&script) {
            Ok(w) if w.windows(2).any(|w| w[0] == "/bin/bash" && w[1] == "-c") => words = w,
            _ => return script,
        }
    }
}

/// What the MPI launcher of `task` receives on a 2-node pool with 4 cores per node: its argv
/// (launcher first) and the MPI/fabric variables, found by running the task's MPI line in bash
/// with the launcher replaced by a function that prints them.
fn launcher_view(run: &DryRun, task: usize, launcher: &str) -> (Vec<String>, Vec<String>) {
    let cl = run.tasks[task]["commandLine"].as_str().unwrap();
    let script = innermost_script(cl);
    let at = script
        .match_indices(launcher)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || script[..i].ends_with(' '))
        .unwrap_or_else(|| panic!("no {launcher} in {script}"));
    let start = script[..at].rfind("; ").map(|i| i + 2).unwrap_or(0);
    let line = &script[start..];
    let mut env_setup = String::new();
    for e in run.tasks[task]["environmentSettings"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let (k, v) = (e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
        env_setup.push_str(&format!("export {k}='{v}'; "));
    }
    let program = format!(
        "nproc() {{ echo 4; }}; {launcher}() {{ printf '%s\\n' {launcher} \"$@\"; echo ===; env | grep -E '^(I_MPI|FI_|UCX_|OMPI_MCA)' | sort; }}; \
         export AZ_BATCH_HOST_LIST=10.0.0.4,10.0.0.5 AZ_BATCH_TASK_WORKING_DIR=/wd \
         AZ_BATCH_NODE_ROOT_DIR=/nr AZ_BATCH_NODE_SHARED_DIR=/ns np=8 ppn=4; {env_setup}{line}"
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&program)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (argv, env) = text.split_once("===\n").unwrap();
    (
        argv.lines().map(str::to_string).collect(),
        env.lines().map(str::to_string).collect(),
    )
}

/// Hydra's (Intel MPI, MPICH, MVAPICH) ranks, ranks per node and hosts on the 2-node view.
fn assert_hydra_placement(argv: &[String], ranks: &str, per_node: &str) {
    assert_eq!(after(argv, "-n"), Some(ranks), "{argv:?}");
    assert_eq!(after(argv, "-ppn"), Some(per_node), "{argv:?}");
    assert_eq!(after(argv, "-hosts"), Some("10.0.0.4,10.0.0.5"), "{argv:?}");
}

/// The value after `flag` in `argv`.
fn after<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == flag)
        .and_then(|i| argv.get(i + 1))
        .map(String::as_str)
}

fn ends_with(argv: &[String], tail: &[&str]) -> bool {
    argv.len() >= tail.len() && argv[argv.len() - tail.len()..] == *tail
}

/// Batch Shipyard: `mpirun -mca btl_base_warn_component_unused 0 --oversubscribe -host
/// $AZ_BATCH_HOST_LIST -np $(expr 2 \* $(nproc)) --map-by ppr:$(nproc):node --mca
/// btl_tcp_if_include eth0 --allow-run-as-root /mpiBench/mpiBench -e 1K`.
#[test]
fn mpibench_openmpi_launches_like_batch_shipyard() -> Result<()> {
    let runs = dry_run("mpibench-openmpi")?;
    let (argv, _) = launcher_view(&runs[0], 0, "mpirun");
    // the options entry, split into words, first
    assert_eq!(
        argv[..4],
        ["mpirun", "-mca", "btl_base_warn_component_unused", "0"]
    );
    assert_eq!(after(&argv, "-np"), Some("8"), "{argv:?}");
    assert_eq!(after(&argv, "--map-by"), Some("ppr:4:node"), "{argv:?}");
    assert_eq!(
        after(&argv, "--host"),
        Some("10.0.0.4:4,10.0.0.5:4"),
        "{argv:?}"
    );
    assert!(argv.contains(&"--allow-run-as-root".to_string()));
    assert!(
        ends_with(&argv, &["/mpiBench/mpiBench", "-e", "1K"]),
        "{argv:?}"
    );
    Ok(())
}

/// Batch Shipyard: `mpirun -hosts $AZ_BATCH_HOST_LIST -np $(expr 2 \* $(nproc)) -ppn $(nproc)
/// /mpiBench/mpiBench -e 1K`, on the pool's 2 low-priority nodes.
#[test]
fn mpibench_mpich_launches_like_batch_shipyard() -> Result<()> {
    let runs = dry_run("mpibench-mpich")?;
    assert_eq!(
        runs[0].tasks[0]["multiInstanceSettings"]["numberOfInstances"],
        2
    );
    assert_eq!(runs[0].pool["targetLowPriorityNodes"], 2);
    let (argv, _) = launcher_view(&runs[0], 0, "mpirun");
    assert_hydra_placement(&argv, "8", "4");
    assert!(
        ends_with(&argv, &["/mpiBench/mpiBench", "-e", "1K"]),
        "{argv:?}"
    );
    // container_runtimes.install: docker is installed by the pool's start task
    let st = runs[0].pool["startTask"]["commandLine"].as_str().unwrap();
    assert!(st.contains("get.docker.com"), "{st}");
    Ok(())
}

/// Batch Shipyard (Intel MPI, P=1 on an SR-IOV size): `mpirun -hosts $AZ_BATCH_HOST_LIST -np 2
/// -perhost 1 <command>` with `I_MPI_FABRICS=shm:ofi FI_PROVIDER=mlx I_MPI_FALLBACK=0`.
#[test]
fn mpibench_intelmpi_on_sriov_gets_the_fabric_settings() -> Result<()> {
    let runs = dry_run("mpibench-intelmpi")?;
    let (argv, env) = launcher_view(&runs[0], 0, "mpirun");
    assert_hydra_placement(&argv, "2", "1");
    assert!(
        ends_with(&argv, &["/mpiBench/mpiBench", "-e", "1K"]),
        "{argv:?}"
    );
    for v in [
        "I_MPI_FABRICS=shm:ofi",
        "FI_PROVIDER=mlx",
        "I_MPI_FALLBACK=0",
    ] {
        assert!(env.contains(&v.to_string()), "{v} missing: {env:?}");
    }
    Ok(())
}

/// `intelmpi-ofa` on HC44rs: Batch Shipyard's `I_MPI_FABRICS=shm:ofa`.
#[test]
fn hpcg_intelmpi_ofa_uses_the_ofa_fabric() -> Result<()> {
    let runs = dry_run("hpcg-intelmpi-ofa")?;
    let (argv, env) = launcher_view(&runs[0], 0, "mpirun");
    assert!(
        env.contains(&"I_MPI_FABRICS=shm:ofa".to_string()),
        "{env:?}"
    );
    assert!(env.contains(&"I_MPI_FALLBACK=0".to_string()), "{env:?}");
    assert!(
        ends_with(
            &argv,
            &[
                "/opt/intel/mkl/benchmarks/hpcg/bin/xhpcg_skx",
                "--n=192",
                "--t=1800"
            ]
        ),
        "{argv:?}"
    );
    Ok(())
}

/// Wall times, scalar environment values, node preparation and the user's fabric choice.
#[test]
fn hplinpack_wall_times_node_prep_and_env() -> Result<()> {
    let runs = dry_run("hplinpack-intelmpi")?;
    let r = &runs[0];
    assert_eq!(r.job["constraints"]["maxWallClockTime"], "P1D");
    assert_eq!(r.tasks[0]["constraints"]["maxWallClockTime"], "PT2H");
    assert_eq!(r.pool["resizeTimeout"], "PT20M");
    let st = r.pool["startTask"]["commandLine"].as_str().unwrap();
    let (pre, post) = (
        st.find("echo pre-prep").unwrap(),
        st.find("echo post-prep").unwrap(),
    );
    assert!(pre < post, "{st}");
    assert_eq!(r.env(0, "OMP_NUM_THREADS").as_deref(), Some("15"));
    let (_, env) = launcher_view(r, 0, "mpirun");
    assert!(env.contains(&"FI_PROVIDER=mlx".to_string()), "{env:?}");
    Ok(())
}

/// OpenFOAM: the user's own `-np $np -ppn $ppn -hosts $AZ_BATCH_HOST_LIST` (set by the
/// pre-execution command) replace shipyard's; output_data becomes outputFiles.
#[test]
fn openfoam_options_win_and_outputs_are_uploaded() -> Result<()> {
    let runs = dry_run("openfoam-intelmpi")?;
    let (argv, _) = launcher_view(&runs[0], 0, "mpirun");
    assert_eq!(
        argv[..7],
        [
            "mpirun",
            "-np",
            "8",
            "-ppn",
            "4",
            "-hosts",
            "10.0.0.4,10.0.0.5"
        ],
        "{argv:?}"
    );
    assert_eq!(
        argv.iter().filter(|a| *a == "-np" || *a == "-n").count(),
        1,
        "{argv:?}"
    );
    assert_eq!(argv.iter().filter(|a| *a == "-ppn").count(), 1, "{argv:?}");
    assert!(ends_with(&argv, &["simpleFoam", "-parallel"]), "{argv:?}");
    let out = &runs[0].tasks[0]["outputFiles"][0];
    assert_eq!(out["filePattern"], "postProcessing/**/*");
    assert_eq!(out["destination"]["container"]["path"], "openfoam");
    assert_eq!(out["uploadOptions"]["uploadCondition"], "tasksuccess");
    Ok(())
}

/// Batch Shipyard (Singularity MVAPICH on HB60rs): `mpirun -hosts $AZ_BATCH_HOST_LIST -np 2
/// -ppn 1 ... singularity exec --pwd $AZ_BATCH_TASK_WORKING_DIR -B ... <image> <command>`.
#[test]
fn osu_mvapich_singularity_launches_like_batch_shipyard() -> Result<()> {
    let runs = dry_run("osu-mvapich-singularity")?;
    let (argv, env) = launcher_view(&runs[0], 0, "mpirun");
    assert_hydra_placement(&argv, "2", "1");
    assert_eq!(after(&argv, "--pwd"), Some("/wd"), "{argv:?}");
    assert!(
        ends_with(
            &argv,
            &["/opt/osu/libexec/osu-micro-benchmarks/mpi/pt2pt/osu_latency"]
        ),
        "{argv:?}"
    );
    assert!(argv.iter().any(|a| a == "exec"), "{argv:?}");
    assert!(
        env.contains(&"UCX_NET_DEVICES=mlx5_0:1".to_string()),
        "{env:?}"
    );
    assert_eq!(runs[0].env(0, "MV2_ENABLE_AFFINITY").as_deref(), Some("0"));
    let st = runs[0].pool["startTask"]["commandLine"].as_str().unwrap();
    assert!(
        st.contains("apt-get install -y mvapich2") && st.contains("apptainer"),
        "{st}"
    );
    Ok(())
}

/// Task factories and the merge task, as Batch Shipyard expands them.
#[test]
fn sweep_expands_into_tasks_and_a_merge_task() -> Result<()> {
    let runs = dry_run("sweep-json")?;
    let tasks = &runs[0].tasks;
    assert_eq!(tasks.len(), 15);
    let cmds: Vec<String> = tasks[..6]
        .iter()
        .map(|t| innermost_script(t["commandLine"].as_str().unwrap()))
        .collect();
    assert!(
        cmds[0].contains("echo 0 10") && cmds[5].contains("echo 2 20"),
        "{cmds:?}"
    );
    assert_eq!(
        tasks[14]["dependsOn"]["taskIds"].as_array().map(Vec::len),
        Some(14)
    );
    assert_eq!(runs[0].job["usesTaskDependencies"], true);
    Ok(())
}

/// 10,000 generated tasks expand and plan quickly (< 1 s in release builds).
#[test]
fn ten_thousand_generated_tasks_plan_quickly() -> Result<()> {
    let job: JobSpec = serde_json::from_value(serde_json::json!({
        "id": "big",
        "tasks": [{"image": "alpine:3", "command": "echo {0} {1}",
            "task_factory": {"parametric_sweep": {"product": [
                {"start": 0, "stop": 100, "step": 1}, {"start": 0, "stop": 100, "step": 1}]}}}]
    }))?;
    let mut pool = PoolSpec::new("p");
    pool.vm_count = shipyard_runtime::pool::VmCount::Dedicated(4);
    let start = std::time::Instant::now();
    let x = job.expanded()?;
    let plan = DockerRuntime::new().plan(&x, &pool.facts())?;
    let took = start.elapsed();
    assert_eq!(plan.tasks.len(), 10_000);
    assert_eq!(plan.tasks[9_999].id, "task-09999");
    let limit = if cfg!(debug_assertions) { 10.0 } else { 1.0 };
    assert!(took.as_secs_f64() < limit, "{took:?}");
    eprintln!("10,000 tasks expanded and planned in {took:?}");
    Ok(())
}
