//! Real launches of the command lines `shipyard-mpi-launch` renders, for Open MPI, MPICH and
//! Intel MPI: every test runs `sh -c '<LaunchPlan::render_sh()>'` and checks what really happened.
//!
//! - localhost, 4 ranks on this 2-core machine (Open MPI gets `localhost:4` slots): the rank
//!   count and the allreduce from the smoke-test program, `HELLO_EXPECT_SIZE=4` against silent
//!   singletons; `HELLO_FAIL_RANK=1` makes the launcher exit non-zero; a user value replaces a
//!   default environment value shipyard sets (printed by every rank via `HELLO_PRINT_ENV`).
//! - over ssh: sshd on port 23 at two loopback addresses per flavour (nothing on port 22), 4
//!   ranks, 2 per "node"; the sshd logs must show the logins on both nodes.
//! - the host-launcher-wraps-container form (`mpirun ... apptainer exec ... IMAGE prog`), with a
//!   stand-in `apptainer` script (no container runtime here) that checks the argument shape,
//!   applies `--pwd` and `APPTAINERENV_*` as the real one does and runs the program: every rank
//!   must go through it.
//! - an unreachable node (127.0.0.9, nothing listening): the launch ends non-zero within a
//!   bounded time (MPICH hangs by itself: the plan's wall-clock limit ends it).
//!
//! Timeouts: every launch carries a wall-clock limit in its plan (`timeout -k 5 <secs>`): 120 s
//! for the localhost and ssh launches, 20 s for the unreachable node; a test fails when its
//! launch exceeds it (exit 124). Addresses: Open MPI 127.0.0.2/.3, MPICH .4/.5, Intel .6/.7, so
//! tests can run concurrently.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::Context;
use shipyard_e2e::sshd::{port_open, SshNodes, SSH_PORT};
use shipyard_e2e::{hello_binary, require_mpi, HelloReport, MpiInstall, MpiKind};
use shipyard_mpi_launch::{Container, Flavor, Hosts, LaunchRequest, Ppn, WallClock};

const LAUNCH_LIMIT_SECS: u32 = 120;
const UNREACHABLE_LIMIT_SECS: u32 = 20;

fn flavor(kind: MpiKind) -> Flavor {
    match kind {
        MpiKind::OpenMpi => Flavor::OpenMpi,
        MpiKind::Mpich => Flavor::Mpich,
        MpiKind::IntelMpi => Flavor::IntelMpi,
    }
}

/// The request every test starts from: this host's launcher, run as root, the smoke test.
fn base(install: &MpiInstall) -> anyhow::Result<LaunchRequest> {
    let hello = hello_binary(install)?;
    Ok(LaunchRequest::new(flavor(install.kind))
        .launcher(install.launcher.display().to_string())
        .run_as_root(true)
        .wall_clock(WallClock::new(LAUNCH_LIMIT_SECS).grace(5))
        .program(hello.display().to_string()))
}

/// 4 ranks on localhost (Open MPI: 4 slots).
fn local4(install: &MpiInstall) -> anyhow::Result<LaunchRequest> {
    Ok(base(install)?
        .hosts(Hosts::list(["localhost"]))
        .ppn(Ppn::Count(4))
        .env("HELLO_EXPECT_SIZE", "4"))
}

/// Runs the rendered line with `sh -c`, with the install's environment (Intel MPI's root).
fn run(install: &MpiInstall, req: &LaunchRequest) -> anyhow::Result<(Output, Duration, String)> {
    let line = req.build()?.render_sh();
    eprintln!("launch: {line}");
    let started = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(&line)
        .envs(install.env.iter().map(|(k, v)| (k, v)))
        .output()
        .context("running sh")?;
    let took = started.elapsed();
    eprintln!(
        "exit {:?} after {:.1}s\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        took.as_secs_f64(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out, took, line))
}

fn local_four_ranks(kind: MpiKind) -> anyhow::Result<()> {
    let Some(install) = require_mpi(kind) else {
        return Ok(());
    };
    let (out, _, line) = run(&install, &local4(&install)?)?;
    assert!(out.status.success(), "launch failed: {line}");
    report(&out.stdout).assert_complete(4);
    Ok(())
}

fn failing_rank_fails_launch(kind: MpiKind) -> anyhow::Result<()> {
    let Some(install) = require_mpi(kind) else {
        return Ok(());
    };
    let req = local4(&install)?.env("HELLO_FAIL_RANK", "1");
    let (out, _, line) = run(&install, &req)?;
    let code = out.status.code();
    assert!(
        code.is_some_and(|c| c != 0),
        "exit {code:?} must be non-zero: {line}"
    );
    assert_ne!(
        code,
        Some(124),
        "the wall-clock limit fired instead: {line}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rank=1 failing on purpose"),
        "rank 1 did not fail: {err}"
    );
    Ok(())
}

