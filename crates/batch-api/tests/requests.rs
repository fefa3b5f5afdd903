//! The pure request descriptions of `shipyard_batch_api::request`: operation ids, methods,
//! percent-encoded paths, queries, body definitions, the dry-run JSON and text forms, and the
//! chunking of task collections by count and by size.

use serde_json::{json, Value};
use shipyard_batch_api::models::{
    ComputeNodeUser, JobAddParameter, JobPatchParameter, OnAllTasksComplete, PoolAddParameter,
    PoolResizeParameter, TaskAddParameter,
};
use shipyard_batch_api::request::{self, Method, Request};
use shipyard_batch_api::{
    BatchError, ListOptions, API_VERSION, MAX_TASKS_PER_REQUEST, MAX_TASK_COLLECTION_BYTES,
};

fn av() -> String {
    format!("api-version={API_VERSION}")
}

#[test]
fn every_constructor_names_its_operation_method_path_and_definition() {
    let none = ListOptions::default();
    let pool = PoolAddParameter::new("p1", "standard_d2s_v3");
    let job = JobAddParameter::new("j1", "p1");
    let task = TaskAddParameter::new("t1", "true");
    let resize = PoolResizeParameter::default();
    let patch = JobPatchParameter::default();
    let user = ComputeNodeUser {
        name: "me".into(),
        ssh_public_key: Some("ssh-ed25519 AAAA me@host".into()),
        ..Default::default()
    };
    let cases: Vec<(Request, &str, Method, &str, Option<&str>)> = vec![
        (
            request::add_pool(&pool),
            "Pool_Add",
            Method::Post,
            "/pools",
            Some("PoolAddParameter"),
        ),
        (
            request::get_pool("p1"),
            "Pool_Get",
            Method::Get,
            "/pools/p1",
            None,
        ),
        (
            request::list_pools(&none),
            "Pool_List",
            Method::Get,
            "/pools",
            None,
        ),
        (
            request::delete_pool("p1"),
            "Pool_Delete",
            Method::Delete,
            "/pools/p1",
            None,
        ),
        (
            request::pool_exists("p1"),
            "Pool_Exists",
            Method::Head,
            "/pools/p1",
            None,
        ),
        (
            request::resize_pool("p1", &resize),
            "Pool_Resize",
            Method::Post,
            "/pools/p1/resize",
            Some("PoolResizeParameter"),
        ),
        (
            request::list_nodes("p1", &none),
            "ComputeNode_List",
            Method::Get,
            "/pools/p1/nodes",
            None,
        ),
        (
            request::get_node("p1", "n1"),
            "ComputeNode_Get",
            Method::Get,
            "/pools/p1/nodes/n1",
            None,
        ),
        (
            request::add_node_user("p1", "n1", &user),
            "ComputeNode_AddUser",
            Method::Post,
            "/pools/p1/nodes/n1/users",
            Some("ComputeNodeUser"),
        ),
        (
            request::get_remote_login_settings("p1", "n1"),
            "ComputeNode_GetRemoteLoginSettings",
            Method::Get,
            "/pools/p1/nodes/n1/remoteloginsettings",
            None,
        ),
        (
            request::add_job(&job),
            "Job_Add",
            Method::Post,
            "/jobs",
            Some("JobAddParameter"),
        ),
        (
            request::get_job("j1"),
            "Job_Get",
            Method::Get,
            "/jobs/j1",
            None,
        ),
        (
            request::list_jobs(&none),
            "Job_List",
            Method::Get,
            "/jobs",
            None,
        ),
        (
            request::delete_job("j1"),
            "Job_Delete",
            Method::Delete,
            "/jobs/j1",
            None,
        ),
        (
            request::terminate_job("j1", Some("UserTerminate")),
            "Job_Terminate",
            Method::Post,
            "/jobs/j1/terminate",
            Some("JobTerminateParameter"),
        ),
        (
            request::terminate_job("j1", None),
            "Job_Terminate",
            Method::Post,
            "/jobs/j1/terminate",
            None,
        ),
        (
            request::patch_job("j1", &patch),
            "Job_Patch",
            Method::Patch,
            "/jobs/j1",
            Some("JobPatchParameter"),
        ),
        (
            request::list_preparation_and_release_status("j1", &none),
            "Job_ListPreparationAndReleaseTaskStatus",
            Method::Get,
            "/jobs/j1/jobpreparationandreleasetaskstatus",
            None,
        ),
        (
            request::add_task("j1", &task),
            "Task_Add",
            Method::Post,
            "/jobs/j1/tasks",
            Some("TaskAddParameter"),
        ),
        (
            request::get_task("j1", "t1"),
            "Task_Get",
            Method::Get,
            "/jobs/j1/tasks/t1",
            None,
        ),
        (
            request::list_tasks("j1", &none),
            "Task_List",
            Method::Get,
            "/jobs/j1/tasks",
            None,
        ),
        (
            request::terminate_task("j1", "t1"),
            "Task_Terminate",
            Method::Post,
            "/jobs/j1/tasks/t1/terminate",
            None,
        ),
        (
            request::delete_task("j1", "t1"),
            "Task_Delete",
            Method::Delete,
            "/jobs/j1/tasks/t1",
            None,
        ),
        (
            request::list_subtasks("j1", "t1"),
            "Task_ListSubtasks",
            Method::Get,
            "/jobs/j1/tasks/t1/subtasksinfo",
            None,
        ),
        (
            request::list_task_files("j1", "t1", true, &none),
            "File_ListFromTask",
            Method::Get,
            "/jobs/j1/tasks/t1/files",
            None,
        ),
        (
            request::list_node_files("p1", "n1", false, &none),
            "File_ListFromComputeNode",
            Method::Get,
            "/pools/p1/nodes/n1/files",
            None,
        ),
        (
            request::get_task_file("j1", "t1", "stdout.txt"),
            "File_GetFromTask",
            Method::Get,
            "/jobs/j1/tasks/t1/files/stdout.txt",
            None,
        ),
        (
            request::get_node_file("p1", "n1", "startup/stdout.txt"),
            "File_GetFromComputeNode",
            Method::Get,
            "/pools/p1/nodes/n1/files/startup%2Fstdout.txt",
            None,
        ),
        (
            request::add_task_collection("j1", std::slice::from_ref(&task)).remove(0),
            "Task_AddCollection",
            Method::Post,
            "/jobs/j1/addtaskcollection",
            Some("TaskAddCollectionParameter"),
        ),
    ];
    for (r, operation, method, path, definition) in cases {
        assert_eq!(r.operation, operation);
        assert_eq!((r.method, r.path.as_str()), (method, path), "{operation}");
        assert_eq!(r.definition, definition, "{operation}");
        assert_eq!(r.body.is_some(), definition.is_some(), "{operation}");
        assert_eq!(
            r.query.first(),
            Some(&("api-version".to_owned(), API_VERSION.to_owned())),
            "{operation}"
        );
    }
}

