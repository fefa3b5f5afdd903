//! Benchmark (not a test): submit N tasks with `add_task_collection` to the strict local server.
//!
//! Driven by `scripts/bench-batch-api.sh`, which runs this binary twice, in two processes, so
//! that the client's peak RSS is its own:
//!
//! - `submit --serve [--extra-api-version V]…` starts the strict server, prints
//!   `{"url":…,"account":…,"key":…}` on one line, then answers stdin commands:
//!   `count <jobId>` prints the number of tasks stored in the job, `quit` (or EOF) exits.
//! - `submit --client --url U --account A --job J [--tasks N] [--concurrency C]` (key in
//!   `BENCH_BATCH_KEY`) creates pool `bench-pool` (if missing) and job J, builds N tasks (each
//!   with a resource file and environment settings), times `add_task_collection` and prints
//!   `{"client":"rust","tasks":N,"seconds":…,"tasks_per_sec":…,"peak_rss_kb":…}`.

use std::time::Instant;

use shipyard_batch_api::models::{
    EnvironmentSetting, ImageReference, JobAddParameter, PoolAddParameter, ResourceFile,
    TaskAddParameter, VirtualMachineConfiguration,
};
use shipyard_batch_api::{BatchClient, ClientOptions, SharedKeyCredential};
use shipyard_batch_spec::server::{ServerConfig, TestServer};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The benchmark's task shape (same as the Python script's).
fn bench_task(i: usize) -> TaskAddParameter {
    let id = format!("task-{i:05}");
    TaskAddParameter {
        resource_files: Some(vec![ResourceFile {
            http_url: Some(format!(
                "https://benchstore.blob.core.windows.net/inputs/input-{i:05}.dat"
            )),
            file_path: Some(format!("inputs/input-{i:05}.dat")),
            ..ResourceFile::default()
        }]),
        environment_settings: Some(vec![
            EnvironmentSetting::new("TASK_INDEX", i.to_string()),
            EnvironmentSetting::new("OMP_NUM_THREADS", "2"),
        ]),
        ..TaskAddParameter::new(
            id,
            format!("/bin/bash -c 'sha256sum inputs/input-{i:05}.dat'"),
        )
    }
}

async fn serve(args: &[String]) -> anyhow::Result<()> {
    let mut extra = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--extra-api-version" {
            if let Some(v) = args.get(i + 1) {
                extra.push(v.clone());
            }
            i += 1;
        }
        i += 1;
    }
    let server = TestServer::start(ServerConfig {
        extra_api_versions: extra,
        log_requests: false,
        ..ServerConfig::default()
    })
    .await?;
    println!(
        "{}",
        serde_json::json!({"url": server.url(), "account": server.account(), "key": server.key()})
    );
    let handle = server.handle();
    // Commands on stdin (blocking reads on a worker thread; the server keeps running).
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead as _;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let line = line.trim();
            if let Some(job) = line.strip_prefix("count ") {
                println!("{}", handle.task_count(job.trim()));
            } else if line == "quit" {
                break;
            }
        }
    })
    .await?;
    drop(server);
    Ok(())
}

async fn client(args: &[String]) -> anyhow::Result<()> {
    let url = arg(args, "--url").ok_or_else(|| anyhow::anyhow!("--url missing"))?;
    let account = arg(args, "--account").ok_or_else(|| anyhow::anyhow!("--account missing"))?;
    let job_id = arg(args, "--job").unwrap_or_else(|| "bench-rust".into());
    let n: usize = arg(args, "--tasks")
        .unwrap_or_else(|| "10000".into())
        .parse()?;
    let key = std::env::var("BENCH_BATCH_KEY")
        .map_err(|_| anyhow::anyhow!("BENCH_BATCH_KEY is not set"))?;
    let mut options = ClientOptions::default();
    if let Some(c) = arg(args, "--concurrency") {
        options.task_collection_concurrency = c.parse()?;
    }
    let concurrency = options.task_collection_concurrency;
    let client =
        BatchClient::with_options(&url, SharedKeyCredential::new(account, &key)?, options)?;

    if !client.pool_exists("bench-pool").await? {
        let pool = PoolAddParameter {
            virtual_machine_configuration: Some(VirtualMachineConfiguration::new(
                ImageReference::marketplace(
                    "canonical",
                    "0001-com-ubuntu-server-jammy",
                    "22_04-lts",
                    "latest",
                ),
                "batch.node.ubuntu 22.04",
            )),
            target_dedicated_nodes: Some(2),
            ..PoolAddParameter::new("bench-pool", "standard_d2s_v3")
        };
        client.add_pool(&pool).await?;
    }
    client
        .add_job(&JobAddParameter::new(job_id.clone(), "bench-pool"))
        .await?;

    let tasks: Vec<TaskAddParameter> = (0..n).map(bench_task).collect();
    let started = Instant::now();
    let report = client.add_task_collection(&job_id, tasks).await;
    let secs = started.elapsed().as_secs_f64();
    if let Some((id, e)) = report.failures().next() {
        anyhow::bail!(
            "{} of {n} tasks failed; first: {id}: {e}",
            report.failures().count()
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "client": "rust",
            "tasks": n,
            "seconds": secs,
            "tasks_per_sec": n as f64 / secs,
            "peak_rss_kb": peak_rss_kb(),
            "requests": report.requests,
            "concurrency": concurrency,
        })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; without a mode there is nothing to do.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.iter().any(|a| a == "--serve") {
        rt.block_on(serve(&args))
    } else if args.iter().any(|a| a == "--client") {
        rt.block_on(client(&args))
    } else {
        eprintln!("usage: submit --serve | --client …  (run scripts/bench-batch-api.sh)");
        Ok(())
    }
}
