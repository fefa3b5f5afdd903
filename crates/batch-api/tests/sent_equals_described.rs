//! What reaches the strict server is exactly what `shipyard_batch_api::request` describes:
//! method, path with query, and body bytes, for pool add, job add, task collections (chunked),
//! job patch and job terminate.
//!
//! A recording proxy on 127.0.0.1 sits between the client and the strict server: it keeps the
//! raw method, path and query, and body of every request, and forwards it unchanged (the
//! Shared Key signature covers path, query and headers, not the host).

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Response, StatusCode};
use shipyard_batch_api::models::{JobPatchParameter, OnAllTasksComplete};
use shipyard_batch_api::request::{self, Request};
use shipyard_batch_api::ClientOptions;

use common::*;

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    path_and_query: String,
    body: Vec<u8>,
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    http: reqwest::Client,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn forward(State(p): State<Proxy>, req: axum::extract::Request) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("request body");
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    p.seen.lock().expect("log").push(Seen {
        method: parts.method.as_str().to_owned(),
        path_and_query: path_and_query.clone(),
        body: body.to_vec(),
    });
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).expect("method");
    let mut out = p
        .http
        .request(method, format!("{}{path_and_query}", p.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name != "host" {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    let reply = out.send().await.expect("upstream answers");
    let mut resp =
        Response::builder().status(StatusCode::from_u16(reply.status().as_u16()).expect("status"));
    for (name, value) in reply.headers() {
        if name != "transfer-encoding" && name != "content-length" {
            resp = resp.header(
                HeaderName::from_bytes(name.as_str().as_bytes()).expect("header name"),
                HeaderValue::from_bytes(value.as_bytes()).expect("header value"),
            );
        }
    }
    let bytes = reply.bytes().await.expect("upstream body");
    resp.body(Body::from(bytes)).expect("response")
}

/// Starts the recording proxy in front of `upstream`; returns its URL and its log.
async fn proxy(upstream: String) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let state = Proxy {
        upstream,
        http: reqwest::Client::new(),
        seen: seen.clone(),
    };
    let app = axum::Router::new().fallback(forward).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

fn described(r: &Request) -> Seen {
    Seen {
        method: r.method.as_str().to_owned(),
        path_and_query: r.path_and_query(),
        body: r.body_bytes().unwrap_or_default(),
    }
}

#[tokio::test]
async fn the_server_receives_exactly_the_described_requests() {
    let server = server().await;
    let (url, seen) = proxy(server.url().trim_end_matches('/').to_owned()).await;
    let options = ClientOptions {
        task_collection_concurrency: 1,
        ..fast_options()
    };
    // The default request timeout (60 s) adds no `timeout` parameter: the description is sent
    // as is.
    let options = ClientOptions {
        request_timeout: ClientOptions::default().request_timeout,
        ..options
    };
    let cred =
        shipyard_batch_api::SharedKeyCredential::new(server.account(), server.key()).expect("key");
    let client =
        shipyard_batch_api::BatchClient::with_options(&url, cred, options).expect("client");

    let pool = pool("pool-x", 2);
    let job = job("job x", "pool-x");
    // 150 small tasks and three of ~600 kB: split by count (100) and by size (< 1 MB).
    let mut tasks: Vec<_> = (0..150).map(|i| task(&format!("t{i}"))).collect();
    for i in 0..3 {
        let mut big = task(&format!("big{i}"));
        big.command_line = format!("/bin/sh -c 'echo {}'", "y".repeat(600_000));
        tasks.push(big);
    }
    let patch = JobPatchParameter {
        on_all_tasks_complete: Some(OnAllTasksComplete::TerminateJob),
        ..Default::default()
    };

    let mut requests = vec![request::add_pool(&pool), request::add_job(&job)];
    let collection = request::add_task_collection(&job.id, &tasks);
    assert_eq!(
        collection.len(),
        4,
        "100 small, 50 small + 1 big, 1 big, 1 big"
    );
    requests.extend(collection);
    requests.push(request::patch_job(&job.id, &patch));
    requests.push(request::terminate_job(&job.id, Some("UserTerminate")));

    client.add_pool(&pool).await.expect("add pool");
    client.add_job(&job).await.expect("add job");
    let report = client.add_task_collection(&job.id, tasks).await;
    assert!(
        report.all_succeeded(),
        "{:?}",
        report.failures().collect::<Vec<_>>()
    );
    assert_eq!(report.requests, 4);
    client.patch_job(&job.id, &patch).await.expect("patch");
    client
        .terminate_job(&job.id, Some("UserTerminate"))
        .await
        .expect("terminate");

    let got = seen.lock().expect("log").clone();
    let want: Vec<Seen> = requests.iter().map(described).collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            (&g.method, &g.path_and_query),
            (&w.method, &w.path_and_query)
        );
        assert!(
            g.body == w.body,
            "{} {}: body differs",
            g.method,
            g.path_and_query
        );
    }
    assert_eq!(server.task_count("job x"), 153);
    // The strict server accepted every one of them, under the same operation ids.
    let log = server.requests();
    let ops: Vec<Option<&str>> = log.iter().map(|r| r.operation.as_deref()).collect();
    let want_ops: Vec<Option<&str>> = requests.iter().map(|r| Some(r.operation)).collect();
    assert_eq!(ops, want_ops);
    assert!(log.iter().all(|r| r.status < 300), "{log:?}");
}
