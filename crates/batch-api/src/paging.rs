//! Paging through `odata.nextLink` as an async [`Stream`].

use std::collections::VecDeque;

use futures::stream::{self, BoxStream, Stream};
use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::client::{BatchClient, Call, RetryClass};
use crate::error::Result;

/// OData options of a list call.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// `$filter`, e.g. `state eq 'completed'`.
    pub filter: Option<String>,
    /// `$select`, a comma-separated property list.
    pub select: Option<String>,
    /// `$expand`, e.g. `stats`.
    pub expand: Option<String>,
    /// `maxresults`: items per page (1..=1000).
    pub max_results: Option<u32>,
}

impl ListOptions {
    /// Sets `$filter`.
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }

    /// Sets `$select`.
    pub fn select(mut self, select: impl Into<String>) -> Self {
        self.select = Some(select.into());
        self
    }

    /// Sets `$expand` (e.g. `stats`).
    pub fn expand(mut self, expand: impl Into<String>) -> Self {
        self.expand = Some(expand.into());
        self
    }

    /// Sets `maxresults`.
    pub fn max_results(mut self, n: u32) -> Self {
        self.max_results = Some(n);
        self
    }

    pub(crate) fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(f) = &self.filter {
            q.push(("$filter", f.clone()));
        }
        if let Some(s) = &self.select {
            q.push(("$select", s.clone()));
        }
        if let Some(e) = &self.expand {
            q.push(("$expand", e.clone()));
        }
        if let Some(m) = self.max_results {
            q.push(("maxresults", m.to_string()));
        }
        q
    }
}

#[derive(serde::Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
struct Page<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
    #[serde(rename = "odata.nextLink", default)]
    next_link: Option<String>,
}

struct State<T> {
    client: BatchClient,
    next: Option<url::Url>,
    buffer: VecDeque<T>,
    /// An error to yield once the buffered items are delivered; then the stream ends.
    pending_error: Option<crate::error::BatchError>,
    failed: bool,
}

impl BatchClient {
    /// Streams every item of a list operation, fetching pages lazily.
    pub(crate) fn paged<T>(&self, first: url::Url) -> BoxStream<'static, Result<T>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let state = State {
            client: self.clone(),
            next: Some(first),
            buffer: VecDeque::new(),
            pending_error: None,
            failed: false,
        };
        Box::pin(stream::unfold(state, |mut st| async move {
            loop {
                if let Some(item) = st.buffer.pop_front() {
                    return Some((Ok(item), st));
                }
                if let Some(e) = st.pending_error.take() {
                    return Some((Err(e), st));
                }
                if st.failed {
                    return None;
                }
                let url = st.next.take()?;
                let call = Call {
                    method: Method::GET,
                    url,
                    body: None,
                    headers: Vec::new(),
                    class: RetryClass::Idempotent,
                };
                match st.client.json::<Page<T>>(call).await {
                    Ok(page) => {
                        st.buffer.extend(page.value);
                        if let Some(link) = page.next_link {
                            match st.client.next_link(&link) {
                                Ok(u) => st.next = Some(u),
                                Err(e) => {
                                    // Deliver this page's items first, then the error.
                                    st.failed = true;
                                    st.pending_error = Some(e);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        st.failed = true;
                        return Some((Err(e), st));
                    }
                }
            }
        }))
    }
}

/// Collects a list stream into a `Vec`, stopping at the first error.
pub async fn collect_all<T>(s: impl Stream<Item = Result<T>>) -> Result<Vec<T>> {
    use futures::TryStreamExt as _;
    s.try_collect().await
}

#[cfg(test)]
mod tests {
    use super::ListOptions;

    #[test]
    fn every_option_becomes_its_odata_parameter() {
        let q = ListOptions::default()
            .filter("state eq 'active'")
            .select("id,state")
            .expand("stats")
            .max_results(50)
            .query();
        assert_eq!(
            q,
            [
                ("$filter", "state eq 'active'".to_owned()),
                ("$select", "id,state".to_owned()),
                ("$expand", "stats".to_owned()),
                ("maxresults", "50".to_owned()),
            ]
        );
        assert!(ListOptions::default().query().is_empty());
    }
}
