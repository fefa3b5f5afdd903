//! Rendering argv into POSIX shell text (argv first, strings from argv, never the reverse).

/// Quotes one word for a POSIX shell: unchanged when it only holds safe characters, otherwise
/// in single quotes (an embedded `'` becomes `'\''`).
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b'-' | b'.' | b'/' | b':' | b'=' | b',' | b'@' | b'+' | b'%'
                )
        });
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Quotes a word that may start with a shell variable reference such as
/// `$AZ_BATCH_NODE_ROOT_DIR/x` or `${VAR}/x`: the variable part is kept for expansion inside
/// double quotes, the rest is quoted. Words without a leading `$` are quoted with [`quote`].
pub fn quote_expanding(word: &str) -> String {
    if !word.contains('$') {
        return quote(word);
    }
    // Double quotes keep `$VAR` expansion; escape the characters special inside them except `$`.
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

/// Joins argv into one shell line with [`quote`].
pub fn join(argv: &[String]) -> String {
    argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// `/bin/bash -c '<script>'`: the Batch idiom, since Batch does not run command lines in a shell.
pub fn bash_c(script: &str) -> String {
    format!("/bin/bash -c {}", quote(script))
}

#[cfg(test)]
mod tests {
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
        let line = words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
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
}
