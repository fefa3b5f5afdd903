//! Paging through `odata.nextLink` as an async [`Stream`].

use std::collections::VecDeque;

use futures::stream::{self, BoxStream, Stream};
use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::client::{BatchClient, Call, RetryClass};
use crate::error::Result;

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
