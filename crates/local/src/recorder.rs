//! Write-behind recording: task runners hand records to a background writer that coalesces
//! them (latest record per job/task wins) and commits each batch in one store transaction, so
//! a slow disk never holds up the tasks.

use std::collections::BTreeMap;

use tokio::sync::{mpsc, oneshot};

use crate::store::{JobRecord, Store, TaskRecord};

enum Msg {
    Job(Box<JobRecord>),
    Task(Box<TaskRecord>),
    Flush(oneshot::Sender<()>),
}

/// Handle of the background writer. Cloning shares the writer.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    tx: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Recorder {
    /// Starts the writer for `store` on the current runtime.
    pub(crate) fn start(store: Store) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut jobs: BTreeMap<String, JobRecord> = BTreeMap::new();
                let mut tasks: BTreeMap<(String, String), TaskRecord> = BTreeMap::new();
                let mut waiters = Vec::new();
                let mut add = |m: Msg| match m {
                    Msg::Job(j) => {
                        jobs.insert(j.id.clone(), *j);
                    }
                    Msg::Task(t) => {
                        tasks.insert((t.job_id.clone(), t.id.clone()), *t);
                    }
                    Msg::Flush(w) => waiters.push(w),
                };
                add(first);
                while let Ok(m) = rx.try_recv() {
                    add(m);
                }
                let store = store.clone();
                let jobs: Vec<JobRecord> = jobs.into_values().collect();
                let tasks: Vec<TaskRecord> = tasks.into_values().collect();
                let r = tokio::task::spawn_blocking(move || store.put_batch(&jobs, &tasks)).await;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not record state"),
                    Err(e) => tracing::warn!(error = %e, "state writer failed"),
                }
                for w in waiters {
                    let _ = w.send(());
                }
            }
        });
        Recorder { tx }
    }

    pub(crate) fn job(&self, j: &JobRecord) {
        let _ = self.tx.send(Msg::Job(Box::new(j.clone())));
    }

    pub(crate) fn task(&self, t: &TaskRecord) {
        let _ = self.tx.send(Msg::Task(Box::new(t.clone())));
    }

    /// Waits until everything sent so far is committed.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
