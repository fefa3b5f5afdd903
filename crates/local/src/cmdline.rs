//! Command lines and `containerRunOptions`.
//!
//! Batch does not run a task's command line in a shell; it splits it into arguments. We split
//! with POSIX-shell quoting rules (single quotes, double quotes with `\` escapes, backslash
//! escapes) and no expansion, so `/bin/bash -c 'echo $AZ_BATCH_HOST_LIST'` reaches bash intact.

use crate::error::{LocalError, Result};

/// Splits `line` into arguments (see the module docs) with the workspace's one POSIX
/// tokenizer ([`shipyard_runtime::shell::split`], from `shipyard_mpi_launch::shell`). `field` names the command line in errors.
pub fn split_command_line(line: &str, field: &str) -> Result<Vec<String>> {
    shipyard_runtime::shell::split(line).map_err(|e| LocalError::CommandLine {
        field: field.to_string(),
        reason: e.to_string(),
    })
}

/// The `docker run` options the local backend understands, parsed from `containerRunOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// `--init` (always on for node containers; recorded for completeness).
    pub init: bool,
    /// `--privileged`.
    pub privileged: bool,
    /// `--shm-size` in bytes.
    pub shm_size: Option<i64>,
    /// `--cap-add`.
    pub cap_add: Vec<String>,
    /// `--security-opt`.
    pub security_opt: Vec<String>,
    /// `--ulimit name=soft[:hard]`.
    pub ulimits: Vec<(String, i64, i64)>,
    /// `-e/--env K=V` (applied to the container).
    pub env: Vec<String>,
    /// `-v/--volume` binds.
    pub binds: Vec<String>,
    /// `-u/--user`.
    pub user: Option<String>,
    /// `--ipc`.
    pub ipc: Option<String>,
    /// `-l/--label K=V`: extra container labels (never replacing the backend's own).
    pub labels: Vec<(String, String)>,
    /// Options we accept but do not apply (`--rm`, `-w`, `--network`: the backend owns those).
    pub ignored: Vec<String>,
}

const VALUE_FLAGS: &[&str] = &[
    "--shm-size",
    "--cap-add",
    "--security-opt",
    "--ulimit",
    "-e",
    "--env",
    "-v",
    "--volume",
    "-u",
    "--user",
    "--ipc",
    "-w",
    "--workdir",
    "--network",
    "--net",
    "--name",
    "--hostname",
    "-h",
    "--gpus",
    "-l",
    "--label",
];

/// Parses `containerRunOptions` arguments. Unknown flags are an error naming them.
pub fn parse_run_options(args: &[String]) -> Result<RunOptions> {
    let mut o = RunOptions::default();
    let mut i = 0;
    while i < args.len() {
        let raw = &args[i];
        i += 1;
        let (flag, inline) = match raw.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (raw.clone(), None),
        };
        let needs_value = VALUE_FLAGS.contains(&flag.as_str());
        let value = if needs_value {
            match inline {
                Some(v) => v,
                None => {
                    let v = args.get(i).cloned().ok_or_else(|| LocalError::RunOptions {
                        reason: format!("`{flag}` needs a value"),
                    })?;
                    i += 1;
                    v
                }
            }
        } else {
            String::new()
        };
        match flag.as_str() {
            "--init" => o.init = true,
            "--privileged" => o.privileged = true,
            "--rm" | "-d" | "--detach" | "-t" | "-i" | "-it" | "--tty" | "--interactive" => {
                o.ignored.push(flag)
            }
            "--shm-size" => o.shm_size = Some(parse_size(&value)?),
            "--cap-add" => o.cap_add.push(value),
            "--security-opt" => o.security_opt.push(value),
            "--ulimit" => o.ulimits.push(parse_ulimit(&value)?),
            "-e" | "--env" => o.env.push(value),
            "-v" | "--volume" => o.binds.push(value),
            "-u" | "--user" => o.user = Some(value),
            "--ipc" => o.ipc = Some(value),
            "-l" | "--label" => {
                let (k, v) = value.split_once('=').unwrap_or((value.as_str(), ""));
                o.labels.push((k.to_string(), v.to_string()));
            }
            "-w" | "--workdir" | "--network" | "--net" | "--name" | "--hostname" | "-h"
            | "--gpus" => o.ignored.push(format!("{flag} {value}")),
            other => {
                return Err(LocalError::RunOptions {
                    reason: format!("unsupported option `{other}` for local runs"),
                })
            }
        }
    }
    Ok(o)
}

