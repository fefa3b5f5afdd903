//! Happy path of every client operation against the strict local server (real HTTP on
//! 127.0.0.1; Shared Key signatures and bodies checked by the server).

mod common;

use std::time::Duration;

use futures::TryStreamExt as _;
use serde_json::json;
use shipyard_batch_api::models::{
    AllocationState, ComputeNodeState, JobPatchParameter, JobPreparationTask, JobState,
    PoolResizeParameter, PoolState, TaskState,
};
use shipyard_batch_api::{ListOptions, WaitOptions};
use shipyard_batch_spec::server::{AuthKind, ServerConfig};

use common::*;

#[tokio::test]
async fn pool_add_get_list_exists_resize_delete() {
    let server = server().await;
    let c = client(&server);
    let created = c.add_pool(&pool("pool-a", 2)).await.expect("add pool");
    assert!(!created.already_existed);
    assert!(created.etag.is_some(), "201 carries an ETag");
    assert!(created
        .location
        .as_deref()
        .is_some_and(|l| l.ends_with("/pools/pool-a")));
    assert_eq!(server.create_stat("pool/pool-a").created, 1);

    let p = c.get_pool("pool-a").await.expect("get pool");
    assert_eq!(p.id.as_deref(), Some("pool-a"));
    assert_eq!(p.state, Some(PoolState::Active));
    assert_eq!(p.vm_size.as_deref(), Some("standard_d2s_v3"));

    c.add_pool(&pool("pool-b", 1))
        .await
        .expect("add second pool");
    let ids: Vec<String> = c
        .list_pools(&ListOptions::default())
        .map_ok(|p| p.id.unwrap_or_default())
        .try_collect()
        .await
        .expect("list pools");
    assert_eq!(ids, ["pool-a", "pool-b"]);

    assert!(c.pool_exists("pool-a").await.expect("exists"));
    assert!(!c.pool_exists("nope").await.expect("exists on missing pool"));

    let steady = c
        .wait_for_pool_steady(
            "pool-a",
            WaitOptions::new(Duration::from_secs(5), Duration::from_millis(20)),
        )
        .await
        .expect("steady");
    assert_eq!(steady.allocation_state, Some(AllocationState::Steady));
    c.resize_pool(
        "pool-a",
        &PoolResizeParameter {
            target_dedicated_nodes: Some(3),
            ..Default::default()
        },
    )
    .await
    .expect("resize");
    let nodes = c
        .wait_for_nodes_idle(
            "pool-a",
            3,
            WaitOptions::new(Duration::from_secs(5), Duration::from_millis(20)),
        )
        .await
        .expect("3 idle nodes");
    assert_eq!(nodes.len(), 3);
    assert!(nodes
        .iter()
        .all(|n| n.state == Some(ComputeNodeState::Idle)));

    c.delete_pool("pool-b").await.expect("delete");
    let err = c
        .get_pool("pool-b")
        .await
        .expect_err("deleted pool is gone");
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.code(), Some("PoolNotFound"));
    assert!(err.request_id().is_some());

    // A genuine duplicate (first attempt) is an error, not "already existed".
    let dup = c.add_pool(&pool("pool-a", 2)).await.expect_err("duplicate");
    assert_eq!((dup.status(), dup.code()), (Some(409), Some("PoolExists")));

    // Every request was Shared Key authenticated and spec-matched.
    for r in server.requests() {
        assert_eq!(r.auth, AuthKind::SharedKey, "{r:?}");
        assert!(r.operation.is_some(), "{r:?}");
    }
}

#[tokio::test]
async fn pool_allocation_wait_times_out() {
    let server = server_with(ServerConfig {
        pool_allocation_delay: Duration::from_secs(60),
        ..ServerConfig::default()
    })
    .await;
    let c = client(&server);
    c.add_pool(&pool("slow", 1)).await.expect("add pool");
    let err = c
        .wait_for_pool_steady(
            "slow",
            WaitOptions::new(Duration::from_millis(300), Duration::from_millis(50)),
        )
        .await
        .expect_err("never steady");
    let msg = err.to_string();
    assert!(msg.contains("slow") && msg.contains("resizing"), "{msg}");
}

