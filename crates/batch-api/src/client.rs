//! The HTTP core of [`BatchClient`]: request building, authentication, retries.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rand::Rng as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::auth::Credential;
use crate::error::{BatchError, ErrorDetail, Result, ServiceError};
use crate::request::{encode_query, Request, MAX_TASK_COLLECTION_BYTES};
use crate::API_VERSION;

/// Content type of request bodies.
pub const JSON_CONTENT_TYPE: &str = "application/json; odata=minimalmetadata";

/// Backoff and budget for retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per call, including the first (minimum 1).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles each retry (with full jitter).
    pub initial_delay: Duration,
    /// Upper bound of one backoff (a longer `Retry-After` is honoured up to `max_elapsed`).
    pub max_delay: Duration,
    /// No retry starts after this much time since the first attempt.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(180),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Backoff before retry number `retry` (1-based): full jitter over an exponential cap.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let exp = self.initial_delay.saturating_mul(
            1u32.checked_shl(retry.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let cap = exp.min(self.max_delay);
        let lo = cap / 2;
        let jitter = rand::thread_rng().gen_range(0.0..=1.0);
        lo + (cap - lo).mul_f64(jitter)
    }
}

/// Tunables of a [`BatchClient`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Client-side timeout of one HTTP attempt (connect + reply headers + JSON body).
    pub request_timeout: Duration,
    /// The `timeout` query parameter (server-side seconds, at most 30) sent on every call.
    pub server_timeout: Option<u32>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Concurrent `addtaskcollection` requests in [`BatchClient::add_task_collection`].
    pub task_collection_concurrency: usize,
    /// Request body budget of one `addtaskcollection` call, in bytes (default
    /// [`MAX_TASK_COLLECTION_BYTES`]; service limit: 1 MB).
    pub max_body_bytes: usize,
    /// Rounds of re-submitting tasks whose per-task result was a retryable failure.
    pub task_retry_rounds: u32,
    /// The api-version sent (default [`API_VERSION`]).
    pub api_version: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(60),
            server_timeout: None,
            retry: RetryPolicy::default(),
            task_collection_concurrency: 8,
            max_body_bytes: MAX_TASK_COLLECTION_BYTES,
            task_retry_rounds: 5,
            api_version: API_VERSION.to_owned(),
        }
    }
}

/// An Azure Batch data-plane client. Cheap to clone (shares one connection pool).
#[derive(Clone, Debug)]
pub struct BatchClient {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) endpoint: url::Url,
    pub(crate) credential: Credential,
    pub(crate) options: ClientOptions,
}

/// When a call may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryClass {
    /// GET/HEAD/DELETE: always retryable. A retried DELETE answered 404 or 409 `…BeingDeleted`
    /// is success (an earlier attempt whose reply was lost did the deletion).
    Idempotent,
    /// A create with a client-chosen id: retryable, and a 409 `…Exists` on a retry is success.
    Create,
    /// Whole-chunk retries of `addtaskcollection` (per-task `TaskExists` handled by the caller).
    Collection,
    /// Non-idempotent action: retried only when the service provably did not act on it
    /// (429, 503, connection refused).
    Action,
}

/// One call to make.
#[derive(Debug)]
pub(crate) struct Call {
    pub method: Method,
    pub url: url::Url,
    pub body: Option<Bytes>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub class: RetryClass,
}

/// A successful reply.
#[derive(Debug)]
pub(crate) struct Reply {
    pub response: Option<reqwest::Response>,
    pub status: u16,
    pub headers: HeaderMap,
    /// A retried create answered `…Exists`.
    pub already_existed: bool,
    /// Number of attempts made.
    pub attempts: u32,
}

/// The reqwest method of a described request.
fn http_method(m: crate::request::Method) -> Method {
    use crate::request::Method as M;
    match m {
        M::Get => Method::GET,
        M::Head => Method::HEAD,
        M::Post => Method::POST,
        M::Put => Method::PUT,
        M::Patch => Method::PATCH,
        M::Delete => Method::DELETE,
    }
}