fn parse_size(v: &str) -> Result<i64> {
    let err = || LocalError::RunOptions {
        reason: format!("--shm-size `{v}` is not a size (e.g. 512m, 1g)"),
    };
    let lower = v.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1i64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower, 1),
    };
    let n: i64 = num.parse().map_err(|_| err())?;
    n.checked_mul(mult).ok_or_else(err)
}

fn parse_ulimit(v: &str) -> Result<(String, i64, i64)> {
    let err = || LocalError::RunOptions {
        reason: format!("--ulimit `{v}` is not name=soft[:hard]"),
    };
    let (name, lim) = v.split_once('=').ok_or_else(err)?;
    let parse = |s: &str| -> Result<i64> {
        if s == "-1" || s == "unlimited" {
            Ok(-1)
        } else {
            s.parse().map_err(|_| err())
        }
    };
    let (soft, hard) = match lim.split_once(':') {
        Some((s, h)) => (parse(s)?, parse(h)?),
        None => {
            let n = parse(lim)?;
            (n, n)
        }
    };
    Ok((name.to_string(), soft, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell_without_expansion() {
        let a = split_command_line(
            r#"/bin/bash -c 'echo $AZ_BATCH_HOST_LIST; exit 3' "a \"b\"" c\ d"#,
            "commandLine",
        )
        .unwrap();
        // The whole word list, pinned as the tokenizer's own tests in `shipyard_mpi_launch::shell`
        // pin it; here it must come through the local backend's wrapper unchanged.
        assert_eq!(a.len(), 5, "{a:?}");
        assert_eq!(a[..2], ["/bin/bash", "-c"]);
        assert_eq!(a[2], "echo $AZ_BATCH_HOST_LIST; exit 3");
        assert_eq!(a[3..], ["a \"b\"", "c d"]);
        assert_eq!(
            split_command_line("  x   ''  ", "f").unwrap(),
            vec!["x", ""]
        );
    }

    #[test]
    fn split_errors_name_the_field() {
        let e = split_command_line("bash -c 'oops", "commandLine").unwrap_err();
        assert!(e.to_string().contains("commandLine"), "{e}");
        assert!(split_command_line("   ", "x").is_err());
    }

    #[test]
    fn parses_run_options() {
        let args: Vec<String> = [
            "--init",
            "--shm-size=256m",
            "--ulimit",
            "memlock=-1:-1",
            "-e",
            "A=1",
            "--rm",
            "--cap-add",
            "SYS_PTRACE",
            "--label",
            "shipyard.role=mpi-node",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let o = parse_run_options(&args).unwrap();
        assert!(o.init);
        assert_eq!(o.shm_size, Some(256 << 20));
        assert_eq!(o.ulimits, vec![("memlock".to_string(), -1, -1)]);
        assert_eq!(o.env, vec!["A=1"]);
        assert_eq!(o.cap_add, vec!["SYS_PTRACE"]);
        assert_eq!(
            o.labels,
            vec![("shipyard.role".to_string(), "mpi-node".to_string())]
        );
        let e = parse_run_options(&["--frobnicate".to_string()]).unwrap_err();
        assert!(e.to_string().contains("--frobnicate"));
        assert!(parse_run_options(&["--ulimit".to_string()]).is_err());
    }
}
