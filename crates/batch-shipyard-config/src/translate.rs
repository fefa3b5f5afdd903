//! Batch Shipyard YAML trees → one shipyard TOML document, a span map and warnings.

use std::collections::BTreeMap;

use toml_edit::{Array, ArrayOfTables, InlineTable, Item, Table, Value as TValue};

use crate::catalogue::{self, Disposition};
use crate::error::{BsConfigError, Location, Warning};
use crate::semantics;
use crate::source::SourceFile;
use crate::yaml::{Node, Value};

#[path = "translate_extra.rs"]
mod extra;

/// Options of a translation.
#[derive(Debug, Clone, Copy, Default)]
pub struct TranslateOptions {
    /// Copy secrets (account keys, client secrets, registry passwords) into the TOML. Off by
    /// default: `config import` writes a comment naming the environment variable instead, so
    /// that no secret lands in a file that may be committed. The CLI's in-memory loading of
    /// YAML turns it on.
    pub include_secrets: bool,
}

/// The result of a translation.
#[derive(Debug, Clone)]
pub struct Translation {
    /// The shipyard TOML document, with a `#` comment wherever the meaning changed.
    pub document: toml_edit::DocumentMut,
    /// TOML field path (`job_specifications[0].tasks[1].image`, as shipyard's loader names
    /// fields) → where its value came from in the YAML files.
    pub spans: BTreeMap<String, Location>,
    /// Keys ignored or changed, each with its YAML location.
    pub warnings: Vec<Warning>,
}

impl Translation {
    /// The TOML text.
    pub fn to_toml_string(&self) -> String {
        self.document.to_string()
    }

    /// The YAML location of a TOML field, or of its nearest translated parent.
    pub fn yaml_location(&self, toml_field: &str) -> Option<&Location> {
        let mut f = toml_field;
        loop {
            if let Some(l) = self.spans.get(f) {
                return Some(l);
            }
            f = &f[..f.rfind(['.', '['])?];
        }
    }
}

#[derive(Default)]
struct JobState {
    runtime: Option<(String, String)>,
    default_working_dir: Option<(String, Node)>,
    /// The job's `data_volumes` names (each task gets them).
    data_volumes: Vec<(String, Node)>,
    /// `user_identity.specific_user` (uid, gid) and where it was given.
    specific_user: Option<(i64, i64, Node)>,
    /// Each task's own `data_volumes`, by its TOML path.
    task_volumes: Vec<(String, Vec<(String, Node)>)>,
}

#[derive(Default)]
struct TaskState {
    extra_docker_options: Vec<(String, String)>,
    singularity: bool,
    data_volumes: Vec<(String, Node)>,
}

/// `global_resources.volumes.data_volumes.<name>`.
#[derive(Debug, Clone, Default)]
struct DataVolume {
    host_path: Option<String>,
    container_path: String,
    bind_options: Option<String>,
}

/// What one file says that another file's translation needs (config.yaml's volumes and images,
/// credentials.yaml's registries, jobs.yaml's images).
#[derive(Default)]
struct Shared {
    registry_logins: std::collections::BTreeSet<String>,
    data_volumes: BTreeMap<String, DataVolume>,
    listed_images: Vec<(String, Location, String)>,
    used_images: std::collections::BTreeSet<String>,
}

pub(crate) struct Ctx<'a> {
    files: &'a [SourceFile],
    file: usize,
    opts: TranslateOptions,
    spans: BTreeMap<String, Location>,
    warnings: Vec<Warning>,
    shared: Shared,
    job: JobState,
    task: TaskState,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

const SECRET_ENV: &[(&str, &str)] = &[
    (
        "credentials.batch.account_key",
        "SHIPYARD_BATCH_ACCOUNT_KEY",
    ),
    (
        "credentials.batch.aad.client_secret",
        "SHIPYARD_AAD_CLIENT_SECRET",
    ),
];

impl<'a> Ctx<'a> {
    pub(crate) fn new(files: &'a [SourceFile], opts: TranslateOptions) -> Self {
        Ctx {
            files,
            file: 0,
            opts,
            spans: BTreeMap::new(),
            warnings: Vec::new(),
            shared: Shared::default(),
            job: JobState::default(),
            task: TaskState::default(),
        }
    }

    fn loc(&self, node: &Node) -> Location {
        self.files[self.file].location(node.pos, node.width)
    }

    fn warn(&mut self, node: &Node, field: &str, message: String) {
        let location = self.loc(node);
        tracing::warn!(%location, field, "{message}");
        self.warnings.push(Warning {
            location,
            field: field.to_string(),
            message,
        });
    }

    fn invalid(&self, node: &Node, field: &str, reason: String) -> BsConfigError {
        BsConfigError::Invalid {
            location: Box::new(self.loc(node)),
            field: field.to_string(),
            reason,
        }
    }

