//! The REST layer against raw, Shared Key signed requests (loopback only).
#![allow(clippy::unwrap_used)]

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};
use shipyard_batch_api::SharedKeyCredential;
use shipyard_serve::memory::MemoryBackend;
use shipyard_serve::{ServeOptions, Server};

const V24: &str = "2024-07-01.20.0";
const V25: &str = "2025-06-01";
const KEY: &str = "c2hpcHlhcmQtc2VydmUtdGVzdC1rZXktMzItYnl0ZXM=";

struct T {
    server: Server,
    http: reqwest::Client,
    cred: SharedKeyCredential,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_owned()
    }
    fn value(&self, key: &str) -> Option<String> {
        self.json()["values"]
            .as_array()?
            .iter()
            .find(|v| v["key"] == key)
            .and_then(|v| v["value"].as_str().map(str::to_owned))
    }
}

async fn start() -> T {
    let dir = tempfile::tempdir().unwrap();
    let backend =
        MemoryBackend::new(dir.path()).delete_delay(std::time::Duration::from_millis(200));
    let opts = ServeOptions::new("local", KEY).listen("127.0.0.1:0".parse().unwrap());
    let server = Server::bind(opts, backend).await.unwrap();
    T {
        server,
        http: reqwest::Client::new(),
        cred: SharedKeyCredential::new("local", KEY).unwrap(),
        _dir: dir,
    }
}

impl T {
    async fn call_with(
        &self,
        cred: &SharedKeyCredential,
        method: &str,
        path_and_query: &str,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let url =
            url::Url::parse(&format!("http://{}{path_and_query}", self.server.addr())).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "ocp-date",
            HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now())).unwrap(),
        );
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        if let Some(b) = &bytes {
            headers.insert(
                "content-type",
                HeaderValue::from_static("application/json; odata=minimalmetadata"),
            );
            headers.insert(
                "content-length",
                HeaderValue::from_str(&b.len().to_string()).unwrap(),
            );
        } else if !matches!(method, "GET" | "HEAD") {
            headers.insert("content-length", HeaderValue::from_static("0"));
        }
        for (k, v) in extra {
            headers.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let auth = cred.authorization(method, &url, &headers);
        headers.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        let mut rb = self
            .http
            .request(method.parse().unwrap(), url)
            .headers(headers);
        if let Some(b) = bytes {
            rb = rb.body(b);
        }
        let r = rb.send().await.unwrap();
        Resp {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.bytes().await.unwrap().to_vec(),
        }
    }

    async fn call(&self, method: &str, pq: &str, body: Option<&Value>) -> Resp {
        self.call_with(&self.cred, method, pq, body, &[]).await
    }

    async fn get(&self, pq: &str) -> Resp {
        self.call("GET", pq, None).await
    }

    async fn post(&self, pq: &str, body: &Value) -> Resp {
        self.call("POST", pq, Some(body)).await
    }
}

fn pool_body(id: &str) -> Value {
    json!({"id": id, "vmSize": "standard_d2s_v3", "targetDedicatedNodes": 2,
        "virtualMachineConfiguration": {"imageReference": {"publisher": "canonical",
            "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"},
            "nodeAgentSKUId": "batch.node.ubuntu 22.04"}})
}

