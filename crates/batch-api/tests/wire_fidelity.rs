//! What goes on the wire, checked on a bare loopback endpoint rather than the strict server
//! (which shares the client's conventions): `Content-Length: 0` on bodiless writes, and
//! ranged downloads answered 200 with a matching `Content-Range`.

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Response};
use shipyard_batch_api::{BatchClient, ByteRange, SharedKeyCredential};

use common::*;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, String, HeaderMap)>>>);

/// `reply(method, headers)` gives the status, extra headers and body of each answer.
type Reply = fn(&str, &HeaderMap) -> (u16, Vec<(&'static str, String)>, Vec<u8>);

async fn endpoint(reply: Reply) -> (BatchClient, Seen) {
    let seen = Seen::default();
    let app = axum::Router::new()
        .fallback(move |State(seen): State<Seen>, req: Request| async move {
            let method = req.method().as_str().to_owned();
            let headers = req.headers().clone();
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            if let Ok(mut s) = seen.0.lock() {
                s.push((method.clone(), pq, headers.clone()));
            }
            let (status, extra, body) = reply(&method, &headers);
            let mut r = Response::builder().status(status);
            for (n, v) in extra {
                r = r.header(n, v);
            }
            r.body(Body::from(body)).expect("response")
        })
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let cred = SharedKeyCredential::new("acct", KEY).expect("key");
    let client =
        BatchClient::with_options(&format!("http://{addr}"), cred, fast_options()).expect("client");
    (client, seen)
}

fn seen(s: &Seen) -> Vec<(String, String, HeaderMap)> {
    s.0.lock().map(|v| v.clone()).unwrap_or_default()
}

#[tokio::test]
async fn bodiless_delete_and_post_send_and_sign_content_length_zero() {
    let (client, log) = endpoint(|_, _| (202, vec![], vec![])).await;
    client.delete_pool("p1").await.expect("pool delete");
    client.delete_job("j1").await.expect("job delete");
    client.terminate_job("j1", None).await.expect("terminate");
    let reqs = seen(&log);
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    let cred = SharedKeyCredential::new("acct", KEY).expect("key");
    for (method, pq, headers) in reqs {
        assert_eq!(
            headers.get("content-length").and_then(|v| v.to_str().ok()),
            Some("0"),
            "{method} {pq} must carry Content-Length: 0"
        );
        // The string-to-sign the SDK forms from these headers has "0" on the length line.
        let url = url::Url::parse(&format!("http://h{pq}")).expect("url");
        let to_sign = cred.string_to_sign(&method, &url, &headers);
        assert!(
            to_sign.starts_with(&format!("{method}\n\n\n0\n")),
            "{to_sign:?}"
        );
        assert_eq!(
            headers.get("authorization").and_then(|v| v.to_str().ok()),
            Some(cred.authorization(&method, &url, &headers).as_str())
        );
    }
}

#[tokio::test]
async fn gets_carry_no_content_length() {
    let (client, log) = endpoint(|_, _| (404, vec![], b"{}".to_vec())).await;
    let _ = client.get_pool("p1").await;
    let reqs = seen(&log);
    assert!(!reqs.is_empty());
    for (m, _, h) in reqs {
        assert_eq!(m, "GET");
        assert!(h.get("content-length").is_none(), "{h:?}");
    }
}

const FILE: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Serves FILE ranged, but answers 200 (never 206), with a Content-Range for the range.
fn ranged_200(_: &str, h: &HeaderMap) -> (u16, Vec<(&'static str, String)>, Vec<u8>) {
    let range = h
        .get("ocp-range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok())));
    match range {
        Some((a, b)) => {
            let e = b.unwrap_or(FILE.len() - 1).min(FILE.len() - 1);
            (
                200,
                vec![("content-range", format!("bytes {a}-{e}/{}", FILE.len()))],
                FILE[a..=e].to_vec(),
            )
        }
        None => (200, vec![], FILE.to_vec()),
    }
}

/// Ignores the range: 200 with the whole file and no Content-Range.
fn whole_200(_: &str, _: &HeaderMap) -> (u16, Vec<(&'static str, String)>, Vec<u8>) {
    (200, vec![], FILE.to_vec())
}

#[tokio::test]
async fn ranged_download_answered_200_with_matching_content_range_is_accepted() {
    let (client, _) = endpoint(ranged_200).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("part");
    let range = ByteRange {
        start: 10,
        end: Some(19),
    };
    let got = client
        .download_task_file("j", "t", "f", &dest, Some(range))
        .await
        .expect("200 with the asked-for Content-Range is the range");
    assert_eq!(got.bytes, 10);
    assert_eq!(std::fs::read(&dest).expect("read"), &FILE[10..20]);
}

#[tokio::test]
async fn ranged_download_answered_200_without_content_range_is_still_refused() {
    let (client, _) = endpoint(whole_200).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let range = ByteRange {
        start: 10,
        end: Some(19),
    };
    let err = client
        .download_task_file("j", "t", "f", &dir.path().join("o"), Some(range))
        .await
        .expect_err("the whole file is not the range");
    assert!(err.to_string().contains("ocp-range"), "{err}");
}