#[tokio::test]
async fn node_wait_stops_at_a_failed_start_task() {
    let server = server().await;
    let c = client(&server);
    c.add_pool(&pool("p", 2)).await.expect("add pool");
    let ids = server.node_ids("p");
    assert_eq!(ids.len(), 2);
    assert!(server.set_node_state("p", &ids[1], "starttaskfailed"));
    let started = std::time::Instant::now();
    let err = c
        .wait_for_nodes_idle(
            "p",
            2,
            WaitOptions::new(Duration::from_secs(30), Duration::from_millis(20)),
        )
        .await
        .expect_err("a node whose start task failed never becomes idle");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped early, not at the timeout"
    );
    assert!(
        matches!(err, shipyard_batch_api::BatchError::WaitFailed { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&ids[1]) && msg.contains("starttaskfailed"),
        "{msg}"
    );
}

#[tokio::test]
async fn job_add_get_list_patch_terminate_delete() {
    let server = server_with(ServerConfig {
        job_terminate_delay: Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await;
    let c = client(&server);
    c.add_pool(&pool("p", 2)).await.expect("pool");
    let mut j = job("job-1", "p");
    j.uses_task_dependencies = Some(true);
    j.job_preparation_task = Some(JobPreparationTask {
        command_line: "/bin/true".into(),
        ..Default::default()
    });
    let created = c.add_job(&j).await.expect("add job");
    assert!(created.etag.is_some());
    c.add_job(&job("job-2", "p")).await.expect("add job 2");

    let got = c.get_job("job-1").await.expect("get job");
    assert_eq!(got.state, Some(JobState::Active));
    assert_eq!(got.uses_task_dependencies, Some(true));

    let jobs: Vec<_> = c
        .list_jobs(&ListOptions::default())
        .try_collect()
        .await
        .expect("list");
    assert_eq!(jobs.len(), 2);

    c.patch_job(
        "job-1",
        &JobPatchParameter {
            priority: Some(100),
            ..Default::default()
        },
    )
    .await
    .expect("patch");
    assert_eq!(server.job("job-1").expect("job")["priority"], json!(100));

    c.wait_for_nodes_idle(
        "p",
        2,
        WaitOptions::new(Duration::from_secs(5), Duration::from_millis(20)),
    )
    .await
    .expect("nodes");
    let prep: Vec<_> = c
        .list_preparation_and_release_status("job-1", &ListOptions::default())
        .try_collect()
        .await
        .expect("prep status");
    assert_eq!(prep.len(), 2);
    assert!(prep.iter().all(|e| e.pool_id.as_deref() == Some("p")));

    c.terminate_job("job-1", Some("done testing"))
        .await
        .expect("terminate");
    let j = c
        .wait_for_job_state(
            "job-1",
            JobState::Completed,
            WaitOptions::new(Duration::from_secs(5), Duration::from_millis(50)),
        )
        .await
        .expect("completed");
    assert_eq!(
        j.execution_info.and_then(|e| e.terminate_reason).as_deref(),
        Some("done testing")
    );

    c.delete_job("job-2").await.expect("delete");
    assert_eq!(
        c.get_job("job-2").await.expect_err("gone").code(),
        Some("JobNotFound")
    );
}

#[tokio::test]
async fn task_add_get_list_terminate_delete_subtasks() {
    let server = server().await;
    let c = client(&server);
    pool_and_job(&c, "p", "j").await;
    let created = c.add_task("j", &task("t1")).await.expect("add task");
    assert!(created
        .location
        .as_deref()
        .is_some_and(|l| l.ends_with("/jobs/j/tasks/t1")));
    c.add_task("j", &task("t2")).await.expect("add task 2");
    let dup = c
        .add_task("j", &task("t1"))
        .await
        .expect_err("duplicate task");
    assert_eq!(dup.code(), Some("TaskExists"));

    let t = c.get_task("j", "t1").await.expect("get");
    assert_eq!(t.state, Some(TaskState::Active));
    assert_eq!(t.environment_settings.as_ref().map(Vec::len), Some(2));
    assert_eq!(
        t.resource_files
            .as_ref()
            .and_then(|r| r[0].file_path.as_deref()),
        Some("inputs/t1.dat")
    );

    let tasks: Vec<_> = c
        .list_tasks("j", &ListOptions::default())
        .try_collect()
        .await
        .expect("list");
    assert_eq!(tasks.len(), 2);

    // Driven by the server: running, then completed with exit code 3.
    assert!(server.set_task_state("j", "t2", "running", None));
    let s2 = server.handle();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s2.set_task_state("j", "t2", "completed", Some(3));
    });
    let done = c
        .wait_for_task_state(
            "j",
            "t2",
            TaskState::Completed,
            WaitOptions::new(Duration::from_secs(5), Duration::from_millis(25)),
        )
        .await
        .expect("completed");
    assert_eq!(done.execution_info.and_then(|e| e.exit_code), Some(3));
    // Waiting for `running` on a task that already finished returns at once (no task
    // leaves `completed`), instead of polling until the timeout.
    let started = std::time::Instant::now();
    let finished = c
        .wait_for_task_state(
            "j",
            "t2",
            TaskState::Running,
            WaitOptions::new(Duration::from_secs(5), Duration::from_millis(25)),
        )
        .await
        .expect("a completed task ends the wait");
    assert_eq!(finished.state, Some(TaskState::Completed));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "returned at once"
    );

    let completed: Vec<_> = c
        .list_tasks("j", &ListOptions::default().filter("state eq 'completed'"))
        .try_collect()
        .await
        .expect("filtered list");
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].id.as_deref(), Some("t2"));

    assert!(server.set_subtasks(
        "j",
        "t1",
        vec![
            json!({"id": 1, "state": "running"}),
            json!({"id": 2, "state": "completed", "exitCode": 0})
        ]
    ));
    let subs = c.list_subtasks("j", "t1").await.expect("subtasks");
    assert_eq!(subs.len(), 2);
    assert_eq!(subs[1].exit_code, Some(0));

    c.terminate_task("j", "t1").await.expect("terminate");
    assert_eq!(
        c.get_task("j", "t1").await.expect("get").state,
        Some(TaskState::Completed)
    );
    c.delete_task("j", "t1").await.expect("delete");
    assert_eq!(
        c.get_task("j", "t1").await.expect_err("gone").code(),
        Some("TaskNotFound")
    );
}

