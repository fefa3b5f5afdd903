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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
