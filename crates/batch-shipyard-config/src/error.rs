//! Errors and warnings, each located in a YAML/JSON file.

use std::fmt;
use std::path::PathBuf;

/// A position in a configuration file (YAML/JSON here; the CLI locates its TOML errors with it too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub column: usize,
    /// The source line, for the caret display, secrets hidden (here: secret values replaced by
    /// `<redacted>`; the CLI's TOML errors replace a whole line that may hold one).
    pub source_line: String,
    /// Width of the underlined span (at least 1).
    pub width: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

impl Location {
    /// A rustc-style snippet pointing at the location.
    pub fn snippet(&self) -> String {
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        format!(
            "{pad} |\n{num} | {}\n{pad} | {}{}",
            self.source_line,
            " ".repeat(self.column.saturating_sub(1)),
            "^".repeat(self.width.max(1))
        )
    }
}

/// A key that was ignored or whose meaning changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where.
    pub location: Location,
    /// YAML field path, e.g. `pool_specification.prometheus`.
    pub field: String,
    /// What happened and why.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: `{}`: {}", self.location, self.field, self.message)
    }
}

/// Everything that can go wrong reading Batch Shipyard configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BsConfigError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// YAML or JSON syntax.
    #[error("{location}: {message}")]
    Syntax {
        /// Where.
        location: Box<Location>,
        /// What.
        message: String,
    },
    /// A key Batch Shipyard does not document.
    #[error("{location}: `{field}`: unknown key `{key}`{}", match hint { Some(h) => format!(" (did you mean `{h}`?)"), None => String::new() })]
    UnknownKey {
        /// Where the key is.
        location: Box<Location>,
        /// YAML field path of the key.
        field: String,
        /// The key.
        key: String,
        /// The closest documented key.
        hint: Option<String>,
        /// The documented keys at that place.
        expected: Vec<String>,
    },
    /// A documented key shipyard cannot honour.
    #[error("{location}: `{field}` is not supported: {reason}")]
    Refused {
        /// Where the key is.
        location: Box<Location>,
        /// YAML field path.
        field: String,
        /// Why.
        reason: String,
    },
    /// A value that is not acceptable.
    #[error("{location}: `{field}`: {reason}")]
    Invalid {
        /// Where.
        location: Box<Location>,
        /// YAML field path.
        field: String,
        /// Why.
        reason: String,
    },
    /// A section given in two files.
    #[error("{second}: `{section}` is also given at {first}")]
    Duplicate {
        /// The top-level key.
        section: String,
        /// First place.
        first: Box<Location>,
        /// Second place.
        second: Box<Location>,
    },
    /// Nothing to read.
    #[error("{what}")]
    Missing {
        /// What is missing.
        what: String,
    },
}

impl BsConfigError {
    /// The location of the error, when it has one.
    pub fn location(&self) -> Option<&Location> {
        match self {
            BsConfigError::Syntax { location, .. }
            | BsConfigError::UnknownKey { location, .. }
            | BsConfigError::Refused { location, .. }
            | BsConfigError::Invalid { location, .. } => Some(location),
            BsConfigError::Duplicate { second, .. } => Some(second),
            _ => None,
        }
    }

    /// A rustc-style snippet (empty without a location). Secrets are never shown.
    pub fn snippet(&self) -> String {
        self.location().map(Location::snippet).unwrap_or_default()
    }
}
