//! The strict server seen through raw HTTP/1.1 on a TCP socket, with a signer written here
//! (independent of both the client's and the server's code).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use shipyard_batch_spec::server::{Fault, FaultRule, ServerConfig, TestServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const V: &str = "2024-07-01.20.0";

struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Signs like the Python SDK: content-length "0" on body-less non-GET requests, ocp-* headers,
/// then `/account/path` and sorted `\nname:value` query lines.
fn sign(
    server: &TestServer,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    headers: &[(&str, String)],
    body_len: Option<usize>,
) -> String {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let len = match body_len {
        Some(n) => n.to_string(),
        None if method != "GET" && method != "HEAD" => "0".into(),
        None => String::new(),
    };
    let mut s = format!(
        "{method}\n{}\n{}\n{len}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        get("content-encoding"),
        get("content-language"),
        get("content-md5"),
        get("content-type"),
        get("date"),
        get("if-modified-since"),
        get("if-match"),
        get("if-none-match"),
        get("if-unmodified-since"),
        get("range"),
    );
    let mut ocp: Vec<_> = headers
        .iter()
        .filter(|(k, _)| k.starts_with("ocp-"))
        .collect();
    ocp.sort();
    for (k, v) in ocp {
        s += &format!("{k}:{v}\n");
    }
    s += &format!("/{}{path}", server.account());
    let mut q: Vec<_> = query.to_vec();
    q.sort();
    for (k, v) in q {
        s += &format!("\n{k}:{v}");
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(server.key())
        .expect("key");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("hmac");
    mac.update(s.as_bytes());
    format!(
        "SharedKey {}:{}",
        server.account(),
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn send_raw(server: &TestServer, request: Vec<u8>) -> Option<Raw> {
    let mut sock = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    sock.write_all(&request).await.expect("write");
    let mut buf = Vec::new();
    let _ = sock.read_to_end(&mut buf).await;
    if buf.is_empty() {
        return None;
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Raw {
        status,
        headers,
        body: buf[split + 4..].to_vec(),
    })
}

/// A signed request (unless `auth` is given), `Connection: close`.
async fn request(
    server: &TestServer,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    extra: &[(&str, String)],
    body: Option<&[u8]>,
) -> Option<Raw> {
    let mut headers: Vec<(&str, String)> =
        vec![("ocp-date", httpdate::fmt_http_date(SystemTime::now()))];
    headers.extend(extra.iter().cloned());
    if body.is_some() {
        headers.push((
            "content-type",
            "application/json; odata=minimalmetadata".into(),
        ));
    }
    let has_auth = headers.iter().any(|(k, _)| *k == "authorization");
    if !has_auth {
        let auth = sign(server, method, path, query, &headers, body.map(<[u8]>::len));
        headers.push(("authorization", auth));
    }
    let qs: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    let target = if qs.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", qs.join("&"))
    };
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n",
        server.addr()
    );
    for (k, v) in &headers {
        req += &format!("{k}: {v}\r\n");
    }
    if let Some(b) = body {
        req += &format!("content-length: {}\r\n", b.len());
    }
    req += "\r\n";
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    send_raw(server, bytes).await
}

async fn start() -> TestServer {
    TestServer::start(ServerConfig::default())
        .await
        .expect("start")
}

fn pool_body(id: &str) -> Vec<u8> {
    json!({
        "id": id, "vmSize": "standard_d2s_v3", "targetDedicatedNodes": 1,
        "virtualMachineConfiguration": {
            "imageReference": {"publisher": "canonical", "offer": "ubuntu", "sku": "22_04", "version": "latest"},
            "nodeAgentSKUId": "batch.node.ubuntu 22.04"
        }
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn create_reply_has_batch_headers_and_python_style_signatures_pass() {
    let s = start().await;
    let r = request(
        &s,
        "POST",
        "/pools",
        &[("api-version", V)],
        &[
            ("client-request-id", "abc".into()),
            ("return-client-request-id", "true".into()),
        ],
        Some(&pool_body("p1")),
    )
    .await
    .expect("reply");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    for h in [
        "etag",
        "last-modified",
        "location",
        "dataserviceid",
        "request-id",
    ] {
        assert!(r.header(h).is_some(), "missing {h}");
    }
    assert!(r
        .header("location")
        .is_some_and(|l| l.ends_with("/pools/p1")));
    assert_eq!(r.header("client-request-id"), Some("abc"));
    // Without return-client-request-id the id is not echoed.
    let r = request(
        &s,
        "GET",
        "/pools/p1",
        &[("api-version", V)],
        &[("client-request-id", "abc".into())],
        None,
    )
    .await
    .expect("reply");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("client-request-id"), None);
    assert_eq!(r.json()["id"], "p1");
    // DELETE without a Content-Length header, signed with "0" like the Python SDK.
    let r = request(
        &s,
        "DELETE",
        "/pools/p1",
        &[("api-version", V), ("timeout", "30")],
        &[],
        None,
    )
    .await
    .expect("reply");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(s.create_stat("pool/p1").created, 1);
}

#[tokio::test]
async fn date_header_is_not_a_substitute_for_ocp_date() {
    let s = start().await;
    let now = httpdate::fmt_http_date(SystemTime::now());
    let headers = [("date", now.clone())];
    let auth = sign(&s, "GET", "/pools", &[("api-version", V)], &headers, None);
    let req = format!(
        "GET /pools?api-version={V} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ndate: {now}\r\nauthorization: {auth}\r\n\r\n"
    );
    let r = send_raw(&s, req.into_bytes()).await.expect("reply");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("MissingRequiredHeader"))
    );
}

#[tokio::test]
async fn wrong_signature_and_wrong_account_are_403() {
    let s = start().await;
    let bad = format!(
        "SharedKey {}:{}",
        s.account(),
        base64::engine::general_purpose::STANDARD.encode([0u8; 32])
    );
    let r = request(
        &s,
        "GET",
        "/jobs",
        &[("api-version", V)],
        &[("authorization", bad)],
        None,
    )
    .await
    .expect("reply");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (403, Some("AuthenticationFailed"))
    );
    let other = "SharedKey someoneelse:AAAA".to_owned();
    let r = request(
        &s,
        "GET",
        "/jobs",
        &[("api-version", V)],
        &[("authorization", other)],
        None,
    )
    .await
    .expect("reply");
    assert_eq!(r.status, 403);
    let r = request(
        &s,
        "GET",
        "/jobs",
        &[("api-version", V)],
        &[("authorization", "Basic abc".into())],
        None,
    )
    .await
    .expect("reply");
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn extra_api_version_only_when_configured() {
    let s = start().await;
    let r = request(
        &s,
        "GET",
        "/pools",
        &[("api-version", "2025-06-01")],
        &[],
        None,
    )
    .await
    .expect("reply");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("InvalidQueryParameterValue"))
    );
    let s2 = TestServer::start(ServerConfig {
        extra_api_versions: vec!["2025-06-01".into()],
        ..ServerConfig::default()
    })
    .await
    .expect("start");
    let r = request(
        &s2,
        "GET",
        "/pools",
        &[("api-version", "2025-06-01")],
        &[],
        None,
    )
    .await
    .expect("reply");
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn task_collection_limits() {
    let s = start().await;
    let job = json!({"id": "j", "poolInfo": {"poolId": "p"}}).to_string();
    let r = request(
        &s,
        "POST",
        "/jobs",
        &[("api-version", V)],
        &[],
        Some(job.as_bytes()),
    )
    .await
    .expect("reply");
    assert_eq!(r.status, 201);
    let tasks = |n: usize, pad: usize| {
        let v: Vec<Value> = (0..n)
            .map(|i| json!({"id": format!("t{i}"), "commandLine": "x".repeat(pad + 1)}))
            .collect();
        json!({"value": v}).to_string().into_bytes()
    };
    let path = "/jobs/j/addtaskcollection";
    let r = request(
        &s,
        "POST",
        path,
        &[("api-version", V)],
        &[],
        Some(&tasks(101, 0)),
    )
    .await
    .expect("reply");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("InvalidRequestBody"))
    );
    assert!(
        r.json()["values"].to_string().contains("maxItems"),
        "{}",
        r.json()
    );
    let r = request(
        &s,
        "POST",
        path,
        &[("api-version", V)],
        &[],
        Some(&tasks(100, 11_000)),
    )
    .await
    .expect("reply");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (413, Some("RequestBodyTooLarge"))
    );
    assert_eq!(s.task_count("j"), 0);
    s.fail_tasks(
        ["t3"],
        shipyard_batch_spec::server::TaskFailure::ServerError,
        1,
    );
    let r = request(
        &s,
        "POST",
        path,
        &[("api-version", V)],
        &[],
        Some(&tasks(5, 0)),
    )
    .await
    .expect("reply");
    assert_eq!(r.status, 200);
    let results = r.json()["value"].as_array().cloned().expect("results");
    let statuses: Vec<(String, String)> = results
        .iter()
        .map(|v| {
            (
                v["taskId"].as_str().unwrap_or("").to_owned(),
                v["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(statuses.iter().filter(|(_, st)| st == "success").count(), 4);
    assert!(statuses.contains(&("t3".into(), "servererror".into())));
    assert_eq!(s.task_count("j"), 4);
    // Resubmitting: the four created come back TaskExists, t3 is created now.
    let r = request(
        &s,
        "POST",
        path,
        &[("api-version", V)],
        &[],
        Some(&tasks(5, 0)),
    )
    .await
    .expect("reply");
    let again = r.json()["value"].to_string();
    assert_eq!(again.matches("TaskExists").count(), 4, "{again}");
    assert_eq!(s.task_count("j"), 5);
}

#[tokio::test]
async fn paging_and_odata_errors() {
    let s = start().await;
    for i in 0..5 {
        let r = request(
            &s,
            "POST",
            "/pools",
            &[("api-version", V)],
            &[],
            Some(&pool_body(&format!("p{i}"))),
        )
        .await
        .expect("reply");
        assert_eq!(r.status, 201);
    }
    let r = request(
        &s,
        "GET",
        "/pools",
        &[("api-version", V), ("maxresults", "2"), ("$select", "id")],
        &[],
        None,
    )
    .await
    .expect("reply");
    let page = r.json();
    assert_eq!(page["value"], json!([{"id": "p0"}, {"id": "p1"}]));
    let next = page["odata.nextLink"]
        .as_str()
        .expect("next link")
        .to_owned();
    assert!(
        next.starts_with(&s.url())
            && next.contains("api-version=2024-07-01.20.0")
            && next.contains("maxresults=2"),
        "{next}"
    );
    let r = request(
        &s,
        "GET",
        "/pools",
        &[("api-version", V), ("maxresults", "0")],
        &[],
        None,
    )
    .await
    .expect("reply");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("InvalidQueryParameterValue"))
    );
    let r = request(
        &s,
        "GET",
        "/pools",
        &[("api-version", V), ("$filter", "startswith(id,'p')")],
        &[],
        None,
    )
    .await
    .expect("reply");
    assert_eq!(
        r.status, 400,
        "unsupported filters are refused, not ignored"
    );
    let r = request(&s, "GET", "/nothing/here", &[("api-version", V)], &[], None)
        .await
        .expect("reply");
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (404, Some("InvalidUri"))
    );
}