#[test]
fn paths_percent_encode_each_segment() {
    let r = request::get_task_file("job 1", "t#1?x", "wd/out 100%.txt");
    assert_eq!(
        r.path,
        "/jobs/job%201/tasks/t%231%3Fx/files/wd%2Fout%20100%25.txt"
    );
    // The same encoding the `url` crate applies to a path segment (what reaches the wire).
    for s in [
        "a b",
        "x/y",
        "q?#",
        "é",
        "{}<>`\"",
        "a\\b",
        "!$&'()*+,;=:@~",
    ] {
        let mut u = url::Url::parse("http://h/").expect("url");
        u.path_segments_mut()
            .expect("segments")
            .pop_if_empty()
            .push(s);
        assert_eq!(
            request::get_job(s).path,
            u.path().replace("/", "/jobs/"),
            "{s}"
        );
    }
}

#[test]
fn queries_start_with_the_api_version_and_encode_like_a_form() {
    let opts = ListOptions::default()
        .filter("state eq 'completed'")
        .max_results(10);
    let r = request::list_task_files("j1", "t1", true, &opts);
    assert_eq!(
        r.path_and_query(),
        format!(
            "/jobs/j1/tasks/t1/files?{}&%24filter=state+eq+%27completed%27&maxresults=10&recursive=true",
            av()
        )
    );
    assert_eq!(
        request::list_pools(&ListOptions::default()).path_and_query(),
        format!("/pools?{}", av())
    );
    let r = request::list_jobs(&ListOptions::default()).with_query("timeout", "5");
    assert_eq!(r.query_string(), format!("{}&timeout=5", av()));
}

