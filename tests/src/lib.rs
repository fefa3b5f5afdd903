//! Support code for shipyard's end-to-end tests: finding (or demanding) a Docker engine, the
//! MPI installations and the test image, and building the MPI smoke-test program.
//!
//! # Missing prerequisites
//!
//! A test that needs Docker or an MPI calls one of the `require_*` functions first. When the
//! prerequisite is missing:
//!
//! - under `CI=true` the function **panics**, so the test fails (CI never skips silently);
//! - otherwise it panics too, unless `SHIPYARD_TEST_ALLOW_SKIP=1` is set, in which case it prints
//!   a loud `SKIPPED:` line to stderr and returns `None`/`false` so the test can return early.
//!
//! `bash scripts/setup.sh` installs everything these functions look for.

pub mod sshd;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The image the test suite and the README example run: Debian bookworm with Open MPI, MPICH,
/// the Intel MPI runtime under `/opt/intel/mpi`, sshd, and the smoke-test program built for each
/// MPI under `/opt/shipyard/bin`. Built offline by `scripts/build-image.sh`.
pub const TEST_IMAGE: &str = "shipyard/mpi:bookworm";

/// Where the Intel MPI runtime (`impi-rt` from PyPI) is installed, on the host and in the image.
pub const IMPI_ROOT_DEFAULT: &str = "/opt/intel/mpi";

/// Path of the smoke-test program inside [`TEST_IMAGE`] for a flavour.
pub fn image_hello_path(kind: MpiKind) -> &'static str {
    match kind {
        MpiKind::OpenMpi => "/opt/shipyard/bin/mpi-hello-openmpi",
        MpiKind::Mpich => "/opt/shipyard/bin/mpi-hello-mpich",
        MpiKind::IntelMpi => "/opt/shipyard/bin/mpi-hello-impi",
    }
}

/// True when running under CI (`CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn allow_skip() -> bool {
    !in_ci() && std::env::var("SHIPYARD_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1")
}

/// Reports a missing prerequisite: panics (CI, or skipping not allowed) or prints a loud skip.
fn missing(what: &str) {
    let hint = "run `bash scripts/setup.sh` to install it";
    if allow_skip() {
        eprintln!("SKIPPED: {what} is missing ({hint})");
    } else {
        panic!("{what} is missing: {hint} (set SHIPYARD_TEST_ALLOW_SKIP=1 outside CI to skip)");
    }
}

/// Demands a running Docker engine (`docker info` answers).
pub fn require_docker() -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        missing("a running Docker engine");
    }
    ok
}

/// Demands `program` on PATH (`what` names it in the failure, e.g. Debian's docker-registry).
pub fn require_program(program: &str, what: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v '{program}' >/dev/null")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        missing(what);
    }
    ok
}

/// Demands a running Docker engine with [`TEST_IMAGE`] present.
pub fn require_test_image() -> bool {
    if !require_docker() {
        return false;
    }
    let ok = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", TEST_IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        missing(&format!("the Docker image {TEST_IMAGE}"));
    }
    ok
}

/// Demands Charliecloud's `ch-run` (package `charliecloud-runtime`) on `PATH`: `ch-run
/// --version` succeeds. Returns its version text (`0.31`), or `None` when skipping.
pub fn require_ch_run() -> Option<String> {
    let out = Command::new("ch-run")
        .arg("--version")
        .env("USER", "root")
        .output()
        .ok()
        .filter(|o| o.status.success());
    match out {
        // ch-run prints its version on stderr
        Some(o) => Some(
            String::from_utf8_lossy(if o.stdout.is_empty() {
                &o.stderr
            } else {
                &o.stdout
            })
            .trim()
            .to_string(),
        ),
        None => {
            missing("Charliecloud's ch-run (package charliecloud-runtime)");
            None
        }
    }
}

/// The MPI implementations the tests run for real.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MpiKind {
    /// Open MPI 4.1 from Debian.
    OpenMpi,
    /// MPICH 4.0 from Debian.
    Mpich,
    /// Intel MPI runtime from PyPI's `impi-rt`.
    IntelMpi,
}

impl MpiKind {
    /// All three installable flavours.
    pub const ALL: [MpiKind; 3] = [MpiKind::OpenMpi, MpiKind::Mpich, MpiKind::IntelMpi];

