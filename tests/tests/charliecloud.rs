//! The Charliecloud plugin's plans executed for real on this machine, one node
//! (`AZ_BATCH_HOST_LIST=localhost`): the job preparation task unpacks the test image (exported
//! from Docker as a tarball) into the node's shared directory, once; then the MPI task runs
//! `mpirun.openmpi` and `mpiexec.mpich` on the host, each starting 4 `ch-run` ranks of the
//! image's smoke-test program (rank count, sizes and allreduce checked); a plain task checks the
//! root-directory bind, the working directory and `--set-env`; a node without `ch-run` fails the
//! preparation naming the binary and its package.
//!
//! The node root directory is created under `target/`, outside `/tmp` (which `ch-run` shares
//! with the host), so only the plan's `-b` bind makes it visible in the container.
//!
//! Multi-node: the same plans on two VM-like nodes (`shipyard-vm-node`), each with a host sshd
//! on port 23 in its namespaces; the preparation runs on both nodes, the MPI task on node-0,
//! whose host launcher reaches node-1 over ssh (4 ranks, 2 per node, both hostnames).
//!
//! Needs Docker with the test image, Open MPI, MPICH and `ch-run` (`charliecloud-runtime`,
//! installed by `scripts/setup.sh`); the multi-node test also root, iproute2, iptables,
//! dockerd and openssh-server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shipyard_e2e::{
    cargo_build, export_image, image_hello_path, require_ch_run, require_mpi, require_test_image,
    show, HelloReport, MpiKind,
};
use shipyard_plugin_charliecloud::CharliecloudRuntime;
use shipyard_runtime::{ContainerRuntime, JobPlan, JobSpec, OsFamily, PoolFacts};

/// Runs a Batch command line as the node agent would (no `USER`: the plan must set it).
fn run_batch(command_line: &str, cwd: &Path, env: &BTreeMap<String, String>) -> Output {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec {command_line}"))
        .current_dir(cwd)
        .env_remove("USER")
        .envs(env)
        .output()
        .expect("spawn /bin/sh")
}

/// A fake node: root, shared and task directories and the `AZ_BATCH_*` variables.
struct Node {
    root: tempfile::TempDir,
    env: BTreeMap<String, String>,
}

