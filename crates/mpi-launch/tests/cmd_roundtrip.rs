//! Property test for the cmd.exe rendering of MS-MPI lines (no Windows here): an independent
//! model of what happens to the line — cmd.exe removes `^` escapes (every metacharacter, quotes
//! included, is escaped, so cmd never enters its quoted mode), then the program splits its
//! command line by the Microsoft C runtime rules — must give back exactly the argv.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use proptest::prelude::*;
use shipyard_mpi_launch::*;

/// cmd.exe, for a line with no unescaped metacharacters: `^x` → `x`.
fn cmd_unescape(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '^' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            assert!(
                !"&|<>()%!\"".contains(c),
                "unescaped cmd metacharacter {c:?} in {line:?}"
            );
            out.push(c);
        }
    }
    out
}

/// The Microsoft C runtime's command-line splitting (documented "Parsing C command-line
/// arguments" rules).
fn msvcrt_split(line: &str) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        if i >= chars.len() {
            return args;
        }
        let mut arg = String::new();
        let mut quoted = false;
        while i < chars.len() {
            let c = chars[i];
            if c == '\\' {
                let start = i;
                while i < chars.len() && chars[i] == '\\' {
                    i += 1;
                }
                let n = i - start;
                if i < chars.len() && chars[i] == '"' {
                    arg.extend(std::iter::repeat_n('\\', n / 2));
                    if n % 2 == 1 {
                        arg.push('"');
                        i += 1;
                    }
                } else {
                    arg.extend(std::iter::repeat_n('\\', n));
                }
                continue;
            }
            if c == '"' {
                if quoted && chars.get(i + 1) == Some(&'"') {
                    arg.push('"');
                    i += 2;
                    continue;
                }
                quoted = !quoted;
                i += 1;
                continue;
            }
            if !quoted && (c == ' ' || c == '\t') {
                break;
            }
            arg.push(c);
            i += 1;
        }
        args.push(arg);
    }
}

fn arg() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 \t\"\\\\^&|<>()%!'$`*?;,=:é€-]{0,10}",
        1 => any::<String>().prop_map(|s| s.replace(['\0', '\n', '\r'], "")),
        1 => Just(String::new()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(1000) })]
    #[test]
    fn cmd_line_splits_back_to_argv(
        launcher in "[A-Za-z]:\\\\[a-zA-Z ]{1,8}\\\\mpiexec\\.exe",
        program in arg().prop_filter("non-empty", |s| !s.is_empty()),
        args in prop::collection::vec(arg(), 0..6),
        workdir in prop::option::of(arg()),
        env_value in arg(),
    ) {
        let mut req = LaunchRequest::new(Flavor::MsMpi)
            .launcher(launcher)
            .hosts(Hosts::list(["node-1", "node-2"]))
            .env("VALUE", env_value)
            .program(program)
            .args(args);
        if let Some(w) = workdir {
            req = req.workdir(w);
        }
        let plan = req.build().unwrap();
        let want = plan.literal_argv().unwrap();
        let line = plan.render_cmd().unwrap();
        prop_assert_eq!(msvcrt_split(&cmd_unescape(&line)), want, "line: {}", line);
    }
}

#[test]
fn model_sanity() {
    assert_eq!(
        msvcrt_split(r#"a "b c" d\"e "f\\" g\\h"#),
        vec!["a", "b c", "d\"e", "f\\", "g\\\\h"]
    );
    assert_eq!(cmd_unescape("^\"a b^\" ^&"), "\"a b\" &");
}