    /// A short lowercase name (`openmpi`, `mpich`, `impi`).
    pub fn short(self) -> &'static str {
        match self {
            MpiKind::OpenMpi => "openmpi",
            MpiKind::Mpich => "mpich",
            MpiKind::IntelMpi => "impi",
        }
    }
}

/// A host MPI installation: its launcher, compiler, and the environment the launcher needs.
#[derive(Debug, Clone)]
pub struct MpiInstall {
    /// Which implementation.
    pub kind: MpiKind,
    /// Absolute path of the launcher (`mpirun.openmpi`, `mpiexec.mpich`, `mpiexec.hydra`).
    pub launcher: PathBuf,
    /// The install root for Intel MPI (`I_MPI_ROOT`), `None` otherwise.
    pub root: Option<PathBuf>,
    /// Environment the launcher needs on this host (Intel MPI: `I_MPI_ROOT`, `LD_LIBRARY_PATH`,
    /// `FI_PROVIDER`).
    pub env: Vec<(String, String)>,
}

fn impi_root() -> PathBuf {
    std::env::var_os("SHIPYARD_IMPI_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(IMPI_ROOT_DEFAULT))
}

fn find_install(kind: MpiKind) -> Option<MpiInstall> {
    let (launcher, root, env) = match kind {
        MpiKind::OpenMpi => (PathBuf::from("/usr/bin/mpirun.openmpi"), None, vec![]),
        MpiKind::Mpich => (PathBuf::from("/usr/bin/mpiexec.mpich"), None, vec![]),
        MpiKind::IntelMpi => {
            let root = impi_root();
            let env = vec![
                ("I_MPI_ROOT".to_string(), root.display().to_string()),
                (
                    "LD_LIBRARY_PATH".to_string(),
                    root.join("lib").display().to_string(),
                ),
                ("FI_PROVIDER".to_string(), "tcp".to_string()),
            ];
            (root.join("bin/mpiexec.hydra"), Some(root), env)
        }
    };
    launcher.is_file().then_some(MpiInstall {
        kind,
        launcher,
        root,
        env,
    })
}

/// Demands a host MPI installation of `kind`.
pub fn require_mpi(kind: MpiKind) -> Option<MpiInstall> {
    let found = find_install(kind);
    if found.is_none() {
        missing(&format!("the {} MPI installation", kind.short()));
    }
    found
}

/// The repository root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where compiled test programs go: `target/shipyard-test-bin/`.
fn bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("shipyard-test-bin")
}

static COMPILE_LOCK: Mutex<()> = Mutex::new(());

