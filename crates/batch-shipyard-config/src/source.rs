//! A configuration file as read, with the spans of its secrets (never shown in snippets).

use std::path::PathBuf;

use crate::error::Location;
use crate::yaml::{Node, Pos, Value};

/// Keys whose values are secrets, wherever they appear.
pub const SECRET_KEYS: &[&str] = &[
    "account_key",
    "auth_key",
    "password",
    "rsa_private_key_pem",
    "passphrase",
    "db_password",
    "ssh_private_key",
];

/// One YAML or JSON file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Its path as given.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    /// Secret value positions: (line, first column, width).
    secrets: Vec<(usize, usize, usize)>,
    /// Hide every source line (a credentials file that did not parse).
    hide_all: bool,
}

impl SourceFile {
    /// Wraps a file's text.
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        SourceFile {
            path: path.into(),
            text: text.into(),
            secrets: Vec::new(),
            hide_all: false,
        }
    }

    pub(crate) fn hide_all_lines(&mut self) {
        self.hide_all = true;
    }

    /// Records every secret scalar below `root`.
    pub(crate) fn collect_secrets(&mut self, root: &Node) {
        fn walk(n: &Node, out: &mut Vec<(usize, usize, usize)>) {
            match &n.value {
                Value::Map(entries) => {
                    for (k, v) in entries {
                        let secret = k.as_text().is_some_and(|k| SECRET_KEYS.contains(&k));
                        if secret && v.as_text().is_some() {
                            // block scalars span lines: hide from the start to the line's end
                            let width = if v.raw.as_deref().is_some_and(|r| r.contains('\n')) {
                                usize::MAX
                            } else {
                                v.width
                            };
                            out.push((v.pos.line, v.pos.column, width));
                            if let Some(raw) = &v.raw {
                                for l in 1..=raw.matches('\n').count() {
                                    out.push((v.pos.line + l, 1, usize::MAX));
                                }
                            }
                        }
                        walk(v, out);
                    }
                }
                Value::Seq(items) => items.iter().for_each(|i| walk(i, out)),
                _ => {}
            }
        }
        walk(root, &mut self.secrets);
    }

    /// The location of `pos`, its source line with secrets replaced by `<redacted>`.
    pub fn location(&self, pos: Pos, width: usize) -> Location {
        let line_text = self
            .text
            .lines()
            .nth(pos.line.saturating_sub(1))
            .unwrap_or("")
            .trim_end_matches('\r');
        let source_line = if self.hide_all {
            "<line hidden: this file holds credentials>".to_string()
        } else {
            let mut chars: Vec<char> = line_text.chars().collect();
            let mut spans: Vec<_> = self
                .secrets
                .iter()
                .filter(|(l, _, _)| *l == pos.line)
                .collect();
            spans.sort_by_key(|s| std::cmp::Reverse(s.1));
            for (_, col, w) in spans {
                let start = (col - 1).min(chars.len());
                let end = start.saturating_add(*w).min(chars.len());
                chars.splice(start..end, "<redacted>".chars());
            }
            chars.into_iter().collect()
        };
        let line_len = line_text.chars().count();
        Location {
            file: self.path.clone(),
            line: pos.line,
            column: pos.column,
            source_line,
            width: width.min(line_len.saturating_sub(pos.column - 1)).max(1),
        }
    }
}
