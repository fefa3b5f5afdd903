//! What an MPI launch resolves to, so that two command lines can be compared by effect rather
//! than by spelling: a line is evaluated in a mocked node shell, the launcher's argv and
//! environment are captured, and then parsed the way the launcher (Open MPI's `mpirun`, or
//! Hydra's `mpiexec` for Intel MPI, MPICH and MVAPICH) and Singularity would parse them.
//!
//! A [`Launch`] is a set of items, each one fact about the run:
//! - `ranks N`, `placement HOSTxK,...` (which host each rank runs on, in rank order: K consecutive
//!   ranks on HOST), `oversubscribed HOST,...`
//!   (Open MPI: hosts given more ranks than slots, which makes Open MPI yield when idle);
//! - `option ...`: every other launcher option, with its spelling normalised (Open MPI's
//!   `-host`/`--host`/`-H`, `-np`/`-n`/`-c`, single- or double-dash long options; Hydra's
//!   `-ppn`/`-perhost`, `-launcher`/`-bootstrap`, `-bootstrap-exec-args` and the
//!   `HYDRA_LAUNCHER_EXTRA_ARGS` / `I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS` variables, which
//!   all give ssh extra arguments);
//! - `mca NAME=VALUE` (Open MPI: `--mca NAME VALUE` and `OMPI_MCA_NAME=VALUE` in mpirun's
//!   environment are one parameter, the command line winning);
//! - `env NAME=VALUE`: what every rank gets in its environment: Open MPI's `-x`; Hydra's
//!   mpirun environment (Hydra forwards all of it) with `-genv`/`-env` over it; inside
//!   Singularity, `SINGULARITYENV_NAME` over `NAME`;
//! - `container ...` (Singularity's subcommand, `--pwd`, each bind — `-B` and
//!   `SINGULARITY_BIND` alike — and the image, a relative path resolved against `-wdir`);
//! - `program [...]`: what each rank runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The node the mocked shell pretends to be: 4 cores (`nproc`), two nodes in
/// `AZ_BATCH_HOST_LIST`, Batch's directories, the OpenFOAM recipe's `np`/`ppn` (its
/// pre-execution command's exports) and the partition-key file Batch Shipyard's node prep
/// writes on SR-IOV nodes.
pub const HOSTS: [&str; 2] = ["10.0.0.4", "10.0.0.5"];

/// The content of `$AZ_BATCH_NODE_STARTUP_DIR/wd/UCX_IB_PKEY` on the mocked node: pkey
/// 0x8001, masked with 0x0fff (`scripts/shipyard_nodeprep.sh`).
pub const UCX_IB_PKEY_FILE: &str = "UCX_IB_PKEY=0x0001";

fn startup_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("bs-startup-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("wd")).unwrap();
        std::fs::write(dir.join("wd/UCX_IB_PKEY"), format!("{UCX_IB_PKEY_FILE}\n")).unwrap();
        dir
    })
}

/// The launcher's argv (launcher first) and the environment it was started with, less the
/// mocked node's own.
#[derive(Debug, Clone)]
pub struct Evaluated {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
}

fn run_mock(line: &str, launcher: &str, env: &[(String, String)]) -> Evaluated {
    let mut setup = String::new();
    for (k, v) in env {
        setup.push_str(&format!("export {k}={}; ", sh_quote(v)));
    }
    let program = format!(
        "nproc() {{ echo 4; }}; {launcher}() {{ printf '%s\\0' {launcher} \"$@\"; printf '\\1'; env -0; }}; \
         export AZ_BATCH_HOST_LIST={} AZ_BATCH_TASK_WORKING_DIR=/wd AZ_BATCH_NODE_ROOT_DIR=/nr \
         AZ_BATCH_NODE_SHARED_DIR=/ns AZ_BATCH_NODE_STARTUP_DIR={} np=8 ppn=4; {setup}{line}",
        HOSTS.join(","),
        sh_quote(&startup_dir().display().to_string()),
    );
    let out = Command::new("bash")
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
    let (argv, envs) = text
        .split_once('\u{1}')
        .unwrap_or_else(|| panic!("{launcher} was not called by: {line}"));
    let argv: Vec<String> = argv
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let env = envs
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k != "_")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Evaluated { argv, env }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Runs `line` (shell text calling `launcher`) in the mocked node shell, with the task's
/// environment `env` exported first.
pub fn evaluate(line: &str, launcher: &str, env: &[(String, String)]) -> Evaluated {
    let base = run_mock(launcher, launcher, &[]).env;
    let mut e = run_mock(line, launcher, env);
    e.env.retain(|k, v| base.get(k) != Some(v));
    e
}

