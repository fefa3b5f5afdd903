//! Connection handling and the request pipeline: api-version, date, Shared Key, routing,
//! strict body validation, then [`crate::routes::dispatch`].

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response};
use serde_json::Value;
use shipyard_batch_spec::schema::{Spec, Violation};
use shipyard_batch_spec::server::auth;
use shipyard_batch_spec::server::http::{
    finish, missing_api_version, read_body as read_limited, unsupported_api_version, ReplyBody,
};
pub(crate) use shipyard_batch_spec::server::http::{header_str, Reply};
use shipyard_batch_spec::wire::Query;

use crate::backend::Backend;

/// The service's limit on an `addtaskcollection` body.
const MAX_TASK_COLLECTION_BYTES: usize = 1024 * 1024;

pub(crate) struct Ctx {
    pub account: String,
    pub key: Vec<u8>,
    pub base_url: String,
    pub backend: Arc<dyn Backend>,
    /// Properties only api-version 2025-06-01 knows, kept beside the backend's objects.
    pub extras: crate::extras::Extras,
}

/// The accept loop (shared with the strict test server) over [`handle`].
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<Ctx>,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    shipyard_batch_spec::server::http::serve_connections(listener, shutdown, move |req| {
        let ctx = ctx.clone();
        async move { Ok(handle(&ctx, req).await) }
    })
    .await
}

async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Response<ReplyBody> {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let raw_path = parts.uri.path().to_owned();
    let raw_query = parts.uri.query().unwrap_or("").to_owned();
    let headers = parts.headers;
    let mut reply = match read_limited(body).await {
        Ok(b) => pipeline(ctx, &method, &raw_path, &raw_query, &headers, b).await,
        Err(r) => r,
    };
    if reply.status >= 400 {
        tracing::debug!(%method, path = %raw_path, status = reply.status, "request rejected");
    }
    if method == "HEAD" {
        reply.body = Bytes::new();
    }
    finish(&headers, reply)
}

/// api-version: missing or unknown versions are refused as the service refuses them.
fn api_spec(query: &Query) -> Result<&'static Spec, Reply> {
    let Some(v) = query.get("api-version") else {
        return Err(missing_api_version());
    };
    match Spec::for_api_version(v) {
        Ok(Some(spec)) => Ok(spec),
        Ok(None) => Err(unsupported_api_version(
            v,
            "The specified api version is not supported; supported: 2024-07-01.20.0, 2025-06-01.21.0",
        )),
        Err(e) => Err(Reply::error(500, "InternalError", &e.to_string(), &[])),
    }
}

fn authenticate(
    ctx: &Ctx,
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &HeaderMap,
) -> Result<(), Reply> {
    // `ocp-date` wins; `Date` is accepted when it is absent (and then must be signed).
    if headers.contains_key("ocp-date") || !headers.contains_key("date") {
        auth::check_date(headers).map_err(|(status, code, msg)| {
            Reply::error(status, code, &msg, &[("HeaderName", "ocp-date".into())])
        })?;
    }
    let Some(authz) = header_str(headers, "authorization") else {
        return Err(Reply::error(
            401,
            "AuthenticationFailed",
            "Server failed to authenticate the request. The Authorization header is missing.",
            &[(
                "AuthenticationErrorDetail",
                "The Authorization header is missing.".into(),
            )],
        ));
    };
    if !authz.starts_with("SharedKey ") {
        return Err(Reply::error(
            401,
            "AuthenticationFailed",
            "Server failed to authenticate the request. Only SharedKey authorization is served here.",
            &[("AuthenticationErrorDetail", "Authorization scheme must be SharedKey.".into())],
        ));
    }
    auth::verify_shared_key(&ctx.account, &ctx.key, method, raw_path, raw_query, headers).map_err(
        |(status, code, msg)| {
            Reply::error(
                status,
                code,
                &msg,
                &[("AuthenticationErrorDetail", msg.clone())],
            )
        },
    )
}

/// `/a/b/0/c` from a JSON pointer `/a/b/0/c` → `a.b[0].c`.
fn property_name(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        if seg.parse::<usize>().is_ok() {
            out += &format!("[{seg}]");
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out += &seg.replace("~1", "/").replace("~0", "~");
        }
    }
    out
}

/// Maps schema violations to the service's error: a missing required property is
/// `MissingRequiredProperty`, a value outside the allowed ones is `InvalidPropertyValue`, and
/// anything else (unknown properties, wrong JSON types) `InvalidRequestBody`; each names the
/// property.
pub(crate) fn violation_reply(violations: &[Violation]) -> Reply {
    let first = &violations[0];
    let at = property_name(&first.pointer);
    if let Some(name) = first
        .message
        .strip_prefix("missing required property ")
        .map(|n| n.trim_matches('"'))
    {
        let full = if at.is_empty() {
            name.to_owned()
        } else {
            format!("{at}.{name}")
        };
        return Reply::error(
            400,
            "MissingRequiredProperty",
            "A required property was not specified in the request body.",
            &[("PropertyName", full)],
        );
    }
    if first.message.starts_with("unknown property ") {
        let full = at.clone();
        return Reply::error(
            400,
            "InvalidRequestBody",
            "The specified Request Body is not syntactically valid.",
            &[
                ("PropertyName", full.clone()),
                (
                    "Reason",
                    format!("The property '{full}' does not exist on the type."),
                ),
            ],
        );
    }
    let value_problem = [
        "is not one of",
        "out of the",
        "maximum",
        "minimum",
        "items",
        "not an RFC 3339",
        "not an ISO 8601",
    ]
    .iter()
    .any(|m| first.message.contains(m));
    let code = if value_problem {
        "InvalidPropertyValue"
    } else {
        "InvalidRequestBody"
    };
    let message = if value_problem {
        "The value provided for one of the properties in the request body is invalid."
    } else {
        "The specified Request Body is not syntactically valid."
    };
    Reply::error(
        400,
        code,
        message,
        &[("PropertyName", at), ("Reason", first.message.clone())],
    )
}

