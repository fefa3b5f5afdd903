//! Printing results as aligned tables or JSON.

use serde::Serialize;
use serde_json::Value;

use crate::args::OutputFormat;

/// A table: headers and rows of cells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Column titles.
    pub headers: Vec<&'static str>,
    /// Rows (each as long as `headers`).
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders with two spaces between columns; the last column is not padded.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let line = |cells: Vec<&str>, out: &mut String| {
            let n = cells.len();
            for (i, cell) in cells.into_iter().enumerate() {
                out.push_str(cell);
                if i + 1 < n {
                    let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                    out.push_str(&" ".repeat(pad));
                }
            }
            out.push('\n');
        };
        line(self.headers.clone(), &mut out);
        for row in &self.rows {
            line(row.iter().map(String::as_str).collect(), &mut out);
        }
        out
    }
}

/// Prints `value` as JSON, or `table` for people.
pub fn emit<T: Serialize>(format: OutputFormat, value: &T, table: impl FnOnce() -> Table) {
    let text = match format {
        OutputFormat::Json => format!("{}\n", to_json_string(value)),
        OutputFormat::Table => table().render(),
    };
    print_stdout(text.as_bytes());
}

/// Writes to stdout; a closed pipe (`shipyard … | head`) is not an error worth a panic.
pub fn print_stdout(bytes: &[u8]) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

/// Pretty JSON (never fails for our serializable types; falls back to `null`).
pub fn to_json_string<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into())
}

/// A JSON field as a table cell (`-` when absent).
pub fn cell(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// `--file NAME` as a path inside the task directory (and inside `--out DIR`); absolute paths
/// and `..` are refused.
pub fn task_file_path(name: &str) -> crate::CliResult<&std::path::Path> {
    let rel = std::path::Path::new(name);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(crate::CliError::Usage(format!(
            "--file `{name}` must be a path inside the task directory"
        )));
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["ID", "STATE"]);
        t.row(vec!["a-long-id".into(), "active".into()]);
        t.row(vec!["b".into(), "completed".into()]);
        assert_eq!(
            t.render(),
            "ID         STATE\na-long-id  active\nb          completed\n"
        );
    }
}
