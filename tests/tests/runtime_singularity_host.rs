//! The Singularity runtime's rendered job preparation and MPI task command lines executed for
//! real with this machine's MPICH (`/usr/bin/mpiexec.mpich`) as the host launcher, on one node
//! (`AZ_BATCH_HOST_LIST=localhost`). No Singularity is installed here, so a stand-in
//! `singularity` script on `PATH` plays it: `pull` creates the image file, `exec` checks the
//! image exists (relative to where it starts, as Singularity resolves it), records its options
//! and environment, enters `--pwd` and execs the program, so
//! what is verified is the whole composed line: launcher flags, per-rank wrapping, the pulled
//! image path, `--pwd`, the bind variable and the `SINGULARITYENV_` forwarding.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use shipyard_e2e::{hello_binary, require_mpi, HelloReport, MpiKind};
use shipyard_runtime::{ContainerRuntime, JobSpec, OsFamily, PoolFacts};
use shipyard_runtime_singularity::{SingularityEngine, SingularityRuntime};

const STAND_IN: &str = r#"#!/bin/sh
log="$STAND_IN_LOG"
case "$1" in
  pull)
    shift; [ "$1" = --force ] && shift
    echo "pull $2 -> $1" >> "$log"; echo stand-in-sif > "$1"; exit 0 ;;
  exec) shift ;;
  *) echo "stand-in: unsupported $1" >&2; exit 2 ;;
esac
while [ $# -gt 0 ]; do
  case "$1" in
    --pwd) pwd_dir="$2"; shift 2 ;;
    --bind|-B) shift 2 ;;
    -*) echo "option $1" >> "$log"; shift ;;
    *) break ;;
  esac
done
img="$1"; shift
# like Singularity: the image path is resolved where the process starts (the launcher's
# -wdir), before the container enters --pwd
[ -s "$img" ] || { echo "stand-in: image $img missing in $(pwd)" >&2; exit 3; }
[ -n "$pwd_dir" ] && { cd "$pwd_dir" || exit 4; }
echo "exec cwd=$(pwd) bind=$SINGULARITY_BIND value=$SINGULARITYENV_SHIPYARD_VALUE" >> "$log"
exec "$@"
"#;

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
fn singularity_mpi_line_runs_under_host_mpich() {
    let Some(mpich) = require_mpi(MpiKind::Mpich) else {
        return;
    };
    let hello = hello_binary(&mpich).expect("hello binary");
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let bin = r.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    {
        use std::os::unix::fs::PermissionsExt;
        let p = bin.join("singularity");
        std::fs::write(&p, STAND_IN).expect("write stand-in");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let log = r.join("stand-in.log");

    let job: JobSpec = toml::from_str(&format!(
        r#"
        id = "sing-host"
        runtime = "singularity"
        [[tasks]]
        id = "mpi"
        image = "docker://shipyard/mpi:bookworm"
        command = "{hello}"
        additional_singularity_options = ["--writable-tmpfs"]
        environment_variables = {{ SHIPYARD_VALUE = "forwarded ok" }}
        [tasks.multi_instance]
        num_instances = 1
        pre_execution_command = "echo pre-exec-ran"
        [tasks.multi_instance.mpi]
        runtime = "mpich"
        executable_path = "{launcher}"
        processes_per_node = 3
        "#,
        hello = hello.display(),
        launcher = mpich.launcher.display(),
    ))
    .expect("job toml");
    let pool = PoolFacts {
        pool_id: "p".into(),
        native_containers: false,
        os: OsFamily::Linux,
        subnet_pattern: "127.0.0.*".into(),
        node_count: 1,
        slots_per_node: 1,
        cores_per_node: None,
    };
    let plan = SingularityRuntime::new(SingularityEngine::Singularity)
        .plan(&job, &pool)
        .expect("plan");

    let shared = r.join("shared");
    let prep_wd = r.join("workitems/sing-host/job-1/jobpreparation/wd");
    let task_wd = r.join("workitems/sing-host/job-1/mpi/wd");
    for d in [&shared, &prep_wd, &task_wd] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let s = |p: &Path| p.display().to_string();
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    env.insert("STAND_IN_LOG".into(), s(&log));
    env.insert("AZ_BATCH_NODE_ROOT_DIR".into(), s(r));
    env.insert("AZ_BATCH_NODE_SHARED_DIR".into(), s(&shared));

    // job preparation pulls the image once (a second run finds it and does not pull again)
    let prep = plan.job.job_preparation_task.as_ref().expect("prep");
    let mut prep_env = env.clone();
    prep_env.insert("AZ_BATCH_TASK_WORKING_DIR".into(), s(&prep_wd));
    for _ in 0..2 {
        let out = run_batch(&prep.command_line, &prep_wd, &prep_env);
        assert!(out.status.success(), "prep failed: {}", show(&out));
    }
    let sif = shared.join("shipyard/images/docker___shipyard_mpi_bookworm.sif");
    assert!(sif.is_file(), "{} not pulled", sif.display());
    let pulls = std::fs::read_to_string(&log).expect("log");
    assert_eq!(pulls.matches("pull ").count(), 1, "{pulls}");

    // the MPI task: host mpiexec.mpich wraps one stand-in `singularity exec` per rank
    let task = &plan.tasks[0];
    let mut task_env = env.clone();
    task_env.insert("AZ_BATCH_TASK_WORKING_DIR".into(), s(&task_wd));
    task_env.insert("AZ_BATCH_HOST_LIST".into(), "localhost".into());
    // Every rank runs here: keep UCX on loopback, so an interface that other tests' namespaces
    // remove mid-launch cannot fail MPI_Init ("No such device"; see mpi_launch_real.rs).
    task_env.insert("UCX_NET_DEVICES".into(), "lo".into());
    for e in task.environment_settings.iter().flatten() {
        task_env.insert(e.name.clone(), e.value.clone().unwrap_or_default());
    }
    let out = run_batch(&task.command_line, &task_wd, &task_env);
    assert!(out.status.success(), "task failed: {}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pre-exec-ran"), "{}", show(&out));
    HelloReport::parse(&stdout).assert_complete(3);
    let log = std::fs::read_to_string(&log).expect("log");
    let want = format!(
        "exec cwd={} bind={}:{} value=forwarded ok",
        task_wd.display(),
        r.display(),
        r.display()
    );
    assert_eq!(log.matches(&want).count(), 3, "one exec per rank:\n{log}");
    assert_eq!(log.matches("option --writable-tmpfs").count(), 3, "{log}");
}
