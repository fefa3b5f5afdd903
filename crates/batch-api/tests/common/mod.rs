//! Shared helpers for the client tests against the strict local server.
#![allow(dead_code)]

use std::time::Duration;

use shipyard_batch_api::models::{
    EnvironmentSetting, ImageReference, JobAddParameter, PoolAddParameter, ResourceFile,
    TaskAddParameter, VirtualMachineConfiguration,
};
use shipyard_batch_api::{BatchClient, ClientOptions, RetryPolicy, SharedKeyCredential};
use shipyard_batch_spec::server::{ServerConfig, TestServer};

/// Client options with short backoffs so fault tests run fast.
pub fn fast_options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(10),
        retry: RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_elapsed: Duration::from_secs(30),
        },
        ..ClientOptions::default()
    }
}

pub async fn server() -> TestServer {
    server_with(ServerConfig::default()).await
}

pub async fn server_with(config: ServerConfig) -> TestServer {
    TestServer::start(config).await.expect("server starts")
}

pub fn client(server: &TestServer) -> BatchClient {
    client_with(server, fast_options())
}

pub fn client_with(server: &TestServer, options: ClientOptions) -> BatchClient {
    let cred = SharedKeyCredential::new(server.account(), server.key()).expect("key");
    BatchClient::with_options(&server.url(), cred, options).expect("client")
}

pub fn pool(id: &str, nodes: i32) -> PoolAddParameter {
    let vm = VirtualMachineConfiguration::new(
        ImageReference::marketplace(
            "canonical",
            "0001-com-ubuntu-server-jammy",
            "22_04-lts",
            "latest",
        ),
        "batch.node.ubuntu 22.04",
    );
    PoolAddParameter {
        virtual_machine_configuration: Some(vm),
        target_dedicated_nodes: Some(nodes),
        enable_inter_node_communication: Some(true),
        ..PoolAddParameter::new(id, "standard_d2s_v3")
    }
}

pub fn job(id: &str, pool_id: &str) -> JobAddParameter {
    JobAddParameter::new(id, pool_id)
}

/// A task with a resource file and environment settings (the benchmark's shape).
pub fn task(id: &str) -> TaskAddParameter {
    TaskAddParameter {
        resource_files: Some(vec![ResourceFile {
            http_url: Some(format!(
                "https://example.blob.core.windows.net/inputs/{id}.dat"
            )),
            file_path: Some(format!("inputs/{id}.dat")),
            ..ResourceFile::default()
        }]),
        environment_settings: Some(vec![
            EnvironmentSetting::new("TASK_NAME", id),
            EnvironmentSetting::new("OMP_NUM_THREADS", "2"),
        ]),
        ..TaskAddParameter::new(id, format!("/bin/sh -c 'echo {id}'"))
    }
}

pub async fn pool_and_job(client: &BatchClient, pool_id: &str, job_id: &str) {
    client.add_pool(&pool(pool_id, 2)).await.expect("add pool");
    client
        .add_job(&job(job_id, pool_id))
        .await
        .expect("add job");
}