/// Compiles `tests/assets/mpi_hello.c` for `install` on the host (once per process and
/// flavour; the result is reused while it is newer than the source) and returns its path.
///
/// Intel MPI's runtime ships no headers, so its binary is compiled with MPICH's headers and
/// linked against Intel's `libmpi.so.12` (the two share an ABI).
pub fn hello_binary(install: &MpiInstall) -> anyhow::Result<PathBuf> {
    let _guard = COMPILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let src = repo_root().join("tests/assets/mpi_hello.c");
    let dir = bin_dir();
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!("mpi-hello-{}", install.kind.short()));
    let fresh = match (std::fs::metadata(&out), std::fs::metadata(&src)) {
        (Ok(o), Ok(s)) => o.modified()? >= s.modified()?,
        _ => false,
    };
    if fresh {
        return Ok(out);
    }
    let tmp = dir.join(format!(
        "mpi-hello-{}.tmp{}",
        install.kind.short(),
        std::process::id()
    ));
    let mut cmd = match install.kind {
        MpiKind::OpenMpi => Command::new("mpicc.openmpi"),
        MpiKind::Mpich => Command::new("mpicc.mpich"),
        MpiKind::IntelMpi => {
            let lib = install
                .root
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("Intel MPI install without a root"))?
                .join("lib");
            let mut c = Command::new("cc");
            c.arg("-I/usr/include/x86_64-linux-gnu/mpich")
                .arg(format!("-L{}", lib.display()))
                .arg(format!("-Wl,-rpath,{}", lib.display()));
            c
        }
    };
    cmd.arg("-O2").arg("-o").arg(&tmp).arg(&src);
    if install.kind == MpiKind::IntelMpi {
        cmd.arg("-l:libmpi.so.12");
    }
    let output = cmd.output()?;
    if !output.status.success() {
        anyhow::bail!(
            "compiling {} for {} failed: {}",
            src.display(),
            install.kind.short(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// Parsed output of the smoke-test program.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HelloReport {
    /// One entry per `hello` line: (rank, size, host).
    pub ranks: Vec<(u32, u32, String)>,
    /// The `allreduce sum=` value printed by rank 0, if any.
    pub sum: Option<i64>,
    /// The `expected=` value printed by rank 0, if any.
    pub expected: Option<i64>,
}

impl HelloReport {
    /// Parses the program's stdout (lines from other sources are ignored).
    pub fn parse(stdout: &str) -> HelloReport {
        let mut report = HelloReport::default();
        for line in stdout.lines() {
            // Tolerate prefixes such as "[1,0]<stdout>:" or node tags before the payload.
            if let Some(pos) = line.find("hello rank=") {
                let fields = kv(&line[pos + "hello ".len()..]);
                let get = |k: &str| {
                    fields
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                };
                if let (Some(r), Some(s)) = (get("rank"), get("size")) {
                    if let (Ok(r), Ok(s)) = (r.parse(), s.parse()) {
                        report.ranks.push((r, s, get("host").unwrap_or_default()));
                    }
                }
            } else if let Some(pos) = line.find("allreduce sum=") {
                let fields = kv(&line[pos + "allreduce ".len()..]);
                for (k, v) in fields {
                    match k.as_str() {
                        "sum" => report.sum = v.parse().ok(),
                        "expected" => report.expected = v.parse().ok(),
                        _ => {}
                    }
                }
            }
        }
        report
    }

    /// Asserts a complete, correct run of `n` ranks: ranks 0..n each once, all with size `n`, and
    /// the allreduce sum equal to n(n-1)/2.
    pub fn assert_complete(&self, n: u32) {
        let mut seen: Vec<u32> = self.ranks.iter().map(|r| r.0).collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..n).collect::<Vec<_>>(),
            "ranks seen: {:?}",
            self.ranks
        );
        assert!(
            self.ranks.iter().all(|r| r.1 == n),
            "every rank must see size {n}: {:?}",
            self.ranks
        );
        let want = i64::from(n) * (i64::from(n) - 1) / 2;
        assert_eq!(self.sum, Some(want), "allreduce sum");
        assert_eq!(self.expected, Some(want), "allreduce expected");
    }

    /// The distinct hosts the ranks ran on.
    pub fn hosts(&self) -> Vec<String> {
        let mut h: Vec<String> = self.ranks.iter().map(|r| r.2.clone()).collect();
        h.sort();
        h.dedup();
        h
    }
}

fn kv(s: &str) -> Vec<(String, String)> {
    s.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Demands the azure-batch 15.1.0 Python SDK in the venv from scripts/setup.sh
/// (`SHIPYARD_PYVENV`, default /opt/shipyard/pyvenv); returns its python.
pub fn require_python_sdk() -> Option<PathBuf> {
    let venv = std::env::var_os("SHIPYARD_PYVENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/shipyard/pyvenv"));
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args([
            "-c",
            "import azure.batch, sys; sys.exit(0 if azure.batch.__version__ == '15.1.0' else 1)",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    missing(&format!(
        "the azure-batch 15.1.0 Python SDK in {}",
        venv.display()
    ));
    None
}

/// A command's exit status, stdout and stderr, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else `<repo>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Runs `cargo build -q <args>` in the repository (quick when up to date) and returns
/// `target/debug`, where the artifact is. Panics when the build fails.
pub fn cargo_build(args: &[&str]) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(repo_root())
        .arg("build")
        .arg("-q")
        .args(args)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build {args:?}");
    target_dir().join("debug")
}

/// The `shipyard` binary, built first if needed ([`cargo_build`]).
pub fn shipyard_bin() -> PathBuf {
    cargo_build(&["-p", "shipyard-cli", "--bin", "shipyard"]).join("shipyard")
}

/// A scratch directory under `target/` (outside `/tmp`, mode 0755 so that tasks running as a
/// non-admin user can read it), removed when dropped.
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    std::fs::create_dir_all(target_dir()).expect("target dir");
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(target_dir())
        .expect("scratch dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod scratch");
    dir
}