/// When a described request may be repeated.
fn retry_class(request: &Request) -> RetryClass {
    use crate::request::Method as M;
    match (request.operation, request.method) {
        ("Pool_Add" | "Job_Add" | "Task_Add", _) => RetryClass::Create,
        ("Task_AddCollection", _) => RetryClass::Collection,
        // A patch sets the same values again; GET/HEAD/DELETE/PUT are idempotent.
        (_, M::Get | M::Head | M::Delete | M::Put | M::Patch) => RetryClass::Idempotent,
        (_, M::Post) => RetryClass::Action,
    }
}

const RETRYABLE_STATUSES: [u16; 6] = [408, 429, 500, 502, 503, 504];

/// Transient failure of one attempt.
enum AttemptError {
    Status {
        error: BatchError,
        status: u16,
        retry_after: Option<Duration>,
    },
    Transport {
        error: BatchError,
        /// The request certainly never reached the service (connect failed).
        not_sent: bool,
    },
    Fatal(BatchError),
}

impl BatchClient {
    /// A client for `endpoint` (`https://{account}.{region}.batch.azure.com`, or an
    /// `http://127.0.0.1:port` test server) with default options.
    pub fn new(endpoint: &str, credential: impl Into<Credential>) -> Result<Self> {
        Self::with_options(endpoint, credential, ClientOptions::default())
    }

