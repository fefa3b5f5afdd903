//! POSIX shell text, both ways: quoting words into a line, and splitting a line into words.
//!
//! The one implementation of both in the workspace: the runtimes, the launcher renderer and
//! the local backend all use it.
//!
//! Quoting: a word made only of characters the shell never interprets
//! (`A-Z a-z 0-9 _ @ % + = : , . / -`) stays bare; any other word is single-quoted, each `'`
//! written as `'\''`.
//!
//! Splitting ([`split`], [`split_plain`]) follows POSIX quoting — single quotes, double quotes
//! (where `\` escapes only `"`, `\`, `$`, `` ` `` and a newline), backslash escapes outside
//! quotes, `\`-newline continuations — and performs no expansion.

fn safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c)
}

/// Quotes `word` for POSIX sh so that it stays one word with exactly this text: unchanged when
/// it only holds safe characters, otherwise in single quotes.
pub fn quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        quote_always(word)
    }
}

/// Single-quotes `word` for POSIX sh, even when it would not need it.
pub fn quote_always(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Quotes a word that may hold shell variable references such as `$AZ_BATCH_NODE_ROOT_DIR/x`
/// or `${VAR}/x`: inside double quotes, so the variables expand once and are never split or
/// globbed (`"`, `\` and `` ` `` are escaped). Words without a `$` are quoted with [`quote`].
pub fn quote_expanding(word: &str) -> String {
    if !word.contains('$') {
        return quote(word);
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        if matches!(c, '"' | '\\' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Joins argv into one shell line, each word with [`quote`].
pub fn join<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `/bin/bash -c <script>` with the script quoted by [`quote`]: the Batch idiom, since Batch
/// does not run command lines in a shell.
pub fn bash_c(script: &str) -> String {
    format!("/bin/bash -c {}", quote(script))
}

/// Why a line could not be split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SplitError {
    /// A `'` without its closing `'`.
    #[error("unterminated single quote")]
    UnterminatedSingleQuote,
    /// A `"` without its closing `"`.
    #[error("unterminated double quote")]
    UnterminatedDoubleQuote,
    /// The line ends with a lone `\`.
    #[error("trailing backslash")]
    TrailingBackslash,
    /// No words at all.
    #[error("empty")]
    Empty,
    /// ([`split_plain`] only) the line needs a shell: the character outside single quotes.
    #[error("`{0}` needs a shell")]
    NeedsShell(char),
}

/// Characters that make a line need a shell when they appear unquoted.
const SHELL_SPECIAL: &str = "$|;&<>`*?()~#\n[{}";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every character outside quotes is literal; whitespace separates words.
    Literal,
    /// Shell operators and expansions are refused ([`SplitError::NeedsShell`]).
    Plain,
}

/// Splits `line` into words with POSIX quoting and no expansion; shell operators and `$` are
/// literal text (`/bin/bash -c 'echo $X'` gives `["/bin/bash", "-c", "echo $X"]`). This is how
/// Batch splits a task's command line.
pub fn split(line: &str) -> Result<Vec<String>, SplitError> {
    tokenize(line, Mode::Literal)
}

/// Splits `command` into words when it is a plain word list: quotes allowed, but no shell
/// operator, expansion, glob or comment outside single quotes (`$ | ; & < > ` * ? ( ) ~ # [ { }`,
/// newlines). `None` when it needs a shell or does not split.
pub fn split_plain(command: &str) -> Option<Vec<String>> {
    tokenize(command, Mode::Plain).ok()
}

fn tokenize(line: &str, mode: Mode) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err(SplitError::UnterminatedSingleQuote),
                    }
                }
            }
            '"' => {
                in_word = true;
                double_quoted(&mut chars, &mut cur, mode)?;
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(ch) => cur.push(ch),
                    None => return Err(SplitError::TrailingBackslash),
                }
            }
            c if mode == Mode::Plain && SHELL_SPECIAL.contains(c) => {
                return Err(SplitError::NeedsShell(c))
            }
            c if is_separator(c, mode) => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    if words.is_empty() {
        return Err(SplitError::Empty);
    }
    Ok(words)
}

fn is_separator(c: char, mode: Mode) -> bool {
    match mode {
        Mode::Literal => c.is_whitespace(),
        Mode::Plain => c == ' ' || c == '\t',
    }
}

