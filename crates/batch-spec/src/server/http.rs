//! Connection handling and the request pipeline (faults, api-version, auth, validation).
//!
//! The reusable part is public for `shipyard serve`: [`Reply`] (a Batch reply under
//! construction), [`ReplyBody`], [`serve_connections`] (the accept loop: one HTTP/1.1
//! keep-alive connection task per client until shutdown), [`read_body`] (body with the size
//! limit) and [`finish`] (`request-id`, `dataserviceversion`, `client-request-id` echo).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;

use super::{auth, lock, ops, AuthKind, Fault, RequestRecord, Shared};

/// Requests larger than this are refused before reading further.
pub const MAX_READ: usize = 8 * 1024 * 1024;

/// The error that makes hyper close the connection without a reply.
#[derive(Debug)]
pub struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DropConnection {}

/// Response body: whole, or cut short after announcing its full length (fault injection).
#[derive(Debug)]
pub enum ReplyBody {
    /// The whole body (taken when sent).
    Full(Option<Bytes>),
    /// Sends `data`, then fails so the connection is aborted before `announced` bytes.
    Truncated {
        /// Announced length.
        announced: u64,
        /// The bytes actually sent.
        data: Option<Bytes>,
    },
}

impl hyper::body::Body for ReplyBody {
    type Data = Bytes;
    type Error = DropConnection;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, DropConnection>>> {
        let frame = match self.get_mut() {
            ReplyBody::Full(d) => d.take().map(|b| Ok(hyper::body::Frame::data(b))),
            ReplyBody::Truncated { data, .. } => match data.take() {
                Some(b) => Some(Ok(hyper::body::Frame::data(b))),
                None => Some(Err(DropConnection)),
            },
        };
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ReplyBody::Full(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ReplyBody::Full(d) => {
                hyper::body::SizeHint::with_exact(d.as_ref().map_or(0, |b| b.len() as u64))
            }
            ReplyBody::Truncated { announced, .. } => hyper::body::SizeHint::with_exact(*announced),
        }
    }
}

/// A reply under construction.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers besides the ones [`finish`] adds.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// The Batch error code of an error reply.
    pub error_code: Option<String>,
}

impl Reply {
    /// A JSON reply (`application/json;odata=minimalmetadata`).
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            headers: vec![(
                "content-type".into(),
                "application/json;odata=minimalmetadata".into(),
            )],
            body: Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
            error_code: None,
        }
    }

    /// A reply without a body.
    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            error_code: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// A Batch error body.
    pub fn error(status: u16, code: &str, message: &str, values: &[(&str, String)]) -> Reply {
        Reply::error_value(status, crate::wire::error_body(code, message, values))
    }

    /// A reply carrying an already built Batch error body.
    pub fn error_value(status: u16, body: Value) -> Reply {
        let code = body.get("code").and_then(Value::as_str).map(str::to_owned);
        let mut r = Reply::json(status, &body);
        r.error_code = code;
        r
    }
}

/// The service's answer to a request without `api-version`: 400
/// `MissingRequiredQueryParameter` naming the parameter.
pub fn missing_api_version() -> Reply {
    Reply::error(
        400,
        "MissingRequiredQueryParameter",
        "A query parameter that's mandatory for this request is not specified.",
        &[("QueryParameterName", "api-version".into())],
    )
}

/// The service's answer to an `ocp-range` outside the file: 416 `InvalidRange`.
pub fn invalid_range(range: &str) -> Reply {
    Reply::error(
        416,
        "InvalidRange",
        "The range specified is invalid for the current size of the resource.",
        &[("Range", range.to_owned())],
    )
}

/// The service's answer to an `api-version` it does not support: 400
/// `InvalidQueryParameterValue` with the value and `reason`.
pub fn unsupported_api_version(value: &str, reason: &str) -> Reply {
    Reply::error(
        400,
        "InvalidQueryParameterValue",
        "Value for one of the query parameters specified in the request URI is invalid.",
        &[
            ("QueryParameterName", "api-version".into()),
            ("QueryParameterValue", value.to_owned()),
            ("Reason", reason.to_owned()),
        ],
    )
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    serve_connections(listener, shutdown, move |req| handle(shared.clone(), req)).await
}

