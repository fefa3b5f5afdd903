//! Redaction of secrets in `Debug` output of the models.

use std::fmt;

/// Debug stand-in for a secret value: shows only whether it is set.
pub(crate) struct Redacted(bool);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 { "Some(<redacted>)" } else { "None" })
    }
}

/// Hides a secret field's value.
pub(crate) fn redact<T>(value: Option<&T>) -> Redacted {
    Redacted(value.is_some())
}

/// Debug stand-in for a URL that may carry a SAS token: keeps everything before the query.
pub(crate) struct RedactedUrl<'a>(Option<&'a str>);

impl fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("None"),
            Some(url) => match url.split_once('?') {
                Some((base, _)) => write!(f, "{base:?}?<redacted>"),
                None => write!(f, "{url:?}"),
            },
        }
    }
}

/// Hides the query string (where SAS tokens live) of a URL field.
pub(crate) fn redact_url(value: Option<&String>) -> RedactedUrl<'_> {
    RedactedUrl(value.map(String::as_str))
}

/// Renders a URL for logs: the query string, which may hold a SAS token, is replaced.
pub fn url_for_log(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?<redacted>"),
        None => url.to_string(),
    }
}
