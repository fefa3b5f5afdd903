//! Server-side authentication ([`check_date`], [`verify_shared_key`] are public for
//! `shipyard serve`): Shared Key verification (recomputed from the raw request,
//! independently of any client code) and the bearer token endpoint.

use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use serde_json::json;
use sha2::Sha256;

use super::{lock, AuthKind, Shared};
use crate::schema::percent_decode;

/// The string-to-sign's lines before the canonicalized headers, as the Shared Key
/// documentation lists them (see the spec README's "String-to-sign" line): the verb, then the
/// values of these headers.
///
/// Deliberately written here from the documentation, not imported from `shipyard-batch-api`'s
/// signer: the verifier recomputes signatures independently of any client code, so a wrong
/// list on either side fails the tests instead of agreeing with itself.
const DOCUMENTED_LINES: &str = "VERB, Content-Encoding, Content-Language, Content-Length, Content-MD5, Content-Type, Date, If-Modified-Since, If-Match, If-None-Match, If-Unmodified-Since, Range";

/// Maximum accepted clock skew of `ocp-date`.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Why a request failed authentication: (status, code, detail).
pub type AuthFailure = (u16, &'static str, String);

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Decodes a query string into (lowercase name, decoded value) pairs; `+` is a space.
fn query_pairs(raw_query: &str) -> Vec<(String, String)> {
    raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(&n.replace('+', " ")).to_lowercase(),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

/// The string-to-sign for the raw request, given the Content-Length line to use.
fn string_to_sign(
    account: &str,
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    content_length: &str,
) -> String {
    let mut lines: Vec<String> = vec![method.to_uppercase()];
    for name in DOCUMENTED_LINES.split(", ").skip(1) {
        if name.eq_ignore_ascii_case("content-length") {
            lines.push(content_length.to_owned());
        } else {
            lines.push(
                header(headers, &name.to_ascii_lowercase())
                    .unwrap_or("")
                    .to_owned(),
            );
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    let mut ocp: Vec<(String, String)> = headers
        .keys()
        .map(|k| k.as_str().to_lowercase())
        .filter(|k| k.starts_with("ocp-"))
        .filter_map(|k| {
            let vals: Vec<&str> = headers
                .get_all(k.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let v = vals.join(",");
            (!v.is_empty()).then(|| (k.clone(), v.trim().to_owned()))
        })
        .collect();
    ocp.sort();
    ocp.dedup();
    for (k, v) in ocp {
        out += &format!("{k}:{v}\n");
    }
    out += &format!("/{account}{raw_path}");
    // Group repeated parameters: values joined with ','.
    let mut params: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (n, v) in query_pairs(raw_query) {
        if !v.is_empty() {
            params.entry(n).or_default().push(v);
        }
    }
    for (n, vs) in params {
        out += &format!("\n{n}:{}", vs.join(","));
    }
    out
}

/// Checks `ocp-date` (required, within 15 minutes).
pub fn check_date(headers: &HeaderMap) -> Result<(), AuthFailure> {
    let Some(date) = header(headers, "ocp-date") else {
        return Err((
            400,
            "MissingRequiredHeader",
            "The request is missing the ocp-date header.".into(),
        ));
    };
    let Ok(at) = httpdate::parse_http_date(date) else {
        return Err((
            400,
            "InvalidHeaderValue",
            format!("ocp-date `{date}` is not an RFC 1123 date."),
        ));
    };
    let now = SystemTime::now();
    let skew = now
        .duration_since(at)
        .or_else(|_| at.duration_since(now))
        .unwrap_or(Duration::MAX);
    if skew > MAX_SKEW {
        return Err((
            403,
            "AuthenticationFailed",
            format!("ocp-date `{date}` is more than 15 minutes away from the server time."),
        ));
    }
    Ok(())
}

/// Verifies the Authorization header.
pub(crate) fn authenticate(
    shared: &Shared,
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &HeaderMap,
) -> Result<AuthKind, AuthFailure> {
    let Some(auth) = header(headers, "authorization") else {
        return Err((
            401,
            "AuthenticationFailed",
            "The request has no Authorization header.".into(),
        ));
    };
    if let Some(token) = auth.strip_prefix("Bearer ") {
        let tokens = lock(&shared.tokens);
        return match tokens.get(token.trim()) {
            Some(exp) if *exp > Instant::now() => Ok(AuthKind::Bearer),
            Some(_) => Err((
                401,
                "AuthenticationFailed",
                "The access token has expired.".into(),
            )),
            None => Err((
                401,
                "AuthenticationFailed",
                "The access token was not issued by this server.".into(),
            )),
        };
    }
    if !auth.starts_with("SharedKey ") {
        return Err((
            401,
            "AuthenticationFailed",
            "Authorization scheme must be SharedKey or Bearer.".into(),
        ));
    }
    verify_shared_key(
        &shared.config.account,
        &shared.key,
        method,
        raw_path,
        raw_query,
        headers,
    )
    .map(|()| AuthKind::SharedKey)
}

/// Verifies the value after `SharedKey ` in an Authorization header the way the Batch service
/// does: the account must be `account`, and the signature must be the HMAC-SHA256 with `key`
/// (decoded) of the string-to-sign recomputed from the raw request (method, raw path, raw
/// query, headers). Failures are 403 `AuthenticationFailed`.
pub fn verify_shared_key(
    account_expected: &str,
    key: &[u8],
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &HeaderMap,
) -> Result<(), AuthFailure> {
    let auth = header(headers, "authorization").unwrap_or("");
    let rest = auth.strip_prefix("SharedKey ").unwrap_or(auth);
    let Some((account, sig)) = rest.trim().split_once(':') else {
        return Err((
            403,
            "AuthenticationFailed",
            "SharedKey authorization must be `account:signature`.".into(),
        ));
    };
    if account != account_expected {
        return Err((
            403,
            "AuthenticationFailed",
            format!("Account `{account}` is not served here."),
        ));
    }
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig) else {
        return Err((
            403,
            "AuthenticationFailed",
            "The signature is not base64.".into(),
        ));
    };
    // Content-Length as sent; for body-less non-GET/HEAD requests some SDKs sign "0" without
    // sending the header, so accept that spelling too.
    let mut lengths: Vec<String> = vec![header(headers, "content-length").unwrap_or("").to_owned()];
    if header(headers, "content-length").is_none() && !matches!(method, "GET" | "HEAD") {
        lengths.push("0".into());
    }
    for len in &lengths {
        let to_sign = string_to_sign(account, method, raw_path, raw_query, headers, len);
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            break;
        };
        mac.update(to_sign.as_bytes());
        if mac.verify_slice(&sig).is_ok() {
            return Ok(());
        }
    }
    Err((
        403,
        "AuthenticationFailed",
        "Server failed to authenticate the request. Make sure the value of Authorization header \
         is formed correctly including the signature."
            .into(),
    ))
}

/// Handles `POST /{tenant}/oauth2/v2.0/token` (client credentials). Returns (status, JSON body).
pub(crate) fn token_endpoint(shared: &Shared, body: &[u8]) -> (u16, serde_json::Value) {
    let form: std::collections::HashMap<String, String> = String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect();
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if get("grant_type") != "client_credentials" {
        return (
            400,
            json!({"error": "unsupported_grant_type", "error_description": "only client_credentials"}),
        );
    }
    if get("scope") != "https://batch.core.windows.net//.default" {
        return (
            400,
            json!({"error": "invalid_scope", "error_description": format!("scope `{}` is not the Batch scope", get("scope"))}),
        );
    }
    if get("client_id") != shared.config.client_id
        || get("client_secret") != shared.config.client_secret
    {
        return (
            401,
            json!({"error": "invalid_client", "error_description": "bad client id or secret"}),
        );
    }
    let token = format!(
        "tok-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>())
    );
    let lifetime = shared.config.token_lifetime;
    lock(&shared.tokens).insert(token.clone(), Instant::now() + lifetime);
    shared
        .tokens_issued
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (
        200,
        json!({
            "token_type": "Bearer",
            "expires_in": lifetime.as_secs(),
            "ext_expires_in": lifetime.as_secs(),
            "access_token": token,
        }),
    )
}
