//! Properties that exist only in api-version `2025-06-01.21.0`, kept beside the typed models.
//!
//! Request bodies are validated against the spec of their api-version and then deserialized
//! into the 2024-07-01 models the backends speak. A 2025 body can carry properties those
//! models do not have (`taskSchedulingPolicy.jobDefaultOrder`,
//! `networkConfiguration.publicIPAddressConfiguration.ipFamilies`,
//! `virtualMachineConfiguration.securityProfile.proxyAgentSettings`,
//! `…diskEncryptionConfiguration.customerManagedKey`, `…osDisk.managedDisk.diskEncryptionSet`,
//! `…dataDisks[].managedDisk`, on pools and on auto-pool specifications of jobs). Instead of
//! losing them, the server finds them (a strict validation of the body against the 2024
//! definition reports each as an unknown property), stores them as a sparse JSON tree per
//! object, and merges them back into GET and list answers under api-version 2025-06-01.
//!
//! They have no effect on how the work runs locally, as their 2024 siblings
//! (`publicIPAddressConfiguration`, `securityProfile`, `diskEncryptionConfiguration`, …) have
//! none; `jobDefaultOrder` is what the local engine does anyway (jobs of a pool are scheduled
//! oldest first, which is `creationTime` order and a valid `none` order).
//!
//! The store is persisted (JSON, written atomically) when the server has a state directory, so
//! the properties survive a restart as the objects do.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde_json::{Map, Value};
use shipyard_batch_spec::schema::Spec;

/// The api-versions whose bodies may hold properties the 2024 models lack.
pub(crate) fn is_2025(api_version: Option<&str>) -> bool {
    matches!(api_version, Some("2025-06-01.21.0" | "2025-06-01"))
}

/// The properties of `body` that the 2024 definition `def_2024` does not know, as a sparse
/// tree of the same shape (arrays keep their indexes, other elements `null`); `None` when
/// there are none.
pub(crate) fn unknown_to_2024(spec_2024: &Spec, def_2024: &str, body: &Value) -> Option<Value> {
    let Err(violations) = spec_2024.validate(def_2024, body) else {
        return None;
    };
    let mut tree = Value::Null;
    for v in violations
        .iter()
        .filter(|v| v.message.starts_with("unknown property "))
    {
        let segs: Vec<String> = v
            .pointer
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        if let Some(value) = lookup(body, &segs) {
            insert(&mut tree, &segs, value.clone());
        }
    }
    (!tree.is_null()).then_some(tree)
}