#[tokio::test]
async fn select_projects_properties() {
    let server = server().await;
    let c = client(&server);
    pool_and_job(&c, "p", "j").await;
    c.add_task("j", &task("t")).await.expect("task");
    let tasks: Vec<_> = c
        .list_tasks("j", &ListOptions::default().select("id,state"))
        .try_collect()
        .await
        .expect("list");
    assert_eq!(tasks[0].id.as_deref(), Some("t"));
    assert!(tasks[0].command_line.is_none(), "not selected");
}

#[tokio::test]
async fn task_dependencies_need_the_job_flag() {
    use shipyard_batch_api::models::TaskDependencies;
    let server = server().await;
    let c = client(&server);
    pool_and_job(&c, "p", "plain").await;
    let mut t = task("dependent");
    t.depends_on = Some(TaskDependencies {
        task_ids: Some(vec!["a".into()]),
        ..Default::default()
    });
    let err = c
        .add_task("plain", &t)
        .await
        .expect_err("job lacks usesTaskDependencies");
    assert_eq!(err.code(), Some("TaskDependenciesNotSpecifiedOnJob"));
    let mut j = job("deps", "p");
    j.uses_task_dependencies = Some(true);
    c.add_job(&j).await.expect("job");
    c.add_task("deps", &t)
        .await
        .expect("dependent task accepted");
    let got = c.get_task("deps", "dependent").await.expect("get");
    assert_eq!(
        got.depends_on.and_then(|d| d.task_ids),
        Some(vec!["a".to_owned()])
    );
}

