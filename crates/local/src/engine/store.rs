//! The engine's state store: one redb file (`engine.redb` in the state directory) holding every
//! pool, node, job and task record as JSON, written at every state transition.
//!
//! Writes use redb's eventual durability: a commit is atomic and survives the engine process
//! being killed (the data is in the kernel's page cache); only a machine crash can lose the last
//! transitions.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{EngineError, Result};

const RECORDS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("engine_records");

/// The file name of the store inside the state directory.
pub const ENGINE_STORE_FILE: &str = "engine.redb";

pub(crate) struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    pub(crate) fn open(dir: &Path) -> Result<Store> {
        let path = dir.join(ENGINE_STORE_FILE);
        let db = Database::create(&path).map_err(|e| err(&path, "opening", e))?;
        let store = Store { db, path };
        let tx = store
            .db
            .begin_write()
            .map_err(|e| err(&store.path, "writing", e))?;
        tx.open_table(RECORDS)
            .map_err(|e| err(&store.path, "creating table", e))?;
        tx.commit().map_err(|e| err(&store.path, "committing", e))?;
        Ok(store)
    }

    /// Writes (or with `None`, deletes) records in one transaction.
    pub(crate) fn write(&self, items: &[(String, Option<Vec<u8>>)]) -> Result<()> {
        let mut tx = self
            .db
            .begin_write()
            .map_err(|e| err(&self.path, "writing", e))?;
        tx.set_durability(Durability::Eventual);
        {
            let mut t = tx
                .open_table(RECORDS)
                .map_err(|e| err(&self.path, "opening table", e))?;
            for (key, value) in items {
                match value {
                    Some(v) => {
                        t.insert(key.as_str(), v.as_slice())
                            .map_err(|e| err(&self.path, "inserting", e))?;
                    }
                    None => {
                        t.remove(key.as_str())
                            .map_err(|e| err(&self.path, "removing", e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| err(&self.path, "committing", e))
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