    fn put(&mut self, t: &mut Table, key: &str, v: TValue, tpath: &str, node: &Node) {
        t.insert(key, Item::Value(v));
        self.spans.insert(join(tpath, key), self.loc(node));
    }

    fn comment(t: &mut Table, key: &str, text: &str) {
        if let Some(mut k) = t.key_mut(key) {
            let lines: String = text.lines().map(|l| format!("# {l}\n")).collect();
            k.leaf_decor_mut().set_prefix(lines);
        }
    }

    pub(crate) fn finish(mut self, document: toml_edit::DocumentMut) -> Translation {
        for (image, location, field) in std::mem::take(&mut self.shared.listed_images) {
            if self.shared.used_images.contains(&image) {
                continue;
            }
            let message = format!(
                "image `{image}` is not pulled: no task uses it (shipyard's job preparation pulls the images of the job's tasks, nothing is preloaded)"
            );
            tracing::warn!(%location, field, "{message}");
            self.warnings.push(Warning {
                location,
                field,
                message,
            });
        }
        Translation {
            document,
            spans: self.spans,
            warnings: self.warnings,
        }
    }

    /// Translates one file's root mapping into `doc`.
    pub(crate) fn root(
        &mut self,
        file: usize,
        root: &Node,
        doc: &mut Table,
    ) -> Result<(), BsConfigError> {
        self.file = file;
        let Some(entries) = root.entries() else {
            return Err(self.invalid(
                root,
                "",
                format!("expected a mapping, found {}", root.kind()),
            ));
        };
        for (k, v) in entries {
            let key = k.as_text().unwrap_or_default();
            if doc.contains_key(key) && !matches!(key, "pool_specification") {
                // sections merge only where the translator made them (pool gets prefetch images)
            }
            self.entry("", "", key, k, v, doc, "")?;
        }
        Ok(())
    }