#[tokio::test]
async fn faults_at_the_socket() {
    let s = start().await;
    s.inject(FaultRule::new(Fault::DropConnection).method("GET"));
    assert!(
        request(&s, "GET", "/pools", &[("api-version", V)], &[], None)
            .await
            .is_none(),
        "closed without a reply"
    );
    s.inject(
        FaultRule::new(Fault::TooManyRequests {
            retry_after_secs: 7,
            as_http_date: false,
        })
        .operation("Pool_List"),
    );
    let r = request(&s, "GET", "/pools", &[("api-version", V)], &[], None)
        .await
        .expect("reply");
    assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));
    s.inject(FaultRule::new(Fault::SlowReply(Duration::from_millis(300))).operation("Pool_List"));
    let t = std::time::Instant::now();
    let r = request(&s, "GET", "/pools", &[("api-version", V)], &[], None)
        .await
        .expect("reply");
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    s.inject(FaultRule::new(Fault::DropReplyAfterCommit).operation("Pool_Add"));
    assert!(request(
        &s,
        "POST",
        "/pools",
        &[("api-version", V)],
        &[],
        Some(&pool_body("px"))
    )
    .await
    .is_none());
    assert_eq!(
        s.create_stat("pool/px").created,
        1,
        "committed although the reply was dropped"
    );
    let log = s.requests();
    assert_eq!(log.len(), 4);
    assert_eq!(log[0].status, 0);
}

