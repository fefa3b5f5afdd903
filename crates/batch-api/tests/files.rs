//! File listing and streamed downloads, checked byte for byte.

mod common;

use futures::TryStreamExt as _;
use shipyard_batch_api::{BatchClient, ByteRange, ListOptions};
use shipyard_batch_spec::server::{Fault, FaultRule, TestServer};

use common::*;

fn payload(n: usize) -> Vec<u8> {
    // Deterministic, non-repeating-looking bytes.
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// A server with pool `p`, job `j` and task `t`, and a client for it.
async fn job_with_task() -> (TestServer, BatchClient) {
    let server = server().await;
    let c = client(&server);
    pool_and_job(&c, "p", "j").await;
    c.add_task("j", &task("t")).await.expect("task");
    (server, c)
}

#[tokio::test]
async fn task_file_streams_to_disk_byte_for_byte() {
    let (server, c) = job_with_task().await;
    let data = payload(5 * 1024 * 1024 + 17);
    assert!(server.put_task_file("j", "t", "stdout.txt", data.clone()));
    assert!(server.put_task_file("j", "t", "wd/out dir/result.bin", b"nested".to_vec()));

    let files: Vec<_> = c
        .list_task_files("j", "t", true, &ListOptions::default())
        .try_collect()
        .await
        .expect("list files");
    let names: Vec<_> = files.iter().filter_map(|f| f.name.clone()).collect();
    assert_eq!(names, ["stdout.txt", "wd/out dir/result.bin"]);
    assert_eq!(
        files[0].properties.as_ref().map(|p| p.content_length),
        Some(data.len() as i64)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("stdout.txt");
    let got = c
        .download_task_file("j", "t", "stdout.txt", &dest, None)
        .await
        .expect("download");
    assert_eq!(got.bytes, data.len() as u64);
    assert_eq!(std::fs::read(&dest).expect("read"), data);

    let nested = dir.path().join("nested");
    c.download_task_file("j", "t", "wd/out dir/result.bin", &nested, None)
        .await
        .expect("nested path");
    assert_eq!(std::fs::read(&nested).expect("read"), b"nested");

    let part = dir.path().join("part");
    let got = c
        .download_task_file(
            "j",
            "t",
            "stdout.txt",
            &part,
            Some(ByteRange {
                start: 1000,
                end: Some(1999),
            }),
        )
        .await
        .expect("range");
    assert_eq!(got.bytes, 1000);
    assert_eq!(std::fs::read(&part).expect("read"), &data[1000..2000]);

    let missing = c
        .download_task_file("j", "t", "nope.txt", &part, None)
        .await
        .expect_err("404");
    assert_eq!(missing.code(), Some("FileNotFound"));
}

#[tokio::test]
async fn node_file_download_survives_a_dropped_connection() {
    let server = server().await;
    let c = client(&server);
    c.add_pool(&pool("p", 1)).await.expect("pool");
    let nodes = c
        .wait_for_nodes_idle(
            "p",
            1,
            shipyard_batch_api::WaitOptions::new(
                std::time::Duration::from_secs(5),
                std::time::Duration::from_millis(20),
            ),
        )
        .await
        .expect("node");
    let node = nodes[0].id.clone().expect("node id");
    let data = payload(1024 * 1024);
    assert!(server.put_node_file("p", &node, "startup/stdout.txt", data.clone()));
    let listed: Vec<_> = c
        .list_node_files("p", &node, true, &ListOptions::default())
        .try_collect()
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    server.inject(FaultRule::new(Fault::DropConnection).operation("File_GetFromComputeNode"));
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("out");
    c.download_node_file("p", &node, "startup/stdout.txt", &dest, None)
        .await
        .expect("download");
    assert_eq!(std::fs::read(&dest).expect("read"), data);
}

#[tokio::test]
async fn interrupted_download_resumes_with_ocp_range() {
    let (server, c) = job_with_task().await;
    let data = payload(2 * 1024 * 1024 + 5);
    assert!(server.put_task_file("j", "t", "out.bin", data.clone()));
    server.inject(
        FaultRule::new(Fault::TruncatedReply { bytes: 700_000 }).operation("File_GetFromTask"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("out.bin");
    let got = c
        .download_task_file("j", "t", "out.bin", &dest, None)
        .await
        .expect("download");
    assert_eq!(got.requests, 2, "resumed once");
    assert_eq!(got.bytes, data.len() as u64);
    assert_eq!(std::fs::read(&dest).expect("read"), data);
    let log = server.requests();
    let gets: Vec<_> = log
        .iter()
        .filter(|r| r.operation.as_deref() == Some("File_GetFromTask"))
        .collect();
    assert_eq!(gets.len(), 2);
}

#[tokio::test]
async fn resume_answered_with_the_whole_file_starts_over() {
    let (server, c) = job_with_task().await;
    let data = payload(2 * 1024 * 1024 + 3);
    assert!(server.put_task_file("j", "t", "out.bin", data.clone()));
    // First GET cut short mid-body (a cut this far in reaches the client after the headers),
    // then the resume's ocp-range is ignored (200, whole file).
    server.inject(
        FaultRule::new(Fault::TruncatedReply { bytes: 700_000 }).operation("File_GetFromTask"),
    );
    server.inject(FaultRule::new(Fault::IgnoreRange).operation("File_GetFromTask"));
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("out.bin");
    let got = c
        .download_task_file("j", "t", "out.bin", &dest, None)
        .await
        .expect("download");
    let log: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.operation.as_deref() == Some("File_GetFromTask"))
        .map(|r| (r.status, r.fault))
        .collect();
    assert_eq!(got.requests, 2, "{log:?}");
    assert_eq!(got.bytes, data.len() as u64);
    assert_eq!(
        std::fs::read(&dest).expect("read"),
        data,
        "not appended twice"
    );
}

#[tokio::test]
async fn caller_range_answered_with_the_whole_file_is_an_error() {
    let (server, c) = job_with_task().await;
    assert!(server.put_task_file("j", "t", "out.bin", payload(4096)));
    server.inject(FaultRule::new(Fault::IgnoreRange).operation("File_GetFromTask"));
    let dir = tempfile::tempdir().expect("tempdir");
    let range = ByteRange {
        start: 100,
        end: Some(199),
    };
    let err = c
        .download_task_file("j", "t", "out.bin", &dir.path().join("o"), Some(range))
        .await
        .expect_err("the whole file is not the range asked for");
    assert!(err.to_string().contains("ocp-range"), "{err}");
    // Without the fault the same range is served exactly.
    let got = c
        .download_task_file("j", "t", "out.bin", &dir.path().join("o"), Some(range))
        .await
        .expect("ranged download");
    assert_eq!(got.bytes, 100);
}