/// The default shipyard sets for `var`, and a user value that must replace it.
fn override_case(kind: MpiKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        MpiKind::OpenMpi => (
            "OMPI_MCA_btl_vader_single_copy_mechanism",
            "none",
            "emulated",
        ),
        MpiKind::Mpich => ("HYDRA_LAUNCHER_EXTRA_ARGS", "-o", "-q"),
        MpiKind::IntelMpi => ("I_MPI_FABRICS", "shm:ofi", "ofi"),
    }
}

/// The smoke-test program writes its `hello` line in several `printf` calls, and under hydra
/// (MPICH, Intel MPI) rank stdout is unbuffered, so lines of different ranks can interleave at
/// those boundaries (`host=vmhello rank=0 ...`). Start every record on its own line again.
fn split_records(stdout: &str) -> String {
    stdout
        .replace("hello rank=", "\nhello rank=")
        .replace("allreduce sum=", "\nallreduce sum=")
}

/// Parses the program's output, tolerating interleaved lines (see [`split_records`]).
fn report(stdout: &[u8]) -> HelloReport {
    HelloReport::parse(&split_records(&String::from_utf8_lossy(stdout)))
}

/// Every ` VAR=value` the ranks printed (each value runs to the end of its fragment).
fn printed_values(stdout: &str, var: &str) -> Vec<String> {
    let key = format!(" {var}=");
    let mut values = Vec::new();
    for line in split_records(stdout).lines() {
        for (i, _) in line.match_indices(&key) {
            values.push(line[i + key.len()..].to_string());
        }
    }
    values
}

fn user_env_overrides_default(kind: MpiKind) -> anyhow::Result<()> {
    let Some(install) = require_mpi(kind) else {
        return Ok(());
    };
    let (var, default_prefix, user) = override_case(kind);
    // Without an override, the ranks see shipyard's default ...
    let req = local4(&install)?.env("HELLO_PRINT_ENV", var);
    let (out, _, line) = run(&install, &req)?;
    assert!(out.status.success(), "launch failed: {line}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    report(stdout.as_bytes()).assert_complete(4);
    let seen = printed_values(&stdout, var);
    assert_eq!(seen.len(), 4, "{stdout}");
    assert!(
        seen.iter().all(|v| v.starts_with(default_prefix)),
        "default {var}: {seen:?}"
    );
    // ... and with one, the user's value.
    let req = req.env(var, user);
    let (out, _, line) = run(&install, &req)?;
    assert!(out.status.success(), "launch failed: {line}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    report(stdout.as_bytes()).assert_complete(4);
    assert_eq!(
        printed_values(&stdout, var),
        vec![user.to_string(); 4],
        "{stdout}"
    );
    Ok(())
}

fn nodes_for(kind: MpiKind) -> [&'static str; 2] {
    match kind {
        MpiKind::OpenMpi => ["127.0.0.2", "127.0.0.3"],
        MpiKind::Mpich => ["127.0.0.4", "127.0.0.5"],
        MpiKind::IntelMpi => ["127.0.0.6", "127.0.0.7"],
    }
}

/// The request for a launch over ssh to `hosts` (port 23, the harness's key, loopback NIC).
fn over_ssh(
    install: &MpiInstall,
    nodes: &SshNodes,
    hosts: &[&str],
) -> anyhow::Result<LaunchRequest> {
    let mut req = base(install)?
        .hosts(Hosts::list(hosts.iter().copied()))
        .ssh_port(SSH_PORT)
        .ssh_option("IdentityFile", nodes.identity_file().display().to_string())
        .ssh_option("IdentitiesOnly", "yes")
        .ssh_option("LogLevel", "ERROR")
        .iface("lo");
    if install.kind == MpiKind::OpenMpi {
        // Two fake nodes share one kernel and hostname: shared memory between them breaks.
        req = req.extra_options(["--mca", "btl", "tcp,self"]);
    }
    Ok(req)
}

fn two_nodes_over_ssh_port_23(kind: MpiKind) -> anyhow::Result<()> {
    let Some(install) = require_mpi(kind) else {
        return Ok(());
    };
    let addrs = nodes_for(kind);
    for a in addrs {
        assert!(
            !port_open(a, 22),
            "something listens on {a}:22; the test must prove port 23"
        );
    }
    let nodes = SshNodes::start(&addrs)?;
    let req = over_ssh(&install, &nodes, &addrs)?
        .ppn(Ppn::Count(2))
        .env("HELLO_EXPECT_SIZE", "4");
    let (out, _, line) = run(&install, &req)?;
    assert!(out.status.success(), "launch failed: {line}");
    report(&out.stdout).assert_complete(4);
    for a in addrs {
        let n = nodes.accepted_logins(a)?;
        assert!(
            n >= 1,
            "no ssh login reached {a}:{SSH_PORT}; log:\n{}",
            nodes.log(a)?
        );
        eprintln!("{a}:{SSH_PORT}: {n} accepted login(s)");
    }
    Ok(())
}

fn unreachable_node_ends_in_bounded_time(kind: MpiKind) -> anyhow::Result<()> {
    let Some(install) = require_mpi(kind) else {
        return Ok(());
    };
    let dead = "127.0.0.9";
    assert!(
        !port_open(dead, SSH_PORT),
        "something listens on {dead}:{SSH_PORT}"
    );
    // Nothing listens there, so the key is never used; any file path will do.
    let req = base(&install)?
        .hosts(Hosts::list([dead]))
        .ppn(Ppn::Count(1))
        .ssh_port(SSH_PORT)
        .ssh_option("IdentitiesOnly", "yes")
        .iface("lo")
        .wall_clock(WallClock::new(UNREACHABLE_LIMIT_SECS).grace(2));
    let (out, took, line) = run(&install, &req)?;
    let code = out.status.code();
    assert!(
        code.is_some_and(|c| c != 0),
        "exit {code:?} must be non-zero: {line}"
    );
    if kind != MpiKind::Mpich {
        // Open MPI and Intel MPI give up by themselves (255); only MPICH needs the limit.
        assert_ne!(
            code,
            Some(124),
            "{} hung until the wall-clock limit",
            kind.short()
        );
    }
    let bound = Duration::from_secs(u64::from(UNREACHABLE_LIMIT_SECS) + 15);
    assert!(took < bound, "took {took:?}, more than {bound:?}");
    eprintln!(
        "{}: unreachable node -> exit {code:?} after {:.1}s",
        kind.short(),
        took.as_secs_f64()
    );
    Ok(())
}

/// A stand-in for `apptainer`: checks `exec [--bind b]... [--pwd d] [--nv] IMAGE prog args`,
/// logs each invocation's working directory, exports `APPTAINERENV_X` as `X` and runs the program.
const STANDIN_APPTAINER: &str = r#"#!/bin/sh
set -eu
[ "$1" = exec ] || { echo "stand-in: expected exec, got $1" >&2; exit 97; }
shift
pwd_dir=
while [ $# -gt 0 ]; do
  case "$1" in
    --bind) shift 2 ;;
    --pwd) pwd_dir=$2; shift 2 ;;
    --nv) shift ;;
    -*) echo "stand-in: unexpected option $1" >&2; exit 97 ;;
    *) break ;;
  esac
