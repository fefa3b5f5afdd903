//! Each recipe-shaped fixture, as written: translated, loaded into shipyard's domain, planned by
//! its container runtime, and the pool/job/task bodies checked against the Batch spec (strict).
//! The MPI lines carry what Batch Shipyard generated for the same recipe
//! (shared/reference/batch-shipyard.md, section 3).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
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

#[path = "support/launch.rs"]
mod launch;
use launch::{
    assert_same_launch, differences, env_of, evaluate, resolve, Deviation, Family, Launch,
};

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

/// The MPI line of `task`: from the launcher's statement (with its variable prefixes) to the
/// end of the innermost script.
fn mpi_line(run: &DryRun, task: usize, launcher: &str) -> String {
    let cl = run.tasks[task]["commandLine"].as_str().unwrap();
    let script = innermost_script(cl);
    let at = script
        .match_indices(launcher)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || script[..i].ends_with(' '))
        .unwrap_or_else(|| panic!("no {launcher} in {script}"));
    let start = script[..at].rfind("; ").map(|i| i + 2).unwrap_or(0);
    script[start..].to_string()
}

/// The task's `environmentSettings`, as Batch sets them in the task's environment.
fn task_env(run: &DryRun, task: usize) -> Vec<(String, String)> {
    run.tasks[task]["environmentSettings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// shipyard's launch of `run`'s first task and Batch Shipyard's `bs_line` with its task
/// environment `bs_env`, both evaluated in the same mocked node shell and resolved as
/// `family`'s launcher would; they must be the same launch but for `deviations`.
fn compare_with_batch_shipyard(
    run: &DryRun,
    family: Family,
    bs_line: &str,
    bs_env: &[&str],
    deviations: &[Deviation],
) -> (Launch, Launch) {
    let ours = resolve(
        family,
        &evaluate(&mpi_line(run, 0, "mpirun"), "mpirun", &task_env(run, 0)),
    );
    let bs = resolve(family, &evaluate(bs_line, "mpirun", &env_of(bs_env)));
    for d in deviations {
        eprintln!("deviation {}: {}", d.name, d.reason);
    }
    assert_same_launch(&ours, &bs, deviations);
    (ours, bs)
}

/// What the MPI launcher of `task` receives on a 2-node pool with 4 cores per node: its argv
/// (launcher first) and the MPI/fabric variables, found by running the task's MPI line in bash
/// with the launcher replaced by a function that prints them.
fn launcher_view(run: &DryRun, task: usize, launcher: &str) -> (Vec<String>, Vec<String>) {
    let e = evaluate(
        &mpi_line(run, task, launcher),
        launcher,
        &task_env(run, task),
    );
    let fabric = ["I_MPI", "FI_", "UCX_", "OMPI_MCA"];
    let env = e
        .env
        .iter()
        .filter(|(k, _)| fabric.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    (e.argv, env)
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

// ---- Batch Shipyard's lines, compared launch for launch -------------------------------------
//
// Each Batch Shipyard line below is literal: the four from shared/reference/batch-shipyard.md
// section 3 ("Examples ... 2 nodes"), the others built by the same function
// (`convoy/batch.py` `_construct_mpi_command`, quoted in that section) from the fixture's
// values. Their environment is the task's `environmentSettings` Batch Shipyard sends: the job's
// and task's variables with its InfiniBand variables merged over them (section 3).

/// Hydra reaching shipyard's containers (Intel MPI, MPICH in Docker, or Intel MPI on a native
/// pool, whose coordination command starts the same sshd).
const HYDRA_SSH_TO_CONTAINERS: Deviation = Deviation {
    name: "ssh-to-containers",
    items: &[
        "+option launcher ssh",
        "+option launcher-extra-args -p 23 -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/root/.ssh/known_hosts -o BatchMode=yes -o ConnectTimeout=10",
    ],
    reason: "the containers' sshd listens on port 23 with a host key shipyard generated per job, \
             checked against its known_hosts (Batch Shipyard relies on the recipe image's \
             /root/.ssh/config: Port 23, no host-key checking); BatchMode and ConnectTimeout make \
             an unreachable node fail in 10 s instead of hanging; `-launcher ssh` is what Hydra \
             picks on a Batch node anyway (no Slurm/PBS), made explicit",
};

/// Batch Shipyard's `MANPATH` for Intel MPI on InfiniBand.
const NO_MANPATH: Deviation = Deviation {
    name: "no-manpath",
    items: &["-env MANPATH=/usr/share/man:/usr/local/man"],
    reason: "Batch Shipyard sets it 'for potentially buggy intel mpivars.sh' (its comment in \
             convoy/batch.py), which fails under the `set -e` its task runner uses; shipyard runs \
             the pre-execution command without errexit, and MANPATH changes nothing in the launch",
};

/// Open MPI: one slot per host and `--oversubscribe` (Batch Shipyard) against P slots per host.
const OMPI_SLOTS_NOT_OVERSUBSCRIBED: Deviation = Deviation {
    name: "slots-instead-of-oversubscribe",
    items: &["-oversubscribed 10.0.0.4,10.0.0.5"],
    reason: "Batch Shipyard gives each host one slot (`-host` without counts) and \
             `--oversubscribe`, so Open MPI sees every node oversubscribed and its ranks yield \
             the CPU when idle; shipyard gives each host P slots (`--host h:P`): the same \
             placement, not oversubscribed",
};

/// Open MPI in Docker: the shared-memory BTL's single copy off.
const OMPI_NO_VADER_SINGLE_COPY: Deviation = Deviation {
    name: "no-vader-single-copy",
    items: &["+mca btl_vader_single_copy_mechanism=none"],
    reason: "in a Docker container the shared-memory BTL's single-copy mechanism (CMA, \
             process_vm_readv) is refused by the default seccomp profile and fails at run time; \
             shipyard turns it off (OMPI_MCA_btl_vader_single_copy_mechanism; inert where the \
             vader BTL is excluded)",
};

/// Open MPI reaching shipyard's containers.
const OMPI_SSH_TO_CONTAINERS: Deviation = Deviation {
    name: "ssh-to-containers",
    items: &["+mca plm_rsh_args=-p 23 -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/root/.ssh/known_hosts -o BatchMode=yes -o ConnectTimeout=10"],
    reason: HYDRA_SSH_TO_CONTAINERS.reason,
};

const BS_OPENMPI: &str = "mpirun -mca btl_base_warn_component_unused 0 --oversubscribe -host $AZ_BATCH_HOST_LIST -np $(expr 2 \\* $(nproc)) --map-by ppr:$(nproc):node --mca btl_tcp_if_include eth0 --allow-run-as-root /mpiBench/mpiBench -e 1K";

#[test]
fn mpibench_openmpi_resolves_to_batch_shipyards_launch() -> Result<()> {
    let runs = dry_run("mpibench-openmpi")?;
    let (ours, _) = compare_with_batch_shipyard(
        &runs[0],
        Family::OpenMpi,
        BS_OPENMPI,
        &[],
        &[
            Deviation {
                name: "no-btl-tcp-if-include-eth0",
                items: &["-mca btl_tcp_if_include=eth0"],
                reason: "Batch Shipyard bug (reference section 3): it pins Open MPI's TCP BTL to \
                         `eth0` unless on SR-IOV InfiniBand, so hosts whose interface has another \
                         name (or containers on another network) cannot connect; shipyard lets \
                         Open MPI choose",
            },
            OMPI_SLOTS_NOT_OVERSUBSCRIBED,
            OMPI_NO_VADER_SINGLE_COPY,
            OMPI_SSH_TO_CONTAINERS,
        ],
    );
    assert!(ours.0.contains("ranks 8"), "{ours:?}");
    Ok(())
}

const BS_MPICH: &str = "mpirun -hosts $AZ_BATCH_HOST_LIST -np $(expr 2 \\* $(nproc)) -ppn $(nproc) /mpiBench/mpiBench -e 1K";

#[test]
fn mpibench_mpich_resolves_to_batch_shipyards_launch() -> Result<()> {
    let runs = dry_run("mpibench-mpich")?;
    let (ours, _) = compare_with_batch_shipyard(
        &runs[0],
        Family::Hydra,
        BS_MPICH,
        &[],
        &[HYDRA_SSH_TO_CONTAINERS],
    );
    assert!(
        ours.0.contains("placement 10.0.0.4x4,10.0.0.5x4"),
        "{ours:?}"
    );
    Ok(())
}

/// Batch Shipyard's environment for Intel MPI on InfiniBand (`ib_env` in
/// `_construct_mpi_command`: I_MPI_FALLBACK and MANPATH always, then the fabric's) followed by
/// `rest`.
fn intel_ib_env<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    let mut env = vec!["I_MPI_FALLBACK=0", "MANPATH=/usr/share/man:/usr/local/man"];
    env.extend_from_slice(rest);
    env
}

const BS_INTELMPI: &str =
    "mpirun -hosts $AZ_BATCH_HOST_LIST -np 2 -perhost 1 /mpiBench/mpiBench -e 1K";

#[test]
fn mpibench_intelmpi_resolves_to_batch_shipyards_launch() -> Result<()> {
    let runs = dry_run("mpibench-intelmpi")?;
    compare_with_batch_shipyard(
        &runs[0],
        Family::Hydra,
        BS_INTELMPI,
        &intel_ib_env(&["I_MPI_FABRICS=shm:ofi", "FI_PROVIDER=mlx"]),
        &[HYDRA_SSH_TO_CONTAINERS, NO_MANPATH],
    );
    Ok(())
}

const BS_HPCG: &str = "mpirun -genv OMP_NUM_THREADS 44 -hosts $AZ_BATCH_HOST_LIST -np 2 -perhost 1 /opt/intel/mkl/benchmarks/hpcg/bin/xhpcg_skx --n=192 --t=1800";

/// `intelmpi-ofa`: the OFA fabric does not use libfabric, so the ranks get no FI_PROVIDER
/// (neither Batch Shipyard's nor the launcher's tcp default).
#[test]
fn hpcg_intelmpi_ofa_resolves_to_batch_shipyards_launch() -> Result<()> {
    let runs = dry_run("hpcg-intelmpi-ofa")?;
    let (ours, _) = compare_with_batch_shipyard(
        &runs[0],
        Family::Hydra,
        BS_HPCG,
        &intel_ib_env(&["I_MPI_FABRICS=shm:ofa"]),
        &[HYDRA_SSH_TO_CONTAINERS, NO_MANPATH],
    );
    assert!(
        !ours.0.iter().any(|i| i.starts_with("env FI_PROVIDER=")),
        "{ours:?}"
    );
    Ok(())
}

const BS_HPL: &str = "mpirun -genv I_MPI_PIN_DOMAIN numa -hosts $AZ_BATCH_HOST_LIST -np 8 -perhost 4 /opt/intel/mkl/benchmarks/mp_linpack/xhpl_intel64_static -n 100000 -nb 384 -p 2 -q 4";

#[test]
fn hplinpack_intelmpi_resolves_to_batch_shipyards_launch() -> Result<()> {
    let runs = dry_run("hplinpack-intelmpi")?;
    compare_with_batch_shipyard(
        &runs[0],
        Family::Hydra,
        BS_HPL,
        &intel_ib_env(&[
            "OMP_NUM_THREADS=15",
            "MKL_DEBUG=True",
            "RUN_LABEL=hpl",
            "I_MPI_FABRICS=shm:ofi",
            "FI_PROVIDER=mlx",
        ]),
        &[HYDRA_SSH_TO_CONTAINERS, NO_MANPATH],
    );
    Ok(())
}

const BS_OPENFOAM: &str =
    "mpirun -np $np -ppn $ppn -hosts $AZ_BATCH_HOST_LIST simpleFoam -parallel";

#[test]
fn openfoam_intelmpi_resolves_to_batch_shipyards_launch() -> Result<()> {
    let runs = dry_run("openfoam-intelmpi")?;
    let (ours, _) = compare_with_batch_shipyard(
        &runs[0],
        Family::Hydra,
        BS_OPENFOAM,
        &intel_ib_env(&[
            "I_MPI_FABRICS=shm:dapl",
            "I_MPI_DAPL_PROVIDER=ofa-v2-ib0",
            "I_MPI_DYNAMIC_CONNECTION=0",
            "I_MPI_DAPL_TRANSLATION_CACHE=0",
        ]),
        &[HYDRA_SSH_TO_CONTAINERS, NO_MANPATH],
    );
    // NetworkDirect (H16r): DAPL, no libfabric provider, and no partition key file
    assert!(
        !ours.0.iter().any(|i| i.starts_with("env FI_PROVIDER=")),
        "{ours:?}"
    );
    let st = runs[0].pool["startTask"]["commandLine"]
        .as_str()
        .unwrap_or_default();
    assert!(!st.contains("UCX_IB_PKEY"), "{st}");
    Ok(())
}

const BS_OSU_MVAPICH: &str = "mpirun -hosts $AZ_BATCH_HOST_LIST -np 2 -ppn 1 -env $(cat $AZ_BATCH_NODE_STARTUP_DIR/wd/UCX_IB_PKEY) singularity exec --pwd $AZ_BATCH_TASK_WORKING_DIR -B $AZ_BATCH_NODE_ROOT_DIR:$AZ_BATCH_NODE_ROOT_DIR library://alfpark/mvapich/mvapich:2.3.2 /opt/osu/libexec/osu-micro-benchmarks/mpi/pt2pt/osu_latency";

/// Batch Shipyard's `-env $(cat .../UCX_IB_PKEY)` gives Hydra one word, `UCX_IB_PKEY=0x0001`,
/// where `-env` takes a name and a value: Hydra takes `singularity` as the value and runs
/// `exec` as the program. The comparison is made with the line as it was meant
/// (`-env UCX_IB_PKEY 0x0001`).
const BS_PKEY_AS_WRITTEN: &str = "-env $(cat $AZ_BATCH_NODE_STARTUP_DIR/wd/UCX_IB_PKEY)";
const BS_PKEY_AS_MEANT: &str = "-env $(tr = ' ' < $AZ_BATCH_NODE_STARTUP_DIR/wd/UCX_IB_PKEY)";

#[test]
fn osu_mvapich_singularity_resolves_to_batch_shipyards_launch() -> Result<()> {
    let runs = dry_run("osu-mvapich-singularity")?;
    let bs_env = [
        "MV2_ENABLE_AFFINITY=0",
        "SINGULARITY_CACHEDIR=/mnt/singularity/cache",
        "SINGULARITY_SYPGPDIR=/mnt/singularity/sypgp",
    ];
    // as written, Batch Shipyard's line does not run the benchmark at all
    let written = resolve(
        Family::Hydra,
        &evaluate(BS_OSU_MVAPICH, "mpirun", &env_of(&bs_env)),
    );
    assert!(
        written
            .0
            .iter()
            .any(|i| i.starts_with("program [\"exec\", \"--pwd\"")),
        "{written:?}"
    );
    assert!(
        written.0.contains("env UCX_IB_PKEY=0x0001=singularity"),
        "{written:?}"
    );
    assert!(BS_OSU_MVAPICH.contains(BS_PKEY_AS_WRITTEN));
    let meant = BS_OSU_MVAPICH.replace(BS_PKEY_AS_WRITTEN, BS_PKEY_AS_MEANT);
    let (ours, _) = compare_with_batch_shipyard(
        &runs[0],
        Family::Hydra,
        &meant,
        &bs_env,
        &[
            Deviation {
                name: "image-pulled-per-node",
                items: &[
                    "+container image /ns/shipyard/images/library___alfpark_mvapich_mvapich_2.3.2.sif",
                    "-container image library://alfpark/mvapich/mvapich:2.3.2",
                    "+option -wdir /ns/shipyard/images",
                ],
                reason: "shipyard pulls the image once per node into \
                         $AZ_BATCH_NODE_SHARED_DIR/shipyard/images and every rank runs that .sif \
                         (found through -wdir; --pwd still sets the ranks' directory) instead of \
                         resolving library:// through Singularity's cache",
            },
            Deviation {
                name: "no-singularity-cache-dirs",
                items: &[
                    "-env SINGULARITY_CACHEDIR=/mnt/singularity/cache",
                    "-env SINGULARITY_SYPGPDIR=/mnt/singularity/sypgp",
                ],
                reason: "they place Singularity's image cache and keyring on the temp disk for its \
                         own pulls; shipyard pulls to a file itself (above), so ranks need neither",
            },
            Deviation {
                name: "ucx-net-devices-for-hydra-mpis",
                items: &["+env UCX_NET_DEVICES=mlx5_0:1"],
                reason: "shipyard pins UCX to the InfiniBand HCA for MPICH/MVAPICH on SR-IOV sizes \
                         as Batch Shipyard does for Open MPI (`-x UCX_NET_DEVICES=mlx5_0:1`); Batch \
                         Shipyard gives MPICH/MVAPICH only the partition key. MVAPICH2 ignores UCX \
                         variables; UCX-based MPICH stays on the HCA",
            },
            Deviation {
                name: "ssh-to-hosts",
                items: &[
                    "+option launcher ssh",
                    "+option launcher-extra-args -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=10",
                ],
                reason: "Singularity ranks are started over the hosts' own sshd, whose host keys \
                         nobody knows in advance: shipyard says so explicitly rather than relying \
                         on the node's ssh client configuration, and fails an unreachable node in \
                         10 s instead of hanging",
            },
        ],
    );
    assert!(ours.0.contains("container bind /nr:/nr"), "{ours:?}");
    // the partition key, from the file node preparation wrote (as Batch Shipyard meant it)
    assert!(ours.0.contains("env UCX_IB_PKEY=0x0001"), "{ours:?}");
    assert_pool_writes_partition_key(&runs[0]);
    assert!(ours.0.contains("container --pwd /wd"), "{ours:?}");
    Ok(())
}

/// The comparison itself: spellings a launcher treats alike resolve to the same launch, and a
/// change in ranks, placement, options, environment or program is a difference.
#[test]
fn launch_model_normalises_spelling_and_catches_differences() {
    let launch =
        |family, line: &str, env: &[&str]| resolve(family, &evaluate(line, "mpirun", &env_of(env)));
    let diff =
        |family, a: &str, b: &str| differences(&launch(family, a, &[]), &launch(family, b, &[]));
    let same: &[(Family, &str, &str)] = &[
        (
            Family::OpenMpi,
            "mpirun -np 8 -host $AZ_BATCH_HOST_LIST --oversubscribe -map-by ppr:4:node -mca a 1 x",
            "mpirun --oversubscribe -n 8 --host 10.0.0.4,10.0.0.5 --map-by ppr:$(nproc):node --mca a 1 x",
        ),
        (
            Family::OpenMpi,
            "OMPI_MCA_a=1 mpirun -c 2 -H 10.0.0.4:1,10.0.0.5:1 -x B=2 x",
            "B=2 mpirun --mca a 1 -np 2 --host 10.0.0.4,10.0.0.5 -x B x",
        ),
        (
            Family::Hydra,
            "mpirun -n 8 -ppn 4 -hosts $AZ_BATCH_HOST_LIST -genv A 1 -bootstrap ssh x",
            "A=1 mpirun -np $(expr 2 \\* $(nproc)) -perhost 4 -hosts 10.0.0.4,10.0.0.5 -launcher ssh x",
        ),
        (
            Family::Hydra,
            "SINGULARITY_BIND=/a:/a SINGULARITYENV_C=3 mpirun -n 2 -ppn 1 -hosts $AZ_BATCH_HOST_LIST -wdir /i singularity exec ./x.sif p",
            "C=3 mpirun -n 2 -ppn 1 -hosts $AZ_BATCH_HOST_LIST -wdir /i singularity exec -B /a:/a /i/x.sif p",
        ),
    ];
    for (family, a, b) in same {
        assert_eq!(diff(*family, a, b), BTreeSet::new(), "{a}\n{b}");
    }
    let base = "mpirun -n 8 -ppn 4 -hosts $AZ_BATCH_HOST_LIST -genv A 1 x y";
    for (other, expected) in [
        (
            "mpirun -n 8 -ppn 2 -hosts $AZ_BATCH_HOST_LIST -genv A 1 x y",
            "-placement 10.0.0.4x4,10.0.0.5x4",
        ),
        (
            "mpirun -n 6 -ppn 4 -hosts $AZ_BATCH_HOST_LIST -genv A 1 x y",
            "-ranks 8",
        ),
        (
            "mpirun -n 8 -ppn 4 -hosts $AZ_BATCH_HOST_LIST -genv A 2 x y",
            "-env A=1",
        ),
        (
            "mpirun -n 8 -ppn 4 -hosts $AZ_BATCH_HOST_LIST -genv A 1 x z",
            "-program [\"x\", \"y\"]",
        ),
        (
            "mpirun -n 8 -ppn 4 -hosts $AZ_BATCH_HOST_LIST -genv A 1 -l x y",
            "+option -prepend-rank",
        ),
    ] {
        let d = diff(Family::Hydra, other, base);
        assert!(d.contains(expected), "{other}: {d:?}");
    }
    let d = diff(
        Family::OpenMpi,
        "mpirun -np 8 --host $AZ_BATCH_HOST_LIST --oversubscribe --map-by ppr:4:node x",
        "mpirun -np 8 --host 10.0.0.4:4,10.0.0.5:4 --map-by ppr:4:node x",
    );
    assert_eq!(
        d,
        BTreeSet::from(["+oversubscribed 10.0.0.4,10.0.0.5".to_string()])
    );
}

/// Built from `_construct_mpi_command` for this fixture (Open MPI, P=4, 2 nodes, InfiniBand on
/// an SR-IOV size): its `--mca pml ucx --mca btl ^vader,tcp,openib -x UCX_NET_DEVICES=mlx5_0:1
/// -x $(cat .../UCX_IB_PKEY)` (reference section 3) instead of `btl_tcp_if_include eth0`.
const BS_OPENMPI_SRIOV: &str = "mpirun --oversubscribe -host $AZ_BATCH_HOST_LIST -np 8 --map-by ppr:4:node --mca pml ucx --mca btl ^vader,tcp,openib -x UCX_NET_DEVICES=mlx5_0:1 -x $(cat $AZ_BATCH_NODE_STARTUP_DIR/wd/UCX_IB_PKEY) --allow-run-as-root /mpiBench/mpiBench -e 1K";

#[test]
fn mpibench_openmpi_on_sriov_resolves_to_batch_shipyards_launch() -> Result<()> {
    let runs = dry_run("mpibench-openmpi-sriov")?;
    let (ours, _) = compare_with_batch_shipyard(
        &runs[0],
        Family::OpenMpi,
        BS_OPENMPI_SRIOV,
        &["UCX_NET_DEVICES=mlx5_1:1"],
        &[
            OMPI_SLOTS_NOT_OVERSUBSCRIBED,
            OMPI_NO_VADER_SINGLE_COPY,
            OMPI_SSH_TO_CONTAINERS,
            Deviation {
                name: "user-env-wins (Batch Shipyard issue #339)",
                items: &[
                    "+env UCX_NET_DEVICES=mlx5_1:1",
                    "-env UCX_NET_DEVICES=mlx5_0:1",
                ],
                reason: "Batch Shipyard's `-x UCX_NET_DEVICES=mlx5_0:1` on the command line \
                         replaces the job's own UCX_NET_DEVICES for every rank, as its InfiniBand \
                         variables replace the user's (issue #339); shipyard's defaults yield to \
                         the user's value, which mpirun forwards (-x)",
            },
        ],
    );
    assert!(ours.0.contains("mca pml=ucx"), "{ours:?}");
    assert!(ours.0.contains("env UCX_IB_PKEY=0x0001"), "{ours:?}");
    assert_pool_writes_partition_key(&runs[0]);
    assert!(ours.0.contains("mca btl=^vader,tcp,openib"), "{ours:?}");
    Ok(())
}

/// The pool's start task writes the partition key files of an SR-IOV node: run in a mocked
/// node whose mlx5_0 port 1 has pkeys 0x7fff and 0x8001 (sysfs paths redirected into a
/// temporary directory), it leaves `UCX_IB_PKEY=0x0001` (the larger key, membership bit off)
/// where the launch reads it, and the full key beside it.
fn assert_pool_writes_partition_key(run: &DryRun) {
    let st = run.pool["startTask"]["commandLine"].as_str().unwrap();
    let script = innermost_script(st);
    let at = script
        .find("if [ -r /sys/class/infiniband")
        .unwrap_or_else(|| panic!("{st}"));
    let end = script[at..].find("; fi").unwrap() + at + 4;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "pkey-node-{}-{}",
        run.pool["id"].as_str().unwrap(),
        std::process::id()
    ));
    let sys = dir.join("sys/class/infiniband/mlx5_0/ports/1/pkeys");
    std::fs::create_dir_all(&sys).unwrap();
    std::fs::create_dir_all(dir.join("startup/wd")).unwrap();
    std::fs::write(sys.join("0"), "0x7fff\n").unwrap();
    std::fs::write(sys.join("1"), "0x8001\n").unwrap();
    let prep = script[at..end].replace("/sys/", &format!("{}/sys/", dir.display()));
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&prep)
        .env("AZ_BATCH_NODE_STARTUP_DIR", dir.join("startup"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{prep}: {out:?}");
    let read = |f: &str| std::fs::read_to_string(dir.join("startup/wd").join(f)).unwrap();
    assert_eq!(
        read("UCX_IB_PKEY"),
        format!("{}\n", launch::UCX_IB_PKEY_FILE)
    );
    assert_eq!(read("IB_PKEY"), "IB_PKEY=0x8001\n");
    std::fs::remove_dir_all(&dir).unwrap();
}