/// The rest of a double-quoted string (after its opening `"`), appended to `cur`.
fn double_quoted(
    chars: &mut std::str::Chars<'_>,
    cur: &mut String,
    mode: Mode,
) -> Result<(), SplitError> {
    loop {
        match chars.next() {
            Some('"') => return Ok(()),
            Some('\\') => match chars.next() {
                Some(ch @ ('"' | '\\' | '$' | '`')) => cur.push(ch),
                Some('\n') => {}
                Some(ch) => {
                    cur.push('\\');
                    cur.push(ch);
                }
                None => return Err(SplitError::UnterminatedDoubleQuote),
            },
            Some(ch @ ('$' | '`')) if mode == Mode::Plain => {
                return Err(SplitError::NeedsShell(ch))
            }
            Some(ch) => cur.push(ch),
            None => return Err(SplitError::UnterminatedDoubleQuote),
        }
    }
}

/// cmd.exe and Windows command lines: splitting by the Microsoft C runtime rules (what every
/// Windows program does with its command line) and the Batch `commandLine` of an MS-MPI launch.
///
/// Backslashes are ordinary characters on Windows: `C:\app\mpi-hello.exe` is one word with
/// its backslashes, unlike in POSIX sh where `\a` is an escaped `a`.
pub mod cmd {
    use crate::word::{Deferred, Part};
    use crate::{LaunchError, LaunchPlan};

    use super::SplitError;

    /// Characters that make a Windows command line need cmd.exe when they appear outside
    /// double quotes.
    const CMD_SPECIAL: &str = "&|<>^\n\r";

