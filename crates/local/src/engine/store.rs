//! The engine's state store: one redb file (`engine.redb` in the state directory) holding every
//! pool, node, job and task record as JSON, written at every state transition.
//!
//! Writes use redb's eventual durability: a commit is atomic and survives the engine process
//! being killed (the data is in the kernel's page cache); only a machine crash can lose the last
//! transitions.
//!
//! Writes are group-committed: [`Store::write`] queues the records (in the order of the state
//! transitions, under the engine's state lock) and returns; one writer thread commits whatever
//! is queued in one transaction, so a commit (several milliseconds here) is paid once per batch,
//! not once per transition, and never under the state lock. The store always holds the state
//! as of some moment (a prefix of the transitions). A process killed right after a transition
//! can lose the last transitions not yet committed (the recovery handles that state like any
//! other); API calls that acknowledge a change wait for its commit first ([`Store::durable`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use redb::{Database, Durability, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{EngineError, Result};

const RECORDS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("engine_records");

/// The file name of the store inside the state directory.
pub const ENGINE_STORE_FILE: &str = "engine.redb";

/// How long the writer waits after the first queued record for more, before committing.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

type Batch = (u64, Vec<(String, Option<Vec<u8>>)>);

pub(crate) struct Store {
    db: Arc<Database>,
    path: PathBuf,
    /// To the writer thread (`None` once closed).
    queue: Mutex<Option<mpsc::Sender<Batch>>>,
    /// The number of the last queued batch.
    queued: AtomicU64,
    /// The number of the last committed batch.
    committed: tokio::sync::watch::Receiver<u64>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Store {
    pub(crate) fn open(dir: &Path) -> Result<Store> {
        let path = dir.join(ENGINE_STORE_FILE);
        let db = Database::create(&path).map_err(|e| err(&path, "opening", e))?;
        let tx = db.begin_write().map_err(|e| err(&path, "writing", e))?;
        tx.open_table(RECORDS)
            .map_err(|e| err(&path, "creating table", e))?;
        tx.commit().map_err(|e| err(&path, "committing", e))?;
        let db = Arc::new(db);
        let (send, recv) = mpsc::channel::<Batch>();
        let (done, committed) = tokio::sync::watch::channel(0u64);
        let writer = {
            let (db, file) = (db.clone(), path.clone());
            std::thread::Builder::new()
                .name("engine-store".into())
                .spawn(move || write_loop(&db, &file, &recv, &done))
                .map_err(|e| err(&path, "starting the writer", e))?
        };
        Ok(Store {
            db,
            path,
            queue: Mutex::new(Some(send)),
            queued: AtomicU64::new(0),
            committed,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Queues records to write (or with `None`, delete), committed in order with others.
    pub(crate) fn write(&self, items: &[(String, Option<Vec<u8>>)]) -> Result<()> {
        let q = self
            .queue
            .lock()
            .map_err(|_| err(&self.path, "queueing", "poisoned lock"))?;
        let Some(q) = q.as_ref() else {
            return Err(err(&self.path, "queueing", "the store is closed"));
        };
        let n = self.queued.fetch_add(1, Ordering::SeqCst) + 1;
        q.send((n, items.to_vec()))
            .map_err(|_| err(&self.path, "queueing", "the writer has stopped"))
    }

    /// Waits until everything queued so far is committed.
    pub(crate) async fn durable(&self) {
        let n = self.queued.load(Ordering::SeqCst);
        let mut c = self.committed.clone();
        let _ = c.wait_for(|&done| done >= n).await;
    }

    /// Commits what is queued and stops the writer.
    pub(crate) fn close(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.take();
        }
        if let Some(h) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
    }

    /// Every record whose key starts with `prefix`, decoded.
    pub(crate) fn load<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| err(&self.path, "reading", e))?;
        let t = tx
            .open_table(RECORDS)
            .map_err(|e| err(&self.path, "opening table", e))?;
        let mut out = Vec::new();
        for item in t
            .range(prefix..)
            .map_err(|e| err(&self.path, "reading", e))?
        {
            let (k, v) = item.map_err(|e| err(&self.path, "reading", e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            let rec = serde_json::from_slice(v.value())
                .map_err(|e| err(&self.path, "decoding a record", e))?;
            out.push(rec);
        }
        Ok(out)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: each round takes every queued batch (the newest value of a key wins),
/// commits them in one transaction and publishes the last batch number.
fn write_loop(
    db: &Database,
    path: &Path,
    recv: &mpsc::Receiver<Batch>,
    done: &tokio::sync::watch::Sender<u64>,
) {
    while let Ok(first) = recv.recv() {
        // Let the transitions of the moment gather: one commit for all of them.
        std::thread::sleep(GATHER);
        let mut last = first.0;
        let mut items: std::collections::BTreeMap<String, Option<Vec<u8>>> =
            first.1.into_iter().collect();
        while let Ok((n, more)) = recv.try_recv() {
            last = n;
            items.extend(more);
        }
        if let Err(e) = commit(db, path, &items) {
            tracing::warn!(error = %e, records = items.len(), "engine store commit failed");
        }
        done.send_replace(last);
    }
}

fn commit(
    db: &Database,
    path: &Path,
    items: &std::collections::BTreeMap<String, Option<Vec<u8>>>,
) -> Result<()> {
    let mut tx = db.begin_write().map_err(|e| err(path, "writing", e))?;
    tx.set_durability(Durability::Eventual);
    {
        let mut t = tx
            .open_table(RECORDS)
            .map_err(|e| err(path, "opening table", e))?;
        for (key, value) in items {
            match value {
                Some(v) => {
                    t.insert(key.as_str(), v.as_slice())
                        .map_err(|e| err(path, "inserting", e))?;
                }
                None => {
                    t.remove(key.as_str())
                        .map_err(|e| err(path, "removing", e))?;
                }
            }
        }
    }
    tx.commit().map_err(|e| err(path, "committing", e))
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing plain model structs into a Vec cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn err(path: &Path, context: &'static str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Store {
        path: path.to_path_buf(),
        context,
        message: e.to_string(),
    }
}