/// Accepts connections on `listener` until `shutdown` fires, serving each (HTTP/1.1,
/// keep-alive, `TCP_NODELAY`) on its own task with `handler`; a handler's [`DropConnection`]
/// closes the connection without a reply.
pub async fn serve_connections<H, F>(
    listener: tokio::net::TcpListener,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Response<ReplyBody>, DropConnection>> + Send + 'static,
{
    // On shutdown every connection is shut down gracefully: requests in flight are answered,
    // idle keep-alive connections are closed at once, so nothing the handler holds outlives
    // the server because a client keeps a pooled connection open.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        while conns.try_join_next().is_some() {}
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(handler);
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { stop.wait_for(|stopped| *stopped).await.map(|_| ()) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Requests in flight get a while to finish; the rest are dropped with the set.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

/// Reads a request body of at most [`MAX_READ`] bytes; a larger one is answered 413
/// `RequestBodyTooLarge`.
pub async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    match Limited::new(body, MAX_READ).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(Reply::error(
            413,
            "RequestBodyTooLarge",
            "The request body is too large and exceeds the maximum permissible limit.",
            &[("MaxLimit", MAX_READ.to_string())],
        )),
    }
}

/// A header's value, if present and visible ASCII.
pub fn header_str<'a>(headers: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ReplyBody>, DropConnection> {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let raw_path = parts.uri.path().to_owned();
    let raw_query = parts.uri.query().unwrap_or("").to_owned();
    let headers = parts.headers;
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return Ok(finish(&headers, r)),
    };
    let op = shared.spec.operation(&method, &raw_path);
    let op_id = op.as_ref().map(|o| o.id.to_owned());
    let mut record = RequestRecord {
        method: method.clone(),
        path: raw_path.clone(),
        query: raw_query.clone(),
        operation: op_id.clone(),
        status: 0,
        error_code: None,
        auth: AuthKind::None,
        client_request_id: header_str(&headers, "client-request-id").map(str::to_owned),
        body_len: body.len(),
        fault: None,
    };

    // Token endpoint (not part of the Batch spec).
    if method == "POST" && raw_path.ends_with("/oauth2/v2.0/token") && op.is_none() {
        let (status, v) = auth::token_endpoint(&shared, &body);
        let r = Reply::json(status, &v);
        return Ok(log_and_finish(&shared, &headers, record, r));
    }

    let fault = shared.take_fault(&method, op_id.as_deref());
    record.fault = fault.clone();
    let mut drop_after = false;
    match &fault {
        Some(Fault::TooManyRequests {
            retry_after_secs,
            as_http_date,
        }) => {
            let ra = if *as_http_date {
                httpdate::fmt_http_date(
                    std::time::SystemTime::now()
                        + std::time::Duration::from_secs(*retry_after_secs),
                )
            } else {
                retry_after_secs.to_string()
            };
            let r = Reply::error(429, "TooManyRequests", "Too many requests.", &[])
                .header("retry-after", ra);
            return Ok(log_and_finish(&shared, &headers, record, r));
        }
        Some(Fault::ServiceUnavailable) => {
            let r = Reply::error(503, "ServerBusy", "The server is busy.", &[]);
            return Ok(log_and_finish(&shared, &headers, record, r));
        }
        Some(Fault::InternalError) => {
            let r = Reply::error(500, "InternalError", "Injected internal error.", &[]);
            return Ok(log_and_finish(&shared, &headers, record, r));
        }
        Some(Fault::DropConnection) => {
            log(&shared, record);
            return Err(DropConnection);
        }
        Some(Fault::SlowReply(d)) => tokio::time::sleep(*d).await,
        Some(Fault::DropReplyAfterCommit) => drop_after = true,
        Some(Fault::TruncatedReply { .. } | Fault::IgnoreRange) | None => {}
    }

    let reply = pipeline(
        &shared,
        &method,
        &raw_path,
        &raw_query,
        &headers,
        &body,
        op,
        &mut record,
    );
    if drop_after {
        record.status = 0;
        log(&shared, record);
        return Err(DropConnection);
    }
    let truncate = match fault {
        Some(Fault::TruncatedReply { bytes }) if reply.body.len() > bytes => Some(bytes),
        _ => None,
    };
    let mut resp = log_and_finish(&shared, &headers, record, reply);
    if let Some(bytes) = truncate {
        // Announce the full length, send less, then fail the body: hyper aborts the connection.
        let body = std::mem::replace(resp.body_mut(), ReplyBody::Full(None));
        if let ReplyBody::Full(Some(full)) = body {
            *resp.body_mut() = ReplyBody::Truncated {
                announced: full.len() as u64,
                data: Some(full.slice(..bytes)),
            };
        }
    }
    Ok(resp)
}