    fn unknown(&self, pattern: &str, ypath: &str, key: &str, k: &Node) -> BsConfigError {
        let known = catalogue::children(pattern);
        BsConfigError::UnknownKey {
            location: Box::new(self.loc(k)),
            field: join(ypath, key),
            key: key.to_string(),
            hint: crate::suggest(key, known.iter().copied()),
            expected: known.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// One mapping entry: catalogue lookup, then copy / special / warn / refuse.
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        pattern: &str,
        ypath: &str,
        key: &str,
        k: &Node,
        v: &Node,
        t: &mut Table,
        tpath: &str,
    ) -> Result<(), BsConfigError> {
        let Some(p) = catalogue::child_pattern(pattern, key) else {
            return Err(self.unknown(pattern, ypath, key, k));
        };
        let yfield = join(ypath, key);
        let result = self.dispatch(&p, &yfield, key, k, v, t, tpath);
        // a mapping or list is located at its key, not at its first entry
        let out = join(tpath, key);
        if matches!(v.value, Value::Map(_) | Value::Seq(_)) && self.spans.contains_key(&out) {
            let here = self.loc(k);
            self.spans.insert(out, here);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        p: &str,
        yfield: &str,
        key: &str,
        k: &Node,
        v: &Node,
        t: &mut Table,
        tpath: &str,
    ) -> Result<(), BsConfigError> {
        let (p, yfield) = (p.to_string(), yfield.to_string());
        match catalogue::lookup(&p) {
            Some(Disposition::Warned(reason)) => {
                self.warn(k, &yfield, format!("`{key}` is ignored: {reason}"));
                Ok(())
            }
            Some(Disposition::Refused(reason)) => Err(BsConfigError::Refused {
                location: Box::new(self.loc(k)),
                field: yfield,
                reason: reason.to_string(),
            }),
            Some(Disposition::Same) => self.copy(&p, &yfield, key, v, t, tpath),
            Some(Disposition::Special) | None => self.special(&p, &yfield, key, k, v, t, tpath),
        }
    }

    fn map(
        &mut self,
        pattern: &str,
        ypath: &str,
        node: &Node,
        t: &mut Table,
        tpath: &str,
    ) -> Result<(), BsConfigError> {
        let Some(entries) = node.entries() else {
            if node.value == Value::Null {
                return Ok(());
            }
            return Err(self.invalid(
                node,
                ypath,
                format!("expected a mapping, found {}", node.kind()),
            ));
        };
        for (k, v) in entries {
            let key = k.as_text().unwrap_or_default().to_string();
            self.entry(pattern, ypath, &key, k, v, t, tpath)?;
        }
        Ok(())
    }

    fn sub_table(
        &mut self,
        pattern: &str,
        ypath: &str,
        key: &str,
        v: &Node,
        t: &mut Table,
        tpath: &str,
    ) -> Result<(), BsConfigError> {
        let mut sub = match t.remove(key) {
            Some(Item::Table(s)) => s,
            _ => Table::new(),
        };
        let sp = join(tpath, key);
        self.map(pattern, ypath, v, &mut sub, &sp)?;
        let here = self.loc(v);
        self.spans.entry(sp).or_insert(here);
        if !sub.is_empty() {
            sub.set_implicit(true);
            t.insert(key, Item::Table(sub));
        }
        Ok(())
    }

    /// Copies a value under the same key, walking mappings through the catalogue.
    fn copy(
        &mut self,
        pattern: &str,
        ypath: &str,
        key: &str,
        v: &Node,
        t: &mut Table,
        tpath: &str,
    ) -> Result<(), BsConfigError> {
        match &v.value {
            Value::Null => Ok(()),
            Value::Map(_) => self.sub_table(pattern, ypath, key, v, t, tpath),
            Value::Seq(items) if items.iter().any(|i| matches!(i.value, Value::Map(_))) => {
                let mut aot = ArrayOfTables::new();
                for (i, item) in items.iter().enumerate() {
                    let mut sub = Table::new();
                    let ip = format!("{}[{i}]", join(tpath, key));
                    self.map(
                        &format!("{pattern}[]"),
                        &format!("{ypath}[{i}]"),
                        item,
                        &mut sub,
                        &ip,
                    )?;
                    self.spans.insert(ip, self.loc(item));
                    aot.push(sub);
                }
                t.insert(key, Item::ArrayOfTables(aot));
                self.spans.insert(join(tpath, key), self.loc(v));
                Ok(())
            }
            _ => {
                let value = self.value(v, ypath)?;
                self.put(t, key, value, tpath, v);
                Ok(())
            }
        }
    }

    fn value(&self, v: &Node, ypath: &str) -> Result<TValue, BsConfigError> {
        Ok(match &v.value {
            Value::Null => TValue::from(""),
            Value::Bool(b) => TValue::from(*b),
            Value::Int(i) => TValue::from(*i),
            Value::Float(f) => TValue::from(*f),
            Value::Str(s) => TValue::from(s.as_str()),
            Value::Seq(items) => {
                let mut a = Array::new();
                for (i, item) in items.iter().enumerate() {
                    a.push(self.value(item, &format!("{ypath}[{i}]"))?);
                }
                TValue::Array(a)
            }
            Value::Map(entries) => {
                let mut it = InlineTable::new();
                for (k, item) in entries {
                    let key = k.as_text().unwrap_or_default();
                    it.insert(key, self.value(item, &join(ypath, key))?);
                }
                TValue::InlineTable(it)
            }
        })
    }

    fn text(&self, v: &Node, ypath: &str) -> Result<String, BsConfigError> {
        v.as_text()
            .map(str::to_string)
            .ok_or_else(|| self.invalid(v, ypath, format!("expected a string, found {}", v.kind())))
    }

    fn secret(
        &mut self,
        key: &str,
        v: &Node,
        t: &mut Table,
        tpath: &str,
    ) -> Result<(), BsConfigError> {
        let field = join(tpath, key);
        if self.opts.include_secrets {
            let s = self.text(v, &field)?;
            self.put(t, key, TValue::from(s), tpath, v);
        } else {
            let env = SECRET_ENV
                .iter()
                .find(|(f, _)| *f == field)
                .map(|(_, e)| *e);
            let note = match env {
                Some(e) => format!("`{field}` was not copied: set {e} in the environment"),
                None => format!("`{field}` was not copied: put it back here from a secret store, never commit it"),
            };
            let decor = t.decor_mut();
            let suffix = decor
                .suffix()
                .and_then(|s| s.as_str())
                .unwrap_or("")
                .to_string();
            decor.set_suffix(format!("{suffix}\n# {note}"));
            self.spans.insert(field, self.loc(v));
        }
        Ok(())
    }

    fn env(
        &mut self,
        ypath: &str,
        key: &str,
        v: &Node,
        t: &mut Table,
        tpath: &str,
    ) -> Result<(), BsConfigError> {
        let Some(entries) = v.entries() else {
            if v.value == Value::Null {
                return Ok(());
            }
            return Err(self.invalid(
                v,
                ypath,
                format!("expected a mapping of variables, found {}", v.kind()),
            ));
        };
        let mut sub = Table::new();
        let sp = join(tpath, key);
        let mut converted = Vec::new();
        for (k, item) in entries {
            let name = k.as_text().unwrap_or_default().to_string();
            let value = match &item.value {
                Value::Str(s) => s.clone(),
                Value::Null => String::new(),
                Value::Bool(b) => {
                    converted.push(name.clone());
                    // PyYAML read `true` as a bool and Batch Shipyard passed str(True)
                    if *b { "True" } else { "False" }.to_string()
                }
                Value::Int(_) | Value::Float(_) => {
                    converted.push(name.clone());
                    item.raw.clone().unwrap_or_default()
                }
                Value::Seq(_) | Value::Map(_) => {
                    return Err(self.invalid(
                        item,
                        &join(ypath, &name),
                        format!("expected a scalar value, found {}", item.kind()),
                    ))
                }
            };
            self.put(&mut sub, &name, TValue::from(value), &sp, item);
            if converted.last() == Some(&name) {
                Self::comment(
                    &mut sub,
                    &name,
                    "was a YAML number/boolean; environment values are strings",
                );
            }
        }
        if !sub.is_empty() {
            sub.set_implicit(false);
            t.insert(key, Item::Table(sub));
        }
        Ok(())
    }

    fn resource_files(
        &mut self,
        pattern: &str,
        ypath: &str,
        key: &str,
        v: &Node,
        t: &mut Table,
        tpath: &str,
    ) -> Result<(), BsConfigError> {
        let Value::Seq(items) = &v.value else {
            return Err(self.invalid(v, ypath, format!("expected a list, found {}", v.kind())));
        };
        let mut arr = Array::new();
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{ypath}[{i}]");
            let tp = format!("{}[{i}]", join(tpath, key));
            let mut it = InlineTable::new();
            for (k, val) in item.entries().unwrap_or_default() {
                let name = k.as_text().unwrap_or_default();
                if catalogue::child_pattern(&format!("{pattern}[]"), name).is_none() {
                    return Err(self.unknown(&format!("{pattern}[]"), &ip, name, k));
                }
                let out = if name == "blob_source" {
                    "http_url"
                } else {
                    name
                };
                it.insert(out, TValue::from(self.text(val, &join(&ip, name))?));
                self.spans.insert(join(&tp, out), self.loc(val));
            }
            arr.push(TValue::InlineTable(it));
        }
        self.put(t, key, TValue::Array(arr), tpath, v);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn special(
        &mut self,
        p: &str,
        yfield: &str,
        key: &str,
        k: &Node,
        v: &Node,
        t: &mut Table,
        tpath: &str,
    ) -> Result<(), BsConfigError> {
        let tp = join(tpath, key);
        match p {
            "credentials"
            | "credentials.batch"
            | "batch_shipyard"
            | "pool_specification"
            | "pool_specification.vm_configuration"
            | "pool_specification.virtual_network"
            | "job_specifications[].tasks[].multi_instance.mpi" => {
                self.sub_table(p, yfield, key, v, t, tpath)?;
                if p == "credentials.batch" {
                    self.derive_account_name(v, t, &tp)?;
                }
                if p == "job_specifications[].tasks[].multi_instance.mpi" {
                    if let Some(Item::Table(m)) = t.get_mut("mpi") {
                        if !m.contains_key("executable_path") {
                            m.insert("executable_path", toml_edit::value("mpirun"));
                            Self::comment(
                                m,
                                "executable_path",
                                "Batch Shipyard's default launcher, for every MPI runtime",
                            );
                        }
                    }
                }
                Ok(())
            }
            "credentials.batch.aad" | "credentials.aad" => {
                // the global `aad` applies to Batch unless `batch.aad` is given
                let batch = match t.get_mut("batch") {
                    Some(Item::Table(b)) if p == "credentials.aad" => b,
                    _ if p == "credentials.aad" => {
                        t.insert("batch", Item::Table(Table::new()));
                        match t.get_mut("batch") {
                            Some(Item::Table(b)) => b,
                            _ => return Ok(()),
                        }
                    }
                    _ => t,
                };
                let bpath = if p == "credentials.aad" {
                    join(tpath, "batch")
                } else {
                    tpath.to_string()
                };
                let mut sub = match batch.remove("aad") {
                    Some(Item::Table(s)) => s,
                    _ => Table::new(),
                };
                let mut fresh = Table::new();
                self.map(p, yfield, v, &mut fresh, &join(&bpath, "aad"))?;
                for (fk, fv) in fresh.iter() {
                    if p == "credentials.batch.aad" || !sub.contains_key(fk) {
                        sub.insert(fk, fv.clone());
                    }
                }
                if let Some(note) = fresh.decor().suffix().and_then(|s| s.as_str()) {
                    let prev = sub
                        .decor()
                        .suffix()
                        .and_then(|s| s.as_str())
                        .unwrap_or("")
                        .to_string();
                    sub.decor_mut().set_suffix(format!("{prev}{note}"));
                }
                batch.insert("aad", Item::Table(sub));
                Ok(())
            }
            "credentials.batch.account_service_url"
            | "pool_specification.vm_configuration.custom_image.native"
            | "pool_specification.vm_configuration.platform_image.publisher"
            | "pool_specification.vm_configuration.platform_image.offer"
            | "pool_specification.vm_configuration.platform_image.version"
            | "pool_specification.vm_configuration.platform_image.native" => {
                self.copy(p, yfield, key, v, t, tpath)
            }
            "pool_specification.vm_configuration.platform_image.sku" => {
                let s = self.text(v, yfield)?;
                self.put(t, key, TValue::from(s), tpath, v);
                Ok(())
            }
            "credentials.docker_registry.*" => {
                self.shared.registry_logins.insert(key.to_string());
                self.sub_table(p, yfield, key, v, t, tpath)
            }
            "global_resources" => self.global_resources(yfield, v),
            "job_specifications[].user_identity" => self.user_identity(yfield, v),
            "job_specifications[].exit_conditions"
            | "job_specifications[].tasks[].exit_conditions" => self.exit_conditions(p, yfield, v),
            "batch_shipyard.autogenerated_task_id"
            | "job_specifications[].autogenerated_task_id"
            | "job_specifications[].tasks[].task_factory.autogenerated_task_id" => {
                self.autogenerated_task_id(p, yfield, k, v)
            }
            "job_specifications[].restrict_default_bind_mounts" => {
                self.restrict_default_bind_mounts(yfield, k, v)
            }
            "job_specifications[].data_volumes" => {
                self.job.data_volumes = self.volume_names(v, yfield)?;
                Ok(())
            }
            "job_specifications[].tasks[].data_volumes" => {
                self.task.data_volumes = self.volume_names(v, yfield)?;
                Ok(())
            }
            "credentials.batch.account_key" => self.secret("account_key", v, t, tpath),
            "credentials.batch.aad.auth_key" | "credentials.aad.auth_key" => {
                self.secret("client_secret", v, t, tpath)
            }
            "credentials.storage.*.account_key"
            | "credentials.docker_registry.*.password"
            | "credentials.singularity_registry.*.password" => self.secret(key, v, t, tpath),
            "credentials.batch.aad.directory_id" | "credentials.aad.directory_id" => {
                let s = self.text(v, yfield)?;
                self.put(t, "tenant_id", TValue::from(s), tpath, v);
                Ok(())
            }
            "credentials.batch.aad.application_id" | "credentials.aad.application_id" => {
                let s = self.text(v, yfield)?;
                self.put(t, "client_id", TValue::from(s), tpath, v);
                Ok(())
            }
            "credentials.batch.aad.authority_url" | "credentials.aad.authority_url" => {
                self.copy(p, yfield, key, v, t, tpath)
            }
            "pool_specification.vm_count" => self.vm_count(yfield, v, t, tpath),
            "pool_specification.max_tasks_per_node" => {
                self.copy(p, yfield, "task_slots_per_node", v, t, tpath)?;
                Self::comment(
                    t,
                    "task_slots_per_node",
                    "Batch Shipyard's max_tasks_per_node",
                );
                Ok(())
            }
            "pool_specification.vm_configuration.platform_image" => {
                self.sub_table(p, yfield, key, v, t, tpath)?;
                self.platform_image(yfield, v, t, &tp)
            }
            "pool_specification.vm_configuration.custom_image" => {
                self.sub_table(p, yfield, key, v, t, tpath)
            }
            "pool_specification.vm_configuration.custom_image.arm_image_id" => {
                let s = self.text(v, yfield)?;
                self.put(t, "virtual_machine_image_id", TValue::from(s), tpath, v);
                Ok(())
            }
            "pool_specification.vm_configuration.custom_image.node_agent" => {
                let s = self.text(v, yfield)?;
                self.put(t, "node_agent_sku_id", TValue::from(s), tpath, v);
                Ok(())
            }
            "pool_specification.virtual_network.arm_subnet_id" => {
                let s = self.text(v, yfield)?;
                self.put(t, "subnet_id", TValue::from(s), tpath, v);
                Ok(())
            }
            "pool_specification.resize_timeout"
            | "job_specifications[].max_wall_time"
            | "job_specifications[].retention_time"
            | "job_specifications[].tasks[].max_wall_time"
            | "job_specifications[].tasks[].retention_time" => {
                let raw = self.text(v, yfield)?;
                let iso = semantics::wall_time_to_iso8601(&raw)
                    .map_err(|reason| self.invalid(v, yfield, reason))?;
                self.put(t, key, TValue::from(iso.clone()), tpath, v);
                if iso != raw {
                    Self::comment(t, key, &format!("Batch Shipyard: {raw}"));
                }
                Ok(())
            }
            "pool_specification.resource_files" => {
                let mut st = match t.remove("start_task") {
                    Some(Item::Table(s)) => s,
                    _ => Table::new(),
                };
                let sp = join(tpath, "start_task");
                self.resource_files(p, yfield, "resource_files", v, &mut st, &sp)?;
                t.insert("start_task", Item::Table(st));
                Ok(())
            }
            "job_specifications[].tasks[].resource_files"
            | "job_specifications[].tasks[].multi_instance.resource_files" => {
                self.resource_files(p, yfield, key, v, t, tpath)
            }
            "pool_specification.additional_node_prep.environment_variables" => {
                self.env(yfield, key, v, t, tpath)
            }
            "job_specifications[].environment_variables"
            | "job_specifications[].tasks[].environment_variables" => {
                self.env(yfield, key, v, t, tpath)
            }
            "job_specifications" => self.jobs(yfield, v, t),
            "job_specifications[].infiniband" => {
                self.copy(p, yfield, key, v, t, tpath)?;
                Self::comment(t, key, "Batch Shipyard ignored job-level infiniband (a bug); shipyard applies it to every task");
                Ok(())
            }
            "job_specifications[].gpus" | "job_specifications[].tasks[].gpus" => {
                let s = self.text(v, yfield)?;
                self.put(t, "gpus", TValue::from(s), tpath, v);
                Ok(())
            }
            "job_specifications[].tasks[].gpu" => {
                let on = matches!(v.value, Value::Bool(true));
                self.put(
                    t,
                    "gpus",
                    TValue::from(if on { "all" } else { "disable" }),
                    tpath,
                    v,
                );
                Ok(())
            }
            "job_specifications[].default_working_dir" => {
                let s = self.text(v, yfield)?;
                self.job.default_working_dir = Some((s, v.clone()));
                Ok(())
            }
            "job_specifications[].merge_task" => {
                let saved = std::mem::take(&mut self.task);
                let mut sub = Table::new();
                self.map("job_specifications[].tasks[]", yfield, v, &mut sub, &tp)?;
                self.task_end(&mut sub, &tp, v)?;
                self.task = saved;
                t.insert(key, Item::Table(sub));
                Ok(())
            }
            "job_specifications[].tasks" => self.tasks(yfield, v, t, tpath),
            "job_specifications[].tasks[].docker_image"
            | "job_specifications[].tasks[].singularity_image" => {
                let runtime = if key == "docker_image" {
                    "docker"
                } else {
                    "singularity"
                };
                self.task.singularity = runtime == "singularity";
                match &self.job.runtime {
                    Some((r, at)) if r != runtime => {
                        return Err(self.invalid(k, yfield, format!(
                            "this job mixes {r} (at {at}) and {runtime} tasks; shipyard runs one container runtime per job: split it into two jobs"
                        )))
                    }
                    _ => self.job.runtime = Some((runtime.to_string(), self.loc(k).to_string())),
                }
                let s = self.text(v, yfield)?;
                self.shared.used_images.insert(s.clone());
                self.put(t, "image", TValue::from(s), tpath, v);
                Ok(())
            }
            "job_specifications[].tasks[].labels"
            | "job_specifications[].tasks[].ports"
            | "job_specifications[].tasks[].entrypoint" => {
                let flag = match key {
                    "labels" => "-l",
                    "ports" => "-p",
                    _ => "--entrypoint",
                };
                let values: Vec<&Node> = match &v.value {
                    Value::Seq(items) => items.iter().collect(),
                    _ => vec![v],
                };
                for item in values {
                    let s = self.text(item, yfield)?;
                    self.task.extra_docker_options.push((flag.to_string(), s));
                }
                self.spans
                    .insert(join(tpath, "additional_docker_run_options"), self.loc(k));
                Ok(())
            }
            "job_specifications[].tasks[].multi_instance" => {
                self.sub_table(p, yfield, key, v, t, tpath)
            }
            "job_specifications[].tasks[].multi_instance.num_instances" => {
                self.num_instances(yfield, v, t, tpath)
            }
            "job_specifications[].tasks[].multi_instance.mpi.runtime" => {
                let s = self.text(v, yfield)?;
                if !semantics::MPI_RUNTIMES.contains(&s.as_str()) {
                    let hint = crate::suggest(
                        &s.replace('_', "-"),
                        semantics::MPI_RUNTIMES.iter().copied(),
                    );
                    return Err(BsConfigError::Invalid {
                        location: Box::new(self.loc(v)),
                        field: yfield.to_string(),
                        reason: format!(
                            "unknown MPI runtime `{s}`, expected one of {}{}",
                            semantics::MPI_RUNTIMES.join(", "),
                            hint.map(|h| format!(" (did you mean `{h}`?)"))
                                .unwrap_or_default()
                        ),
                    });
                }
                self.put(t, key, TValue::from(s), tpath, v);
                Ok(())
            }
            "job_specifications[].tasks[].multi_instance.mpi.options" => {
                self.copy(p, yfield, key, v, t, tpath)?;
                let multi_word = match &v.value {
                    Value::Seq(items) => items.iter().any(|i| {
                        i.as_text()
                            .is_some_and(|s| s.trim().contains(char::is_whitespace))
                    }),
                    _ => false,
                };
                if multi_word {
                    Self::comment(t, key, "Batch Shipyard splits each entry into words (and $vars are expanded at run time)");
                }
                Ok(())
            }
            "job_specifications[].tasks[].task_factory" => {
                self.sub_table(p, yfield, key, v, t, tpath)
            }
            _ => self.copy(p, yfield, key, v, t, tpath),
        }
    }

    fn derive_account_name(
        &mut self,
        v: &Node,
        t: &mut Table,
        tp: &str,
    ) -> Result<(), BsConfigError> {
        let Some(url) = v.get("account_service_url") else {
            return Ok(());
        };
        let text = self.text(url, "credentials.batch.account_service_url")?;
        let name = semantics::account_name_from_service_url(&text)
            .map_err(|r| self.invalid(url, "credentials.batch.account_service_url", r))?;
        if let Some(Item::Table(b)) = t.get_mut("batch") {
            self.put(b, "account_name", TValue::from(name), tp, url);
            Self::comment(
                b,
                "account_name",
                "derived from account_service_url, as Batch Shipyard did",
            );
            b.sort_values_by(|a, _, b, _| {
                let rank = |k: &str| match k {
                    "account_name" => 0,
                    "account_service_url" => 1,
                    _ => 2,
                };
                rank(a.get()).cmp(&rank(b.get()))
            });
        }
        Ok(())
    }

    fn vm_count(
        &mut self,
        yfield: &str,
        v: &Node,
        t: &mut Table,
        tpath: &str,
    ) -> Result<(), BsConfigError> {
        let count = |n: Option<&Node>, f: &str| -> Result<i64, BsConfigError> {
            match n.map(|n| &n.value) {
                None | Some(Value::Null) => Ok(0),
                Some(Value::Int(i)) if *i >= 0 => Ok(*i),
                Some(_) => Err(self.invalid(
                    n.unwrap_or(v),
                    &join(yfield, f),
                    "expected a count of nodes (an integer ≥ 0)".into(),
                )),
            }
        };
        let value = match &v.value {
            Value::Int(_) => TValue::from(count(Some(v), "")?),
            Value::Map(entries) => {
                for (k, _) in entries {
                    let key = k.as_text().unwrap_or_default();
                    if !matches!(key, "dedicated" | "low_priority") {
                        return Err(self.unknown("pool_specification.vm_count", yfield, key, k));
                    }
                }
                let d = count(v.get("dedicated"), "dedicated")?;
                let l = count(v.get("low_priority"), "low_priority")?;
                if l == 0 {
                    TValue::from(d)
                } else {
                    let mut it = InlineTable::new();
                    it.insert("dedicated", TValue::from(d));
                    it.insert("low_priority", TValue::from(l));
                    TValue::InlineTable(it)
                }
            }
            _ => {
                return Err(self.invalid(
                    v,
                    yfield,
                    format!(
                        "expected `dedicated:`/`low_priority:` counts (or an integer), found {}",
                        v.kind()
                    ),
                ))
            }
        };
        self.put(t, "vm_count", value, tpath, v);
        Ok(())
    }

    fn platform_image(
        &mut self,
        yfield: &str,
        v: &Node,
        t: &mut Table,
        tp: &str,
    ) -> Result<(), BsConfigError> {
        let get = |k: &str| {
            v.get(k)
                .and_then(Node::as_text)
                .unwrap_or_default()
                .to_string()
        };
        let (publisher, offer, sku) = (get("publisher"), get("offer"), get("sku"));
        for (k, val) in [("publisher", &publisher), ("offer", &offer), ("sku", &sku)] {
            if val.is_empty() {
                return Err(self.invalid(v, &join(yfield, k), format!("`{k}` is required")));
            }
        }
        if let Some(r) = semantics::retired_image(&publisher, &offer, &sku) {
            self.warn(
                v,
                yfield,
                format!(
                    "image {publisher}/{offer}/{sku} is retired ({}); use {} instead",
                    r.reason, r.replacement
                ),
            );
        }
        let Some(agent) = semantics::node_agent_sku_id(&publisher, &offer, &sku) else {
            return Err(self.invalid(v, yfield, format!(
                "cannot derive the Batch node agent of {publisher}/{offer}/{sku}; use a known image \
                 (e.g. microsoft-dsvm/ubuntu-hpc/2204) or translate this pool by hand and set node_agent_sku_id"
            )));
        };
        if let Some(Item::Table(pi)) = t.get_mut("platform_image") {
            self.put(pi, "node_agent_sku_id", TValue::from(agent), tp, v);
            Self::comment(
                pi,
                "node_agent_sku_id",
                "derived from publisher/offer/sku (Batch Shipyard asked the Batch service)",
            );
        }
        Ok(())
    }

    fn num_instances(
        &mut self,
        yfield: &str,
        v: &Node,
        t: &mut Table,
        tpath: &str,
    ) -> Result<(), BsConfigError> {
        let value = match &v.value {
            Value::Int(i) if *i > 0 => TValue::from(*i),
            Value::Str(s) if semantics::NUM_INSTANCES_KEYWORDS.contains(&s.as_str()) => {
                TValue::from(s.as_str())
            }
            Value::Str(s) => {
                let hint = crate::suggest(s, semantics::NUM_INSTANCES_KEYWORDS.iter().copied());
                return Err(BsConfigError::Invalid {
                    location: Box::new(self.loc(v)),
                    field: yfield.to_string(),
                    reason: format!(
                        "`{s}` is not a node count: give an integer or one of {}{}",
                        semantics::NUM_INSTANCES_KEYWORDS.join(", "),
                        hint.map(|h| format!(" (did you mean `{h}`?)"))
                            .unwrap_or_default()
                    ),
                });
            }
            _ => {
                return Err(self.invalid(
                    v,
                    yfield,
                    format!(
                        "expected a positive integer or a keyword, found {}",
                        v.kind()
                    ),
                ))
            }
        };
        self.put(t, "num_instances", value, tpath, v);
        Ok(())
    }

    fn jobs(&mut self, yfield: &str, v: &Node, doc: &mut Table) -> Result<(), BsConfigError> {
        let Value::Seq(items) = &v.value else {
            return Err(self.invalid(
                v,
                yfield,
                format!("expected a list of jobs, found {}", v.kind()),
            ));
        };
        let mut aot = match doc.remove("job_specifications") {
            Some(Item::ArrayOfTables(a)) => a,
            _ => ArrayOfTables::new(),
        };
        for item in items {
            let i = aot.len();
            let tp = format!("job_specifications[{i}]");
            self.job = JobState::default();
            let mut job = Table::new();
            self.map(
                "job_specifications[]",
                &format!("{yfield}[{i}]"),
                item,
                &mut job,
                &tp,
            )?;
            self.spans.insert(tp.clone(), self.loc(item));
            self.apply_job_options(&mut job, &tp)?;
            if let Some((runtime, _)) = self.job.runtime.take() {
                job.insert("runtime", toml_edit::value(runtime));
                job.sort_values_by(|a, _, b, _| {
                    let rank = |k: &str| match k {
                        "id" => 0,
                        "runtime" => 1,
                        _ => 2,
                    };
                    rank(a.get()).cmp(&rank(b.get()))
                });
            }
            if let Some((dir, node)) = self.job.default_working_dir.take() {
                if let Some(Item::ArrayOfTables(tasks)) = job.get_mut("tasks") {
                    for (ti, task) in tasks.iter_mut().enumerate() {
                        if !task.contains_key("default_working_dir") {
                            task.insert("default_working_dir", toml_edit::value(dir.clone()));
                            Self::comment(
                                task,
                                "default_working_dir",
                                "from the job's default_working_dir (shipyard sets it per task)",
                            );
                            self.spans.insert(
                                format!("{tp}.tasks[{ti}].default_working_dir"),
                                self.loc(&node),
                            );
                        }
                    }
                }
            }
            aot.push(job);
        }
        doc.insert("job_specifications", Item::ArrayOfTables(aot));
        Ok(())
    }

    fn tasks(
        &mut self,
        yfield: &str,
        v: &Node,
        job: &mut Table,
        jpath: &str,
    ) -> Result<(), BsConfigError> {
        let Value::Seq(items) = &v.value else {
            return Err(self.invalid(
                v,
                yfield,
                format!("expected a list of tasks, found {}", v.kind()),
            ));
        };
        let mut aot = ArrayOfTables::new();
        for (i, item) in items.iter().enumerate() {
            let tp = format!("{jpath}.tasks[{i}]");
            self.task = TaskState::default();
            let mut task = Table::new();
            self.map(
                "job_specifications[].tasks[]",
                &format!("{yfield}[{i}]"),
                item,
                &mut task,
                &tp,
            )?;
            self.spans.insert(tp.clone(), self.loc(item));
            self.task_end(&mut task, &tp, item)?;
            aot.push(task);
        }
        job.insert("tasks", Item::ArrayOfTables(aot));
        Ok(())
    }

    fn task_end(&mut self, task: &mut Table, tp: &str, node: &Node) -> Result<(), BsConfigError> {
        let volumes = std::mem::take(&mut self.task.data_volumes);
        if !volumes.is_empty() {
            self.job.task_volumes.push((tp.to_string(), volumes));
        }
        let extra = std::mem::take(&mut self.task.extra_docker_options);
        if extra.is_empty() {
            return Ok(());
        }
        if self.task.singularity {
            self.warn(
                node,
                tp,
                "labels/ports/entrypoint are Docker options and are ignored for a Singularity task"
                    .into(),
            );
            return Ok(());
        }
        let mut arr = match task.remove("additional_docker_run_options") {
            Some(Item::Value(TValue::Array(a))) => a,
            _ => Array::new(),
        };
        for (flag, value) in extra {
            arr.push(flag);
            arr.push(value);
        }
        task.insert("additional_docker_run_options", toml_edit::value(arr));
        Self::comment(
            task,
            "additional_docker_run_options",
            "includes Batch Shipyard's labels/ports/entrypoint as docker run options",
        );
        Ok(())
    }
}
