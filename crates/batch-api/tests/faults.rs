//! Injected faults: each asserts the call outcome, the retries the server saw, and that no
//! resource was lost or created twice (the server counts creates per id).

mod common;

use std::time::{Duration, Instant};

use shipyard_batch_api::{BatchError, ClientOptions, RetryPolicy};
use shipyard_batch_spec::server::{Fault, FaultRule, TestServer};

use common::*;

fn count(server: &TestServer, op: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.operation.as_deref() == Some(op))
        .count()
}

#[tokio::test]
async fn too_many_requests_honours_retry_after_seconds() {
    let server = server().await;
    let c = client(&server);
    pool_and_job(&c, "p", "j").await;
    server.inject(
        FaultRule::new(Fault::TooManyRequests {
            retry_after_secs: 1,
            as_http_date: false,
        })
        .operation("Job_Get"),
    );
    let t = Instant::now();
    let job = c.get_job("j").await.expect("succeeds after 429");
    assert_eq!(job.id.as_deref(), Some("j"));
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "waited {:?}",
        t.elapsed()
    );
    assert_eq!(count(&server, "Job_Get"), 2);
}

#[tokio::test]
async fn too_many_requests_honours_retry_after_http_date() {
    let server = server().await;
    let c = client(&server);
    c.add_pool(&pool("p", 0)).await.expect("pool");
    server.inject(
        FaultRule::new(Fault::TooManyRequests {
            retry_after_secs: 2,
            as_http_date: true,
        })
        .operation("Pool_Get"),
    );
    let t = Instant::now();
    c.get_pool("p").await.expect("succeeds after 429");
    // HTTP dates have one-second resolution.
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "waited {:?}",
        t.elapsed()
    );
    assert_eq!(count(&server, "Pool_Get"), 2);
}

#[tokio::test]
async fn service_unavailable_on_create_is_retried_once_created() {
    let server = server().await;
    let c = client(&server);
    server.inject(
        FaultRule::new(Fault::ServiceUnavailable)
            .operation("Pool_Add")
            .times(2),
    );
    let created = c
        .add_pool(&pool("p", 1))
        .await
        .expect("created after two 503s");
    assert_eq!(created.attempts, 3);
    assert!(!created.already_existed, "503s were not processed");
    let stat = server.create_stat("pool/p");
    assert_eq!(
        (stat.attempts, stat.created),
        (1, 1),
        "faults answered before processing"
    );
}

#[tokio::test]
async fn retries_are_bounded() {
    let server = server().await;
    let c = client_with(
        &server,
        ClientOptions {
            retry: RetryPolicy {
                max_attempts: 3,
                ..fast_options().retry
            },
            ..fast_options()
        },
    );
    server.inject(
        FaultRule::new(Fault::ServiceUnavailable)
            .operation("Job_List")
            .times(10),
    );
    let err = c.list_jobs(&Default::default()).next_err().await;
    match &err {
        BatchError::RetriesExhausted { attempts, .. } => assert_eq!(*attempts, 3),
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert_eq!((err.status(), err.code()), (Some(503), Some("ServerBusy")));
    assert_eq!(count(&server, "Job_List"), 3);
}

#[tokio::test]
async fn dropped_connection_on_get_is_retried() {
    let server = server().await;
    let c = client(&server);
    pool_and_job(&c, "p", "j").await;
    server.inject(
        FaultRule::new(Fault::DropConnection)
            .operation("Job_Get")
            .times(2),
    );
    c.get_job("j").await.expect("succeeds on the third attempt");
    assert_eq!(count(&server, "Job_Get"), 3);
}

#[tokio::test]
async fn slow_reply_times_out_and_is_retried() {
    let server = server().await;
    let c = client_with(
        &server,
        ClientOptions {
            request_timeout: Duration::from_millis(300),
            ..fast_options()
        },
    );
    pool_and_job(&c, "p", "j").await;
    c.add_task("j", &task("t")).await.expect("task");
    server.inject(FaultRule::new(Fault::SlowReply(Duration::from_secs(2))).operation("Task_Get"));
    let t = Instant::now();
    c.get_task("j", "t").await.expect("second attempt is fast");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "did not wait for the slow reply"
    );
    assert_eq!(
        count(&server, "Task_Get"),
        1,
        "the slow attempt is logged after its delay"
    );
}

