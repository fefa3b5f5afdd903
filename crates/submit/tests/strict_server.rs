//! `shipyard-submit` against the strict local Batch server: every request must match the spec.

use std::time::{Duration, Instant};

use shipyard_batch_api::models::{
    ImageReference, JobAddParameter, JobPreparationTask, OnAllTasksComplete, PoolAddParameter,
    TaskAddParameter, TaskDependencies, VirtualMachineConfiguration,
};
use shipyard_batch_api::BatchClient;
use shipyard_batch_api::SharedKeyCredential;
use shipyard_batch_spec::server::{ServerConfig, TaskFailure, TestServer};
use shipyard_submit::{
    JobSubmission, OutputStream, RunOutcome, Submission, SubmitError, SubmitEvent, SubmitOptions,
    Submitter, TERMINATE_REASON,
};

const POOL: &str = "subpool";
const JOB: &str = "subjob";

async fn server() -> TestServer {
    TestServer::start(ServerConfig::default())
        .await
        .expect("server starts")
}

fn client(server: &TestServer) -> BatchClient {
    let cred = SharedKeyCredential::new(server.account(), server.key()).expect("credential");
    BatchClient::new(&server.url(), cred).expect("client")
}

fn pool() -> PoolAddParameter {
    PoolAddParameter {
        virtual_machine_configuration: Some(VirtualMachineConfiguration::new(
            ImageReference::marketplace("microsoft-dsvm", "ubuntu-hpc", "2204", "latest"),
            "batch.node.ubuntu 22.04",
        )),
        target_dedicated_nodes: Some(2),
        ..PoolAddParameter::new(POOL, "Standard_D2s_v5")
    }
}

fn submission(tasks: &[&str]) -> Submission {
    let job = JobSubmission {
        job: JobAddParameter {
            job_preparation_task: Some(JobPreparationTask {
                command_line: "/bin/true".into(),
                ..Default::default()
            }),
            ..JobAddParameter::new(JOB, POOL)
        },
        tasks: tasks
            .iter()
            .map(|t| TaskAddParameter::new(*t, "/bin/echo hi"))
            .collect(),
        on_all_tasks_complete: Some(OnAllTasksComplete::TerminateJob),
    };
    Submission::new(POOL).create_pool(pool()).job(job)
}

fn submitter(server: &TestServer, opts: SubmitOptions) -> Submitter {
    Submitter::new(
        client(server),
        opts.poll_interval(Duration::from_millis(50)),
    )
}

fn rejected(server: &TestServer) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.status >= 400 && r.status != 404)
        .map(|r| format!("{} {} -> {} {:?}", r.method, r.path, r.status, r.error_code))
        .collect()
}