/// Which launcher parses the argv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Open MPI's `mpirun` (ORTE/PRRTE).
    OpenMpi,
    /// Hydra's `mpiexec`/`mpirun` (Intel MPI, MPICH, MVAPICH).
    Hydra,
}

/// A resolved launch: one string per fact (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch(pub BTreeSet<String>);

fn take<'a>(argv: &'a [String], i: &mut usize, opt: &str) -> &'a str {
    *i += 1;
    argv.get(*i)
        .unwrap_or_else(|| panic!("{opt} without a value in {argv:?}"))
        .as_str()
}

/// The launch `e` resolves to under `family`. Panics on an option this model does not know,
/// so that a new option cannot slip through the comparison unexamined.
pub fn resolve(family: Family, e: &Evaluated) -> Launch {
    match family {
        Family::OpenMpi => resolve_openmpi(e),
        Family::Hydra => resolve_hydra(e),
    }
}

fn resolve_openmpi(e: &Evaluated) -> Launch {
    let argv = &e.argv;
    let mut items = BTreeSet::new();
    let mut mca: BTreeMap<String, String> = e
        .env
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("OMPI_MCA_")?.to_string(), v.clone())))
        .collect();
    let (mut np, mut hosts, mut ppr, mut oversubscribe) = (None, None, None, false);
    let mut env = BTreeMap::new();
    let mut i = 1;
    while i < argv.len() {
        let a = argv[i].as_str();
        if !a.starts_with('-') {
            break;
        }
        let name = a.trim_start_matches('-');
        match name {
            "np" | "n" | "c" => np = Some(take(argv, &mut i, a).parse::<usize>().unwrap()),
            "host" | "H" => hosts = Some(take(argv, &mut i, a).to_string()),
            "map-by" => {
                let v = take(argv, &mut i, a);
                match v.strip_prefix("ppr:").and_then(|r| r.strip_suffix(":node")) {
                    Some(p) => ppr = Some(p.parse::<usize>().unwrap()),
                    None => {
                        items.insert(format!("option --map-by {v}"));
                    }
                }
            }
            "mca" | "gmca" => {
                let k = take(argv, &mut i, a).to_string();
                let v = take(argv, &mut i, a).to_string();
                mca.insert(k, v);
            }
            "x" => {
                let v = take(argv, &mut i, a);
                match v.split_once('=') {
                    Some((k, v)) => env.insert(k.to_string(), v.to_string()),
                    None => env.insert(v.to_string(), e.env.get(v).cloned().unwrap_or_default()),
                };
            }
            "oversubscribe" => oversubscribe = true,
            "allow-run-as-root" | "report-bindings" | "tag-output" => {
                items.insert(format!("option --{name}"));
            }
            "bind-to" | "rank-by" | "hostfile" | "machinefile" | "wdir" | "prefix" => {
                let v = take(argv, &mut i, a);
                items.insert(format!("option --{name} {v}"));
            }
            _ => panic!("Open MPI option {a} is not modelled: {argv:?}"),
        }
        i += 1;
    }
    // placement: hosts with their slots (`host:slots`, 1 when not given)
    let hosts: Vec<(String, usize)> = hosts
        .unwrap_or_default()
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| match h.split_once(':') {
            Some((h, s)) => (h.to_string(), s.parse().unwrap()),
            None => (h.to_string(), 1),
        })
        .collect();
    let np = np.unwrap_or_else(|| panic!("no -np in {argv:?}"));
    items.insert(format!("ranks {np}"));
    let mut left = np;
    let mut placed = Vec::new();
    let mut over = Vec::new();
    for (h, slots) in &hosts {
        let k = left.min(ppr.unwrap_or(*slots));
        left -= k;
        if k > 0 {
            placed.push(format!("{h}x{k}"));
        }
        if k > *slots {
            over.push(h.clone());
        }
    }
    assert_eq!(left, 0, "{np} ranks do not fit on {hosts:?}: {argv:?}");
    if !over.is_empty() {
        assert!(
            oversubscribe,
            "Open MPI refuses {over:?} without --oversubscribe: {argv:?}"
        );
        items.insert(format!("oversubscribed {}", over.join(",")));
    }
    items.insert(format!("placement {}", placed.join(",")));
    items.extend(mca.iter().map(|(k, v)| format!("mca {k}={v}")));
    items.extend(program_items(&argv[i..], &env, None));
    Launch(items)
}