impl Node {
    fn new() -> Node {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| shipyard_e2e::repo_root().join("target"));
        std::fs::create_dir_all(&target).expect("target dir");
        let root = tempfile::Builder::new()
            .prefix("charliecloud-node-")
            .tempdir_in(&target)
            .expect("node root");
        let shared = root.path().join("shared");
        std::fs::create_dir_all(&shared).expect("mkdir shared");
        let mut env = BTreeMap::new();
        env.insert("AZ_BATCH_NODE_ROOT_DIR".into(), s(root.path()));
        env.insert("AZ_BATCH_NODE_SHARED_DIR".into(), s(&shared));
        env.insert("AZ_BATCH_HOST_LIST".into(), "localhost".into());
        Node { root, env }
    }

    /// Runs `command_line` as task `name` (its own working directory) with extra variables.
    fn run(&self, name: &str, command_line: &str, extra: &[(String, String)]) -> Output {
        let wd = self.task_dir(name);
        std::fs::create_dir_all(&wd).expect("mkdir task dir");
        let mut env = self.env.clone();
        env.insert("AZ_BATCH_TASK_WORKING_DIR".into(), s(&wd));
        env.extend(extra.iter().cloned());
        run_batch(command_line, &wd, &env)
    }

    fn task_dir(&self, name: &str) -> PathBuf {
        self.root
            .path()
            .join("workitems/job/job-1")
            .join(name)
            .join("wd")
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn pool() -> PoolFacts {
    pool_of(1)
}

fn pool_of(nodes: u32) -> PoolFacts {
    PoolFacts {
        pool_id: "p".into(),
        native_containers: false,
        os: OsFamily::Linux,
        subnet_pattern: "127.0.0.*".into(),
        node_count: nodes,
        slots_per_node: 1,
        cores_per_node: None,
    }
}

fn plan(text: &str) -> JobPlan {
    plan_on(text, pool())
}

fn plan_on(text: &str, pool: PoolFacts) -> JobPlan {
    let job: JobSpec = toml::from_str(text).expect("job toml");
    // the test runs as root, so the tasks run as the pool's admin (mpirun --allow-run-as-root)
    CharliecloudRuntime::default()
        .elevated(true)
        .plan(&job, &pool)
        .expect("plan")
}

fn mpi_job(image: &Path, kind: MpiKind, launcher: &Path) -> String {
    format!(
        r#"
        id = "cc-{short}"
        runtime = "charliecloud"
        environment_variables = {{ SHIPYARD_VALUE = "forwarded-ok", HELLO_PRINT_ENV = "SHIPYARD_VALUE" }}
        [[tasks]]
        id = "mpi"
        image = "{image}"
        command = "{hello}"
        [tasks.multi_instance]
        num_instances = 1
        [tasks.multi_instance.mpi]
        runtime = "{short}"
        executable_path = "{launcher}"
        processes_per_node = 4
        "#,
        short = kind.short(),
        image = image.display(),
        hello = image_hello_path(kind),
        launcher = launcher.display(),
    )
}

fn task_env(plan: &JobPlan) -> Vec<(String, String)> {
    plan.tasks[0]
        .environment_settings
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

/// The test image, Open MPI, MPICH and `ch-run` (each `require_*` fails under CI).
fn require_all() -> Option<(shipyard_e2e::MpiInstall, shipyard_e2e::MpiInstall)> {
    if !require_test_image() {
        return None;
    }
    let ompi = require_mpi(MpiKind::OpenMpi)?;
    let mpich = require_mpi(MpiKind::Mpich)?;
    eprintln!("ch-run {}", require_ch_run()?);
    Some((ompi, mpich))
}

/// `text` (an [`mpi_job`]) with the launch kept on loopback: every rank of the single-node test
/// runs in the host's network namespace, where UCX (MPICH's device, and Open MPI's when it
/// picks it) and Open MPI's TCP components would otherwise open every interface with an
/// address, including the veths of the VM-like nodes the two-node test in this binary creates
/// and deletes at the same time; one that goes away between discovery and open fails
/// `MPI_Init` ("No such device", the class of failure `mpi_launch_real.rs` documents).
fn on_loopback_only(kind: MpiKind, text: String) -> String {
    let text = text.replace(
        "HELLO_PRINT_ENV = \"SHIPYARD_VALUE\"",
        "HELLO_PRINT_ENV = \"SHIPYARD_VALUE\", UCX_NET_DEVICES = \"lo\"",
    );
    let text = if kind == MpiKind::OpenMpi {
        text.replace(
            "processes_per_node = 4",
            "processes_per_node = 4\n        options = [\"--mca\", \"btl_tcp_if_include\", \"lo\", \"--mca\", \"oob_tcp_if_include\", \"lo\"]",
        )
    } else {
        text
    };
    assert!(text.contains("UCX_NET_DEVICES"), "{text}");
    assert_eq!(
        text.contains("btl_tcp_if_include"),
        kind == MpiKind::OpenMpi,
        "{text}"
    );
    text
}

#[test]
fn charliecloud_plans_run_under_host_openmpi_and_mpich() {
    let Some((ompi, mpich)) = require_all() else {
        return;
    };
    let node = Node::new();
    let tar = export_image(node.root.path());

    // job preparation: the tarball is unpacked into the shared directory once per node
    let mut dir_of_image = None;
    for kind_launcher in [
        (MpiKind::OpenMpi, &ompi.launcher),
        (MpiKind::Mpich, &mpich.launcher),
    ] {
        let (kind, launcher) = kind_launcher;
        let plan = plan(&on_loopback_only(kind, mpi_job(&tar, kind, launcher)));
        let prep = plan.job.job_preparation_task.as_ref().expect("prep task");
        let out = node.run("jobpreparation", &prep.command_line, &[]);
        assert!(out.status.success(), "prep failed: {}", show(&out));
        let unpacked = node
            .root
            .path()
            .join("shared/shipyard/charliecloud")
            .join(shipyard_plugin_charliecloud::image::unpacked_name(&s(&tar)));
        assert!(
            unpacked
                .join(image_hello_path(kind).trim_start_matches('/'))
                .is_file(),
            "{} not unpacked",
            unpacked.display()
        );
        // cached: the second job's preparation reuses the directory (same inode)
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&unpacked).expect("stat"));
        if let Some(first) = dir_of_image.replace(ino) {
            assert_eq!(first, ino, "the image was unpacked again");
        }
        // the bind mount point exists inside the image
        assert!(unpacked
            .join(node.root.path().strip_prefix("/").expect("absolute"))
            .is_dir());

        let out = node.run("mpi", &plan.tasks[0].command_line, &task_env(&plan));
        assert!(
            out.status.success(),
            "{} task failed: {}",
            kind.short(),
            show(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = HelloReport::parse(&stdout);
        report.assert_complete(4);
        assert_eq!(
            stdout.matches("SHIPYARD_VALUE=forwarded-ok").count(),
            4,
            "every rank sees the task's variable: {}",
            show(&out)
        );
    }
    assert!(
        std::fs::read_dir(node.root.path().join("shared/shipyard/charliecloud"))
            .expect("image dir")
            .count()
            == 1,
        "no temporary directories left"
    );

    // a plain task: ch-run once, in the task's working directory, the node root bound
    let plain = plan(&format!(
        r#"
        id = "cc-plain"
        runtime = "charliecloud"
        [[tasks]]
        id = "plain"
        image = "{image}"
        command = "sh -c 'echo \"cwd=$(pwd) value=$SHIPYARD_VALUE user=$USER\" > out.txt; cat /etc/debian_version'"
        environment_variables = {{ SHIPYARD_VALUE = "set env" }}
        "#,
        image = tar.display()
    ));
    let out = node.run("plain", &plain.tasks[0].command_line, &task_env(&plain));
    assert!(out.status.success(), "plain task failed: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("12."),
        "{}",
        show(&out)
    );
    let written = std::fs::read_to_string(node.task_dir("plain").join("out.txt")).expect("out.txt");
    assert_eq!(
        written.trim(),
        format!("cwd={} value=set env user=root", s(&node.task_dir("plain")))
    );
}

#[test]
fn a_node_without_ch_run_fails_the_preparation_naming_binary_and_package() {
    let node = Node::new();
    let plan = plan(
        r#"
        id = "cc-missing"
        runtime = "charliecloud"
        [[tasks]]
        image = "/srv/images/mpi"
        command = "true"
        "#,
    );
    // a PATH with the tools a node has, but no ch-run
    let bin = node.root.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    for tool in ["hostname", "id"] {
        let target = Command::new("/bin/sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .expect("command -v");
        let target = String::from_utf8_lossy(&target.stdout).trim().to_string();
        std::os::unix::fs::symlink(&target, bin.join(tool)).expect("symlink");
    }
    let path = vec![("PATH".to_string(), s(&bin))];
    let prep = plan.job.job_preparation_task.as_ref().expect("prep");
    let out = node.run("jobpreparation", &prep.command_line, &path);
    assert_eq!(out.status.code(), Some(127), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ch-run not found") && err.contains("charliecloud-runtime"),
        "{}",
        show(&out)
    );
    // the task command line has the same guard
    let out = node.run("t", &plan.tasks[0].command_line, &path);
    assert_eq!(out.status.code(), Some(127), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("charliecloud-runtime"));
}

const CLI_CONFIG: &str = r#"
[pool_specification]
id = "cc-pool"
vm_size = "Standard_D8s_v5"
vm_count = 2
inter_node_communication_enabled = true
[pool_specification.vm_configuration.platform_image]
publisher = "microsoft-dsvm"
offer = "ubuntu-hpc"
sku = "2204"
node_agent_sku_id = "batch.node.ubuntu 22.04"

[[job_specifications]]
id = "cc-hello"
runtime = "charliecloud"
[[job_specifications.tasks]]
id = "hello"
image = "https://example.org/images/mpi-bookworm.tar.gz"
command = "/opt/shipyard/bin/mpi-hello-mpich"
[job_specifications.tasks.multi_instance]
num_instances = 2
[job_specifications.tasks.multi_instance.mpi]
runtime = "mpich"
processes_per_node = 4
executable_path = "/usr/bin/mpiexec.mpich"
"#;

#[test]
fn the_cli_loads_the_plugin_checks_and_dry_runs_spec_valid_requests() {
    let debug = cargo_build(&["-p", "shipyard-plugin-charliecloud", "--lib"]);
    cargo_build(&["-p", "shipyard-cli", "--bin", "shipyard"]);
    let plugin = debug.join("libshipyard_plugin_charliecloud.so");
    let shipyard = debug.join("shipyard");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("cc.toml");
    std::fs::write(&cfg, CLI_CONFIG).expect("write config");
    let cli = || {
        let mut c = Command::new(&shipyard);
        for v in [
            "SHIPYARD_CONFIG",
            "SHIPYARD_CONFIGDIR",
            "SHIPYARD_TARGET",
            "SHIPYARD_PLUGIN",
        ] {
            c.env_remove(v);
        }
        c
    };

    // without the plugin the runtime is unknown
    let out = cli()
        .arg("-c")
        .arg(&cfg)
        .args(["config", "check"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown container runtime `charliecloud`")
    );
    // with --plugin, and with SHIPYARD_PLUGIN
    let out = cli()
        .arg("--plugin")
        .arg(&plugin)
        .arg("-c")
        .arg(&cfg)
        .args(["config", "check"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("configuration OK"),
        "{}",
        show(&out)
    );
    let out = cli()
        .env("SHIPYARD_PLUGIN", &plugin)
        .args(["--output", "json", "--target", "azure", "--dry-run", "run"])
        .arg(&cfg)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", show(&out));
    let requests: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let requests = requests.as_array().expect("array of requests");
    let spec = shipyard_batch_spec::schema::Spec::shared();
    let mut defs = Vec::new();
    for r in requests {
        let def = r["definition"].as_str().expect("definition");
        defs.push(def.to_string());
        if let Err(v) = spec.validate(def, &r["body"]) {
            panic!("{def} violates the spec: {v:?}\n{:#}", r["body"]);
        }
    }
    assert_eq!(
        defs[..3],
        [
            "PoolAddParameter",
            "JobAddParameter",
            "TaskAddCollectionParameter"
        ]
    );
    let pool = &requests[0]["body"];
    assert_eq!(pool["enableInterNodeCommunication"], true);
    assert!(pool["virtualMachineConfiguration"]["containerConfiguration"].is_null());
    let prep = &requests[1]["body"]["jobPreparationTask"];
    assert!(prep["commandLine"]
        .as_str()
        .unwrap_or("")
        .contains("charliecloud-runtime"));
    assert_eq!(
        prep["resourceFiles"][0]["httpUrl"],
        "https://example.org/images/mpi-bookworm.tar.gz"
    );
    let task = &requests[2]["body"]["value"][0];
    let line = task["commandLine"].as_str().unwrap_or("");
    assert!(
        line.contains("/usr/bin/mpiexec.mpich") && line.contains("ch-run"),
        "{line}"
    );
    assert_eq!(task["multiInstanceSettings"]["numberOfInstances"], 2);
}

// ----------------------------------------------------------------------------- two VM-like nodes

/// Generates an ed25519 key pair at `path` (and `path.pub`).
fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "shipyard-charliecloud-test",
            "-f",
        ])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", show(&out));
}

/// The environment of a Batch task on a VM-like node: a clean one with the `AZ_BATCH_*`
/// variables, `PATH` starting with `bin` (the test's `ssh`, standing in for the ssh setup Batch
/// gives multi-instance tasks), no `USER`.
fn vm_task(
    node: &shipyard_vm_node::VmNode,
    task: &str,
    command_line: &str,
    hosts: &str,
    bin: &Path,
    extra: &[(String, String)],
) -> shipyard_vm_node::NodeCommand {
    let root = node.root_dir();
    let wd = root.join("workitems/job/job-1").join(task).join("wd");
    std::fs::create_dir_all(
        node.root_on_host()
            .join("workitems/job/job-1")
            .join(task)
            .join("wd"),
    )
    .expect("mkdir task dir");
    let mut cmd = node
        .command("/bin/sh")
        // not `current_dir`: nsenter opens `--wd` before it enters the mount namespace
        .args([
            "-c",
            &format!("cd \"$AZ_BATCH_TASK_WORKING_DIR\" && exec {command_line}"),
        ])
        .env_clear()
        .env(
            "PATH",
            format!(
                "{}:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                bin.display()
            ),
        )
        .env("HOME", "/root")
        .env("AZ_BATCH_NODE_ROOT_DIR", root)
        .env("AZ_BATCH_NODE_SHARED_DIR", root.join("shared"))
        .env("AZ_BATCH_TASK_WORKING_DIR", &wd)
        .env("AZ_BATCH_HOST_LIST", hosts);
    for (k, v) in extra {
        cmd = cmd.env(k, v);
    }
    cmd
}

/// The plugin's plan on a pool of two VM-like nodes (`shipyard-vm-node`: own network, mount
/// and UTS namespaces, the node root at the same path on both), each running a host sshd on
/// port 23 in its namespaces: the job preparation runs on each node (the image tarball
/// unpacked into that node's shared directory), then the MPI task runs on node-0, whose host
/// `mpirun` / `mpiexec` reaches node-1 over ssh from `$AZ_BATCH_HOST_LIST`. 2 ranks per node,
/// Open MPI and MPICH: 4 ranks, both hostnames, allreduce and the task's variable checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charliecloud_plans_run_across_two_vm_nodes_over_host_sshd() {
    let Some((ompi, mpich)) = require_all() else {
        return;
    };
    let scratch = Node::new(); // under target/, outside /tmp
    let tar = export_image(&scratch.root.path().join("image"));
    let pool = shipyard_vm_node::VmPool::builder()
        .nodes(2)
        .state_dir(scratch.root.path().join("vm-state"))
        .create()
        .expect("create 2 VM-like nodes (needs root, iproute2, iptables, dockerd)");
    let nodes = pool.nodes();
    let hosts = nodes
        .iter()
        .map(|n| n.address().to_string())
        .collect::<Vec<_>>()
        .join(",");

    // ssh material: a host key, a client key authorized for root, and the `ssh` the launchers
    // find first on PATH (port 23, that key); the private key never leaves this directory
    let ssh = scratch.root.path().join("ssh");
    let bin = scratch.root.path().join("bin");
    std::fs::create_dir_all(&ssh).expect("mkdir ssh");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    keygen(&ssh.join("host_key"));
    keygen(&ssh.join("id"));
    std::fs::copy(ssh.join("id.pub"), ssh.join("authorized_keys")).expect("authorized_keys");
    let wrapper = bin.join("ssh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec /usr/bin/ssh -p 23 -i {} -o IdentitiesOnly=yes -o LogLevel=error \"$@\"\n",
            ssh.join("id").display()
        ),
    )
    .expect("write ssh wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod the ssh wrapper");
    std::fs::create_dir_all("/run/sshd").expect("sshd privilege separation dir");
    let mut sshds = Vec::new();
    for node in nodes {
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        let log = ssh.join(format!("sshd-{}.log", node.name()));
        let p = node
            .command("/usr/sbin/sshd")
            .args(["-D", "-f", "/dev/null", "-E"])
            .arg(&log)
            .args(["-o", &format!("ListenAddress={}:23", node.address())])
            .args(["-o", &opt("HostKey", &ssh.join("host_key"))])
            .args([
                "-o",
                &opt("AuthorizedKeysFile", &ssh.join("authorized_keys")),
            ])
            .args(["-o", "StrictModes=no", "-o", "PasswordAuthentication=no"])
            .args(["-o", "KbdInteractiveAuthentication=no", "-o", "UsePAM=no"])
            .args([
                "-o",
                "PermitRootLogin=prohibit-password",
                "-o",
                "PidFile=none",
            ])
            .spawn()
            .expect("start sshd on the node");
        sshds.push(p);
    }
    // node-0 reaches both sshds through the bridge
    for node in nodes {
        let probe = format!(
            "for i in $(seq 100); do bash -c 'exec 3<>/dev/tcp/{}/23' 2>/dev/null && exit 0; sleep 0.1; done; exit 1",
            node.address()
        );
        let out = nodes[0]
            .command("sh")
            .args(["-c", &probe])
            .output()
            .await
            .expect("probe sshd");
        assert_eq!(out.code, Some(0), "sshd of {} not reachable", node.name());
    }

    for (kind, launcher, options) in [
        (
            MpiKind::OpenMpi,
            &ompi.launcher,
            r#"["--mca", "btl_tcp_if_include", "eth0", "--mca", "oob_tcp_if_include", "eth0"]"#,
        ),
        (MpiKind::Mpich, &mpich.launcher, r#"["-iface", "eth0"]"#),
    ] {
        let mut text = mpi_job(&tar, kind, launcher)
            .replace("num_instances = 1", "num_instances = 2")
            .replace(
                "processes_per_node = 4",
                &format!("processes_per_node = 2\n        options = {options}"),
            );
        if kind == MpiKind::Mpich {
            // The VM-like nodes share one kernel, so UCX (MPICH's ch4 device) takes ranks of
            // different nodes for neighbours (same boot id) and maps their shared memory through
            // /proc/<pid>/fd, which a rank in another node's container may not open. Named
            // segments in the (common) /dev/shm work for both cases.
            text = text.replace(
                "HELLO_PRINT_ENV = \"SHIPYARD_VALUE\"",
                "HELLO_PRINT_ENV = \"SHIPYARD_VALUE\", UCX_POSIX_USE_PROC_LINK = \"n\"",
            );
            assert!(text.contains("UCX_POSIX_USE_PROC_LINK"));
        }
        let plan = plan_on(&text, pool_of(2));
        let prep = plan.job.job_preparation_task.as_ref().expect("prep task");
        for node in nodes {
            let t = std::time::Instant::now();
            let out = vm_task(
                node,
                "jobpreparation",
                &prep.command_line,
                &hosts,
                &bin,
                &[],
            )
            .output()
            .await
            .expect("run the preparation");
            assert_eq!(
                out.code,
                Some(0),
                "prep on {}: {}\n{}",
                node.name(),
                out.stdout_text(),
                out.stderr_text()
            );
            eprintln!(
                "charliecloud: {} preparation on {} {:.2}s",
                kind.short(),
                node.name(),
                t.elapsed().as_secs_f64()
            );
        }
        // Batch creates the task's directory on every node of a multi-instance task
        for node in nodes {
            std::fs::create_dir_all(node.root_on_host().join("workitems/job/job-1/mpi/wd"))
                .expect("mkdir the task dir");
        }
        let t = std::time::Instant::now();
        let out = vm_task(
            &nodes[0],
            "mpi",
            &plan.tasks[0].command_line,
            &hosts,
            &bin,
            &task_env(&plan),
        )
        .output()
        .await
        .expect("run the MPI task");
        let stdout = out.stdout_text();
        assert_eq!(
            out.code,
            Some(0),
            "{} task: {stdout}\n{}",
            kind.short(),
            out.stderr_text()
        );
        eprintln!(
            "charliecloud: {} 4 ranks on 2 VM-like nodes {:.2}s",
            kind.short(),
            t.elapsed().as_secs_f64()
        );
        let report = HelloReport::parse(&stdout);
        report.assert_complete(4);
        assert_eq!(
            report.hosts(),
            vec!["node-0".to_string(), "node-1".to_string()],
            "{stdout}"
        );
        assert_eq!(
            stdout.matches("SHIPYARD_VALUE=forwarded-ok").count(),
            4,
            "every rank sees the task's variable: {stdout}"
        );
    }
    // the launchers reached node-1 through its sshd (node-0 may start its own ranks directly)
    let log = std::fs::read_to_string(ssh.join("sshd-node-1.log")).expect("sshd log of node-1");
    assert!(
        log.contains("Accepted publickey for root"),
        "node-1's sshd: {log}"
    );
    for p in &sshds {
        p.killer().kill().await.expect("kill sshd");
    }
    drop(sshds);
    pool.delete();
}