/// Parses and validates the body of an operation against the request's api-version spec.
fn read_body(
    spec: &Spec,
    method: &str,
    raw_path: &str,
    op_id: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Option<Value>, Reply> {
    let Some(op) = spec.operation(method, raw_path) else {
        return Ok(None);
    };
    let Some(def) = op.body_definition else {
        return Ok(None);
    };
    if body.is_empty() {
        if op.body_required {
            return Err(Reply::error(
                400,
                "MissingRequiredBody",
                &format!("The request requires a {def} body."),
                &[],
            ));
        }
        return Ok(None);
    }
    let ct = header_str(headers, "content-type").unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("application/json") {
        return Err(Reply::error(
            400,
            "InvalidHeaderValue",
            &format!("The value for one of the HTTP headers is not in the correct format: Content-Type `{ct}`."),
            &[("HeaderName", "Content-Type".into()), ("HeaderValue", ct.to_owned())],
        ));
    }
    if op_id == "Task_AddCollection" && body.len() >= MAX_TASK_COLLECTION_BYTES {
        return Err(Reply::error(
            413,
            "RequestBodyTooLarge",
            "The request body is too large and exceeds the maximum permissible limit.",
            &[("MaxLimit", MAX_TASK_COLLECTION_BYTES.to_string())],
        ));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Reply::error(
            400,
            "InvalidRequestBody",
            "The specified Request Body is not syntactically valid.",
            &[("Reason", e.to_string())],
        )
    })?;
    let mut v = v;
    if let Err(vs) = spec.validate(def, &v) {
        let (case_only, rest): (Vec<Violation>, Vec<Violation>) =
            vs.into_iter().partition(|x| enum_spelling(&v, x).is_some());
        if !rest.is_empty() {
            return Err(violation_reply(&rest));
        }
        for x in &case_only {
            if let (Some(canonical), Some(slot)) = (enum_spelling(&v, x), v.pointer_mut(&x.pointer))
            {
                *slot = Value::String(canonical);
            }
        }
    }
    Ok(Some(v))
}

/// The spec's spelling of an enum value that differs from it only in case: the service
/// compares enum values case-insensitively (the azure-batch 15.1.0 SDK sends e.g.
/// `jobDefaultOrder: "creationtime"` where the 2025-06-01 spec spells `creationTime`), so
/// such a value is accepted and stored as the spec spells it.
fn enum_spelling(body: &Value, v: &Violation) -> Option<String> {
    let allowed = v
        .message
        .split(" is not one of the allowed values ")
        .nth(1)?;
    let given = body.pointer(&v.pointer)?.as_str()?;
    allowed
        .split('|')
        .find(|a| a.eq_ignore_ascii_case(given))
        .map(str::to_owned)
}

async fn pipeline(
    ctx: &Ctx,
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Reply {
    let query = Query::parse(raw_query);
    let spec = match api_spec(&query) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = authenticate(ctx, method, raw_path, raw_query, headers) {
        return r;
    }
    // Routing uses the 2024 operation ids; both versions share the paths.
    let routing = match Spec::try_shared() {
        Ok(s) => s,
        Err(e) => return Reply::error(500, "InternalError", &e.to_string(), &[]),
    };
    let Some(op) = routing.operation(method, raw_path) else {
        return Reply::error(
            404,
            "InvalidUri",
            "The requested URI does not represent any resource on the server.",
            &[("RequestUri", raw_path.to_owned())],
        );
    };
    let parsed = match read_body(spec, method, raw_path, op.id, headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    crate::routes::dispatch(
        ctx,
        crate::routes::Req {
            op: op.id,
            params: &op.path_params,
            query: &query,
            headers,
            body: parsed,
            ignore_range: false,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::{enum_spelling, property_name};
    use serde_json::json;
    use shipyard_batch_spec::schema::Violation;

    #[test]
    fn enum_values_differing_in_case_only_get_the_spec_spelling() {
        let body = json!({"taskSchedulingPolicy": {"jobDefaultOrder": "creationtime"}});
        let v = |message: &str| Violation {
            pointer: "/taskSchedulingPolicy/jobDefaultOrder".into(),
            message: message.into(),
        };
        assert_eq!(
            enum_spelling(
                &body,
                &v("\"creationtime\" is not one of the allowed values none|creationTime")
            )
            .as_deref(),
            Some("creationTime")
        );
        assert_eq!(
            enum_spelling(
                &body,
                &v("\"x\" is not one of the allowed values none|other")
            ),
            None
        );
        assert_eq!(
            enum_spelling(&body, &v("expected a string, got number")),
            None
        );
    }

    #[test]
    fn pointers_become_property_names() {
        assert_eq!(
            property_name("/value/3/commandLine"),
            "value[3].commandLine"
        );
        assert_eq!(property_name("/poolInfo/poolId"), "poolInfo.poolId");
        assert_eq!(property_name(""), "");
    }
}
