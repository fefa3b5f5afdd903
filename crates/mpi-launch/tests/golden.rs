//! Golden tests: exact argv, environment, hostfiles and rendered lines for every flavour and
//! option.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use pretty_assertions::assert_eq;
use shipyard_mpi_launch::*;

const SSH23: &str = "-p 23 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=10";
const SSH: &str =
    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=10";
const COUNT: &str = r#"$(printf '%s\n' "${AZ_BATCH_HOST_LIST}" | tr ',' '\n' | grep -c .)"#;

fn two_hosts(f: Flavor) -> LaunchRequest {
    LaunchRequest::new(f)
        .hosts(Hosts::list(["10.0.0.4", "10.0.0.5"]))
        .ppn(Ppn::Count(2))
        .program("/app/hello")
        .args(["-v", "a b"])
}

fn argv(plan: &LaunchPlan) -> Vec<String> {
    plan.resolve(&RunEnv::new()).expect("literal plan").argv
}

fn env(plan: &LaunchPlan) -> Vec<(String, String)> {
    plan.resolve(&RunEnv::new()).expect("literal plan").env
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

// ----------------------------------------------------------------------------- Open MPI

#[test]
fn openmpi_literal_hosts() {
    let plan = two_hosts(Flavor::OpenMpi)
        .launcher("/usr/bin/mpirun.openmpi")
        .run_as_root(true)
        .ssh_port(23)
        .build()
        .unwrap();
    assert_eq!(
        argv(&plan),
        strs(&[
            "/usr/bin/mpirun.openmpi",
            "--allow-run-as-root",
            "-np",
            "4",
            "--host",
            "10.0.0.4:2,10.0.0.5:2",
            "--map-by",
            "ppr:2:node",
            "--mca",
            "plm_rsh_args",
            SSH23,
            "/app/hello",
            "-v",
            "a b",
        ])
    );
    assert_eq!(
        env(&plan),
        pairs(&[("OMPI_MCA_btl_vader_single_copy_mechanism", "none")])
    );
    assert_eq!(
        plan.render_sh(),
        format!("OMPI_MCA_btl_vader_single_copy_mechanism=none /usr/bin/mpirun.openmpi --allow-run-as-root -np 4 --host 10.0.0.4:2,10.0.0.5:2 --map-by ppr:2:node --mca plm_rsh_args '{SSH23}' /app/hello -v 'a b'")
    );
    assert!(plan.hostfile().is_none());
    assert_eq!(plan.literal_argv(), Some(argv(&plan)));
}

#[test]
fn openmpi_batch_hosts_all_cores() {
    let plan = LaunchRequest::new(Flavor::OpenMpi)
        .ppn(Ppn::AllCores)
        .program("/app/hello")
        .build()
        .unwrap();
    assert_eq!(
        plan.render_sh(),
        format!(
            "OMPI_MCA_btl_vader_single_copy_mechanism=none mpirun -np \"$(( {COUNT} * $(nproc) ))\" --host \"$(printf '%s\\n' \"${{AZ_BATCH_HOST_LIST}}\" | tr ',' '\\n' | grep . | sed \"s/\\$/:$(nproc)/\" | paste -sd, -)\" --map-by ppr:\"$(nproc)\":node --mca plm_rsh_args '{SSH}' /app/hello"
        )
    );
    let run = RunEnv::new()
        .var("AZ_BATCH_HOST_LIST", "10.0.0.4,10.0.0.5,10.0.0.6")
        .nproc(8);
    assert_eq!(
        plan.resolve(&run).unwrap().argv,
        strs(&[
            "mpirun",
            "-np",
            "24",
            "--host",
            "10.0.0.4:8,10.0.0.5:8,10.0.0.6:8",
            "--map-by",
            "ppr:8:node",
            "--mca",
            "plm_rsh_args",
            SSH,
            "/app/hello",
        ])
    );
    assert_eq!(
        plan.resolve(&RunEnv::new().nproc(2)).unwrap_err(),
        LaunchError::Unresolved {
            what: "variable AZ_BATCH_HOST_LIST".into()
        }
    );
    assert!(plan
        .resolve(&RunEnv::new().var("AZ_BATCH_HOST_LIST", "a"))
        .unwrap_err()
        .to_string()
        .contains("nproc"));
    // A host list without a single host is an input error, not `-np 0 --host ''`.
    for empty in ["", ",", ",,\n"] {
        let e = plan
            .resolve(&RunEnv::new().var("AZ_BATCH_HOST_LIST", empty).nproc(2))
            .unwrap_err();
        assert!(
            matches!(e, LaunchError::Invalid { field: "hosts", .. }),
            "{empty:?}: {e}"
        );
        assert!(e.to_string().contains("AZ_BATCH_HOST_LIST"), "{e}");
    }
}

#[test]
fn openmpi_every_option() {
    let plan = two_hosts(Flavor::OpenMpi)
        .ranks(6)
        .oversubscribe(true)
        .run_as_root(true)
        .extra_options(["--mca", "btl", "tcp,self"])
        .workdir("/work dir")
        .ssh_port(23)
        .ssh_option("IdentityFile", "/k/id")
        .ssh_option("ConnectTimeout", "3")
        .iface("lo")
        .env("FOO", "x y")
        .forward_env("PATH")
        .wall_clock(WallClock::new(60).grace(5))
        .build()
        .unwrap();
    let ssh = "-p 23 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=3 -o IdentityFile=/k/id";
    assert_eq!(
        argv(&plan),
        strs(&[
            "timeout",
            "-k",
            "5",
            "60",
            "mpirun",
            "--mca",
            "btl",
            "tcp,self",
            "--allow-run-as-root",
            "-np",
            "6",
            "--host",
            "10.0.0.4:2,10.0.0.5:2",
            "--oversubscribe",
            "-wdir",
            "/work dir",
            "--mca",
            "plm_rsh_args",
            ssh,
            "--mca",
            "btl_tcp_if_include",
            "lo",
            "--mca",
            "oob_tcp_if_include",
            "lo",
            "-x",
            "FOO",
            "-x",
            "PATH",
            "/app/hello",
            "-v",
            "a b",
        ])
    );
    assert_eq!(
        env(&plan),
        pairs(&[
            ("OMPI_MCA_btl_vader_single_copy_mechanism", "none"),
            ("FOO", "x y")
        ])
    );
}

#[test]
fn openmpi_5_uses_prrte_parameters() {
    let plan = two_hosts(Flavor::OpenMpi)
        .open_mpi_major(5)
        .iface("eth0")
        .build()
        .unwrap();
    assert_eq!(
        argv(&plan),
        strs(&[
            "mpirun",
            "-np",
            "4",
            "--host",
            "10.0.0.4:2,10.0.0.5:2",
            "--map-by",
            "ppr:2:node",
            "--prtemca",
            "plm_ssh_args",
            SSH,
            "--mca",
            "btl_tcp_if_include",
            "eth0",
            "--prtemca",
            "prte_if_include",
            "eth0",
            "/app/hello",
            "-v",
            "a b",
        ])
    );
}

#[test]
fn openmpi_hostfile() {
    let plan = two_hosts(Flavor::OpenMpi)
        .hostfile("/tmp/hosts")
        .build()
        .unwrap();
    let hf = plan.hostfile().unwrap();
    assert_eq!(
        hf.literal_contents().unwrap(),
        "10.0.0.4 slots=2\n10.0.0.5 slots=2\n"
    );
    assert_eq!(
        &argv(&plan)[..5],
        strs(&["mpirun", "-np", "4", "--hostfile", "/tmp/hosts"])
    );
    assert!(plan.render_sh().starts_with(
        "printf '%s\\n' '10.0.0.4 slots=2' '10.0.0.5 slots=2' > /tmp/hosts && OMPI_MCA_btl_vader_single_copy_mechanism=none mpirun -np 4 --hostfile /tmp/hosts --map-by ppr:2:node "
    ));
    let deferred = LaunchRequest::new(Flavor::OpenMpi)
        .ppn(Ppn::AllCores)
        .hostfile("hf")
        .program("p")
        .build()
        .unwrap();
    assert!(deferred.render_sh().starts_with(
        "printf '%s\\n' \"${AZ_BATCH_HOST_LIST}\" | tr ',' '\\n' | grep . | sed \"s/\\$/ slots=$(nproc)/\" > hf && "
    ));
    let run = RunEnv::new().var("AZ_BATCH_HOST_LIST", "a,,b").nproc(3);
    assert_eq!(
        deferred.resolve(&run).unwrap().hostfile,
        Some(("hf".to_string(), "a slots=3\nb slots=3\n".to_string()))
    );
}

// ----------------------------------------------------------------------------- Intel MPI

#[test]
fn intel_literal_hosts() {
    let plan = two_hosts(Flavor::IntelMpi).ssh_port(23).build().unwrap();
    assert_eq!(
        argv(&plan),
        strs(&[
            "mpiexec.hydra",
            "-n",
            "4",
            "-ppn",
            "2",
            "-hosts",
            "10.0.0.4,10.0.0.5",
            "-bootstrap",
            "ssh",
            "-bootstrap-exec-args",
            SSH23,
            "/app/hello",
            "-v",
            "a b",
        ])
    );
    assert_eq!(
        env(&plan),
        pairs(&[("I_MPI_FABRICS", "shm:ofi"), ("FI_PROVIDER", "tcp")])
    );
    assert_eq!(
        plan.render_sh(),
        format!("I_MPI_FABRICS=shm:ofi FI_PROVIDER=tcp mpiexec.hydra -n 4 -ppn 2 -hosts 10.0.0.4,10.0.0.5 -bootstrap ssh -bootstrap-exec-args '{SSH23}' /app/hello -v 'a b'")
    );
}

#[test]
fn intel_user_env_overrides_defaults() {
    // Batch Shipyard issue #339: hard-coded fabrics could not be overridden.
    let plan = two_hosts(Flavor::IntelMpi)
        .iface("ib0")
        .env("FI_PROVIDER", "verbs")
        .env("I_MPI_HYDRA_IFACE", "eth0")
        .build()
        .unwrap();
    assert_eq!(
        env(&plan),
        pairs(&[
            ("I_MPI_FABRICS", "shm:ofi"),
            ("FI_TCP_IFACE", "ib0"),
            ("FI_PROVIDER", "verbs"),
            ("I_MPI_HYDRA_IFACE", "eth0"),
        ])
    );
    let a = argv(&plan);
    assert_eq!(
        a[a.len() - 9..],
        strs(&[
            "-genv",
            "FI_PROVIDER",
            "verbs",
            "-genv",
            "I_MPI_HYDRA_IFACE",
            "eth0",
            "/app/hello",
            "-v",
            "a b"
        ])
    );
}

#[test]
fn intel_default_left_out_on_request() {
    // the caller knows the fabric is not libfabric's: no FI_PROVIDER at all, the other
    // default stays, and an explicit value is still set
    let plan = two_hosts(Flavor::IntelMpi)
        .without_default_env("FI_PROVIDER")
        .build()
        .unwrap();
    assert_eq!(env(&plan), pairs(&[("I_MPI_FABRICS", "shm:ofi")]));
    assert!(
        !plan.render_sh().contains("FI_PROVIDER"),
        "{}",
        plan.render_sh()
    );
    let plan = two_hosts(Flavor::IntelMpi)
        .without_default_env("FI_PROVIDER")
        .env("FI_PROVIDER", "verbs")
        .build()
        .unwrap();
    assert_eq!(
        env(&plan),
        pairs(&[("I_MPI_FABRICS", "shm:ofi"), ("FI_PROVIDER", "verbs")])
    );
}

#[test]
fn command_output_is_read_on_the_node() {
    let key = Word::deferred(Deferred::Output("cat /wd/KEY".into()));
    let plan = two_hosts(Flavor::OpenMpi)
        .env("UCX_IB_PKEY", key)
        .build()
        .unwrap();
    let line = plan.render_sh();
    assert!(
        line.starts_with(
            "OMPI_MCA_btl_vader_single_copy_mechanism=none UCX_IB_PKEY=\"$(cat /wd/KEY)\" mpirun "
        ),
        "{line}"
    );
    assert!(line.contains(" -x UCX_IB_PKEY "), "{line}");
    // only a shell can resolve it
    let e = plan.resolve(&RunEnv::new()).unwrap_err();
    assert!(e.to_string().contains("$(cat /wd/KEY)"), "{e}");
    // and cmd.exe has no form for it
    let plan = LaunchRequest::new(Flavor::MsMpi)
        .hosts(Hosts::list(["a"]))
        .program("app.exe")
        .env("K", Word::deferred(Deferred::Output("type k".into())))
        .build()
        .unwrap();
    assert!(plan.render_cmd().is_err());
}

#[test]
fn intel_deferred_hosts_forward_and_workdir() {
    let plan = LaunchRequest::new(Flavor::IntelMpi)
        .launcher("/opt/intel/mpi/bin/mpiexec.hydra")
        .ppn(Ppn::Count(4))
        .workdir(Word::var("AZ_BATCH_TASK_WORKING_DIR"))
        .forward_env("LD_LIBRARY_PATH")
        .program("./a.out")
        .build()
        .unwrap();
    assert_eq!(
        plan.render_sh(),
        format!("I_MPI_FABRICS=shm:ofi FI_PROVIDER=tcp /opt/intel/mpi/bin/mpiexec.hydra -n \"$(( {COUNT} * 4 ))\" -ppn 4 -hosts \"${{AZ_BATCH_HOST_LIST}}\" -wdir \"${{AZ_BATCH_TASK_WORKING_DIR}}\" -bootstrap ssh -bootstrap-exec-args '{SSH}' -genv LD_LIBRARY_PATH \"${{LD_LIBRARY_PATH}}\" ./a.out")
    );
    let run = RunEnv::new()
        .var("AZ_BATCH_HOST_LIST", "h1,h2")
        .var("AZ_BATCH_TASK_WORKING_DIR", "/mnt/wd")
        .var("LD_LIBRARY_PATH", "/lib");
    assert_eq!(
        plan.resolve(&run).unwrap().argv,
        strs(&[
            "/opt/intel/mpi/bin/mpiexec.hydra",
            "-n",
            "8",
            "-ppn",
            "4",
            "-hosts",
            "h1,h2",
            "-wdir",
            "/mnt/wd",
            "-bootstrap",
            "ssh",
            "-bootstrap-exec-args",
            SSH,
            "-genv",
            "LD_LIBRARY_PATH",
            "/lib",
            "./a.out",
        ])
    );
}

#[test]
fn intel_machinefile_keeps_counts() {
    let plan = two_hosts(Flavor::IntelMpi).hostfile("m").build().unwrap();
    assert_eq!(
        plan.hostfile().unwrap().literal_contents().unwrap(),
        "10.0.0.4:2\n10.0.0.5:2\n"
    );
    assert_eq!(
        &argv(&plan)[..5],
        strs(&["mpiexec.hydra", "-n", "4", "-machinefile", "m"])
    );
}

// ----------------------------------------------------------------------------- MPICH

#[test]
fn mpich_literal_hosts() {
    let plan = two_hosts(Flavor::Mpich)
        .launcher("/usr/bin/mpiexec.mpich")
        .ssh_port(23)
        .iface("lo")
        .workdir("/w")
        .env("A", "1")
        .forward_env("B")
        .wall_clock(WallClock::new(30))
        .build()
        .unwrap();
    assert_eq!(
        plan.resolve(&RunEnv::new().var("B", "bee")).unwrap().argv,
        strs(&[
            "timeout",
            "-k",
            "10",
            "30",
            "/usr/bin/mpiexec.mpich",
            "-n",
            "4",
            "-ppn",
            "2",
            "-hosts",
            "10.0.0.4,10.0.0.5",
            "-wdir",
            "/w",
            "-launcher",
            "ssh",
            "-iface",
            "lo",
            "-genv",
            "A",
            "1",
            "-genv",
            "B",
            "bee",
            "/app/hello",
            "-v",
            "a b",
        ])
    );
    assert_eq!(
        plan.render_sh(),
        format!("HYDRA_LAUNCHER_EXTRA_ARGS='{SSH23}' A=1 timeout -k 10 30 /usr/bin/mpiexec.mpich -n 4 -ppn 2 -hosts 10.0.0.4,10.0.0.5 -wdir /w -launcher ssh -iface lo -genv A 1 -genv B \"${{B}}\" /app/hello -v 'a b'")
    );
}

#[test]
fn mpich_user_overrides_launcher_extra_args() {
    let plan = two_hosts(Flavor::Mpich)
        .env("HYDRA_LAUNCHER_EXTRA_ARGS", "-F /cfg")
        .build()
        .unwrap();
    assert_eq!(
        env(&plan),
        pairs(&[("HYDRA_LAUNCHER_EXTRA_ARGS", "-F /cfg")])
    );
}

#[test]
fn mpich_hostfile_and_mvapich_name() {
    let f: Flavor = "MVAPICH".parse().unwrap();
    let plan = two_hosts(f).hostfile("/h f").build().unwrap();
    assert_eq!(
        plan.hostfile().unwrap().literal_contents().unwrap(),
        "10.0.0.4:2\n10.0.0.5:2\n"
    );
    assert!(plan.render_sh().starts_with(
        "printf '%s\\n' 10.0.0.4:2 10.0.0.5:2 > '/h f' && HYDRA_LAUNCHER_EXTRA_ARGS="
    ));
    assert_eq!(
        &argv(&plan)[..5],
        strs(&["mpiexec", "-n", "4", "-f", "/h f"])
    );
}

// ----------------------------------------------------------------------------- MS-MPI

#[test]
fn msmpi_literal_hosts_and_cmd() {
    let plan = two_hosts(Flavor::MsMpi)
        .launcher(r"C:\Program Files\Microsoft MPI\Bin\mpiexec.exe")
        .workdir(Word::var("AZ_BATCH_TASK_SHARED_DIR"))
        .env("MSG", "50% & \"more\"")
        .forward_env("PATH")
        .forward_env("TEMP")
        .wall_clock(WallClock::new(3600))
        .build()
        .unwrap();
    assert!(plan.env().is_empty());
    assert_eq!(
        plan.resolve(&RunEnv::new().var("AZ_BATCH_TASK_SHARED_DIR", r"D:\s"))
            .unwrap()
            .argv,
        strs(&[
            r"C:\Program Files\Microsoft MPI\Bin\mpiexec.exe",
            "-hosts",
            "2",
            "10.0.0.4",
            "2",
            "10.0.0.5",
            "2",
            "-wdir",
            r"D:\s",
            "-genv",
            "MSG",
            "50% & \"more\"",
            "-genvlist",
            "PATH,TEMP",
            "-timeout",
            "3600",
            "/app/hello",
            "-v",
            "a b",
        ])
    );
    assert_eq!(
        plan.render_cmd().unwrap(),
        r#"^"C:\Program Files\Microsoft MPI\Bin\mpiexec.exe^" -hosts 2 10.0.0.4 2 10.0.0.5 2 -wdir ^"%AZ_BATCH_TASK_SHARED_DIR%^" -genv MSG ^"50^% ^& \^"more\^"^" -genvlist PATH,TEMP -timeout 3600 /app/hello -v ^"a b^""#
    );
    assert_eq!(
        batch_cmd_command_line("mpiexec -c 1 app.exe"),
        "cmd /c mpiexec -c 1 app.exe"
    );
}

#[test]
fn msmpi_ccp_nodes() {
    let plan = LaunchRequest::new(Flavor::MsMpi)
        .program("app.exe")
        .build()
        .unwrap();
    assert_eq!(plan.render_cmd().unwrap(), "mpiexec -c 1 app.exe");
    let plan = LaunchRequest::new(Flavor::MsMpi)
        .ppn(Ppn::AllCores)
        .ranks(16)
        .program("app.exe")
        .build()
        .unwrap();
    assert_eq!(plan.render_cmd().unwrap(), "mpiexec -n 16 app.exe");
}

#[test]
fn cmd_quoting_follows_windows_argv_rules() {
    let plan = LaunchRequest::new(Flavor::MsMpi)
        .program("a.exe")
        .args([
            "",
            r"a\b",
            r"tail\",
            r#"q"uote"#,
            r#"bs\"q"#,
            "(x)|<y>^!",
            "tab\tx",
            r"C:\my dir\",
        ])
        .build()
        .unwrap();
    assert_eq!(
        plan.render_cmd().unwrap(),
        r#"mpiexec -c 1 a.exe ^"^" a\b tail\ ^"q\^"uote^" ^"bs\\\^"q^" ^(x^)^|^<y^>^^^! ^"tab	x^" ^"C:\my dir\\^""#
    );
    let bad = LaunchRequest::new(Flavor::MsMpi)
        .program("a.exe")
        .arg("two\nlines")
        .build()
        .unwrap();
    assert!(matches!(
        bad.render_cmd(),
        Err(LaunchError::Unsupported { field: "argv", .. })
    ));
    let not_ms = two_hosts(Flavor::Mpich).build().unwrap();
    assert!(matches!(
        not_ms.render_cmd(),
        Err(LaunchError::Unsupported {
            field: "render_cmd",
            ..
        })
    ));
}

// ----------------------------------------------------------------------------- containers

#[test]
fn singularity_wrapper() {
    let plan = two_hosts(Flavor::Mpich)
        .container(
            Container::singularity("library://u/c/img:1")
                .bind("/mnt/batch", "/mnt/batch")
                .bind_ro("/data", "/in")
                .bind(
                    Word::var("AZ_BATCH_NODE_ROOT_DIR"),
                    Word::var("AZ_BATCH_NODE_ROOT_DIR"),
                )
                .pwd(Word::var("AZ_BATCH_TASK_WORKING_DIR"))
                .nv(true)
                .env("OMP_NUM_THREADS", "2")
                .option("--writable-tmpfs"),
        )
        .build()
        .unwrap();
    assert_eq!(
        plan.render_sh(),
        format!("HYDRA_LAUNCHER_EXTRA_ARGS='{SSH}' SINGULARITYENV_OMP_NUM_THREADS=2 mpiexec -n 4 -ppn 2 -hosts 10.0.0.4,10.0.0.5 -launcher ssh -genv SINGULARITYENV_OMP_NUM_THREADS 2 singularity exec --bind /mnt/batch:/mnt/batch --bind /data:/in:ro --bind \"${{AZ_BATCH_NODE_ROOT_DIR}}\":\"${{AZ_BATCH_NODE_ROOT_DIR}}\" --pwd \"${{AZ_BATCH_TASK_WORKING_DIR}}\" --nv --writable-tmpfs library://u/c/img:1 /app/hello -v 'a b'")
    );
}

#[test]
fn apptainer_wrapper_open_mpi() {
    let plan = two_hosts(Flavor::OpenMpi)
        .container(
            Container::apptainer("img.sif")
                .program("/usr/bin/apptainer")
                .env("X", "1"),
        )
        .build()
        .unwrap();
    let a = argv(&plan);
    assert_eq!(
        a[a.len() - 9..],
        strs(&[
            SSH,
            "-x",
            "APPTAINERENV_X",
            "/usr/bin/apptainer",
            "exec",
            "img.sif",
            "/app/hello",
            "-v",
            "a b",
        ])
    );
    assert!(env(&plan).contains(&("APPTAINERENV_X".to_string(), "1".to_string())));
}

// ----------------------------------------------------------------------------- names, errors

#[test]
fn flavor_names() {
    for (name, f) in [
        ("openmpi", Flavor::OpenMpi),
        ("OpenMPI", Flavor::OpenMpi),
        ("intelmpi", Flavor::IntelMpi),
        ("IntelMPI-OFA", Flavor::IntelMpi),
        ("mpich", Flavor::Mpich),
        ("mvapich", Flavor::Mpich),
        ("MSMPI", Flavor::MsMpi),
    ] {
        assert_eq!(name.parse::<Flavor>().unwrap(), f, "{name}");
    }
    let err = "lam".parse::<Flavor>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown MPI flavour \"lam\" in `flavor`; known names: openmpi, intelmpi, intelmpi-ofa, mpich, mvapich, msmpi"
    );
    for f in Flavor::ALL {
        assert_eq!(f.to_string().parse::<Flavor>().unwrap(), f);
    }
}