fn lookup<'a>(v: &'a Value, segs: &[String]) -> Option<&'a Value> {
    segs.iter().try_fold(v, |cur, s| match cur {
        Value::Object(m) => m.get(s),
        Value::Array(a) => s.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn insert(tree: &mut Value, segs: &[String], value: Value) {
    let Some((first, rest)) = segs.split_first() else {
        *tree = value;
        return;
    };
    match first.parse::<usize>() {
        Ok(i) if !tree.is_object() => {
            if !tree.is_array() {
                *tree = Value::Array(Vec::new());
            }
            if let Value::Array(a) = tree {
                if a.len() <= i {
                    a.resize(i + 1, Value::Null);
                }
                insert(&mut a[i], rest, value);
            }
        }
        _ => {
            if !tree.is_object() {
                *tree = Value::Object(Map::new());
            }
            if let Value::Object(m) = tree {
                insert(m.entry(first.clone()).or_insert(Value::Null), rest, value);
            }
        }
    }
}

/// Merges a sparse tree into an answer: objects key by key, arrays index by index (`null`
/// elements of the tree leave the answer's element alone); a leaf of the tree wins.
pub(crate) fn merge(into: &mut Value, extra: &Value) {
    match (into, extra) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(slot) if !slot.is_null() => merge(slot, v),
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (slot, v) in a.iter_mut().zip(b) {
                if !v.is_null() {
                    merge(slot, v);
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// Which object a tree belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Pool,
    Job,
}

impl Kind {
    fn key(self, id: &str) -> String {
        match self {
            Kind::Pool => format!("pools/{id}"),
            Kind::Job => format!("jobs/{id}"),
        }
    }
}

/// The per-object trees, optionally persisted to a JSON file.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    trees: Mutex<BTreeMap<String, Value>>,
    file: Option<PathBuf>,
}

impl Extras {
    /// A store persisted in `file` (loaded now if it exists; unreadable content is logged and
    /// ignored, as it only holds properties without local effect).
    pub(crate) fn persisted(file: PathBuf) -> Extras {
        let trees = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "ignoring unreadable 2025-only properties");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Extras {
            trees: Mutex::new(trees),
            file: Some(file),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Value>> {
        self.trees.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, trees: &BTreeMap<String, Value>) {
        let Some(file) = &self.file else {
            return;
        };
        let tmp = file.with_extension("json.tmp");
        let result = serde_json::to_vec(trees)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = result {
            tracing::warn!(file = %file.display(), error = %e, "cannot persist 2025-only properties");
        }
    }

    /// The tree of a newly created object (replacing any left from an earlier object with the
    /// same id).
    pub(crate) fn created(&self, kind: Kind, id: &str, tree: Option<Value>) {
        let mut trees = self.lock();
        let key = kind.key(id);
        let changed = match tree {
            Some(t) => trees.insert(key, t.clone()).as_ref() != Some(&t),
            None => trees.remove(&key).is_some(),
        };
        if changed {
            self.save(&trees);
        }
    }

    /// A patch: each top-level property it names replaces the stored one (as a patch replaces
    /// the object's property), then its own 2025-only properties are added.
    pub(crate) fn patched(&self, kind: Kind, id: &str, patch: &Value, tree: Option<Value>) {
        let mut trees = self.lock();
        let key = kind.key(id);
        let before = trees.get(&key).cloned();
        let mut cur = before.clone().unwrap_or(Value::Null);
        if let (Value::Object(m), Some(p)) = (&mut cur, patch.as_object()) {
            m.retain(|k, _| !p.contains_key(k));
        }
        if let Some(t) = tree {
            if cur.is_null() {
                cur = t;
            } else {
                merge(&mut cur, &t);
            }
        }
        if cur.as_object().is_some_and(Map::is_empty) {
            cur = Value::Null;
        }
        let after = (!cur.is_null()).then_some(cur);
        if after != before {
            match after {
                Some(t) => trees.insert(key, t),
                None => trees.remove(&key),
            };
            self.save(&trees);
        }
    }

    /// Forgets an object's tree.
    pub(crate) fn removed(&self, kind: Kind, id: &str) {
        let mut trees = self.lock();
        if trees.remove(&kind.key(id)).is_some() {
            self.save(&trees);
        }
    }

    /// Merges the object's tree into its JSON answer.
    pub(crate) fn apply(&self, kind: Kind, id: &str, answer: &mut Value) {
        let trees = self.lock();
        if let Some(t) = trees.get(&kind.key(id)) {
            merge(answer, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_2025_only_pool_properties_and_merges_them_back() {
        let spec = Spec::shared();
        let body = json!({
            "id": "p", "vmSize": "standard_d2s_v3",
            "taskSchedulingPolicy": {"nodeFillType": "pack", "jobDefaultOrder": "creationTime"},
            "virtualMachineConfiguration": {
                "imageReference": {"publisher": "canonical", "offer": "o", "sku": "s"},
                "nodeAgentSKUId": "batch.node.ubuntu 22.04",
                "dataDisks": [
                    {"lun": 0, "diskSizeGB": 10},
                    {"lun": 1, "diskSizeGB": 10, "managedDisk": {"storageAccountType": "premium_lrs"}},
                ],
            },
        });
        let tree = unknown_to_2024(spec, "PoolAddParameter", &body).expect("2025-only found");
        assert_eq!(
            tree,
            json!({
                "taskSchedulingPolicy": {"jobDefaultOrder": "creationTime"},
                "virtualMachineConfiguration": {"dataDisks": [null, {"managedDisk": {"storageAccountType": "premium_lrs"}}]},
            })
        );
        let mut answer = json!({
            "id": "p",
            "taskSchedulingPolicy": {"nodeFillType": "pack"},
            "virtualMachineConfiguration": {"dataDisks": [{"lun": 0}, {"lun": 1}]},
        });
        merge(&mut answer, &tree);
        assert_eq!(
            answer["taskSchedulingPolicy"]["jobDefaultOrder"],
            "creationTime"
        );
        assert_eq!(answer["taskSchedulingPolicy"]["nodeFillType"], "pack");
        assert!(answer["virtualMachineConfiguration"]["dataDisks"][0]
            .get("managedDisk")
            .is_none());
        assert_eq!(
            answer["virtualMachineConfiguration"]["dataDisks"][1]["managedDisk"]
                ["storageAccountType"],
            "premium_lrs"
        );
        // A 2024-only body has nothing to keep.
        let plain = json!({"id": "p", "vmSize": "standard_d2s_v3"});
        assert_eq!(unknown_to_2024(spec, "PoolAddParameter", &plain), None);
    }

    #[test]
    fn patches_replace_named_top_level_properties_and_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("extras.json");
        let x = Extras::persisted(file.clone());
        x.created(
            Kind::Pool,
            "p",
            Some(json!({"taskSchedulingPolicy": {"jobDefaultOrder": "creationTime"},
                        "networkConfiguration": {"publicIPAddressConfiguration": {"ipFamilies": ["IPv4"]}}})),
        );
        // A patch naming taskSchedulingPolicy without 2025-only content drops the stored one.
        x.patched(
            Kind::Pool,
            "p",
            &json!({"taskSchedulingPolicy": {"nodeFillType": "spread"}}),
            None,
        );
        let reloaded = Extras::persisted(file);
        let mut answer = json!({"id": "p"});
        reloaded.apply(Kind::Pool, "p", &mut answer);
        assert_eq!(
            answer,
            json!({"id": "p", "networkConfiguration": {"publicIPAddressConfiguration": {"ipFamilies": ["IPv4"]}}})
        );
        reloaded.removed(Kind::Pool, "p");
        let mut answer = json!({"id": "p"});
        Extras::persisted(dir.path().join("extras.json")).apply(Kind::Pool, "p", &mut answer);
        assert_eq!(answer, json!({"id": "p"}));
    }
}