    /// Splits `line` into words by the Microsoft C runtime rules ("Parsing C command-line
    /// arguments"): words are separated by spaces or tabs; `"` toggles quoting; inside quotes
    /// `""` is a literal `"`; `2n` backslashes before a `"` give `n` backslashes, `2n+1`
    /// give `n` and a literal `"`; any other backslash is literal. cmd.exe operators outside
    /// quotes (`& | < > ^`, line breaks) are refused ([`SplitError::NeedsShell`]); `%VAR%`
    /// stays literal text for cmd.exe to expand.
    pub fn split(line: &str) -> Result<Vec<String>, SplitError> {
        let chars: Vec<char> = line.chars().collect();
        let mut words = Vec::new();
        let mut i = 0;
        loop {
            while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
                i += 1;
            }
            if i >= chars.len() {
                break;
            }
            let mut cur = String::new();
            let mut quoted = false;
            while i < chars.len() {
                let c = chars[i];
                if !quoted && (c == ' ' || c == '\t') {
                    break;
                }
                if c == '\\' {
                    let start = i;
                    while i < chars.len() && chars[i] == '\\' {
                        i += 1;
                    }
                    let n = i - start;
                    if i < chars.len() && chars[i] == '"' {
                        cur.extend(std::iter::repeat_n('\\', n / 2));
                        if n % 2 == 1 {
                            cur.push('"');
                            i += 1;
                        }
                    } else {
                        cur.extend(std::iter::repeat_n('\\', n));
                    }
                    continue;
                }
                if c == '"' {
                    if quoted && chars.get(i + 1) == Some(&'"') {
                        cur.push('"');
                        i += 2;
                        continue;
                    }
                    quoted = !quoted;
                    i += 1;
                    continue;
                }
                if !quoted && CMD_SPECIAL.contains(c) {
                    return Err(SplitError::NeedsShell(c));
                }
                cur.push(c);
                i += 1;
            }
            if quoted {
                return Err(SplitError::UnterminatedDoubleQuote);
            }
            words.push(cur);
        }
        if words.is_empty() {
            return Err(SplitError::Empty);
        }
        Ok(words)
    }

    /// The default MS-MPI launcher as cmd.exe text, as Microsoft's multi-instance examples
    /// write it.
    pub const MSMPI_MPIEXEC: &str = r"%MSMPI_BIN%\mpiexec.exe";

    /// The Batch `commandLine` of an MS-MPI launch on a Windows node, in the form Microsoft
    /// documents for multi-instance tasks:
    /// `cmd /c ""%MSMPI_BIN%\mpiexec.exe"" -c 1 -wdir %AZ_BATCH_TASK_SHARED_DIR% app.exe`.
    ///
    /// `program` is cmd.exe text (variables such as `%MSMPI_BIN%` expand; it must not hold
    /// `"`) and replaces the plan's launcher word. It is quoted for cmd.exe itself, so a path
    /// with spaces is found. `cmd /c` removes the first `"` of its text and the last one;
    /// when the rest of the line holds no `"`, the program is written `""program""`,
    /// otherwise the whole line is wrapped (`""program" ...args..."`) so the last `"` is the
    /// added one. The arguments are rendered like [`LaunchPlan::render_cmd`], except that a
    /// word that is only a run-time variable is written bare (`%AZ_BATCH_TASK_SHARED_DIR%`):
    /// its value must not contain spaces (Batch's directories do not).
    pub fn batch_launch_line(program: &str, plan: &LaunchPlan) -> Result<String, LaunchError> {
        let args = launch_args(program, plan)?;
        let sep = if args.is_empty() { "" } else { " " };
        Ok(if args.contains('"') {
            format!("cmd /c \"\"{program}\"{sep}{args}\"")
        } else {
            format!("cmd /c \"\"{program}\"\"{sep}{args}")
        })
    }

    /// The cmd.exe line of an MS-MPI launch, `"program" args` (see [`batch_launch_line`] for
    /// `program` and the arguments), for a caller that puts it after other commands; pass the
    /// complete text to `cmd /c` as `cmd /c "<text>"`.
    pub fn launch_line(program: &str, plan: &LaunchPlan) -> Result<String, LaunchError> {
        let args = launch_args(program, plan)?;
        let sep = if args.is_empty() { "" } else { " " };
        Ok(format!("\"{program}\"{sep}{args}"))
    }

    fn launch_args(program: &str, plan: &LaunchPlan) -> Result<String, LaunchError> {
        if program.contains('"') || program.trim().is_empty() {
            return Err(LaunchError::Unsupported {
                flavor: plan.flavor().to_string(),
                field: "launcher",
                reason: format!("`{program}` cannot be quoted for cmd.exe"),
            });
        }
        Ok(plan
            .argv()
            .iter()
            .skip(1)
            .map(|w| match w.parts() {
                [Part::Deferred(Deferred::Var(name))] => Ok(format!("%{name}%")),
                _ => crate::render::cmd_word(w, "argv"),
            })
            .collect::<Result<Vec<_>, _>>()?
            .join(" "))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Flavor, LaunchRequest, Word};

    #[test]
    fn windows_split_keeps_backslashes() {
        assert_eq!(
            cmd::split(r"C:\app\mpi-hello.exe -in C:\data\x").unwrap(),
            vec![r"C:\app\mpi-hello.exe", "-in", r"C:\data\x"]
        );
        // the documented MSVCRT cases
        assert_eq!(
            cmd::split(r#""a b c" d e"#).unwrap(),
            vec!["a b c", "d", "e"]
        );
        assert_eq!(
            cmd::split(r#""ab\"c" "\\" d"#).unwrap(),
            vec![r#"ab"c"#, "\\", "d"]
        );
        assert_eq!(
            cmd::split(r#"a\\\b d"e f"g h"#).unwrap(),
            vec![r"a\\\b", "de fg", "h"]
        );
        assert_eq!(
            cmd::split(r#"a\\\"b c d"#).unwrap(),
            vec![r#"a\"b"#, "c", "d"]
        );
        assert_eq!(
            cmd::split(r#"a\\\\"b c" d e"#).unwrap(),
            vec![r"a\\b c", "d", "e"]
        );
        assert_eq!(cmd::split(r#""a""b""#).unwrap(), vec![r#"a"b"#]);
        assert_eq!(cmd::split("%X%\\y.exe").unwrap(), vec![r"%X%\y.exe"]);
        assert_eq!(cmd::split("a & b"), Err(SplitError::NeedsShell('&')));
        assert_eq!(cmd::split(r#""a & b""#).unwrap(), vec!["a & b"]);
        assert_eq!(
            cmd::split(r#""open"#),
            Err(SplitError::UnterminatedDoubleQuote)
        );
        assert_eq!(cmd::split("  "), Err(SplitError::Empty));
    }

    #[test]
    fn msmpi_batch_line_has_microsofts_documented_form() {
        let plan = LaunchRequest::new(Flavor::MsMpi)
            .workdir(Word::var("AZ_BATCH_TASK_SHARED_DIR"))
            .program(r"C:\app\mpi-hello.exe")
            .build()
            .unwrap();
        assert_eq!(
            cmd::batch_launch_line(cmd::MSMPI_MPIEXEC, &plan).unwrap(),
            r#"cmd /c ""%MSMPI_BIN%\mpiexec.exe"" -c 1 -wdir %AZ_BATCH_TASK_SHARED_DIR% C:\app\mpi-hello.exe"#
        );
        // a quoted argument: the whole line is wrapped, so cmd /c strips the added quotes
        let plan = LaunchRequest::new(Flavor::MsMpi)
            .program(r"C:\my app\a.exe")
            .build()
            .unwrap();
        assert_eq!(
            cmd::batch_launch_line(r"C:\Program Files\Microsoft MPI\Bin\mpiexec.exe", &plan)
                .unwrap(),
            r#"cmd /c ""C:\Program Files\Microsoft MPI\Bin\mpiexec.exe" -c 1 ^"C:\my app\a.exe^"""#
        );
        assert!(cmd::batch_launch_line("a\"b", &plan).is_err());
        assert_eq!(
            cmd::launch_line("x.exe", &plan).unwrap(),
            r#""x.exe" -c 1 ^"C:\my app\a.exe^""#
        );
    }

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(quote("abc-1.2/x:y"), "abc-1.2/x:y");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(
            quote_expanding("$AZ_BATCH_NODE_ROOT_DIR:/x"),
            "\"$AZ_BATCH_NODE_ROOT_DIR:/x\""
        );
        assert_eq!(
            bash_c("echo 'hi'; true"),
            r"/bin/bash -c 'echo '\''hi'\''; true'"
        );
    }

    #[test]
    fn bash_round_trips_quoted_words() {
        let words = ["plain", "a b", "it's", "$NOPE", "x\"y", "back\\slash", "新"];
        let line = join(&words);
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf '%s\\n' {line}"))
            .output()
            .unwrap();
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(got, words);
    }

    #[test]
    fn splits_like_a_shell_without_expansion() {
        let a = split(r#"/bin/bash -c 'echo $AZ_BATCH_HOST_LIST; exit 3' "a \"b\"" c\ d"#).unwrap();
        assert_eq!(
            a,
            vec![
                "/bin/bash",
                "-c",
                "echo $AZ_BATCH_HOST_LIST; exit 3",
                "a \"b\"",
                "c d"
            ]
        );
        assert_eq!(split("  x   ''  ").unwrap(), vec!["x", ""]);
        assert_eq!(split("a;b $X").unwrap(), vec!["a;b", "$X"]);
        assert_eq!(split("\"a\\x\"").unwrap(), vec!["a\\x"]);
        assert_eq!(
            split("bash -c 'oops"),
            Err(SplitError::UnterminatedSingleQuote)
        );
        assert_eq!(split("\"oops"), Err(SplitError::UnterminatedDoubleQuote));
        assert_eq!(split("oops\\"), Err(SplitError::TrailingBackslash));
        assert_eq!(split("   "), Err(SplitError::Empty));
    }

    #[test]
    fn splits_plain_commands_only() {
        assert_eq!(
            split_plain("/app -e 1K 'a b' \"c d\""),
            Some(vec![
                "/app".to_string(),
                "-e".into(),
                "1K".into(),
                "a b".into(),
                "c d".into()
            ])
        );
        assert_eq!(split_plain("echo $HOME"), None);
        assert_eq!(split_plain("echo \"$HOME\""), None);
        assert_eq!(split_plain("a | b"), None);
        assert_eq!(split_plain("a\nb"), None);
        assert_eq!(split_plain("'unterminated"), None);
        assert_eq!(split_plain("   "), None);
        assert_eq!(
            split_plain("'$HOME; x'"),
            Some(vec!["$HOME; x".to_string()])
        );
        assert_eq!(
            tokenize("a > b", Mode::Plain),
            Err(SplitError::NeedsShell('>'))
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Any words quoted by `quote` and joined split back into the same words, both ways.
        #[test]
        fn quoted_words_split_back(words in proptest::collection::vec("[ -~]{0,12}", 1..6)) {
            let line = join(&words);
            prop_assert_eq!(split_plain(&line), Some(words.clone()), "line: {}", line);
            prop_assert_eq!(split(&line), Ok(words), "line: {}", line);
        }
    }
}