/// Hydra variables that configure `mpiexec` itself (as an option would), by the option item
/// they stand for.
fn hydra_option_var(name: &str) -> Option<&'static str> {
    match name {
        "HYDRA_LAUNCHER" | "I_MPI_HYDRA_BOOTSTRAP" => Some("launcher"),
        "HYDRA_LAUNCHER_EXTRA_ARGS" | "I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS" => {
            Some("launcher-extra-args")
        }
        _ => None,
    }
}

fn resolve_hydra(e: &Evaluated) -> Launch {
    let argv = &e.argv;
    let mut items = BTreeSet::new();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &e.env {
        match hydra_option_var(k) {
            Some(opt) => {
                items.insert(format!("option {opt} {v}"));
            }
            None => {
                env.insert(k.clone(), v.clone());
            }
        }
    }
    let (mut np, mut ppn, mut hosts, mut wdir) = (None, None, None, None);
    let mut i = 1;
    while i < argv.len() {
        let a = argv[i].as_str();
        if !a.starts_with('-') {
            break;
        }
        match a {
            "-n" | "-np" => np = Some(take(argv, &mut i, a).parse::<usize>().unwrap()),
            "-ppn" | "-perhost" => ppn = Some(take(argv, &mut i, a).parse::<usize>().unwrap()),
            "-hosts" | "-host" => hosts = Some(take(argv, &mut i, a).to_string()),
            "-genv" | "-env" => {
                let k = take(argv, &mut i, a).to_string();
                let v = take(argv, &mut i, a).to_string();
                env.insert(k, v);
            }
            "-launcher" | "-bootstrap" => {
                let v = take(argv, &mut i, a);
                items.insert(format!("option launcher {v}"));
            }
            "-bootstrap-exec-args" => {
                let v = take(argv, &mut i, a);
                items.insert(format!("option launcher-extra-args {v}"));
            }
            "-wdir" => {
                let v = take(argv, &mut i, a).to_string();
                items.insert(format!("option -wdir {v}"));
                wdir = Some(v);
            }
            "-f" | "-hostfile" | "-machinefile" | "-iface" => {
                let v = take(argv, &mut i, a);
                items.insert(format!("option {a} {v}"));
            }
            "-l" | "-prepend-rank" => {
                items.insert("option -prepend-rank".to_string());
            }
            _ => panic!("Hydra option {a} is not modelled: {argv:?}"),
        }
        i += 1;
    }
    let hosts: Vec<&str> = hosts
        .as_deref()
        .unwrap_or_else(|| panic!("no -hosts in {argv:?}"))
        .split(',')
        .filter(|h| !h.is_empty())
        .collect();
    let np = np.unwrap_or_else(|| panic!("no -n in {argv:?}"));
    let ppn = ppn.unwrap_or_else(|| panic!("no -ppn in {argv:?}"));
    items.insert(format!("ranks {np}"));
    // Hydra fills each host with ppn ranks, host after host, wrapping around.
    let mut placed = Vec::new();
    let mut left = np;
    let mut h = 0;
    while left > 0 {
        let k = left.min(ppn);
        placed.push(format!("{}x{k}", hosts[h % hosts.len()]));
        left -= k;
        h += 1;
    }
    items.insert(format!("placement {}", placed.join(",")));
    items.extend(program_items(&argv[i..], &env, wdir.as_deref()));
    Launch(items)
}