#[tokio::test]
async fn auth_versions_and_bad_bodies() {
    let t = start().await;
    let wrong = SharedKeyCredential::new("local", "d3Jvbmcta2V5").unwrap();
    let r = t
        .call_with(
            &wrong,
            "GET",
            &format!("/pools?api-version={V24}"),
            None,
            &[],
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (403, "AuthenticationFailed"));

    let r = t
        .call("GET", "/pools?api-version=2019-08-01.10.0", None)
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "InvalidQueryParameterValue")
    );
    assert_eq!(
        r.value("QueryParameterName").as_deref(),
        Some("api-version")
    );
    let r = t.call("GET", "/pools", None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "MissingRequiredQueryParameter")
    );

    // Both versions: a missing required property is named.
    for v in [V24, V25] {
        let mut body = pool_body("p");
        body.as_object_mut().unwrap().remove("vmSize");
        let r = t
            .call("POST", &format!("/pools?api-version={v}"), Some(&body))
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "MissingRequiredProperty"),
            "{v}"
        );
        assert_eq!(r.value("PropertyName").as_deref(), Some("vmSize"));
    }
    // Enum spelling outside the spec.
    let mut body = pool_body("p");
    body["taskSchedulingPolicy"] = json!({"nodeFillType": "sideways"});
    let r = t
        .call("POST", &format!("/pools?api-version={V24}"), Some(&body))
        .await;
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidPropertyValue"));
    assert_eq!(
        r.value("PropertyName").as_deref(),
        Some("taskSchedulingPolicy.nodeFillType")
    );
    // An enum value differing only in case is the service's value (stored as spelled in the
    // spec).
    let mut body = pool_body("pcase");
    body["taskSchedulingPolicy"] = json!({"nodeFillType": "PACK"});
    let r = t
        .call("POST", &format!("/pools?api-version={V24}"), Some(&body))
        .await;
    assert_eq!(r.status, 201, "{}", r.json());
    let r = t
        .call("GET", &format!("/pools/pcase?api-version={V24}"), None)
        .await;
    assert_eq!(r.json()["taskSchedulingPolicy"]["nodeFillType"], "pack");
    let r = t
        .call("DELETE", &format!("/pools/pcase?api-version={V24}"), None)
        .await;
    assert_eq!(r.status, 202);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    // Nothing was created by the refused requests.
    let r = t
        .call("GET", &format!("/pools?api-version={V24}"), None)
        .await;
    assert_eq!(r.json()["value"], json!([]));

    let r = t
        .call(
            "POST",
            &format!("/pools?api-version={V24}"),
            Some(&pool_body("p")),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = t
        .call(
            "POST",
            &format!("/pools?api-version={V25}"),
            Some(&pool_body("p")),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (409, "PoolExists"));
    let r = t
        .call("GET", &format!("/pools/nope?api-version={V24}"), None)
        .await;
    assert_eq!((r.status, r.code().as_str()), (404, "PoolNotFound"));
    let r = t
        .call(
            "POST",
            &format!("/jobs?api-version={V24}"),
            Some(&json!({"id": "j", "poolInfo": {"poolId": "p"}})),
        )
        .await;
    assert_eq!(r.status, 201);

    // A collection with one bad task is refused whole: no task is created.
    let body = json!({"value": [
        {"id": "a", "commandLine": "true"},
        {"id": "b", "comandLine": "true"},
    ]});
    let r = t
        .call(
            "POST",
            &format!("/jobs/j/addtaskcollection?api-version={V25}"),
            Some(&body),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "MissingRequiredProperty")
    );
    assert_eq!(
        r.value("PropertyName").as_deref(),
        Some("value[1].commandLine")
    );
    let body = json!({"value": [{"id": "a", "commandLine": "true", "priorty": 1}]});
    let r = t
        .call(
            "POST",
            &format!("/jobs/j/addtaskcollection?api-version={V24}"),
            Some(&body),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidRequestBody"));
    assert_eq!(r.value("PropertyName").as_deref(), Some("value[0].priorty"));
    let r = t
        .call("GET", &format!("/jobs/j/tasks?api-version={V24}"), None)
        .await;
    assert_eq!(r.json()["value"], json!([]));
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"id": format!("t{i}"), "commandLine": "true"}))
        .collect();
    let r = t
        .call(
            "POST",
            &format!("/jobs/j/addtaskcollection?api-version={V24}"),
            Some(&json!({"value": many})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let r = t
        .call(
            "POST",
            &format!("/jobs/j/tasks?api-version={V24}"),
            Some(&json!({"id": "d", "commandLine": "true", "dependsOn": {"taskIds": ["a"]}})),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "TaskDependenciesNotSpecifiedOnJob")
    );
}

