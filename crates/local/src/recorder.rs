//! Write-behind recording: task runners hand records to a background writer that coalesces
//! them (latest record per job/task wins) and commits each batch in one store transaction, so
//! a slow disk never holds up the tasks. A batch that cannot be committed is kept and retried
//! (with what arrives meanwhile); after [`GIVE_UP`] of failures the run is failed loudly
//! ([`Recorder::flush`] returns the error). No state change is dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::error::{LocalError, Result};
use crate::store::{JobRecord, Store, TaskRecord};

/// How long a batch may keep failing before the run is failed.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(120);

enum Msg {
    Job(Box<JobRecord>),
    Task(Box<TaskRecord>),
    Flush(oneshot::Sender<()>),
}

/// Handle of the background writer. Cloning shares the writer.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    tx: mpsc::UnboundedSender<Msg>,
    failed: Arc<Mutex<Option<(std::path::PathBuf, String)>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

#[derive(Default)]
struct Pending {
    jobs: BTreeMap<String, JobRecord>,
    tasks: BTreeMap<(String, String), TaskRecord>,
    waiters: Vec<oneshot::Sender<()>>,
}

impl Pending {
    fn add(&mut self, m: Msg) {
        match m {
            Msg::Job(j) => {
                self.jobs.insert(j.id.clone(), *j);
            }
            Msg::Task(t) => {
                self.tasks.insert((t.job_id.clone(), t.id.clone()), *t);
            }
            Msg::Flush(w) => self.waiters.push(w),
        }
    }

    fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.tasks.is_empty()
    }
}

impl Recorder {
    /// Starts the writer for `store` on the current runtime.
    pub(crate) fn start(store: Store) -> Self {
        Self::start_with(store, GIVE_UP)
    }

    /// As [`Recorder::start`], failing the run after `give_up` of failed commits.
    pub(crate) fn start_with(store: Store, give_up: Duration) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let failed: Arc<Mutex<Option<(std::path::PathBuf, String)>>> = Arc::new(Mutex::new(None));
        let failed_w = failed.clone();
        tokio::spawn(async move {
            let mut p = Pending::default();
            // Since when the oldest uncommitted change has been failing.
            let mut failing_since: Option<Instant> = None;
            loop {
                if p.is_empty() && p.waiters.is_empty() {
                    match rx.recv().await {
                        Some(m) => p.add(m),
                        None => break,
                    }
                }
                while let Ok(m) = rx.try_recv() {
                    p.add(m);
                }
                let jobs: Vec<JobRecord> = p.jobs.values().cloned().collect();
                let tasks: Vec<TaskRecord> = p.tasks.values().cloned().collect();
                let s = store.clone();
                let r = tokio::task::spawn_blocking(move || s.put_batch(&jobs, &tasks))
                    .await
                    .unwrap_or_else(|e| {
                        Err(LocalError::Store {
                            path: store.path().to_path_buf(),
                            reason: format!("state writer failed: {e}"),
                        })
                    });
                match r {
                    Ok(()) => {
                        // Only what was committed leaves; newer records stay pending.
                        p.jobs.clear();
                        p.tasks.clear();
                        failing_since = None;
                        for w in p.waiters.drain(..) {
                            let _ = w.send(());
                        }
                    }
                    Err(e) => {
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= give_up {
                            tracing::error!(error = %e, "state not recorded; failing the run");
                            if let Ok(mut f) = failed_w.lock() {
                                f.get_or_insert((store.path().to_path_buf(), e.to_string()));
                            }
                            for w in p.waiters.drain(..) {
                                let _ = w.send(());
                            }
                            // Keep the records: a later commit may still succeed.
                        } else {
                            tracing::warn!(error = %e, "could not record state yet; retrying");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Recorder { tx, failed }
    }

    pub(crate) fn job(&self, j: &JobRecord) {
        let _ = self.tx.send(Msg::Job(Box::new(j.clone())));
    }

    pub(crate) fn task(&self, t: &TaskRecord) {
        let _ = self.tx.send(Msg::Task(Box::new(t.clone())));
    }

    /// Waits until everything sent so far is committed; fails when the writer gave up on
    /// some change (the run must then fail: its records are not what happened).
    pub(crate) async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
        match self.failed.lock().ok().and_then(|f| f.clone()) {
            Some((path, reason)) => Err(LocalError::Store {
                path,
                reason: format!("a state change could not be recorded: {reason}"),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{TaskResult, TaskState};

    fn rec(id: &str) -> TaskRecord {
        TaskRecord {
            job_id: "j".into(),
            id: id.into(),
            state: TaskState::Completed,
            result: Some(TaskResult::Success),
            exit_code: Some(0),
            failure: None,
            start_time: None,
            end_time: None,
            retry_count: 0,
            nodes: vec![],
            task_dir: "/x".into(),
        }
    }

    /// Holds the database open (as another process would) for `d`.
    fn hold(path: &std::path::Path, d: Duration) -> std::thread::JoinHandle<()> {
        let db = redb::Database::create(path).expect("open");
        std::thread::spawn(move || {
            std::thread::sleep(d);
            drop(db);
        })
    }

    #[tokio::test]
    async fn a_busy_store_delays_a_change_but_never_drops_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let store = Store::new(&path).busy_timeout(Duration::from_millis(100));
        store.put_task(&rec("first")).expect("first write");
        // Busy for 10 busy timeouts: each commit attempt fails, the change must survive.
        let holder = hold(&path, Duration::from_millis(1000));
        let r = Recorder::start(store.clone());
        r.task(&rec("a"));
        r.flush().await.expect("committed once the store is free");
        holder.join().expect("holder");
        let ids: Vec<String> = store
            .list_tasks("j")
            .expect("list")
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["a", "first"]);
    }

    #[tokio::test]
    async fn a_store_that_stays_busy_fails_the_run_loudly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let store = Store::new(&path).busy_timeout(Duration::from_millis(50));
        store.put_task(&rec("first")).expect("first write");
        let holder = hold(&path, Duration::from_millis(1500));
        let r = Recorder::start_with(store.clone(), Duration::from_millis(300));
        r.task(&rec("a"));
        let e = r
            .flush()
            .await
            .expect_err("the change could not be recorded");
        assert!(e.to_string().contains("s.redb"), "{e}");
        holder.join().expect("holder");
        // Still kept and committed by the next attempt once the store is free.
        r.task(&rec("b"));
        let _ = r.flush().await;
        let n = store.list_tasks("j").expect("list").len();
        assert_eq!(n, 3, "a, b and first");
    }

    #[tokio::test]
    async fn readers_in_a_loop_do_not_starve_a_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let store = Store::new(&path).busy_timeout(Duration::from_millis(500));
        store.put_task(&rec("first")).expect("first write");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Another process's reader, reading back to back with its own redb handle and, like
        // every `Store` reader, standing back while a writer waits.
        let reader = {
            let stop = stop.clone();
            let path = path.clone();
            let theirs = Store::new(&path);
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if theirs.writer_waiting() {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    if let Ok(db) = redb::Database::create(&path) {
                        let _ = db.begin_read();
                        std::thread::sleep(Duration::from_millis(3));
                        drop(db);
                        reads += 1;
                    }
                }
                reads
            })
        };
        for i in 0..20 {
            store
                .put_task(&rec(&format!("w{i}")))
                .expect("a write within the busy timeout");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().expect("reader") > 0);
    }
}