/// A `shipyard` command (binary `shipyard`) isolated from the caller's environment: the
/// `SHIPYARD_*` configuration, target, plugin, engine, poll, account and serve-key variables
/// removed, `SHIPYARD_STATE_DIR=<state_dir>`, stdin from `/dev/null`.
pub fn shipyard_command(shipyard: &Path, state_dir: &Path) -> Command {
    let mut c = Command::new(shipyard);
    for v in [
        "SHIPYARD_CONFIG",
        "SHIPYARD_CONFIGDIR",
        "SHIPYARD_TARGET",
        "SHIPYARD_PLUGIN",
        "SHIPYARD_LOCAL_ENGINE",
        "SHIPYARD_LOCAL_VM_NODES",
        "SHIPYARD_LOCAL_PER_RUN",
        "SHIPYARD_POLL_INTERVAL_MS",
        "SHIPYARD_BATCH_ACCOUNT_URL",
        "SHIPYARD_BATCH_ACCOUNT_NAME",
        "SHIPYARD_BATCH_ACCOUNT_KEY",
        "SHIPYARD_SERVE_KEY",
    ] {
        c.env_remove(v);
    }
    c.env("SHIPYARD_STATE_DIR", state_dir)
        .stdin(std::process::Stdio::null());
    c
}

/// The label on the temporary container [`export_image`] creates (and removes).
pub const EXPORT_LABEL: &str = "shipyard-test=export-image";