#[tokio::test]
async fn paging_etags_files_and_deletes() {
    let t = start().await;
    assert_eq!(
        t.call(
            "POST",
            &format!("/pools?api-version={V24}"),
            Some(&pool_body("p"))
        )
        .await
        .status,
        201
    );
    assert_eq!(
        t.call(
            "POST",
            &format!("/jobs?api-version={V24}"),
            Some(&json!({"id": "j", "poolInfo": {"poolId": "p"}}))
        )
        .await
        .status,
        201
    );
    let tasks: Vec<Value> = (0..25).map(|i| json!({"id": format!("t{i:02}"), "commandLine": format!("echo {i}; exit {}", i % 2)})).collect();
    let r = t
        .call(
            "POST",
            &format!("/jobs/j/addtaskcollection?api-version={V24}"),
            Some(&json!({"value": tasks})),
        )
        .await;
    assert_eq!(r.status, 200);
    let results = r.json()["value"].as_array().unwrap().clone();
    assert_eq!(results.len(), 25);
    assert!(results.iter().all(|r| r["status"] == "success"));

    // Paging: 10 + 10 + 5 through odata.nextLink, with $select applied.
    let mut next = Some(format!(
        "/jobs/j/tasks?api-version={V24}&maxresults=10&$select=id,state"
    ));
    let mut ids = Vec::new();
    let mut pages = 0;
    while let Some(pq) = next.take() {
        let r = t.call("GET", &pq, None).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        for item in v["value"].as_array().unwrap() {
            assert_eq!(item.as_object().unwrap().len(), 2, "{item}");
            ids.push(item["id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        next = v["odata.nextLink"].as_str().map(|l| {
            let u = url::Url::parse(l).unwrap();
            format!("{}?{}", u.path(), u.query().unwrap())
        });
    }
    assert_eq!(pages, 3);
    assert_eq!(ids, (0..25).map(|i| format!("t{i:02}")).collect::<Vec<_>>());
    let r = t
        .call(
            "GET",
            &format!("/jobs/j/tasks?api-version={V24}&$filter=executionInfo/exitCode%20eq%201"),
            None,
        )
        .await;
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 12);

    // client-request-id is echoed when asked; every reply has a request-id.
    let r = t
        .call_with(
            &t.cred,
            "GET",
            &format!("/jobs/j?api-version={V24}"),
            None,
            &[
                ("client-request-id", "6a0f2c9e-0000-4000-8000-000000000001"),
                ("return-client-request-id", "true"),
            ],
        )
        .await;
    assert_eq!(
        r.headers["client-request-id"],
        "6a0f2c9e-0000-4000-8000-000000000001"
    );
    assert!(r.headers.contains_key("request-id"));
    let etag = r.headers["etag"].to_str().unwrap().to_owned();
    let r = t
        .call_with(
            &t.cred,
            "PATCH",
            &format!("/jobs/j?api-version={V24}"),
            Some(&json!({"priority": 5})),
            &[("if-match", "0xWRONG")],
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (412, "ConditionNotMet"));
    let r = t
        .call_with(
            &t.cred,
            "PATCH",
            &format!("/jobs/j?api-version={V24}"),
            Some(&json!({"priority": 5})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        t.call("GET", &format!("/jobs/j?api-version={V24}"), None)
            .await
            .json()["priority"],
        5
    );

    // Task files: whole, ranged, properties.
    let r = t
        .call(
            "GET",
            &format!("/jobs/j/tasks/t03/files/stdout.txt?api-version={V24}"),
            None,
        )
        .await;
    assert_eq!(String::from_utf8_lossy(&r.body), "t03: echo 3; exit 1\n");
    let r = t
        .call_with(
            &t.cred,
            "GET",
            &format!("/jobs/j/tasks/t03/files/stdout.txt?api-version={V24}"),
            None,
            &[("ocp-range", "bytes=5-8")],
        )
        .await;
    assert_eq!((r.status, r.body.as_slice()), (206, b"echo".as_slice()));
    let r = t
        .call(
            "HEAD",
            &format!("/jobs/j/tasks/t03/files/stdout.txt?api-version={V24}"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.headers["content-length"].to_str().unwrap()),
        (200, "20")
    );
    let r = t
        .call(
            "GET",
            &format!("/jobs/j/tasks/t03/files/nope.txt?api-version={V24}"),
            None,
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (404, "FileNotFound"));
    let r = t
        .call(
            "GET",
            &format!("/jobs/j/taskcounts?api-version={V24}"),
            None,
        )
        .await;
    assert_eq!(r.json()["taskCounts"]["failed"], 12);
    assert_eq!(
        t.call("HEAD", &format!("/pools/p?api-version={V24}"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        t.call("GET", &format!("/pools/p/nodes?api-version={V24}"), None)
            .await
            .json()["value"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Long-running deletes: 202, visible as deleting, then 404.
    assert_eq!(
        t.call("DELETE", &format!("/jobs/j?api-version={V24}"), None)
            .await
            .status,
        202
    );
    assert_eq!(
        t.call("GET", &format!("/jobs/j?api-version={V24}"), None)
            .await
            .json()["state"],
        "deleting"
    );
    assert_eq!(
        t.call("DELETE", &format!("/pools/p?api-version={V24}"), None)
            .await
            .status,
        202
    );
    assert_eq!(
        t.call("GET", &format!("/pools/p?api-version={V24}"), None)
            .await
            .json()["state"],
        "deleting"
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        t.call("GET", &format!("/jobs/j?api-version={V24}"), None)
            .await
            .code(),
        "JobNotFound"
    );
    assert_eq!(
        t.call("HEAD", &format!("/pools/p?api-version={V24}"), None)
            .await
            .status,
        404
    );
}

/// `$expand=stats`: `stats` only when asked, spec-valid, computed from the objects; any other
/// value is the service's 400 naming `$expand`.
#[tokio::test]
async fn expand_stats_only_when_asked() {
    let t = start().await;
    let spec = shipyard_batch_spec::schema::Spec::shared();
    let r = t
        .post(&format!("/pools?api-version={V24}"), &pool_body("p"))
        .await;
    assert_eq!(r.status, 201);
    let job = json!({"id": "j", "poolInfo": {"poolId": "p"}});
    let r = t.post(&format!("/jobs?api-version={V25}"), &job).await;
    assert_eq!(r.status, 201);
    let tasks = json!({"value": [
        {"id": "a", "commandLine": "/bin/true"},
        {"id": "b", "commandLine": "/bin/true"},
        {"id": "c", "commandLine": "/bin/sh -c 'echo c; exit 3'"},
    ]});
    let r = t
        .post(
            &format!("/jobs/j/addtaskcollection?api-version={V25}"),
            &tasks,
        )
        .await;
    assert_eq!(r.status, 200);

    for v in [V24, V25] {
        // Without $expand: no stats anywhere.
        for pq in [
            format!("/pools/p?api-version={v}"),
            format!("/jobs/j?api-version={v}"),
            format!("/jobs/j/tasks/a?api-version={v}"),
        ] {
            let r = t.get(&pq).await;
            assert_eq!(r.status, 200, "{pq}");
            assert!(r.json().get("stats").is_none(), "{pq}: {}", r.json());
        }
        for pq in [
            format!("/pools?api-version={v}"),
            format!("/jobs?api-version={v}"),
            format!("/jobs/j/tasks?api-version={v}"),
        ] {
            let r = t.get(&pq).await;
            let items = r.json()["value"].as_array().cloned().unwrap();
            assert!(!items.is_empty(), "{pq}");
            assert!(items.iter().all(|i| i.get("stats").is_none()), "{pq}");
        }

        // With $expand=stats: stats, valid against the spec, counting the tasks.
        let r = t
            .get(&format!("/pools/p?api-version={v}&$expand=stats"))
            .await;
        let stats = r.json()["stats"].clone();
        spec.validate("PoolStatistics", &stats).unwrap();
        assert_eq!(stats["startTime"], r.json()["creationTime"]);
        assert_eq!(stats["url"], r.json()["url"]);
        assert!(stats["url"].as_str().unwrap().starts_with("http://"));
        let r = t
            .get(&format!("/jobs/j?api-version={v}&$expand=stats"))
            .await;
        let stats = r.json()["stats"].clone();
        spec.validate("JobStatistics", &stats).unwrap();
        assert_eq!(
            (
                stats["numSucceededTasks"].as_i64(),
                stats["numFailedTasks"].as_i64(),
                stats["numTaskRetries"].as_i64()
            ),
            (Some(2), Some(1), Some(0)),
            "{stats}"
        );
        let r = t.get(&format!("/jobs?api-version={v}&$expand=stats")).await;
        assert_eq!(r.json()["value"][0]["stats"]["numFailedTasks"], 1);
        let r = t
            .get(&format!("/pools?api-version={v}&$expand=stats"))
            .await;
        spec.validate("PoolStatistics", &r.json()["value"][0]["stats"])
            .unwrap();
        let r = t
            .get(&format!("/jobs/j/tasks/c?api-version={v}&%24expand=stats"))
            .await;
        spec.validate("TaskStatistics", &r.json()["stats"]).unwrap();
        // Paged, with $select keeping only id and stats: the next link keeps $expand.
        let r = t
            .call(
                "GET",
                &format!(
                    "/jobs/j/tasks?api-version={v}&maxresults=2&$expand=stats&$select=id,stats"
                ),
                None,
            )
            .await;
        let page = r.json();
        assert_eq!(page["value"].as_array().unwrap().len(), 2);
        for item in page["value"].as_array().unwrap() {
            assert_eq!(
                item.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["id", "stats"]
            );
            spec.validate("TaskStatistics", &item["stats"]).unwrap();
        }
        let next = page["odata.nextLink"].as_str().unwrap();
        assert!(next.contains("%24expand=stats"), "{next}");
        let pq = &next[next.find("/jobs/").unwrap()..];
        let r = t.get(pq).await;
        assert_eq!(r.json()["value"][0]["id"], "c");
        assert!(r.json()["value"][0]["stats"].is_object(), "{}", r.json());

        // The plain page (written straight from the models) holds what Task_Get answers.
        let page = t
            .get(&format!("/jobs/j/tasks?api-version={v}&maxresults=2"))
            .await
            .json();
        for item in page["value"].as_array().unwrap() {
            let id = item["id"].as_str().unwrap();
            let one = t.get(&format!("/jobs/j/tasks/{id}?api-version={v}")).await;
            assert_eq!(item, &one.json());
            assert!(item["url"].as_str().unwrap().starts_with("http://"));
        }
        let next = page["odata.nextLink"].as_str().unwrap();
        let r = t.get(&next[next.find("/jobs/").unwrap()..]).await;
        assert_eq!(r.json()["value"].as_array().unwrap().len(), 1);
        assert_eq!(r.json()["value"][0]["id"], "c");
        assert!(r.json().get("odata.nextLink").is_none());

        // Anything but stats is refused, naming $expand, before any backend call.
        for pq in [
            format!("/pools/p?api-version={v}&$expand=nodes"),
            format!("/pools?api-version={v}&$expand=stats,bogus"),
            format!("/jobs/j?api-version={v}&$expand=tasks"),
            format!("/jobs?api-version={v}&$expand=x"),
            format!("/jobs/j/tasks?api-version={v}&$expand=x"),
            format!("/jobs/j/tasks/a?api-version={v}&$expand=x"),
            format!("/jobs/nojob/tasks/a?api-version={v}&$expand=x"),
        ] {
            let r = t.get(&pq).await;
            assert_eq!(
                (r.status, r.code().as_str()),
                (400, "InvalidQueryParameterValue"),
                "{pq}"
            );
            assert_eq!(
                r.value("QueryParameterName").as_deref(),
                Some("$expand"),
                "{pq}"
            );
        }
    }
    t.server.shutdown().await;
}

/// Properties only api-version 2025-06-01 has are kept: returned on GET/list under 2025-06-01
/// (not under 2024-07-01, which does not know them), and replaced by a patch naming their
/// top-level property.
#[tokio::test]
async fn properties_only_2025_knows_round_trip() {
    let t = start().await;
    let mut pool = pool_body("p25");
    pool["taskSchedulingPolicy"] =
        json!({"nodeFillType": "pack", "jobDefaultOrder": "creationTime"});
    pool["networkConfiguration"] = json!({"publicIPAddressConfiguration": {"provision": "batchmanaged", "ipFamilies": ["IPv4"]}});
    pool["virtualMachineConfiguration"]["securityProfile"] =
        json!({"encryptionAtHost": false, "proxyAgentSettings": {"enabled": true}});
    // 2024-07-01 refuses them as unknown, naming the property.
    let r = t.post(&format!("/pools?api-version={V24}"), &pool).await;
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidRequestBody"));
    assert!(r
        .value("PropertyName")
        .is_some_and(|p| p == "taskSchedulingPolicy.jobDefaultOrder"
            || p == "networkConfiguration.publicIPAddressConfiguration.ipFamilies"
            || p == "virtualMachineConfiguration.securityProfile.proxyAgentSettings"));
    let r = t.post(&format!("/pools?api-version={V25}"), &pool).await;
    assert_eq!(r.status, 201, "{}", r.json());

    let check = |p: &Value, present: bool| {
        let got = [
            p["taskSchedulingPolicy"]["jobDefaultOrder"].clone(),
            p["networkConfiguration"]["publicIPAddressConfiguration"]["ipFamilies"].clone(),
            p["virtualMachineConfiguration"]["securityProfile"]["proxyAgentSettings"].clone(),
        ];
        let want = if present {
            [
                json!("creationTime"),
                json!(["IPv4"]),
                json!({"enabled": true}),
            ]
        } else {
            [Value::Null, Value::Null, Value::Null]
        };
        assert_eq!(got, want, "{p}");
        // The 2024 siblings are there either way.
        assert_eq!(p["taskSchedulingPolicy"]["nodeFillType"], "pack");
        assert_eq!(
            p["networkConfiguration"]["publicIPAddressConfiguration"]["provision"],
            "batchmanaged"
        );
    };
    let r = t.get(&format!("/pools/p25?api-version={V25}")).await;
    check(&r.json(), true);
    let r = t.get(&format!("/pools?api-version={V25}")).await;
    check(&r.json()["value"][0], true);
    let r = t.get(&format!("/pools/p25?api-version={V24}")).await;
    check(&r.json(), false);

    // A patch of taskSchedulingPolicy replaces it (jobDefaultOrder goes), the rest stays.
    let tr = &t;
    let patch_get = |body: Value| async move {
        let pq = format!("/pools/p25?api-version={V25}");
        let r = tr.call("PATCH", &pq, Some(&body)).await;
        assert_eq!(r.status, 200, "{}", r.json());
        tr.call("GET", &pq, None).await.json()
    };
    let p = patch_get(json!({"taskSchedulingPolicy": {"nodeFillType": "pack"}})).await;
    assert!(
        p["taskSchedulingPolicy"].get("jobDefaultOrder").is_none(),
        "{p}"
    );
    assert_eq!(
        p["networkConfiguration"]["publicIPAddressConfiguration"]["ipFamilies"],
        json!(["IPv4"])
    );
    let p = patch_get(
        json!({"taskSchedulingPolicy": {"nodeFillType": "spread", "jobDefaultOrder": "none"}}),
    )
    .await;
    assert_eq!(
        p["taskSchedulingPolicy"],
        json!({"nodeFillType": "spread", "jobDefaultOrder": "none"})
    );

    // A job's auto-pool specification keeps them too.
    let job = json!({"id": "j25", "poolInfo": {"autoPoolSpecification": {
        "poolLifetimeOption": "job",
        "pool": {"vmSize": "standard_d2s_v3",
                 "taskSchedulingPolicy": {"nodeFillType": "pack", "jobDefaultOrder": "creationTime"}}}}});
    let r = t.post(&format!("/jobs?api-version={V25}"), &job).await;
    assert_eq!(r.status, 201, "{}", r.json());
    let r = t.get(&format!("/jobs/j25?api-version={V25}")).await;
    assert_eq!(
        r.json()["poolInfo"]["autoPoolSpecification"]["pool"]["taskSchedulingPolicy"],
        json!({"nodeFillType": "pack", "jobDefaultOrder": "creationTime"})
    );
    let r = t.get(&format!("/jobs?api-version={V25}")).await;
    assert_eq!(
        r.json()["value"][0]["poolInfo"]["autoPoolSpecification"]["pool"]["taskSchedulingPolicy"]
            ["jobDefaultOrder"],
        "creationTime"
    );
    // A new pool with the same id does not inherit the old one's properties.
    let r = t
        .call("DELETE", &format!("/pools/p25?api-version={V25}"), None)
        .await;
    assert_eq!(r.status, 202);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let r = t
        .post(&format!("/pools?api-version={V25}"), &pool_body("p25"))
        .await;
    assert_eq!(r.status, 201, "{}", r.json());
    let r = t.get(&format!("/pools/p25?api-version={V25}")).await;
    assert!(
        r.json().get("taskSchedulingPolicy").is_none(),
        "{}",
        r.json()
    );
    assert!(
        r.json().get("networkConfiguration").is_none(),
        "{}",
        r.json()
    );
    t.server.shutdown().await;
}

/// Shutting the server down closes idle keep-alive connections too: a client that keeps a
/// pooled connection cannot reach the stopped server through it, and the shutdown is quick.
#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let t = start().await;
    assert_eq!(
        t.get(&format!("/pools?api-version={V24}")).await.status,
        200
    );
    let addr = t.server.addr();
    let T { server, http, .. } = t;
    let started = std::time::Instant::now();
    server.shutdown().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    let after = http
        .get(format!("http://{addr}/pools?api-version={V24}"))
        .send()
        .await;
    assert!(
        after.is_err(),
        "the stopped server still answered: {after:?}"
    );
}