fn field_of(e: &LaunchError) -> &'static str {
    match e {
        LaunchError::UnknownFlavor { field, .. }
        | LaunchError::Invalid { field, .. }
        | LaunchError::NulByte { field }
        | LaunchError::Unsupported { field, .. } => field,
        LaunchError::TooManyRanks { .. } => "ranks",
        _ => "?",
    }
}

#[test]
fn invalid_requests_name_the_field() {
    let ok = || two_hosts(Flavor::OpenMpi);
    let cases: Vec<(LaunchRequest, &str)> = vec![
        (ok().ranks(0), "ranks"),
        (ok().ppn(Ppn::Count(0)), "ppn"),
        (ok().ranks(5), "ranks"),
        (ok().program(""), "program"),
        (ok().arg("a\0b"), "args"),
        (ok().extra_option("\0"), "extra_options"),
        (ok().launcher(""), "launcher"),
        (ok().hosts(Hosts::List(vec![])), "hosts"),
        (ok().hosts(Hosts::list(["a b"])), "hosts"),
        (ok().hosts(Hosts::list(["a:2"])), "hosts"),
        (ok().hosts(Hosts::Env("1BAD".into())), "hosts"),
        (ok().env("A-B", "x"), "env"),
        (ok().env("A", "x\0"), "env"),
        (ok().forward_env("A B"), "forward_env"),
        (ok().ssh_port(0), "ssh_port"),
        (ok().ssh_option("IdentityFile", "/a b"), "ssh_options"),
        (ok().iface("e th0"), "iface"),
        (ok().wall_clock(WallClock::new(0)), "wall_clock"),
        (ok().workdir("/a\0"), "workdir"),
        (
            ok().container(Container::singularity("")),
            "container.image",
        ),
        (
            ok().container(Container::singularity("i").bind("/a,b", "/c")),
            "container.binds",
        ),
        (ok().flavor(Flavor::MsMpi).ssh_port(23), "ssh_port"),
        (ok().flavor(Flavor::MsMpi).iface("eth0"), "iface"),
        (
            ok().flavor(Flavor::MsMpi)
                .container(Container::singularity("i")),
            "container",
        ),
        (ok().flavor(Flavor::MsMpi).ranks(3), "ranks"),
        (ok().flavor(Flavor::MsMpi).ppn(Ppn::AllCores), "ppn"),
        (
            ok().flavor(Flavor::MsMpi)
                .hosts(Hosts::batch())
                .hostfile("h"),
            "hostfile",
        ),
    ];
    for (req, field) in cases {
        let err = req.build().expect_err(field);
        assert_eq!(field_of(&err), field, "{err}");
        assert!(
            err.to_string().contains(field),
            "message must name {field}: {err}"
        );
    }
    let e = ok().ranks(5).build().unwrap_err();
    assert_eq!(
        e,
        LaunchError::TooManyRanks {
            ranks: 5,
            nodes: 2,
            ppn: 2,
            capacity: 4
        }
    );
    // With oversubscription, or when the capacity is only known at run time, it is allowed.
    assert!(ok().ranks(5).oversubscribe(true).build().is_ok());
    assert!(ok().ranks(5).hosts(Hosts::batch()).build().is_ok());
}

#[test]
fn sh_quoting_edge_cases() {
    assert_eq!(sh_quote(""), "''");
    assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    assert_eq!(sh_quote("$HOME"), "'$HOME'");
    assert_eq!(sh_quote("--x=1,2:3"), "--x=1,2:3");
    assert_eq!(sh_quote_always("ok"), "'ok'");
    assert_eq!(
        batch_sh_command_line("a 'b'"),
        r"/bin/bash -c 'a '\''b'\'''"
    );
    // An argv[0] that looks like an assignment or a reserved word is quoted.
    let plan = LaunchRequest::new(Flavor::Mpich)
        .launcher("A=b")
        .program("p")
        .build()
        .unwrap();
    assert!(plan.render_sh().contains(" 'A=b' -n"));
    let plan = LaunchRequest::new(Flavor::MsMpi)
        .launcher("if")
        .program("p")
        .build()
        .unwrap();
    assert_eq!(plan.render_sh(), "'if' -c 1 p");
}
