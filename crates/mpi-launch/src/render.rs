//! Rendering argv words as POSIX-sh and cmd.exe text.
//!
//! POSIX sh: literals are emitted bare when they consist only of characters the shell never
//! interprets (`A-Z a-z 0-9 _ @ % + = : , . / -`), otherwise single-quoted, with each `'`
//! written as `'\''`. Deferred parts are double-quoted expansions (`"$VAR"`, `"$(nproc)"`,
//! `"$((...))"`), so they are expanded exactly once and never split or globbed.
//!
//! cmd.exe: each word is first quoted by the rules Windows programs use to split their command
//! line (`CommandLineToArgvW` / the MSVC runtime), then every cmd metacharacter (including the
//! quotes just added) is escaped with `^`, so cmd.exe passes the text through untouched.
//! Deferred variables are emitted as `%NAME%` and expanded by cmd.exe.

use crate::word::{Deferred, Num, Part, Word};
use crate::LaunchError;

/// Shell reserved words: an argv[0] equal to one of these must be quoted.
const SH_RESERVED: &[&str] = &[
    "!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in", "then",
    "until", "while",
];

pub use crate::shell::{quote as sh_quote, quote_always as sh_quote_always};

/// Wraps a POSIX-sh command line as an Azure Batch task `commandLine` (Batch does not run task
/// command lines in a shell): `/bin/bash -c '<line>'`.
pub fn batch_sh_command_line(line: &str) -> String {
    format!("/bin/bash -c {}", sh_quote_always(line))
}

/// Wraps a cmd.exe line (from [`crate::LaunchPlan::render_cmd`]) as an Azure Batch task
/// `commandLine` on Windows: `cmd /c <line>`.
pub fn batch_cmd_command_line(line: &str) -> String {
    format!("cmd /c {line}")
}

/// The shell text of a number inside `$(( ))` or a double-quoted string.
fn sh_num(n: &Num, in_arith: bool) -> String {
    match n {
        Num::Lit(v) => v.to_string(),
        Num::Nproc => "$(nproc)".to_string(),
        Num::Command(cmd) => format!("$({cmd})"),
        Num::HostCount(var) => {
            format!("$(printf '%s\\n' \"${{{var}}}\" | tr ',' '\\n' | grep -c .)")
        }
        Num::Product(a, b) => {
            let inner = format!("{} * {}", sh_num(a, true), sh_num(b, true));
            if in_arith {
                format!("({inner})")
            } else {
                format!("$(( {inner} ))")
            }
        }
    }
}

/// `printf '%s\n' "$VAR" | tr ',' '\n' | grep .` — one host per line.
pub(crate) fn sh_host_lines(var: &str) -> String {
    format!("printf '%s\\n' \"${{{var}}}\" | tr ',' '\\n' | grep .")
}

/// `sed "s/\$/<text><n>/"`; `text` is one of the crate's own constant suffixes.
pub(crate) fn sh_suffix_sed(text: &str, n: &Num) -> String {
    debug_assert!(text
        .chars()
        .all(|c| c == ' ' || c == ':' || c.is_ascii_alphanumeric() || c == '='));
    format!("sed \"s/\\$/{text}{}/\"", sh_num(n, false))
}

fn sh_deferred(d: &Deferred) -> String {
    match d {
        Deferred::Var(name) => format!("\"${{{name}}}\""),
        Deferred::Num(n) => format!("\"{}\"", sh_num(n, false)),
        Deferred::HostList { var, suffix } => {
            let mut pipe = sh_host_lines(var);
            if let Some((text, n)) = suffix {
                pipe.push_str(" | ");
                pipe.push_str(&sh_suffix_sed(text, n));
            }
            format!("\"$({pipe} | paste -sd, -)\"")
        }
        Deferred::Output(cmd) => format!("\"$({cmd})\""),
    }
}

/// Renders one word for POSIX sh. `command_position` quotes words the shell would otherwise
/// take for an assignment or a reserved word.
pub(crate) fn sh_word(w: &Word, command_position: bool) -> String {
    if let Some(lit) = w.as_literal() {
        if command_position && (lit.contains('=') || SH_RESERVED.contains(&lit)) {
            return sh_quote_always(lit);
        }
        return sh_quote(lit);
    }
    let mut out = String::new();
    for p in w.parts() {
        match p {
            Part::Lit(s) if command_position && s.contains('=') => {
                out.push_str(&sh_quote_always(s))
            }
            Part::Lit(s) => out.push_str(&sh_quote(s)),
            Part::Deferred(d) => out.push_str(&sh_deferred(d)),
        }
    }
    out
}

const CMD_META: &str = "^&|<>()%!\"";

/// Renders one word for cmd.exe (see the module docs).
pub(crate) fn cmd_word(w: &Word, field: &'static str) -> Result<String, LaunchError> {
    // (char, from a literal: escape cmd metacharacters)
    let mut chars: Vec<(char, bool)> = Vec::new();
    let unsupported = |reason: String| LaunchError::Unsupported {
        flavor: "cmd.exe rendering".to_string(),
        field,
        reason,
    };
    for p in w.parts() {
        match p {
            Part::Lit(s) if s.contains(['\n', '\r']) => {
                return Err(unsupported(
                    "a line break cannot be passed through cmd.exe".into(),
                ));
            }
            Part::Deferred(Deferred::Var(_)) | Part::Lit(_) => {}
            Part::Deferred(other) => {
                return Err(unsupported(format!(
                    "the run-time value {other:?} has no cmd.exe form"
                )));
            }
        }
    }
    let needs_quotes = match w.as_literal() {
        Some(lit) => lit.is_empty() || lit.contains([' ', '\t', '\u{b}', '"']),
        None => true,
    };
    if !needs_quotes {
        return Ok(escape_cmd(
            w.as_literal()
                .unwrap_or_default()
                .chars()
                .map(|c| (c, true)),
        ));
    }
    chars.push(('"', true));
    let mut backslashes = 0usize;
    for p in w.parts() {
        match p {
            Part::Lit(s) => {
                for c in s.chars() {
                    match c {
                        '\\' => backslashes += 1,
                        '"' => {
                            chars.extend(std::iter::repeat_n(('\\', true), 2 * backslashes + 1));
                            chars.push(('"', true));
                            backslashes = 0;
                        }
                        _ => {
                            chars.extend(std::iter::repeat_n(('\\', true), backslashes));
                            chars.push((c, true));
                            backslashes = 0;
                        }
                    }
                }
            }
            Part::Deferred(Deferred::Var(name)) => {
                chars.extend(std::iter::repeat_n(('\\', true), backslashes));
                backslashes = 0;
                chars.extend(format!("%{name}%").chars().map(|c| (c, false)));
            }
            Part::Deferred(_) => {}
        }
    }
    chars.extend(std::iter::repeat_n(('\\', true), 2 * backslashes));
    chars.push(('"', true));
    Ok(escape_cmd(chars.into_iter()))
}

fn escape_cmd(chars: impl Iterator<Item = (char, bool)>) -> String {
    let mut out = String::new();
    for (c, escape) in chars {
        if escape && CMD_META.contains(c) {
            out.push('^');
        }
        out.push(c);
    }
    out
}
