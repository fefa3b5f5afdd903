//! Authentication and request-shape checks: Shared Key, Entra ID tokens, api-version,
//! `ocp-date`, strict body validation — each enforced by the strict server.

mod common;

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue};
use shipyard_batch_api::{
    BatchClient, BatchError, ClientOptions, ClientSecretCredential, SharedKeyCredential,
};
use shipyard_batch_spec::server::{AuthKind, ServerConfig, TestServer};

use common::*;

/// Sends a hand-built, Shared-Key-signed request (to test what the client never sends).
async fn raw(
    server: &TestServer,
    method: &str,
    path_and_query: &str,
    date: Option<SystemTime>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let url = url::Url::parse(&format!("{}{path_and_query}", server.url())).expect("url");
    let mut h = HeaderMap::new();
    if let Some(d) = date {
        h.insert(
            "ocp-date",
            HeaderValue::from_str(&httpdate::fmt_http_date(d)).expect("date"),
        );
    }
    if let Some(b) = body {
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; odata=minimalmetadata"),
        );
        h.insert("content-length", HeaderValue::from(b.len()));
    }
    let cred = SharedKeyCredential::new(server.account(), server.key()).expect("cred");
    let auth = cred.authorization(method, &url, &h);
    h.insert("authorization", HeaderValue::from_str(&auth).expect("auth"));
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = reqwest::Client::new().request(m, url).headers(h);
    if let Some(b) = body {
        req = req.body(b.to_owned());
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let v = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, v)
}

#[tokio::test]
async fn wrong_key_is_403_with_code_and_request_id_and_no_secret_in_output() {
    let server = server().await;
    let wrong_key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let cred = SharedKeyCredential::new(server.account(), &wrong_key).expect("cred");
    let c = BatchClient::with_options(&server.url(), cred, fast_options()).expect("client");
    let err = c.get_pool("any").await.expect_err("bad signature");
    assert_eq!(err.status(), Some(403));
    assert_eq!(err.code(), Some("AuthenticationFailed"));
    assert!(err.request_id().is_some_and(|r| !r.is_empty()));
    let svc = err.service().expect("service error");
    assert!(svc.client_request_id.is_some(), "client-request-id echoed");
    let shown = format!("{err} {err:?} {c:?}");
    for secret in [wrong_key.as_str(), server.key()] {
        assert!(!shown.contains(secret), "secret leaked: {shown}");
    }
    assert!(shown.contains("AuthenticationFailed"));
    // 403 is not retried.
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn good_key_passes_and_headers_are_sent() {
    let server = server().await;
    let c = client(&server);
    c.add_pool(&pool("p", 0)).await.expect("add");
    let log = server.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].auth, AuthKind::SharedKey);
    assert!(
        log[0].query.contains("api-version=2024-07-01.20.0"),
        "{}",
        log[0].query
    );
    let id = log[0]
        .client_request_id
        .as_deref()
        .expect("client-request-id");
    assert!(uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 4));
}

#[tokio::test]
async fn wrong_api_version_is_400() {
    let server = server().await;
    let c = client_with(
        &server,
        ClientOptions {
            api_version: "2023-05-01.17.0".into(),
            ..fast_options()
        },
    );
    let err = c.get_job("j").await.expect_err("unsupported version");
    assert_eq!(
        (err.status(), err.code()),
        (Some(400), Some("InvalidQueryParameterValue"))
    );
    let svc = err.service().expect("service");
    assert!(svc
        .details
        .iter()
        .any(|d| d.value.as_deref() == Some("api-version")));
}

#[tokio::test]
async fn server_rejects_missing_api_version_stale_or_missing_date_and_bad_bodies() {
    let server = server().await;
    let now = SystemTime::now();
    let (s, v) = raw(&server, "GET", "/pools", Some(now), None).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("MissingRequiredQueryParameter"))
    );

    let (s, v) = raw(
        &server,
        "GET",
        "/pools?api-version=2024-07-01.20.0",
        Some(now - Duration::from_secs(20 * 60)),
        None,
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (403, Some("AuthenticationFailed")));

    let (s, v) = raw(
        &server,
        "GET",
        "/pools?api-version=2024-07-01.20.0",
        None,
        None,
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("MissingRequiredHeader"))
    );

    let (s, _) = raw(
        &server,
        "GET",
        "/pools?api-version=2024-07-01.20.0",
        Some(now),
        None,
    )
    .await;
    assert_eq!(s, 200, "a correct hand-signed request passes");

    // Unknown property and missing required vmSize: 400 listing both violations.
    let body = r#"{"id":"p1","bogus":true}"#;
    let (s, v) = raw(
        &server,
        "POST",
        "/pools?api-version=2024-07-01.20.0",
        Some(now),
        Some(body),
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (400, Some("InvalidRequestBody")));
    let details = v["values"].to_string();
    assert!(
        details.contains("bogus") && details.contains("vmSize"),
        "{details}"
    );
    assert_eq!(
        server.create_stat("pool/p1").attempts,
        0,
        "invalid bodies never reach the state"
    );
}