#[test]
fn bodies_are_the_models_json() {
    let patch = JobPatchParameter {
        on_all_tasks_complete: Some(OnAllTasksComplete::TerminateJob),
        ..Default::default()
    };
    let r = request::patch_job("j1", &patch);
    assert_eq!(r.body, Some(json!({"onAllTasksComplete": "terminatejob"})));
    assert_eq!(
        r.body_bytes().as_deref(),
        Some(br#"{"onAllTasksComplete":"terminatejob"}"#.as_slice())
    );
    assert_eq!(request::terminate_job("j1", None).body_bytes(), None);
    let pool = PoolAddParameter::new("p1", "standard_d2s_v3");
    let r = request::add_pool(&pool);
    assert_eq!(
        r.body,
        Some(serde_json::to_value(&pool).expect("pool JSON"))
    );
}

#[test]
fn dry_run_json_and_text_keep_the_cli_shape() {
    let requests = vec![
        request::terminate_job("j1", Some("UserTerminate")),
        request::list_pools(&ListOptions::default()),
    ];
    let json = serde_json::to_value(&requests).expect("serializes");
    assert_eq!(
        json,
        json!([
            {
                "method": "POST",
                "path": format!("/jobs/j1/terminate?{}", av()),
                "definition": "JobTerminateParameter",
                "body": {"terminateReason": "UserTerminate"},
            },
            {
                "method": "GET",
                "path": format!("/pools?{}", av()),
                "definition": "-",
                "body": null,
            },
        ])
    );
    // The keys, in order, are exactly the four the CLI prints.
    let keys: Vec<&String> = json[0].as_object().expect("object").keys().collect();
    assert_eq!(keys, ["method", "path", "definition", "body"]);
    assert_eq!(
        request::render_text(&requests),
        format!(
            "# POST /jobs/j1/terminate?{av} (JobTerminateParameter)\n{{\n  \"terminateReason\": \"UserTerminate\"\n}}\n\
             # GET /pools?{av} (-)\n",
            av = av()
        )
    );
}

fn task_with_len(id: &str, command_len: usize) -> TaskAddParameter {
    TaskAddParameter::new(id, "x".repeat(command_len))
}

fn tasks_in(r: &Request) -> Vec<String> {
    r.body.as_ref().expect("body")["value"]
        .as_array()
        .expect("value array")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect()
}

#[test]
fn task_collections_split_by_count() {
    let tasks: Vec<TaskAddParameter> = (0..250)
        .map(|i| TaskAddParameter::new(format!("t{i}"), "true"))
        .collect();
    let requests = request::add_task_collection("j1", &tasks);
    let sizes: Vec<usize> = requests.iter().map(|r| tasks_in(r).len()).collect();
    assert_eq!(sizes, [MAX_TASKS_PER_REQUEST, MAX_TASKS_PER_REQUEST, 50]);
    let ids: Vec<String> = requests.iter().flat_map(tasks_in).collect();
    let want: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    assert_eq!(ids, want, "every task once, in input order");
    for r in &requests {
        assert_eq!(
            r.path_and_query(),
            format!("/jobs/j1/addtaskcollection?{}", av())
        );
    }
    assert!(request::add_task_collection("j1", &[]).is_empty());
}

#[test]
fn task_collections_split_by_size() {
    // Each task is a little over 300 kB: three fit in one body, four do not.
    let tasks: Vec<TaskAddParameter> = (0..7)
        .map(|i| task_with_len(&format!("big{i}"), 300_000))
        .collect();
    let requests = request::add_task_collection("j1", &tasks);
    let counts: Vec<usize> = requests.iter().map(|r| tasks_in(r).len()).collect();
    assert_eq!(counts, [3, 3, 1]);
    for r in &requests {
        let len = r.body_bytes().expect("body").len();
        assert!(len <= MAX_TASK_COLLECTION_BYTES, "{len} bytes");
    }
    // The limit is inclusive: a body of exactly the limit fits, one byte more does not.
    let one = serde_json::to_vec(&json!({"value": [tasks[0].clone()]}))
        .expect("json")
        .len();
    let two = [tasks[0].clone(), tasks[1].clone()];
    let exact = request::task_collection_chunks(&two, 2 * one - 11);
    assert_eq!(
        exact.chunks,
        [vec![0, 1]],
        "`{{\"value\":[a,b]}}` is 2*one-11 bytes"
    );
    let body = request::task_collection_request("j1", &two).body_bytes();
    assert_eq!(body.map(|b| b.len()), Some(2 * one - 11));
    let over = request::task_collection_chunks(&two, 2 * one - 12);
    assert_eq!(over.chunks, [vec![0], vec![1]]);
}

#[test]
fn a_task_too_large_alone_is_rejected_and_sent_nowhere() {
    let tasks = vec![
        TaskAddParameter::new("small-a", "true"),
        task_with_len("huge", MAX_TASK_COLLECTION_BYTES),
        TaskAddParameter::new("small-b", "true"),
    ];
    let plan = request::task_collection_chunks(&tasks, MAX_TASK_COLLECTION_BYTES);
    assert_eq!(plan.chunks, [vec![0, 2]]);
    let requests = request::add_task_collection("j1", &tasks);
    assert_eq!(requests.len(), 1);
    assert_eq!(tasks_in(&requests[0]), ["small-a", "small-b"]);
    assert_eq!(plan.rejected.len(), 1);
    let (index, err) = &plan.rejected[0];
    assert_eq!(*index, 1);
    assert!(
        matches!(err, BatchError::TaskTooLarge { task_id, limit, .. }
            if task_id == "huge" && *limit == MAX_TASK_COLLECTION_BYTES),
        "{err}"
    );
}

#[test]
fn requests_compare_by_value() {
    let a: Value = serde_json::to_value(request::get_pool("p")).expect("json");
    assert_eq!(a["path"], format!("/pools/p?{}", av()));
    assert_ne!(request::get_pool("p"), request::get_pool("q"));
}
