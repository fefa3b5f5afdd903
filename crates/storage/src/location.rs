//! URLs that may carry a SAS token: [`SasUrl`] keeps the full URL for requests and shows only a
//! redacted form in `Debug`/`Display`.

use std::fmt;

use shipyard_batch_api::models::url_for_log;
use url::Url;

use crate::error::{Result, StorageError};

/// A container or blob URL, possibly with a SAS token in its query.
///
/// `Debug` and `Display` print the URL with its query replaced by `<redacted>`; use
/// [`SasUrl::expose`] only where the full URL must leave the process (a request, a Batch
/// `storageContainerUrl`).
#[derive(Clone, PartialEq, Eq)]
pub struct SasUrl(Url);

impl SasUrl {
    /// Parses an absolute `http(s)` URL.
    pub fn parse(url: &str) -> Result<SasUrl> {
        let parsed = Url::parse(url).map_err(|e| StorageError::InvalidUrl {
            url: url_for_log(url),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(StorageError::InvalidUrl {
                url: url_for_log(url),
                reason: format!("scheme {} is not http or https", parsed.scheme()),
            });
        }
        Ok(SasUrl(parsed))
    }

    pub(crate) fn from_url(url: Url) -> SasUrl {
        SasUrl(url)
    }

    /// The full URL, SAS included. Never log it.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The URL with its query replaced by `<redacted>`, for messages and logs.
    pub fn redacted(&self) -> String {
        url_for_log(self.0.as_str())
    }

    pub(crate) fn url(&self) -> &Url {
        &self.0
    }

    /// The URL of blob `name` inside this container URL, keeping the query (the SAS).
    ///
    /// Each `/`-separated segment of `name` is percent-encoded; `/` stays a separator.
    pub fn blob(&self, name: &str) -> Result<SasUrl> {
        if name.is_empty() {
            return Err(StorageError::InvalidUrl {
                url: self.redacted(),
                reason: "empty blob name".to_string(),
            });
        }
        let mut url = self.0.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| StorageError::InvalidUrl {
                    url: self.redacted(),
                    reason: "the URL cannot have a path".to_string(),
                })?;
            segments.pop_if_empty();
            segments.extend(name.split('/'));
        }
        Ok(SasUrl(url))
    }

    /// This URL with extra query parameters prepended to the existing query (the SAS).
    pub(crate) fn with_query(&self, pairs: &[(&str, &str)]) -> Url {
        let mut url = self.0.clone();
        let existing: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        {
            let mut q = url.query_pairs_mut();
            q.clear();
            for (k, v) in pairs {
                q.append_pair(k, v);
            }
            for (k, v) in &existing {
                q.append_pair(k, v);
            }
        }
        url
    }
}

impl fmt::Debug for SasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SasUrl({})", self.redacted())
    }
}

impl fmt::Display for SasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::str::FromStr for SasUrl {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self> {
        SasUrl::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_url_keeps_the_sas_and_encodes_segments() -> Result<()> {
        let c = SasUrl::parse("https://acct.blob.core.windows.net/data?sv=2022-11-02&sig=abc%2B")?;
        let b = c.blob("dir/a b#1.txt")?;
        assert_eq!(
            b.expose(),
            "https://acct.blob.core.windows.net/data/dir/a%20b%231.txt?sv=2022-11-02&sig=abc%2B"
        );
        assert_eq!(
            b.to_string(),
            "https://acct.blob.core.windows.net/data/dir/a%20b%231.txt?<redacted>"
        );
        assert!(!format!("{b:?}").contains("sig"));
        Ok(())
    }

    #[test]
    fn path_style_container_with_trailing_slash() -> Result<()> {
        let c = SasUrl::parse("http://127.0.0.1:10000/devstoreaccount1/data/")?;
        assert_eq!(
            c.blob("x/y")?.expose(),
            "http://127.0.0.1:10000/devstoreaccount1/data/x/y"
        );
        Ok(())
    }

    #[test]
    fn query_pairs_come_before_the_sas() -> Result<()> {
        let c = SasUrl::parse("https://a.blob.core.windows.net/c?sv=1&sig=s%2F")?;
        let u = c.with_query(&[("restype", "container"), ("comp", "list")]);
        assert_eq!(
            u.as_str(),
            "https://a.blob.core.windows.net/c?restype=container&comp=list&sv=1&sig=s%2F"
        );
        Ok(())
    }

    #[test]
    fn refuses_other_schemes() {
        assert!(matches!(
            SasUrl::parse("ftp://host/c?sig=secret"),
            Err(StorageError::InvalidUrl { url, .. }) if !url.contains("secret")
        ));
    }
}