#[tokio::test]
async fn token_endpoint_checks_grant_scope_and_secret() {
    let s = start().await;
    let (id, secret) = s.client_credentials();
    let form = |scope: &str, secret: &str| {
        format!(
            "grant_type=client_credentials&client_id={id}&client_secret={secret}&scope={}",
            enc(scope)
        )
    };
    let post = |body: String| {
        let req = format!(
            "POST /tenant/oauth2/v2.0/token HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        send_raw(&s, req.into_bytes())
    };
    let r = post(form("https://storage.azure.com/.default", secret))
        .await
        .expect("reply");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    let r = post(form("https://batch.core.windows.net//.default", "nope"))
        .await
        .expect("reply");
    assert_eq!(r.status, 401);
    let r = post(form("https://batch.core.windows.net//.default", secret))
        .await
        .expect("reply");
    assert_eq!(r.status, 200);
    let token = r.json()["access_token"].as_str().expect("token").to_owned();
    assert_eq!(s.tokens_issued(), 1);
    let r = request(
        &s,
        "GET",
        "/pools",
        &[("api-version", V)],
        &[("authorization", format!("Bearer {token}"))],
        None,
    )
    .await
    .expect("reply");
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn test_driven_prep_start_task_and_resize_errors_are_reported() {
    let s = start().await;
    let get = |path: String| {
        let s = &s;
        async move {
            request(s, "GET", &path, &[("api-version", V)], &[], None)
                .await
                .expect("reply")
        }
    };
    let r = request(
        &s,
        "POST",
        "/pools",
        &[("api-version", V)],
        &[],
        Some(&pool_body("pp")),
    )
    .await
    .expect("reply");
    assert_eq!(r.status, 201);
    let job = json!({"id": "jj", "poolInfo": {"poolId": "pp"},
        "jobPreparationTask": {"commandLine": "/bin/true"}})
    .to_string()
    .into_bytes();
    let r = request(&s, "POST", "/jobs", &[("api-version", V)], &[], Some(&job))
        .await
        .expect("reply");
    assert_eq!(r.status, 201);
    let nodes = s.node_ids("pp");
    assert_eq!(nodes.len(), 1);
    let node = nodes[0].clone();

    // Job preparation: default success, then the state the test sets.
    let prep = || get("/jobs/jj/jobpreparationandreleasetaskstatus".into());
    let info = |r: Raw| r.json()["value"][0]["jobPreparationTaskExecutionInfo"].clone();
    assert_eq!(info(prep().await)["result"], "success");
    assert!(s.set_preparation_task("jj", &node, "running", None, None));
    let i = info(prep().await);
    assert_eq!(
        (i["state"].as_str(), i.get("result")),
        (Some("running"), None)
    );
    assert!(s.set_preparation_task("jj", &node, "completed", Some(3), Some("FailureExitCode")));
    let i = info(prep().await);
    assert_eq!(i["state"], "completed");
    assert_eq!(i["exitCode"], 3);
    assert_eq!(i["result"], "failure");
    assert_eq!(i["failureInfo"]["code"], "FailureExitCode");
    assert!(!s.set_preparation_task("nojob", &node, "running", None, None));

    // Start task failure with its exit code.
    assert!(s.set_node_start_task_failed("pp", &node, 7));
    let n = get(format!("/pools/pp/nodes/{}", enc(&node))).await.json();
    assert_eq!(n["state"], "starttaskfailed");
    assert_eq!(n["startTaskInfo"]["exitCode"], 7);
    assert_eq!(n["startTaskInfo"]["result"], "failure");
    assert!(!s.set_node_start_task_failed("pp", "nonode", 1));
    // The plain state setter keeps working.
    assert!(s.set_node_state("pp", &node, "unusable"));
    let n = get(format!("/pools/pp/nodes/{}", enc(&node))).await.json();
    assert_eq!(n["state"], "unusable");

    // Resize error.
    assert!(s.set_pool_resize_error("pp", "AllocationFailed", "no capacity"));
    let p = get("/pools/pp".into()).await.json();
    assert_eq!(p["allocationState"], "steady");
    assert_eq!(
        p["resizeErrors"],
        json!([{"code": "AllocationFailed", "message": "no capacity"}])
    );
    assert!(!s.set_pool_resize_error("nopool", "AllocationFailed", "x"));
}