    /// A client with explicit options.
    pub fn with_options(
        endpoint: &str,
        credential: impl Into<Credential>,
        options: ClientOptions,
    ) -> Result<Self> {
        let endpoint = url::Url::parse(endpoint).map_err(|e| BatchError::Config {
            field: "endpoint".into(),
            message: format!("`{endpoint}` is not a URL ({e})"),
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err(BatchError::Config {
                field: "endpoint".into(),
                message: format!("`{endpoint}` is not an http(s) URL with a host"),
            });
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(options.request_timeout.min(Duration::from_secs(30)))
            .build()
            .map_err(|e| BatchError::Config {
                field: "http client".into(),
                message: e.to_string(),
            })?;
        Ok(BatchClient {
            inner: Arc::new(Inner {
                http,
                endpoint,
                credential: credential.into(),
                options,
            }),
        })
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> &url::Url {
        &self.inner.endpoint
    }

    /// The options in use.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The call that sends `request`: its path appended to the endpoint's, its query with this
    /// client's api-version (and `timeout`, when configured), its body as compact JSON.
    pub(crate) fn call_for(&self, request: &Request) -> Result<Call> {
        if request.definition.is_some() && request.body.is_none() {
            return Err(BatchError::Serialize {
                what: request.definition.unwrap_or_default().to_owned(),
                message: format!("the body of {} did not serialize", request.operation),
            });
        }
        let opts = &self.inner.options;
        let mut query = request.query.clone();
        for (k, v) in query.iter_mut() {
            if k == "api-version" {
                v.clone_from(&opts.api_version);
            }
        }
        if !query.iter().any(|(k, _)| k == "timeout") {
            let timeout = match opts.server_timeout {
                Some(t) => Some(t),
                // The service works on a collection for up to 30 s by default: a client that
                // gives up sooner tells it so.
                None if request.operation == "Task_AddCollection"
                    && opts.request_timeout < Duration::from_secs(30) =>
                {
                    Some(opts.request_timeout.as_secs().max(1) as u32)
                }
                None => None,
            };
            if let Some(t) = timeout {
                query.push(("timeout".to_owned(), t.to_string()));
            }
        }
        let mut url = self.inner.endpoint.clone();
        let path = format!("{}{}", url.path().trim_end_matches('/'), request.path);
        url.set_path(&path);
        if url.path() != path {
            // `.` and `..` segments would be resolved away: refuse rather than send elsewhere.
            return Err(BatchError::Config {
                field: "path".into(),
                message: format!(
                    "{} path `{}` is not sendable as is",
                    request.operation, request.path
                ),
            });
        }
        url.set_query(Some(&encode_query(&query)));
        Ok(Call {
            method: http_method(request.method),
            url,
            body: request.body_bytes().map(Bytes::from),
            headers: Vec::new(),
            class: retry_class(request),
        })
    }

    /// Checks an `odata.nextLink` points at our endpoint and carries the api-version.
    pub(crate) fn next_link(&self, link: &str) -> Result<url::Url> {
        let url = self
            .inner
            .endpoint
            .join(link)
            .map_err(|e| BatchError::Decode {
                context: "odata.nextLink".into(),
                message: format!("`{link}` is not a URL ({e})"),
            })?;
        if url.origin() != self.inner.endpoint.origin() {
            return Err(BatchError::Decode {
                context: "odata.nextLink".into(),
                message: format!("next link `{link}` points away from the account endpoint"),
            });
        }
        if url.query_pairs().any(|(k, _)| k == "api-version") {
            Ok(url)
        } else {
            let mut url = url;
            url.query_pairs_mut()
                .append_pair("api-version", &self.inner.options.api_version);
            Ok(url)
        }
    }

    /// Sends a call with retries; returns the successful reply (2xx, or a retried create's 409).
    pub(crate) async fn execute(&self, call: Call) -> Result<Reply> {
        let retry = &self.inner.options.retry;
        let started = Instant::now();
        let mut attempt: u32 = 0;
        let mut token_refreshed = false;
        loop {
            attempt += 1;
            let span = tracing::debug_span!(
                "batch_request",
                method = %call.method,
                path = %call.url.path(),
                attempt,
                status = tracing::field::Empty,
            );
            let outcome = self.attempt(&call, attempt).instrument(span.clone()).await;
            let (err, retryable, retry_after) = match outcome {
                Ok(reply) => {
                    span.record("status", reply.status);
                    return Ok(reply);
                }
                Err(AttemptError::Fatal(e)) => return Err(wrap(e, attempt)),
                Err(AttemptError::Status {
                    error,
                    status,
                    retry_after,
                }) => {
                    span.record("status", status);
                    if status == 401 {
                        // A bearer token the service no longer accepts (revoked, clock skew):
                        // drop the cached token and try once more with a fresh one. The 401
                        // means the request was not processed.
                        if let Credential::Token(src) = &self.inner.credential {
                            if !token_refreshed {
                                token_refreshed = true;
                                src.invalidate().await;
                                tracing::debug!("bearer token rejected; refreshing once");
                                continue;
                            }
                        }
                        return Err(wrap(error, attempt));
                    }
                    let ok = RETRYABLE_STATUSES.contains(&status)
                        && (call.class != RetryClass::Action || status == 429 || status == 503);
                    (error, ok, retry_after)
                }
                Err(AttemptError::Transport { error, not_sent }) => {
                    let ok = call.class != RetryClass::Action || not_sent;
                    (error, ok, None)
                }
            };
            if !retryable || attempt >= retry.max_attempts.max(1) {
                return Err(wrap(err, attempt));
            }
            let delay = match retry_after {
                Some(d) => d,
                None => retry.backoff(attempt),
            };
            if started.elapsed() + delay > retry.max_elapsed {
                return Err(wrap(err, attempt));
            }
            tracing::debug!(
                method = %call.method,
                path = %call.url.path(),
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %err,
                "retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self, call: &Call, attempt: u32) -> Result<Reply, AttemptError> {
        let method_s = call.method.as_str().to_owned();
        let path_s = call.url.path().to_owned();
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let mut headers = HeaderMap::with_capacity(10);
        headers.insert(
            "client-request-id",
            header_value(&client_request_id).map_err(AttemptError::Fatal)?,
        );
        headers.insert("return-client-request-id", HeaderValue::from_static("true"));
        headers.insert(
            "ocp-date",
            header_value(&httpdate::fmt_http_date(SystemTime::now()))
                .map_err(AttemptError::Fatal)?,
        );
        headers.insert("accept", HeaderValue::from_static("application/json"));
        if let Some(body) = &call.body {
            headers.insert("content-type", HeaderValue::from_static(JSON_CONTENT_TYPE));
            headers.insert("content-length", HeaderValue::from(body.len()));
        } else if !matches!(call.method, Method::GET | Method::HEAD) {
            // Every bodiless request but GET/HEAD carries (and signs) `Content-Length: 0`,
            // as the official SDKs send it; a verifier built on their code requires it.
            headers.insert("content-length", HeaderValue::from_static("0"));
        }
        for (n, v) in &call.headers {
            headers.insert(n.clone(), v.clone());
        }
        let auth = match &self.inner.credential {
            Credential::SharedKey(k) => k.authorization(call.method.as_str(), &call.url, &headers),
            Credential::Token(src) => {
                let tok = src.token().await.map_err(AttemptError::Fatal)?;
                format!("Bearer {}", tok.token.expose())
            }
        };
        let mut auth_value = header_value(&auth).map_err(AttemptError::Fatal)?;
        auth_value.set_sensitive(true);
        headers.insert("authorization", auth_value);

        let mut req = reqwest::Request::new(call.method.clone(), call.url.clone());
        *req.headers_mut() = headers;
        if let Some(body) = &call.body {
            *req.body_mut() = Some(reqwest::Body::from(body.clone()));
        } else if !matches!(call.method, Method::GET | Method::HEAD) {
            *req.body_mut() = Some(reqwest::Body::from(Bytes::new()));
        }

        let timeout = self.inner.options.request_timeout;
        let sent = tokio::time::timeout(timeout, self.inner.http.execute(req)).await;
        let resp = match sent {
            Err(_) => {
                return Err(AttemptError::Transport {
                    error: BatchError::Timeout {
                        method: method_s,
                        path: path_s,
                        timeout,
                    },
                    not_sent: false,
                })
            }
            Ok(Err(e)) => {
                let not_sent = e.is_connect();
                return Err(AttemptError::Transport {
                    error: BatchError::Transport {
                        method: method_s,
                        path: path_s,
                        message: transport_message(&e),
                    },
                    not_sent,
                });
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if resp.status().is_success() {
            return Ok(Reply {
                response: Some(resp),
                status,
                headers,
                already_existed: false,
                attempts: attempt,
            });
        }
        // Error reply: read and decode the BatchError body.
        let body = self
            .read_body(resp, &method_s, &path_s)
            .await
            .map_err(|error| AttemptError::Transport {
                error,
                not_sent: false,
            })?;
        let mut error = decode_error_body(status, &body);
        error.request_id = header_str(&headers, "request-id");
        error.client_request_id =
            header_str(&headers, "client-request-id").or(Some(client_request_id));
        // A retry whose error shows that an earlier attempt, whose reply was lost, did the
        // work: a create answered 409 `…Exists`, or a delete answered 404 or 409
        // `…BeingDeleted`. Either is the success of this call.
        let created_before = call.class == RetryClass::Create && created_by_earlier_attempt(&error);
        let deleted_before = call.method == Method::DELETE && deleted_by_earlier_attempt(&error);
        if attempt > 1 && (created_before || deleted_before) {
            tracing::debug!(code = ?error.code, "retry found the earlier attempt's work: success");
            return Ok(Reply {
                response: None,
                status,
                headers,
                already_existed: created_before,
                attempts: attempt,
            });
        }
        let retry_after = parse_retry_after(&headers);
        let error = BatchError::Service {
            method: method_s,
            path: path_s,
            error: Box::new(error),
        };
        let token_rejected = status == 401 && matches!(self.inner.credential, Credential::Token(_));
        if RETRYABLE_STATUSES.contains(&status) || token_rejected {
            Err(AttemptError::Status {
                error,
                status,
                retry_after,
            })
        } else {
            Err(AttemptError::Fatal(error))
        }
    }

    /// Reads a reply's body within the per-request timeout.
    pub(crate) async fn read_body(
        &self,
        resp: reqwest::Response,
        method: &str,
        path: &str,
    ) -> Result<Bytes> {
        let timeout = self.inner.options.request_timeout;
        match tokio::time::timeout(timeout, resp.bytes()).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => Err(BatchError::Transport {
                method: method.to_owned(),
                path: path.to_owned(),
                message: transport_message(&e),
            }),
            Err(_) => Err(BatchError::Timeout {
                method: method.to_owned(),
                path: path.to_owned(),
                timeout,
            }),
        }
    }

    /// Sends a call and decodes its JSON reply.
    pub(crate) async fn json<T: DeserializeOwned>(&self, call: Call) -> Result<T> {
        Ok(self.json_with_attempts(call).await?.0)
    }

    /// Sends a call and decodes its JSON reply; also returns the number of attempts made.
    pub(crate) async fn json_with_attempts<T: DeserializeOwned>(
        &self,
        call: Call,
    ) -> Result<(T, u32)> {
        let method = call.method.as_str().to_owned();
        let path = call.url.path().to_owned();
        let reply = self.execute(call).await?;
        let context = format!("{method} {path}");
        let resp = reply.response.ok_or_else(|| BatchError::Decode {
            context: context.clone(),
            message: "no body".into(),
        })?;
        let bytes = self.read_body(resp, &method, &path).await?;
        Ok((decode_json(&context, &bytes)?, reply.attempts))
    }
}

/// Whether a retried create's error shows an earlier attempt created the resource.
fn created_by_earlier_attempt(error: &ServiceError) -> bool {
    error.status == 409
        && error
            .code
            .as_deref()
            .is_some_and(|c| matches!(c, "PoolExists" | "JobExists" | "TaskExists"))
}

/// Whether a retried DELETE's error shows an earlier attempt deleted the resource: 404, or 409
/// with a `…BeingDeleted` code (pools and jobs are deleted asynchronously).
fn deleted_by_earlier_attempt(error: &ServiceError) -> bool {
    error.status == 404
        || (error.status == 409
            && error
                .code
                .as_deref()
                .is_some_and(|c| c.ends_with("BeingDeleted")))
}

/// Decodes JSON with the path of the offending field in the error.
pub(crate) fn decode_json<T: DeserializeOwned>(context: &str, bytes: &[u8]) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| BatchError::Decode {
        context: context.to_owned(),
        message: format!("at `{}`: {}", e.path(), e.inner()),
    })
}

fn wrap(err: BatchError, attempts: u32) -> BatchError {
    if attempts > 1 {
        BatchError::RetriesExhausted {
            attempts,
            last: Box::new(err),
        }
    } else {
        err
    }
}

fn header_value(s: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(s).map_err(|_| BatchError::Config {
        field: "header".into(),
        message: "value contains characters not allowed in an HTTP header".into(),
    })
}

pub(crate) fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn transport_message(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// `Retry-After` in delta-seconds or as an HTTP date.
pub(crate) fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Decodes a `BatchError` body; tolerates missing or non-JSON bodies.
pub(crate) fn decode_error_body(status: u16, body: &[u8]) -> ServiceError {
    #[derive(serde::Deserialize)]
    struct Msg {
        value: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Body {
        code: Option<String>,
        message: Option<serde_json::Value>,
        #[serde(default)]
        values: Option<Vec<ErrorDetail>>,
    }
    let parsed: Option<Body> = serde_json::from_slice(body).ok();
    let (code, message, details) = match parsed {
        Some(b) => {
            let message = match b.message {
                Some(serde_json::Value::String(s)) => Some(s),
                Some(v) => serde_json::from_value::<Msg>(v).ok().and_then(|m| m.value),
                None => None,
            };
            (b.code, message, b.values.unwrap_or_default())
        }
        None => (None, None, Vec::new()),
    };
    ServiceError {
        status,
        code,
        message,
        details,
        request_id: None,
        client_request_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(3)));
        let later = SystemTime::now() + Duration::from_secs(20);
        h.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).expect("date"),
        );
        let d = parse_retry_after(&h).expect("date parses");
        assert!(
            d > Duration::from_secs(15) && d <= Duration::from_secs(20),
            "{d:?}"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        let d1 = p.backoff(1);
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
        let d4 = p.backoff(4);
        assert!(d4 >= Duration::from_millis(400) && d4 <= Duration::from_millis(800));
        assert!(p.backoff(30) <= Duration::from_secs(1));
    }

    #[test]
    fn next_links_stay_on_the_endpoint_and_keep_the_api_version() {
        let cred = crate::SharedKeyCredential::new("a", "a2V5").expect("cred");
        let c = BatchClient::new("https://a.westus.batch.azure.com", cred).expect("client");
        let u = c
            .next_link("https://a.westus.batch.azure.com/jobs/j/tasks?$skiptoken=x")
            .expect("same origin");
        assert!(u
            .query()
            .is_some_and(|q| q.contains("api-version=2024-07-01.20.0")));
        let kept = c
            .next_link("/pools?api-version=2024-07-01.20.0&$skiptoken=y")
            .expect("relative");
        assert_eq!(
            kept.query_pairs()
                .filter(|(k, _)| k == "api-version")
                .count(),
            1
        );
        assert!(c.next_link("https://evil.example.com/pools").is_err());
    }

    #[test]
    fn urls_encode_each_segment() {
        let cred = crate::SharedKeyCredential::new("a", "a2V5").expect("cred");
        let c = BatchClient::new("http://127.0.0.1:9", cred).expect("client");
        let r = crate::request::get_task_file("j 1", "t", "wd/out.txt");
        let u = c.call_for(&r).expect("sendable").url;
        assert_eq!(u.path(), "/jobs/j%201/tasks/t/files/wd%2Fout.txt");
        assert_eq!(u.query(), Some("api-version=2024-07-01.20.0"));
        assert_eq!(
            format!("{}?{}", u.path(), u.query().unwrap_or("")),
            r.path_and_query()
        );
    }

    #[test]
    fn url_keeps_the_endpoint_path_and_refuses_dot_segments() {
        let cred = crate::SharedKeyCredential::new("a", "a2V5").expect("cred");
        let c = BatchClient::new("http://127.0.0.1:9/batch/", cred).expect("client");
        let u = c
            .call_for(&crate::request::get_job("j"))
            .expect("sendable")
            .url;
        assert_eq!(u.path(), "/batch/jobs/j");
        let e = c
            .call_for(&crate::request::get_job(".."))
            .expect_err("`..` resolves away");
        assert!(e.to_string().contains("`path`"), "{e}");
    }

    #[test]
    fn options_change_only_api_version_and_timeout() {
        let cred = crate::SharedKeyCredential::new("a", "a2V5").expect("cred");
        let options = ClientOptions {
            api_version: "2023-05-01.17.0".into(),
            server_timeout: Some(20),
            ..ClientOptions::default()
        };
        let c = BatchClient::with_options("http://127.0.0.1:9", cred, options).expect("client");
        let u = c
            .call_for(&crate::request::list_pools(&Default::default()))
            .expect("ok")
            .url;
        assert_eq!(u.query(), Some("api-version=2023-05-01.17.0&timeout=20"));
        let cred = crate::SharedKeyCredential::new("a", "a2V5").expect("cred");
        let quick = ClientOptions {
            request_timeout: Duration::from_secs(10),
            ..ClientOptions::default()
        };
        let c = BatchClient::with_options("http://127.0.0.1:9", cred, quick).expect("client");
        let tasks = [crate::models::TaskAddParameter::new("t", "true")];
        let r = crate::request::add_task_collection("j", &tasks).remove(0);
        let call = c.call_for(&r).expect("ok");
        assert_eq!(
            call.url.query(),
            Some("api-version=2024-07-01.20.0&timeout=10")
        );
        assert_eq!(call.class, RetryClass::Collection);
        let job = c.call_for(&crate::request::get_job("j")).expect("ok");
        assert_eq!(job.url.query(), Some("api-version=2024-07-01.20.0"));
    }

    #[test]
    fn error_body_decodes() {
        let e = decode_error_body(
            409,
            br#"{"code":"PoolExists","message":{"lang":"en-US","value":"The specified pool already exists."},"values":[{"key":"RequestId","value":"r1"}]}"#,
        );
        assert_eq!(e.code.as_deref(), Some("PoolExists"));
        assert_eq!(
            e.message.as_deref(),
            Some("The specified pool already exists.")
        );
        assert_eq!(e.details.len(), 1);
        let e = decode_error_body(502, b"<html>bad gateway</html>");
        assert_eq!((e.status, e.code), (502, None));
    }
}