#[allow(clippy::too_many_arguments)]
fn pipeline(
    shared: &Shared,
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &hyper::HeaderMap,
    body: &Bytes,
    op: Option<crate::schema::Operation<'_>>,
    record: &mut RequestRecord,
) -> Reply {
    let query = ops::Query::parse(raw_query);
    // api-version. Bodies are validated strictly whatever the accepted version.
    match query.get("api-version") {
        None => return missing_api_version(),
        Some(v)
            if v == shared.spec.api_version()
                || shared.config.extra_api_versions.iter().any(|e| e == v) => {}
        Some(v) => {
            return unsupported_api_version(
                v,
                &format!("The supported api-version is {}", shared.spec.api_version()),
            )
        }
    }
    if let Err((status, code, msg)) = auth::check_date(headers) {
        return Reply::error(status, code, &msg, &[("HeaderName", "ocp-date".into())]);
    }
    match auth::authenticate(shared, method, raw_path, raw_query, headers) {
        Ok(kind) => record.auth = kind,
        Err((status, code, msg)) => {
            return Reply::error(
                status,
                code,
                &msg,
                &[("AuthenticationErrorDetail", msg.clone())],
            )
        }
    }
    let Some(op) = op else {
        return Reply::error(
            404,
            "InvalidUri",
            &format!("The requested URI does not represent any resource on the server: {method} {raw_path}"),
            &[],
        );
    };
    for q in &op.required_query {
        if query.get(q).is_none() {
            return Reply::error(
                400,
                "MissingRequiredQueryParameter",
                "A query parameter that's mandatory for this request is not specified.",
                &[("QueryParameterName", (*q).to_owned())],
            );
        }
    }
    for h in &op.required_headers {
        if headers.get(h.to_ascii_lowercase().as_str()).is_none() {
            return Reply::error(
                400,
                "MissingRequiredHeader",
                "A header that's mandatory for this request is not specified.",
                &[("HeaderName", (*h).to_owned())],
            );
        }
    }
    // Body.
    let parsed: Option<Value> = match op.body_definition {
        Some(def) if !body.is_empty() => {
            let ct = header_str(headers, "content-type").unwrap_or("");
            if !ct.to_ascii_lowercase().starts_with("application/json") {
                return Reply::error(
                    400,
                    "InvalidHeaderValue",
                    &format!("Content-Type `{ct}` is not application/json."),
                    &[("HeaderName", "Content-Type".into())],
                );
            }
            if op.id == "Task_AddCollection" && body.len() >= 1024 * 1024 {
                return Reply::error(
                    413,
                    "RequestBodyTooLarge",
                    "The request body is too large and exceeds the maximum permissible limit.",
                    &[("MaxLimit", "1048576".into())],
                );
            }
            let v: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return Reply::error(
                        400,
                        "InvalidRequestBody",
                        "The specified Request Body is not syntactically valid.",
                        &[("Reason", e.to_string())],
                    )
                }
            };
            if let Err(violations) = shared.spec.validate(def, &v) {
                let values: Vec<(&str, String)> = violations
                    .iter()
                    .take(50)
                    .map(|vi| ("Reason", vi.to_string()))
                    .collect();
                return Reply::error(
                    400,
                    "InvalidRequestBody",
                    &format!("The value provided for {def} is invalid."),
                    &values,
                );
            }
            Some(v)
        }
        Some(def) if op.body_required => {
            return Reply::error(
                400,
                "MissingRequiredBody",
                &format!("The request requires a {def} body."),
                &[],
            )
        }
        _ => None,
    };
    let params: Vec<(String, String)> = op.path_params.clone();
    ops::dispatch(
        shared,
        ops::Req {
            op: op.id,
            params: &params,
            query: &query,
            headers,
            body: parsed,
            ignore_range: record.fault == Some(Fault::IgnoreRange),
        },
    )
}

fn log(shared: &Shared, record: RequestRecord) {
    if shared.config.log_requests {
        lock(&shared.log).push(record);
    }
}

fn log_and_finish(
    shared: &Shared,
    req_headers: &hyper::HeaderMap,
    mut record: RequestRecord,
    reply: Reply,
) -> Response<ReplyBody> {
    record.status = reply.status;
    record.error_code = reply.error_code.clone();
    if reply.status >= 400 {
        tracing::debug!(method = %record.method, path = %record.path, status = reply.status, code = ?reply.error_code, "strict server rejected request");
    }
    log(shared, record);
    finish(req_headers, reply)
}

/// The response for `reply`: a fresh `request-id`, `dataserviceversion: 3.0`, and the
/// request's `client-request-id` when it asked for it with `return-client-request-id: true`.
pub fn finish(req_headers: &hyper::HeaderMap, reply: Reply) -> Response<ReplyBody> {
    let mut b = Response::builder().status(reply.status);
    b = b.header("request-id", uuid::Uuid::new_v4().to_string());
    b = b.header("dataserviceversion", "3.0");
    if header_str(req_headers, "return-client-request-id")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        if let Some(id) = header_str(req_headers, "client-request-id") {
            b = b.header("client-request-id", id);
        }
    }
    for (k, v) in &reply.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let body = if reply.body.is_empty() {
        ReplyBody::Full(None)
    } else {
        ReplyBody::Full(Some(reply.body))
    };
    b.body(body).unwrap_or_else(|_| {
        let mut r = Response::new(ReplyBody::Full(Some(Bytes::from_static(
            b"bad reply header",
        ))));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}
