//! Property test: the POSIX-sh rendering, run through `sh -c`, yields exactly the argv (and the
//! environment values) that `LaunchPlan::resolve` computes — for arbitrary arguments with
//! quotes, spaces, `$`, backticks, backslashes, newlines and non-ASCII text, and for the
//! deferred parts (host list, `$(nproc)`, computed rank count, variables, hostfile).
//!
//! The "launcher" is `/bin/sh -c 'printf "%s\0" "$E0" "$E1" "$@"' rec`, which records the
//! environment values it was given and every argument after it, NUL-separated.

use std::process::Command;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shipyard_mpi_launch::*;

const CASES: u32 = 1000;
const RECORDER: &str = r#"printf '%s\0' "$E0" "$E1" "$@""#;

/// Text with the characters shells care about, plus arbitrary Unicode (never NUL).
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 '\"$`\\\\\n\t*?~#&;|<>(){}!%=,:é€😀\u{7f}-]{0,12}",
        1 => any::<String>().prop_map(|s| s.replace('\0', "")),
        1 => Just(String::new()),
        1 => prop::sample::select(vec!["$(id)", "`id`", "'", "\"", "\\", "\n", "-n", "a=b", "${X}", "$((1+1))", "!", "~"])
            .prop_map(str::to_string),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    flavor: Flavor,
    hosts: Option<Vec<String>>,
    host_list_var: String,
    all_cores: bool,
    ppn: u32,
    ranks: Option<u32>,
    hostfile: Option<String>,
    extra: Vec<String>,
    args: Vec<String>,
    e0: String,
    e1: String,
    fwd: String,
    workdir: Option<String>,
    workdir_var: bool,
    wall_clock: bool,
    ssh: bool,
    container: Option<(String, String, String)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (
            prop::sample::select(Flavor::ALL.to_vec()),
            prop::option::of(prop::collection::vec("[a-z0-9.-]{1,8}", 1..4)),
            "[a-z0-9 ,.'$\n-]{0,24}",
            any::<bool>(),
            1u32..5,
            prop::option::of(1u32..9),
            prop::option::of("[a-z '$]{1,6}"),
        ),
        (
            prop::collection::vec(nasty(), 0..3),
            prop::collection::vec(nasty(), 0..6),
            nasty(),
            nasty(),
            nasty(),
            prop::option::of(nasty()),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::option::of((nasty(), nasty(), nasty())),
        ),
    )
        .prop_map(|(a, b)| Case {
            flavor: a.0,
            hosts: a.1,
            host_list_var: a.2,
            all_cores: a.3,
            ppn: a.4,
            ranks: a.5,
            hostfile: a.6,
            extra: b.0,
            args: b.1,
            e0: b.2,
            e1: b.3,
            fwd: b.4,
            workdir: b.5,
            workdir_var: b.6,
            wall_clock: b.7,
            ssh: b.8,
            container: b.9,
        })
}

fn request(c: &Case, dir: &std::path::Path) -> LaunchRequest {
    let ms = c.flavor == Flavor::MsMpi;
    let mut req = LaunchRequest::new(c.flavor)
        .launcher("/bin/sh")
        .extra_options(["-c", RECORDER, "rec"])
        .extra_options(c.extra.clone())
        .hosts(match &c.hosts {
            Some(h) => Hosts::List(h.clone()),
            None => Hosts::batch(),
        })
        .ppn(if c.all_cores && !ms {
            Ppn::AllCores
        } else {
            Ppn::Count(c.ppn)
        })
        .oversubscribe(true)
        .env("E0", c.e0.clone())
        .env("E1", c.e1.clone())
        .forward_env("FWD")
        .program("/app/x")
        .args(c.args.clone());
    if let Some(r) = c.ranks {
        if !(ms && c.hosts.is_some()) {
            req = req.ranks(r);
        }
    }
    if let Some(name) = &c.hostfile {
        if !(ms && c.hosts.is_none()) {
            req = req.hostfile(dir.join(name).display().to_string());
        }
    }
    if let Some(w) = &c.workdir {
        req = req.workdir(if c.workdir_var {
            Word::var("WD")
        } else {
            Word::lit(w.clone())
        });
    }
    if c.wall_clock && !ms {
        req = req.wall_clock(WallClock::new(120).grace(5));
    }
    if c.ssh && !ms {
        req = req
            .ssh_port(23)
            .ssh_option("IdentityFile", "/k/id")
            .iface("lo");
    }
    if let (Some((image, pwd, val)), false) = (&c.container, ms) {
        let image = if image.is_empty() {
            "img".to_string()
        } else {
            image.clone()
        };
        req = req.container(
            Container::apptainer(image)
                .bind("/a", "/b")
                .pwd(pwd.clone())
                .env("CVAR", val.clone()),
        );
    }
    req
}