#[tokio::test]
async fn node_get_add_user_and_remote_login_settings() {
    use shipyard_batch_api::models::ComputeNodeUser;
    let server = server().await;
    let c = client(&server);
    c.add_pool(&pool("p", 2)).await.expect("add pool");
    let ids = server.node_ids("p");
    let node = c.get_node("p", &ids[1]).await.expect("get node");
    assert_eq!(node.id.as_deref(), Some(ids[1].as_str()));
    let user = ComputeNodeUser {
        name: "alice".into(),
        is_admin: Some(true),
        expiry_time: Some("2030-01-01T00:00:00Z".into()),
        ssh_public_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPnFxHrj1cqzd7EV3lOqMzYmF2WcwxlFXqnXxUMECbGi alice@host".into()),
        ..Default::default()
    };
    c.add_node_user("p", &ids[1], &user)
        .await
        .expect("add user");
    // A second account of that name is refused, as on the service.
    let err = c
        .add_node_user("p", &ids[1], &user)
        .await
        .expect_err("duplicate user");
    assert_eq!(err.code(), Some("NodeUserExists"), "{err}");
    // A private key where the public key belongs is refused by the strict server.
    let bad = ComputeNodeUser {
        name: "bob".into(),
        ssh_public_key: Some("-----BEGIN OPENSSH PRIVATE KEY-----".into()),
        ..Default::default()
    };
    let err = c
        .add_node_user("p", &ids[1], &bad)
        .await
        .expect_err("not a public key");
    assert_eq!(err.code(), Some("InvalidPropertyValue"), "{err}");
    // Neither a key nor a password: nothing to log in with.
    let keyless = ComputeNodeUser {
        name: "carol".into(),
        ..Default::default()
    };
    let err = c
        .add_node_user("p", &ids[1], &keyless)
        .await
        .expect_err("no credential");
    assert_eq!(err.code(), Some("InvalidPropertyValue"), "{err}");
    // A node still starting takes no user.
    assert!(server.set_node_state("p", &ids[0], "starting"));
    let err = c
        .add_node_user("p", &ids[0], &user)
        .await
        .expect_err("node not ready");
    assert_eq!(err.code(), Some("NodeNotReady"), "{err}");
    let login = c
        .get_remote_login_settings("p", &ids[1])
        .await
        .expect("remote login settings");
    assert_eq!(login.remote_login_ip_address, "127.0.0.1");
    assert_eq!(login.remote_login_port, 50001);
    let missing = c
        .get_remote_login_settings("p", "nope")
        .await
        .expect_err("unknown node");
    assert!(missing.is_not_found(), "{missing}");
    let ops: Vec<(String, u16)> = server
        .requests()
        .into_iter()
        .filter_map(|r| Some((r.operation?, r.status)))
        .filter(|(o, _)| o.starts_with("ComputeNode_"))
        .collect();
    assert_eq!(
        ops,
        [
            ("ComputeNode_Get".to_string(), 200),
            ("ComputeNode_AddUser".to_string(), 201),
            ("ComputeNode_AddUser".to_string(), 409),
            ("ComputeNode_AddUser".to_string(), 400),
            ("ComputeNode_AddUser".to_string(), 400),
            ("ComputeNode_AddUser".to_string(), 409),
            ("ComputeNode_GetRemoteLoginSettings".to_string(), 200),
            ("ComputeNode_GetRemoteLoginSettings".to_string(), 404),
        ]
    );
}
