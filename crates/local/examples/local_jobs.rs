//! Lists what the local backend recorded, from a fresh process (no Docker needed).
//!
//! ```text
//! cargo run -p shipyard-local --example local_jobs -- --state-dir DIR [--job ID]
//! ```
//!
//! Without `--job`: one line per job, `job <id> <state> <task count> <terminate reason>`.
//! With `--job`: one line per task,
//! `task <id> <state> <result> <exit code> <retries> <start unix ms> <end unix ms>`.

use shipyard_local::{LocalOptions, TaskRecord};

fn ms(t: Option<time::OffsetDateTime>) -> String {
    t.map_or("-".into(), |t| {
        (t.unix_timestamp_nanos() / 1_000_000).to_string()
    })
}

fn line(t: &TaskRecord) -> String {
    format!(
        "task {} {:?} {} {} {} {} {}",
        t.id,
        t.state,
        t.result.map_or("-".into(), |r| format!("{r:?}")),
        t.exit_code.map_or("-".into(), |c| c.to_string()),
        t.retry_count,
        ms(t.start_time),
        ms(t.end_time)
    )
}

fn main() {
    let mut state = None;
    let mut job = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--state-dir" => state = it.next(),
            "--job" => job = it.next(),
            other => {
                eprintln!("unknown option `{other}`");
                std::process::exit(2);
            }
        }
    }
    let mut opts = LocalOptions::default();
    if let Some(s) = state {
        opts = opts.state_dir(s);
    }
    let store = opts.store();
    let result = match job {
        Some(j) => store
            .list_tasks(&j)
            .map(|ts| ts.iter().map(line).collect::<Vec<_>>()),
        None => store.list_jobs().map(|js| {
            js.iter()
                .map(|j| {
                    format!(
                        "job {} {:?} {} {}",
                        j.id,
                        j.state,
                        j.task_count,
                        j.terminate_reason.as_deref().unwrap_or("-")
                    )
                })
                .collect()
        }),
    };
    match result {
        Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