/// Writes a line to the process's stderr directly: libtest captures `eprintln!` of passing
/// tests, but the CI log must show the case count.
fn ci_log(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[test]
fn rendered_sh_line_yields_exact_argv() {
    ci_log(&format!(
        "proptest: {CASES} cases (sh round-trip of rendered launch lines)"
    ));
    let nproc: u32 = String::from_utf8(Command::new("nproc").output().expect("nproc").stdout)
        .expect("utf8")
        .trim()
        .parse()
        .expect("nproc number");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::with_cases(CASES)
    });
    let ran = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&case(), |c| {
            ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let plan = request(&c, dir.path())
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let wd = c.workdir.clone().unwrap_or_default();
            let run = RunEnv::new()
                .var("AZ_BATCH_HOST_LIST", c.host_list_var.clone())
                .var("WD", wd.clone())
                .var("FWD", c.fwd.clone())
                .nproc(nproc);
            let expected = match plan.resolve(&run) {
                Ok(r) => r,
                // A run-time host list without a single host is refused by resolve (the sh
                // line would run `-np 0` with no hosts): only for such a list, then done.
                Err(LaunchError::Invalid { field: "hosts", .. }) => {
                    prop_assert!(c.hosts.is_none());
                    prop_assert!(c.host_list_var.split([',', '\n']).all(|h| h.is_empty()));
                    return Ok(());
                }
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            };
            let line = plan.render_sh();
            let out = Command::new("sh")
                .arg("-c")
                .arg(&line)
                .env("AZ_BATCH_HOST_LIST", &c.host_list_var)
                .env("WD", &wd)
                .env("FWD", &c.fwd)
                .env_remove("E0")
                .env_remove("E1")
                .output()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(
                out.status.success(),
                "sh failed: {:?}\nline: {line}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout =
                String::from_utf8(out.stdout).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut got: Vec<&str> = stdout.split('\0').collect();
            prop_assert_eq!(
                got.pop(),
                Some(""),
                "output must end with NUL: {:?}",
                stdout
            );
            // what the recorder should have seen: E0, E1, then argv after "rec"
            let rec = expected
                .argv
                .iter()
                .position(|a| a == "rec")
                .ok_or_else(|| TestCaseError::fail("no recorder in argv"))?;
            let env_val = |k: &str| {
                expected
                    .env
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let mut want = vec![env_val("E0"), env_val("E1")];
            want.extend(expected.argv[rec + 1..].iter().cloned());
            prop_assert_eq!(got, want, "line: {}", line);
            prop_assert_eq!(
                &expected.argv[rec - 3..rec],
                &["/bin/sh".to_string(), "-c".into(), RECORDER.into()][..]
            );
            if let Some((path, contents)) = &expected.hostfile {
                let on_disk = std::fs::read_to_string(path)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&on_disk, contents, "hostfile; line: {}", line);
                std::fs::remove_file(path).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let ran = ran.load(std::sync::atomic::Ordering::Relaxed);
    assert!(ran >= CASES, "ran {ran} cases");
    ci_log(&format!("proptest: {ran} cases passed"));
}