done
[ "$1" = "@IMAGE@" ] || { echo "stand-in: unexpected image $1" >&2; exit 98; }
shift
eval "$(env | sed -n "s/^APPTAINERENV_\([A-Za-z_][A-Za-z0-9_]*\)=\([A-Za-z0-9_.-]*\)\$/export \1=\2/p")"
if [ -n "$pwd_dir" ]; then cd "$pwd_dir"; fi
pwd >> "@LOG@"
exec "$@"
"#;

fn container_wrapper_passes_through(kind: MpiKind) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(install) = require_mpi(kind) else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("invocations.log");
    let workdir = dir.path().join("work dir");
    std::fs::create_dir(&workdir)?;
    let image = "shipyard-test.sif";
    let script = dir.path().join("apptainer");
    std::fs::write(
        &script,
        STANDIN_APPTAINER
            .replace("@IMAGE@", image)
            .replace("@LOG@", &log.display().to_string()),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let req = local4(&install)?
        .env("HELLO_PRINT_ENV", "CONTAINER_VAR")
        .container(
            Container::apptainer(image)
                .program(script.display().to_string())
                .bind("/tmp", "/mnt/tmp")
                .pwd(workdir.display().to_string())
                .env("CONTAINER_VAR", "inside-the-container"),
        );
    let (out, _, line) = run(&install, &req)?;
    assert!(out.status.success(), "launch failed: {line}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    report(stdout.as_bytes()).assert_complete(4);
    assert_eq!(
        printed_values(&stdout, "CONTAINER_VAR"),
        vec!["inside-the-container".to_string(); 4],
        "{stdout}"
    );
    let dirs = std::fs::read_to_string(&log)?;
    assert_eq!(
        dirs.lines().collect::<Vec<_>>(),
        vec![workdir.display().to_string(); 4],
        "one stand-in run per rank, each in --pwd"
    );
    Ok(())
}

macro_rules! per_flavour {
    ($($name:ident => $body:ident;)*) => {
        $(
            mod $name {
                use super::*;
                #[test]
                fn openmpi() -> anyhow::Result<()> { $body(MpiKind::OpenMpi) }
                #[test]
                fn mpich() -> anyhow::Result<()> { $body(MpiKind::Mpich) }
                #[test]
                fn intel() -> anyhow::Result<()> { $body(MpiKind::IntelMpi) }
            }
        )*
    };
}

per_flavour! {
    local_four_ranks_complete => local_four_ranks;
    local_failing_rank_exits_non_zero => failing_rank_fails_launch;
    local_user_env_overrides_default => user_env_overrides_default;
    local_container_wrapper_passes_through => container_wrapper_passes_through;
    ssh_two_nodes_port_23 => two_nodes_over_ssh_port_23;
    ssh_unreachable_node_bounded => unreachable_node_ends_in_bounded_time;
}