/// The program every rank runs and its environment; through Singularity when the program is
/// `singularity`/`apptainer` (`wdir`: the ranks' working directory, for a relative image).
fn program_items(
    words: &[String],
    env: &BTreeMap<String, String>,
    wdir: Option<&str>,
) -> Vec<String> {
    let mut items = Vec::new();
    let mut env = env.clone();
    let mut words = words.to_vec();
    if matches!(
        words.first().map(String::as_str),
        Some("singularity" | "apptainer")
    ) {
        let sub = words.get(1).cloned().unwrap_or_default();
        items.push(format!("container {} {sub}", words[0]));
        let mut binds: Vec<String> = Vec::new();
        for name in ["SINGULARITY_BIND", "APPTAINER_BIND", "SINGULARITY_BINDPATH"] {
            if let Some(v) = env.remove(name) {
                binds.extend(v.split(',').map(str::to_string));
            }
        }
        let mut i = 2;
        while i < words.len() && words[i].starts_with('-') {
            let a = words[i].clone();
            match a.as_str() {
                "-B" | "--bind" => {
                    let v = take(&words, &mut i, &a);
                    binds.extend(v.split(',').map(str::to_string));
                }
                "--pwd" => {
                    let v = take(&words, &mut i, &a);
                    items.push(format!("container --pwd {v}"));
                }
                "--nv" | "--rocm" | "-e" | "--cleanenv" | "--writable-tmpfs" | "--no-home" => {
                    items.push(format!("container {a}"));
                }
                _ => panic!("Singularity option {a} is not modelled: {words:?}"),
            }
            i += 1;
        }
        items.extend(binds.iter().map(|b| format!("container bind {b}")));
        let image = words.get(i).cloned().unwrap_or_default();
        let image = match (wdir, image.strip_prefix("./")) {
            (Some(d), Some(rel)) => format!("{d}/{rel}"),
            _ => image,
        };
        items.push(format!("container image {image}"));
        words.drain(..=i);
        // inside the container: SINGULARITYENV_X (APPTAINERENV_X) sets X
        let set: Vec<(String, String)> = env
            .iter()
            .filter_map(|(k, v)| {
                let n = k
                    .strip_prefix("SINGULARITYENV_")
                    .or_else(|| k.strip_prefix("APPTAINERENV_"))?;
                Some((n.to_string(), v.clone()))
            })
            .collect();
        env.retain(|k, _| !k.starts_with("SINGULARITYENV_") && !k.starts_with("APPTAINERENV_"));
        env.extend(set);
    }
    items.extend(env.iter().map(|(k, v)| format!("env {k}={v}")));
    items.push(format!("program {words:?}"));
    items
}

/// A difference between two launches that is meant: the items it accounts for (`+ITEM` only
/// in shipyard's, `-ITEM` only in Batch Shipyard's) and why.
#[derive(Debug, Clone, Copy)]
pub struct Deviation {
    pub name: &'static str,
    pub items: &'static [&'static str],
    pub reason: &'static str,
}

/// `ours` and `batch_shipyard` are the same launch but for `deviations`, each of which must
/// still be a difference (a deviation that no longer applies is reported too).
pub fn assert_same_launch(ours: &Launch, batch_shipyard: &Launch, deviations: &[Deviation]) {
    let diff = differences(ours, batch_shipyard);
    let declared: BTreeSet<String> = deviations
        .iter()
        .flat_map(|d| d.items.iter().map(|i| i.to_string()))
        .collect();
    let undeclared: Vec<&String> = diff.difference(&declared).collect();
    let stale: Vec<&String> = declared.difference(&diff).collect();
    assert!(
        undeclared.is_empty() && stale.is_empty(),
        "launches differ in ways not declared: {undeclared:#?}\n\
         declared deviations that are no longer differences: {stale:#?}\n\
         shipyard: {:#?}\nBatch Shipyard: {:#?}",
        ours.0,
        batch_shipyard.0
    );
}

/// The items only in `ours` (`+ITEM`) and only in `theirs` (`-ITEM`).
pub fn differences(ours: &Launch, theirs: &Launch) -> BTreeSet<String> {
    let mut diff: BTreeSet<String> = ours
        .0
        .difference(&theirs.0)
        .map(|i| format!("+{i}"))
        .collect();
    diff.extend(theirs.0.difference(&ours.0).map(|i| format!("-{i}")));
    diff
}

/// `NAME=VALUE` pairs, for a task environment written literally.
pub fn env_of(pairs: &[&str]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}
