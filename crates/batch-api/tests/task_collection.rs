//! `add_task_collection` under load and faults, and paging across several pages.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use futures::TryStreamExt as _;
use shipyard_batch_api::models::EnvironmentSetting;
use shipyard_batch_api::{ClientOptions, ListOptions, TaskAddOutcome};
use shipyard_batch_spec::server::{Fault, FaultRule, TaskFailure, TestServer};

use common::*;

/// Every task the client reports as created exists on the server exactly once; every failed
/// one does not exist; nothing else exists.
fn assert_consistent(
    server: &TestServer,
    job: &str,
    report: &shipyard_batch_api::TaskCollectionReport,
    n: usize,
) {
    assert_eq!(report.outcomes.len(), n, "one outcome per input task");
    let ids: HashSet<&str> = report.outcomes.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), n, "outcome ids unique");
    let mut ok = 0;
    for (id, outcome) in &report.outcomes {
        let stat = server.create_stat(&format!("task/{job}/{id}"));
        assert!(stat.created <= 1, "task {id} created twice: {stat:?}");
        let exists = server.task(job, id).is_some();
        match outcome {
            TaskAddOutcome::Created | TaskAddOutcome::AlreadyExisted => {
                ok += 1;
                assert!(
                    exists && stat.created == 1,
                    "task {id} reported created but {stat:?}"
                );
            }
            TaskAddOutcome::Failed(e) => {
                assert!(!exists, "task {id} reported failed ({e}) but exists");
            }
        }
    }
    assert_eq!(server.task_count(job), ok, "no extra tasks on the server");
}