#[tokio::test]
async fn signature_over_another_path_is_rejected() {
    let server = server().await;
    let url = url::Url::parse(&format!(
        "{}/pools/a?api-version=2024-07-01.20.0",
        server.url()
    ))
    .expect("url");
    let other = url::Url::parse(&format!(
        "{}/pools/b?api-version=2024-07-01.20.0",
        server.url()
    ))
    .expect("url");
    let mut h = HeaderMap::new();
    h.insert(
        "ocp-date",
        HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())).expect("d"),
    );
    let cred = SharedKeyCredential::new(server.account(), server.key()).expect("cred");
    let auth = cred.authorization("GET", &url, &h);
    h.insert("authorization", HeaderValue::from_str(&auth).expect("auth"));
    let resp = reqwest::Client::new()
        .get(other)
        .headers(h)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 403);
}

#[tokio::test]
async fn entra_token_is_cached_and_refreshed_before_expiry() {
    let server = server_with(ServerConfig {
        token_lifetime: Duration::from_secs(3),
        ..ServerConfig::default()
    })
    .await;
    let (id, secret) = server.client_credentials();
    let cred = ClientSecretCredential::with_authority(&server.url(), "my-tenant", id, secret)
        .expect("cred")
        .refresh_before(Duration::from_secs(2));
    let c = BatchClient::with_options(&server.url(), cred, fast_options()).expect("client");
    c.add_pool(&pool("p", 0)).await.expect("first call");
    c.get_pool("p").await.expect("second call");
    assert_eq!(server.tokens_issued(), 1, "token cached");
    // Inside the refresh margin (expires in < 2 s) but not yet expired: refreshed proactively.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    c.get_pool("p").await.expect("third call");
    assert_eq!(server.tokens_issued(), 2, "refreshed before expiry");
    // Past the first token's expiry, calls still succeed with the refreshed token.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    c.get_pool("p").await.expect("fourth call");
    let log = server.requests();
    let batch: Vec<_> = log.iter().filter(|r| r.operation.is_some()).collect();
    assert_eq!(batch.len(), 4);
    assert!(
        batch
            .iter()
            .all(|r| r.auth == AuthKind::Bearer && r.status < 400),
        "{batch:?}"
    );
    assert_eq!(
        log.iter()
            .filter(|r| r.path.ends_with("/my-tenant/oauth2/v2.0/token"))
            .count() as u64,
        server.tokens_issued()
    );
}

#[tokio::test]
async fn bad_client_secret_is_a_token_error_without_the_secret() {
    let server = server().await;
    let cred = ClientSecretCredential::with_authority(
        &server.url(),
        "t",
        "test-client",
        "wrong-secret-value",
    )
    .expect("cred");
    let c = BatchClient::with_options(&server.url(), cred, fast_options()).expect("client");
    let err = c.get_pool("p").await.expect_err("no token");
    assert!(matches!(err, BatchError::Token { .. }), "{err:?}");
    let shown = format!("{err} {err:?} {c:?}");
    assert!(shown.contains("invalid_client"), "{shown}");
    assert!(!shown.contains("wrong-secret-value"), "{shown}");
}

#[tokio::test]
async fn expired_or_foreign_bearer_tokens_are_rejected() {
    let server = server().await;
    let url = format!("{}/pools?api-version=2024-07-01.20.0", server.url());
    let resp = reqwest::Client::new()
        .get(url)
        .header("ocp-date", httpdate::fmt_http_date(SystemTime::now()))
        .header("authorization", "Bearer not-issued-here")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn revoked_token_is_refreshed_once_then_401_surfaces() {
    let server = server().await;
    let (id, secret) = server.client_credentials();
    let cred =
        ClientSecretCredential::with_authority(&server.url(), "t", id, secret).expect("cred");
    let c = BatchClient::with_options(&server.url(), cred, fast_options()).expect("client");
    c.add_pool(&pool("p", 0)).await.expect("first call");
    server.revoke_tokens();
    c.get_pool("p").await.expect("refreshed after one 401");
    assert_eq!(server.tokens_issued(), 2);
    // Tokens the server issued start with `tok-`; none shows up in the client's Debug.
    assert!(!format!("{c:?}").contains("tok-"), "{c:?}");
    let statuses: Vec<u16> = server
        .requests()
        .iter()
        .filter(|r| r.operation.is_some())
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [201, 401, 200]);
}