#[tokio::test]
async fn lost_create_replies_count_as_success_and_create_once() {
    let server = server().await;
    let c = client(&server);
    for op in ["Pool_Add", "Job_Add", "Task_Add"] {
        server.inject(FaultRule::new(Fault::DropReplyAfterCommit).operation(op));
    }
    let p = c.add_pool(&pool("p", 1)).await.expect("pool");
    let j = c.add_job(&job("j", "p")).await.expect("job");
    let t = c.add_task("j", &task("t")).await.expect("task");
    for (created, key) in [(p, "pool/p"), (j, "job/j"), (t, "task/j/t")] {
        assert!(
            created.already_existed,
            "{key}: retry found the committed create"
        );
        assert_eq!(created.attempts, 2, "{key}");
        let stat = server.create_stat(key);
        assert_eq!(
            (stat.attempts, stat.created),
            (2, 1),
            "{key}: created exactly once"
        );
    }
    assert_eq!(server.task_count("j"), 1);
}

#[tokio::test]
async fn lost_delete_replies_count_as_success() {
    let server = server().await;
    let c = client(&server);
    pool_and_job(&c, "p", "j").await;
    c.add_task("j", &task("t")).await.expect("task");
    for op in ["Task_Delete", "Job_Delete", "Pool_Delete"] {
        server.inject(FaultRule::new(Fault::DropReplyAfterCommit).operation(op));
    }
    c.delete_task("j", "t")
        .await
        .expect("task deleted by the lost attempt");
    c.delete_job("j")
        .await
        .expect("job deleted by the lost attempt");
    c.delete_pool("p")
        .await
        .expect("pool deleted by the lost attempt");
    for op in ["Task_Delete", "Job_Delete", "Pool_Delete"] {
        assert_eq!(
            count(&server, op),
            2,
            "{op}: one retry after the lost reply"
        );
    }
    assert!(server.job("j").is_none() && server.pool("p").is_none());
    // A first-attempt 404 is still an error: nothing was deleted by this call.
    let err = c.delete_job("j").await.expect_err("job is gone");
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn slow_create_reply_after_timeout_creates_once() {
    let server = server().await;
    let c = client_with(
        &server,
        ClientOptions {
            request_timeout: Duration::from_millis(300),
            ..fast_options()
        },
    );
    pool_and_job(&c, "p", "j").await;
    server
        .inject(FaultRule::new(Fault::SlowReply(Duration::from_millis(700))).operation("Task_Add"));
    let created = c.add_task("j", &task("t")).await.expect("task");
    assert!(created.attempts >= 2);
    // Let the delayed attempt finish on the server too.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stat = server.create_stat("task/j/t");
    assert_eq!(stat.created, 1, "{stat:?}");
    assert_eq!(server.task_count("j"), 1);
}

#[tokio::test]
async fn non_idempotent_actions_are_not_blindly_retried() {
    let server = server().await;
    let c = client(&server);
    pool_and_job(&c, "p", "j").await;
    // 500 and a dropped connection: the service may have acted; no retry.
    server.inject(FaultRule::new(Fault::InternalError).operation("Job_Terminate"));
    let err = c.terminate_job("j", None).await.expect_err("500 surfaces");
    assert_eq!(err.status(), Some(500));
    assert_eq!(count(&server, "Job_Terminate"), 1);
    server.inject(FaultRule::new(Fault::DropConnection).operation("Job_Terminate"));
    let err = c
        .terminate_job("j", None)
        .await
        .expect_err("dropped connection surfaces");
    assert!(matches!(err, BatchError::Transport { .. }), "{err:?}");
    assert_eq!(count(&server, "Job_Terminate"), 2);
    // 429 and 503 mean "not processed": retried.
    server.inject(FaultRule::new(Fault::ServiceUnavailable).operation("Job_Terminate"));
    server.inject(
        FaultRule::new(Fault::TooManyRequests {
            retry_after_secs: 0,
            as_http_date: false,
        })
        .operation("Job_Terminate"),
    );
    c.terminate_job("j", None)
        .await
        .expect("terminated after 503 + 429");
    assert_eq!(count(&server, "Job_Terminate"), 5);
}

/// Small extension: first error of a stream.
trait NextErr {
    async fn next_err(self) -> BatchError;
}

impl<S, T> NextErr for S
where
    S: futures::Stream<Item = Result<T, BatchError>> + Unpin,
{
    async fn next_err(mut self) -> BatchError {
        use futures::StreamExt as _;
        loop {
            match self.next().await {
                Some(Err(e)) => return e,
                Some(Ok(_)) => continue,
                None => panic!("stream ended without an error"),
            }
        }
    }
}