async fn wait_for_tasks(server: &TestServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.task_count(JOB) < n {
        assert!(
            Instant::now() < deadline,
            "tasks never arrived: {:#?}",
            rejected(server)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type Run = tokio::task::JoinHandle<(Result<RunOutcome, SubmitError>, Vec<SubmitEvent>)>;

fn spawn_run(submitter: Submitter, submission: Submission) -> Run {
    tokio::spawn(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let result = submitter.run(&submission, Some(tx)).await;
        let mut events = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            events.push(ev);
        }
        (result, events)
    })
}

/// Waits for `run` to end (it must end within 2 s, long before its 24 h timeout).
async fn ends_promptly(run: Run) -> (Result<RunOutcome, SubmitError>, Vec<SubmitEvent>) {
    let t = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run ends")
        .expect("join");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    ended
}

fn assert_terminated_by_shipyard(server: &TestServer) {
    let job = server.job(JOB).expect("job exists");
    let state = job["state"].as_str().unwrap_or("");
    assert!(
        state == "terminating" || state == "completed",
        "job not terminated: {job:#}"
    );
    assert_eq!(job["executionInfo"]["terminateReason"], TERMINATE_REASON);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_creates_pool_adds_job_patches_and_reports_the_exit_code() {
    let server = server().await;
    let submitter = submitter(&server, SubmitOptions::default().stream_output(true));
    let run = spawn_run(submitter, submission(&["a", "b"]));
    wait_for_tasks(&server, 2).await;
    // onAllTasksComplete is set only after the tasks are in.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.job(JOB).expect("job")["onAllTasksComplete"] != "terminatejob" {
        assert!(Instant::now() < deadline, "never patched");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(server.put_task_file(JOB, "a", "stdout.txt", b"line one\nline two\n".to_vec()));
    assert!(server.set_task_state(JOB, "a", "running", None));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(server.set_task_state(JOB, "a", "completed", Some(0)));
    assert!(server.set_task_state(JOB, "b", "completed", Some(3)));
    let (result, events) = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("run ends")
        .expect("join");
    let outcome = result.expect("run succeeds");
    assert_eq!(outcome.exit_code(), 3);
    assert_eq!(outcome.tasks.len(), 2);
    assert!(outcome.submitted.pool_created);
    assert!(server.pool(POOL).is_some());
    let lines: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            SubmitEvent::Output {
                task,
                stream: OutputStream::Stdout,
                line,
                ..
            } if task == "a" => Some(line.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(lines, ["line one", "line two"]);
    assert!(events.iter().any(|e| matches!(
        e,
        SubmitEvent::TaskState { task, exit_code: Some(3), .. } if task == "b"
    )));
    assert!(events.iter().any(|e| matches!(
        e,
        SubmitEvent::JobAdded {
            tasks: 2,
            existed: false,
            ..
        }
    )));
    assert!(rejected(&server).is_empty(), "{:#?}", rejected(&server));
}

async fn node_failure_fails_promptly(state: &str) -> SubmitError {
    let server = server().await;
    let run = spawn_run(
        submitter(&server, SubmitOptions::default()),
        submission(&["a"]),
    );
    wait_for_tasks(&server, 1).await;
    let node = server.node_ids(POOL).into_iter().next().expect("a node");
    assert!(server.set_node_state(POOL, &node, state));
    let (result, events) = ends_promptly(run).await;
    assert!(events
        .iter()
        .any(|e| matches!(e, SubmitEvent::JobTerminated { job, .. } if job == JOB)));
    assert_terminated_by_shipyard(&server);
    let err = result.expect_err("run fails");
    let text = err.to_string();
    assert!(text.contains(&node), "{text}");
    assert!(text.contains(&format!("terminated job(s) {JOB}")), "{text}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_task_fails_the_run_naming_the_node_and_terminates_the_job() {
    let err = node_failure_fails_promptly("starttaskfailed").await;
    let SubmitError::Aborted { source, .. } = err else {
        panic!("not aborted: {err}")
    };
    assert!(
        matches!(*source, SubmitError::StartTaskFailed { .. }),
        "{source}"
    );
    assert!(source.to_string().contains("start task"), "{source}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_node_fails_the_run_and_terminates_the_job() {
    let err = node_failure_fails_promptly("unusable").await;
    let SubmitError::Aborted { source, .. } = err else {
        panic!("not aborted: {err}")
    };
    assert!(
        matches!(*source, SubmitError::NodeUnusable { .. }),
        "{source}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_terminates_the_job() {
    let server = server().await;
    let opts = SubmitOptions::default().timeout(Duration::from_millis(300));
    let (result, _) = spawn_run(submitter(&server, opts), submission(&["a"]))
        .await
        .expect("join");
    let err = result.expect_err("times out");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(err.to_string().contains("0/1 tasks completed"), "{err}");
    assert_terminated_by_shipyard(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_terminates_the_job() {
    let server = server().await;
    let submitter = submitter(&server, SubmitOptions::default());
    let token = submitter.cancel_token();
    let run = spawn_run(submitter, submission(&["a"]));
    wait_for_tasks(&server, 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    token.cancel();
    let (result, _) = run.await.expect("join");
    let err = result.expect_err("cancelled");
    assert!(
        matches!(&err, SubmitError::Aborted { source, .. } if matches!(**source, SubmitError::Cancelled)),
        "{err}"
    );
    assert_terminated_by_shipyard(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_tasks_terminate_the_partial_job() {
    let server = server().await;
    server.fail_tasks(
        ["b"],
        TaskFailure::ClientError("InvalidPropertyValue".into()),
        100,
    );
    let submitter = submitter(&server, SubmitOptions::default());
    let err = submitter
        .submit(&submission(&["a", "b"]))
        .await
        .expect_err("a task is refused");
    let text = err.to_string();
    assert!(text.contains("1 of 2 tasks could not be added"), "{text}");
    assert!(text.contains("terminated job(s) subjob"), "{text}");
    // The partial job never got onAllTasksComplete, so shipyard ended it.
    assert_terminated_by_shipyard(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_describe_what_the_server_stores() {
    let server = server().await;
    let sub = submission(&["a"]);
    let described = sub.requests();
    let ops: Vec<(&str, &str)> = described
        .iter()
        .map(|r| (r.method.as_str(), r.definition.unwrap_or("-")))
        .collect();
    assert_eq!(
        ops,
        [
            ("POST", "PoolAddParameter"),
            ("POST", "JobAddParameter"),
            ("POST", "TaskAddCollectionParameter"),
            ("PATCH", "JobPatchParameter"),
        ]
    );
    submitter(&server, SubmitOptions::default())
        .submit(&sub)
        .await
        .expect("submits");
    let job = server.job(JOB).expect("job");
    assert_eq!(
        job["jobPreparationTask"]["commandLine"],
        described[1].body.as_ref().expect("body")["jobPreparationTask"]["commandLine"]
    );
    let task = server.task(JOB, "a").expect("task");
    assert_eq!(
        task["commandLine"],
        described[2].body.as_ref().expect("body")["value"][0]["commandLine"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_no_request_can_hold_is_refused_before_anything_is_sent() {
    let server = server().await;
    let mut sub = submission(&["small", "huge"]);
    sub.jobs[0].tasks[1].command_line = format!("/bin/echo {}", "x".repeat(1_100_000));
    // Dry run and submission refuse it alike; the description leaves it out of every request.
    let err = sub.check().expect_err("the huge task is refused");
    let text = err.to_string();
    assert!(text.contains("1 of 2 tasks"), "{text}");
    assert!(text.contains("huge"), "{text}");
    let in_requests: usize = sub
        .requests()
        .iter()
        .filter_map(|r| r.body.as_ref()?["value"].as_array().map(Vec::len))
        .sum();
    assert_eq!(in_requests, 1);
    let err = submitter(&server, SubmitOptions::default())
        .submit(&sub)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("huge"), "{err}");
    assert!(server.requests().is_empty(), "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_deletes_a_finished_job_and_adds_it_again() {
    let server = server().await;
    let sub = submission(&["a"]);
    let opts = || SubmitOptions::default().poll_interval(Duration::from_millis(20));
    submitter(&server, opts())
        .submit(&sub)
        .await
        .expect("first submit");
    // An active job is another run's: recreate refuses it and leaves it alone.
    let err = submitter(&server, opts().recreate(true))
        .submit(&sub)
        .await
        .expect_err("active job");
    assert!(err.to_string().contains("is active, not finished"), "{err}");
    assert!(server.job(JOB).is_some());
    // A finished job: without recreate the rerun says how to rerun it ...
    assert!(server.set_job_state(JOB, "completed"));
    let err = submitter(&server, opts())
        .submit(&sub)
        .await
        .expect_err("job exists");
    assert_eq!(err.code(), Some("JobExists"), "{err}");
    assert!(err.to_string().contains("--recreate"), "{err}");
    // ... and with it the job is deleted and added anew, with its tasks.
    let submitted = submitter(&server, opts().recreate(true))
        .submit(&sub)
        .await
        .expect("recreated");
    assert!(submitted.jobs[0].created);
    let job = server.job(JOB).expect("job again");
    assert_eq!(job["state"], "active");
    assert_eq!(server.task_count(JOB), 1);
    let deletes = server
        .requests()
        .iter()
        .filter(|r| r.operation.as_deref() == Some("Job_Delete"))
        .count();
    assert_eq!(deletes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_preparation_fails_the_run_naming_node_task_and_exit_code() {
    let server = server().await;
    let run = spawn_run(
        submitter(&server, SubmitOptions::default()),
        submission(&["a"]),
    );
    wait_for_tasks(&server, 1).await;
    let node = server.node_ids(POOL).into_iter().next().expect("a node");
    // What the preparation printed on the node: the error quotes its last lines.
    assert!(server.put_node_file(
        POOL,
        &node,
        &format!("workitems/{JOB}/job-1/jobpreparation/stderr.txt"),
        b"pulling shipyard/mpi\nsingularity: command not found\n".to_vec(),
    ));
    assert!(server.set_preparation_task(
        JOB,
        &node,
        "completed",
        Some(7),
        Some("docker pull: manifest unknown")
    ));
    let (result, events) = ends_promptly(run).await;
    assert!(events.iter().any(|e| matches!(
        e,
        SubmitEvent::JobPreparationFailed { node: n, exit_code: Some(7), .. } if *n == node
    )));
    assert_terminated_by_shipyard(&server);
    let err = result.expect_err("run fails");
    let SubmitError::Aborted { source, .. } = err else {
        panic!("not aborted: {err}")
    };
    let text = source.to_string();
    assert!(
        matches!(
            *source,
            SubmitError::JobPreparationFailed {
                exit_code: Some(7),
                ..
            }
        ),
        "{text}"
    );
    for part in [
        JOB,
        POOL,
        node.as_str(),
        "7",
        "singularity: command not found",
    ] {
        assert!(text.contains(part), "{part} missing from: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_blocked_by_a_failed_dependency_fail_the_run_naming_them_and_terminate_the_job() {
    let server = server().await;
    let mut submission = submission(&["a"]);
    let job = &mut submission.jobs[0];
    job.job.uses_task_dependencies = Some(true);
    for (id, on) in [("b", "a"), ("c", "b")] {
        job.tasks.push(TaskAddParameter {
            depends_on: Some(TaskDependencies {
                task_ids: Some(vec![on.into()]),
                task_id_ranges: None,
            }),
            ..TaskAddParameter::new(id, "/bin/echo after")
        });
    }
    let run = spawn_run(submitter(&server, SubmitOptions::default()), submission);
    wait_for_tasks(&server, 3).await;
    // A failure alone does not end the run while b and c could still be satisfied...
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!run.is_finished(), "ended before any task failed");
    assert!(server.set_task_state(JOB, "a", "completed", Some(4)));
    let (result, events) = ends_promptly(run).await;
    assert!(events.iter().any(|e| matches!(
        e,
        SubmitEvent::TasksBlocked { blocked, failed, .. }
            if *blocked == ["b", "c"] && *failed == ["a"]
    )));
    assert_terminated_by_shipyard(&server);
    let err = result.expect_err("run fails");
    let SubmitError::Aborted { source, .. } = err else {
        panic!("not aborted: {err}")
    };
    assert!(
        matches!(*source, SubmitError::DependencyBlocked { .. }),
        "{source}"
    );
    let text = source.to_string();
    for part in [JOB, "task(s) b, c", "dependency a failed", "block"] {
        assert!(text.contains(part), "{part} missing from: {text}");
    }
    assert!(rejected(&server).is_empty(), "{:#?}", rejected(&server));
}