/// Exports [`TEST_IMAGE`]'s file system to `<dir>/image.tar` (`docker export` of a container
/// labelled [`EXPORT_LABEL`], removed again), readable by every user (0644); creates `dir`.
/// Panics when Docker fails.
pub fn export_image(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir for the image tarball");
    let out = Command::new("docker")
        .args(["create", "--label", EXPORT_LABEL, TEST_IMAGE, "true"])
        .output()
        .expect("docker create");
    assert!(out.status.success(), "docker create: {}", show(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let tar = dir.join("image.tar");
    let export = Command::new("docker")
        .args(["export", "-o"])
        .arg(&tar)
        .arg(&id)
        .output()
        .expect("docker export");
    let rm = Command::new("docker")
        .args(["rm", "-f", &id])
        .output()
        .expect("docker rm");
    assert!(export.status.success(), "docker export: {}", show(&export));
    assert!(rm.status.success(), "docker rm: {}", show(&rm));
    std::fs::set_permissions(&tar, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod image");
    tar
}

/// Demands what the local engine's VM-like nodes need on top of [`require_test_image`]: root,
/// and `ip`, `nsenter`, `unshare`, `setpriv`, `iptables`, `dockerd` and `docker-registry` on
/// `PATH`. Returns `false` only when skipping is allowed.
pub fn require_vm_nodes() -> bool {
    if !require_test_image() {
        return false;
    }
    // What the nodes run (shipyard-vm-node's programs) and `setpriv`, which the engine runs
    // tasks with.
    let binaries = shipyard_vm_node::Binaries::default();
    let setpriv = (std::path::Path::new("setpriv"), "util-linux");
    for (program, package) in binaries.programs().into_iter().chain([setpriv]) {
        let name = program.display().to_string();
        if !require_program(&name, &format!("{name} (Debian package {package})")) {
            return false;
        }
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        missing("root (VM-like nodes need it)");
    }
    root
}

/// A scratch directory under `target/` (outside `/tmp`, readable by the tasks' non-admin
/// user) for driving the `shipyard` binary against the local engine, its state in `state/`.
/// On drop it deletes [`EngineScratch::pools`] (with `pool del` and [`EngineScratch::del_args`])
/// and removes their containers, whatever happened.
#[derive(Debug)]
pub struct EngineScratch {
    dir: tempfile::TempDir,
    shipyard: PathBuf,
    /// Pools to delete at the end.
    pub pools: Vec<String>,
    /// The arguments `pool del` gets before `-q pool del` (default `--engine`; a test against
    /// `shipyard serve` sets `--target azure -c creds`).
    pub del_args: Vec<String>,
}

impl EngineScratch {
    /// A new scratch directory named after `prefix`.
    pub fn new(prefix: &str) -> EngineScratch {
        EngineScratch {
            dir: scratch_dir(prefix),
            shipyard: shipyard_bin(),
            pools: Vec::new(),
            del_args: vec!["--engine".into()],
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The state directory (`SHIPYARD_STATE_DIR` of every command).
    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    /// The `shipyard` binary with this state directory (see [`shipyard_command`]).
    pub fn cli(&self) -> Command {
        shipyard_command(&self.shipyard, &self.state())
    }

    /// Writes `text` to `name` in the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).expect("write config");
        p
    }

    /// Waits (up to `secs`) until the only task of `job` is running, as another `shipyard`
    /// process sees it (`tasks list` through the engine's endpoint), while `run` keeps running.
    pub fn wait_task_running(&self, run: &mut KillOnDrop, job: &str, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            assert!(
                run.0.try_wait().expect("try_wait").is_none(),
                "run ended early"
            );
            let o = self
                .cli()
                .args(["-o", "json", "tasks", "list", "--job", job])
                .output()
                .expect("tasks list");
            let running = o.status.success()
                && serde_json::from_slice::<serde_json::Value>(&o.stdout)
                    .is_ok_and(|v| v[0]["state"] == "running");
            if running {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "task never ran: {}",
                show(&o)
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }

    /// Deletes [`EngineScratch::pools`] and removes their containers.
    pub fn delete_pools(&self) {
        for pool in &self.pools {
            let _ = self
                .cli()
                .args(&self.del_args)
                .args(["-q", "pool", "del", "--pool-id", pool])
                .output();
            for id in self.pool_containers(pool) {
                let _ = Command::new("docker").args(["rm", "-f", &id]).output();
            }
        }
    }

    /// The containers of pool `pool` that an engine with its state in this directory made
    /// ([`engine_pool_containers`] whose node root, bind-mounted into each of them, lies in this
    /// directory): a pool of the same id of another engine on this Docker host (another test
    /// binary, checkout or user) is neither counted nor removed. Panics when Docker fails.
    pub fn pool_containers(&self, pool: &str) -> Vec<String> {
        let here = std::fs::canonicalize(self.path()).unwrap_or_else(|_| self.path().to_path_buf());
        engine_pool_containers(pool)
            .into_iter()
            .filter(|id| {
                // gone meanwhile (inspect fails): not ours to count or remove
                let o = Command::new("docker")
                    .args([
                        "inspect",
                        "--format",
                        "{{range .Mounts}}{{.Source}}\n{{end}}",
                        id,
                    ])
                    .output();
                o.is_ok_and(|o| {
                    o.status.success()
                        && String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .any(|m| Path::new(m).starts_with(&here))
                })
            })
            .collect()
    }
}

impl Drop for EngineScratch {
    fn drop(&mut self) {
        self.delete_pools();
    }
}

/// The ids of the Docker containers the local engine made for pool `pool` (label
/// `shipyard.engine.pool=<pool>`). Panics when `docker ps` fails.
pub fn engine_pool_containers(pool: &str) -> Vec<String> {
    let o = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=shipyard.engine.pool={pool}"))
        .output()
        .expect("docker ps");
    assert!(o.status.success(), "docker ps: {}", show(&o));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A child process that is killed (and reaped) when dropped, e.g. when a test fails half-way.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Waits for the child and returns its output (stdout/stderr must be piped to be captured).
    pub fn wait_output(mut self) -> std::io::Result<Output> {
        let child = std::mem::replace(&mut self.0, Command::new("true").spawn()?);
        child.wait_with_output()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hello_output_with_prefixes() {
        let out = "[1,0]<stdout>:hello rank=0 size=2 host=a\nnoise\n[1,1]<stdout>:hello rank=1 size=2 host=b X=1\nallreduce sum=1 expected=1\n";
        let r = HelloReport::parse(out);
        assert_eq!(r.ranks.len(), 2);
        r.assert_complete(2);
        assert_eq!(r.hosts(), vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    #[should_panic(expected = "ranks seen")]
    fn singleton_launch_is_incomplete() {
        let r = HelloReport::parse(
            "hello rank=0 size=1 host=a\nhello rank=0 size=1 host=a\nallreduce sum=0 expected=0\n",
        );
        r.assert_complete(2);
    }
}