#[tokio::test]
async fn ten_thousand_tasks_with_injected_per_task_failures() {
    let server = server_with(shipyard_batch_spec::server::ServerConfig {
        log_requests: true,
        ..Default::default()
    })
    .await;
    let c = client(&server);
    pool_and_job(&c, "p", "j").await;
    let tasks: Vec<_> = (0..10_000).map(|i| task(&format!("task-{i:05}"))).collect();
    // 300 tasks fail once with servererror (retried), 20 fail twice, 7 get a permanent
    // clienterror (not retried).
    server.fail_tasks(
        (0..300).map(|i| format!("task-{:05}", i * 33)),
        TaskFailure::ServerError,
        1,
    );
    server.fail_tasks(
        (0..20).map(|i| format!("task-{:05}", 5 + i * 400)),
        TaskFailure::ServerError,
        2,
    );
    let permanent: Vec<String> = (0..7)
        .map(|i| format!("task-{:05}", 7 + i * 1000))
        .collect();
    server.fail_tasks(
        permanent.clone(),
        TaskFailure::ClientError("InvalidPropertyValue".into()),
        1,
    );
    // And chunk-level faults along the way.
    server.inject(FaultRule::new(Fault::ServiceUnavailable).operation("Task_AddCollection"));
    server.inject(
        FaultRule::new(Fault::TooManyRequests {
            retry_after_secs: 0,
            as_http_date: false,
        })
        .operation("Task_AddCollection"),
    );
    server.inject(FaultRule::new(Fault::DropConnection).operation("Task_AddCollection"));
    server.inject(
        FaultRule::new(Fault::DropReplyAfterCommit)
            .operation("Task_AddCollection")
            .times(2),
    );

    let report = c.add_task_collection("j", tasks).await;
    assert_consistent(&server, "j", &report, 10_000);
    let failed: Vec<(&str, &shipyard_batch_api::BatchError)> = report.failures().collect();
    let mut failed_ids: Vec<&str> = failed.iter().map(|(id, _)| *id).collect();
    failed_ids.sort();
    assert_eq!(
        failed_ids,
        permanent.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(failed
        .iter()
        .all(|(_, e)| e.code() == Some("InvalidPropertyValue")));
    assert_eq!(server.task_count("j"), 10_000 - 7);
    // The two committed-but-dropped chunks come back as AlreadyExisted (up to 200 tasks).
    let already = report
        .outcomes
        .iter()
        .filter(|(_, o)| matches!(o, TaskAddOutcome::AlreadyExisted))
        .count();
    assert!(already > 0 && already <= 200, "already existed: {already}");
    // Every request respected the limits.
    for r in server
        .requests()
        .iter()
        .filter(|r| r.operation.as_deref() == Some("Task_AddCollection"))
    {
        assert!(r.body_len < 1_000_000, "{r:?}");
        assert!(
            r.status == 0 || r.status == 200 || r.status == 429 || r.status == 503,
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn chunks_stay_under_the_body_limit_and_413_splits() {
    let server = server().await;
    // Big tasks: ~30 KB of environment each, so 100 tasks would be ~3 MB.
    let big = |id: String| {
        let mut t = task(&id);
        t.environment_settings = Some(vec![EnvironmentSetting::new("BLOB", "x".repeat(30_000))]);
        t
    };
    let c = client(&server);
    pool_and_job(&c, "p", "j").await;
    let report = c
        .add_task_collection("j", (0..150).map(|i| big(format!("a{i}"))).collect())
        .await;
    assert!(report.all_succeeded());
    assert_consistent(&server, "j", &report, 150);
    let bodies: Vec<usize> = server
        .requests()
        .iter()
        .filter(|r| r.operation.as_deref() == Some("Task_AddCollection"))
        .map(|r| r.body_len)
        .collect();
    assert!(bodies.iter().all(|b| *b < 1_000_000), "{bodies:?}");
    assert!(
        bodies.len() >= 5,
        "150 × 30 KB needs at least 5 requests: {bodies:?}"
    );

    // A client configured above the service limit gets 413 and splits the chunk.
    let server2 = server_with(Default::default()).await;
    let c2 = client_with(
        &server2,
        ClientOptions {
            max_body_bytes: 4_000_000,
            ..fast_options()
        },
    );
    pool_and_job(&c2, "p", "j").await;
    let report = c2
        .add_task_collection("j", (0..100).map(|i| big(format!("b{i}"))).collect())
        .await;
    assert!(report.all_succeeded(), "{:?}", report.failures().next());
    assert_consistent(&server2, "j", &report, 100);
    let log = server2.requests();
    assert!(log
        .iter()
        .any(|r| r.status == 413 && r.error_code.as_deref() == Some("RequestBodyTooLarge")));
}

#[tokio::test]
async fn duplicate_ids_in_one_call_are_reported_not_created_twice() {
    let server = server().await;
    let c = client(&server);
    pool_and_job(&c, "p", "j").await;
    c.add_task("j", &task("pre-existing")).await.expect("task");
    let report = c
        .add_task_collection(
            "j",
            vec![task("new-1"), task("pre-existing"), task("new-2")],
        )
        .await;
    let failed: Vec<_> = report
        .failures()
        .map(|(id, e)| (id.to_owned(), e.code().map(str::to_owned)))
        .collect();
    assert_eq!(
        failed,
        [("pre-existing".to_owned(), Some("TaskExists".to_owned()))]
    );
    assert_eq!(server.task_count("j"), 3);
}

#[tokio::test]
async fn missing_job_fails_every_task() {
    let server = server().await;
    let c = client(&server);
    let report = c
        .add_task_collection("nope", (0..150).map(|i| task(&format!("t{i}"))).collect())
        .await;
    assert_eq!(report.outcomes.len(), 150);
    assert!(report
        .failures()
        .all(|(_, e)| e.code() == Some("JobNotFound")));
    assert_eq!(report.failures().count(), 150);
}

#[tokio::test]
async fn paging_follows_next_link_across_pages() {
    let server = server().await;
    let c = client(&server);
    pool_and_job(&c, "p", "j").await;
    let report = c
        .add_task_collection("j", (0..250).map(|i| task(&format!("t{i:03}"))).collect())
        .await;
    assert!(report.all_succeeded());
    let before = server.requests().len();
    let tasks: Vec<_> = c
        .list_tasks(
            "j",
            &ListOptions::default().max_results(100).select("id,state"),
        )
        .try_collect()
        .await
        .expect("list");
    let ids: Vec<String> = tasks
        .into_iter()
        .map(|t| t.id.unwrap_or_default())
        .collect();
    let expected: Vec<String> = (0..250).map(|i| format!("t{i:03}")).collect();
    assert_eq!(ids, expected, "every task once, in order");
    let pages: Vec<_> = server.requests()[before..].to_vec();
    assert_eq!(pages.len(), 3, "250 tasks at 100 per page");
    assert!(pages
        .iter()
        .all(|r| r.operation.as_deref() == Some("Task_List") && r.status == 200));
    assert!(pages[1].query.contains("skiptoken") && pages[1].query.contains("api-version"));
    assert!(pages.iter().all(|r| r.query.contains("maxresults=100")));

    // A page fetch that fails transiently is retried mid-stream.
    server.inject(
        FaultRule::new(Fault::ServiceUnavailable)
            .operation("Task_List")
            .times(1),
    );
    let n = c
        .list_tasks("j", &ListOptions::default().max_results(120))
        .try_fold(0usize, |n, _| async move { Ok(n + 1) })
        .await
        .expect("list with a 503");
    assert_eq!(n, 250);

    // A stream can be consumed lazily: one page fetched for the first few items.
    let before = server.requests().len();
    let mut s = c.list_tasks("j", &ListOptions::default().max_results(100));
    for _ in 0..5 {
        s.try_next().await.expect("item").expect("some");
    }
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.requests().len() - before, 1);
}
