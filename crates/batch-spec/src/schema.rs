//! Validation of JSON values against the definitions of the Batch Swagger spec.
//!
//! [`Spec`] holds the parsed `BatchService.json` (OpenAPI 2.0). It answers two questions a
//! strict test server and golden tests need:
//!
//! * [`Spec::validate`] / [`Spec::validate_lenient`]: does a JSON value conform to
//!   `#/definitions/<name>`? Checks types, formats (`int32`/`int64` ranges, `date-time`,
//!   `duration`), `required`, `enum` (exact spelling), `minimum`/`maximum`,
//!   `minItems`/`maxItems`, `$ref`, `allOf`, `additionalProperties` maps and, in strict mode,
//!   rejects unknown properties. Every problem is reported as a [`Violation`] with a JSON pointer.
//! * [`Spec::operation`]: which operation does `METHOD /path` address, with its path parameters
//!   (percent-decoded), body definition, required query parameters and headers, and the
//!   statuses the spec lists for it.
//!
//! ```no_run
//! use shipyard_batch_spec::schema::Spec;
//! let spec = Spec::shared();
//! let body = serde_json::json!({"id": "task1", "commandLine": "/bin/true"});
//! assert!(spec.validate("TaskAddParameter", &body).is_ok());
//! let op = spec.operation("POST", "/jobs/job%201/tasks").expect("known operation");
//! assert_eq!(op.id, "Task_Add");
//! assert_eq!(op.path_params, vec![("jobId".to_string(), "job 1".to_string())]);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Map, Value};

/// Environment variable that overrides the location of `BatchService.json`.
pub const SPEC_ENV: &str = "SHIPYARD_BATCH_SPEC";

/// Errors loading or interpreting the Swagger file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The spec file could not be read.
    #[error("cannot read Batch spec {path}: {source}")]
    Read {
        /// The file that was read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The spec file is not valid JSON.
    #[error("Batch spec {path} is not valid JSON: {source}")]
    Parse {
        /// The file that was parsed.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The spec file is JSON but not the Swagger document we expect.
    #[error("Batch spec {path}: {message}")]
    Invalid {
        /// The file that was interpreted.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// One problem found by [`Spec::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer (RFC 6901) to the offending value; `""` is the document root.
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "(root)"
        } else {
            &self.pointer
        };
        write!(f, "{pointer}: {}", self.message)
    }
}

/// An operation of the spec, as matched by [`Spec::operation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<'a> {
    /// The `operationId`, e.g. `Task_AddCollection`.
    pub id: &'a str,
    /// Path parameters in template order, values percent-decoded, e.g. `[("jobId", "job-1")]`.
    pub path_params: Vec<(String, String)>,
    /// The definition name of the body parameter's schema, e.g. `TaskAddParameter`.
    pub body_definition: Option<&'a str>,
    /// Whether the body parameter is required.
    pub body_required: bool,
    /// Names of the required query parameters (always includes `api-version`).
    pub required_query: Vec<&'a str>,
    /// Names of the required header parameters, as spelled in the spec.
    pub required_headers: Vec<&'a str>,
    /// The numeric response statuses the spec lists (not `default`), in spec order. For the
    /// `*_Exists` operations this includes `404`, which means "does not exist".
    pub success_statuses: Vec<u16>,
}

/// One piece of a path segment template: literal text or a `{param}`.
#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    Param(String),
}

#[derive(Debug, Clone)]
struct OpEntry {
    method: String,
    segments: Vec<Vec<Piece>>,
    /// The last segment is a single `{filePath}`-style parameter that may span several segments.
    greedy_tail: bool,
    literal_len: usize,
    id: String,
    body_definition: Option<String>,
    body_required: bool,
    required_query: Vec<String>,
    required_headers: Vec<String>,
    success_statuses: Vec<u16>,
    /// Response status (or `default`) -> body definition (`None`: no body or a byte stream).
    responses: Vec<(String, Option<String>)>,
}

/// The parsed Batch Swagger document.
#[derive(Debug, Clone)]
pub struct Spec {
    api_version: String,
    definitions: Map<String, Value>,
    operations: Vec<OpEntry>,
}

static SHARED: OnceLock<Spec> = OnceLock::new();
static SHARED_2025: OnceLock<Spec> = OnceLock::new();

/// The api-versions [`Spec::for_api_version`] knows, with the spellings clients send.
pub const API_VERSIONS: [&str; 3] = ["2024-07-01.20.0", "2025-06-01.21.0", "2025-06-01"];

impl Spec {
    /// Loads the vendored spec: the file named by `SHIPYARD_BATCH_SPEC`, or else
    /// `<this crate>/spec/BatchService.json`.
    pub fn load() -> Result<Spec, SchemaError> {
        let path = match std::env::var_os(SPEC_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => Self::default_path(),
        };
        Self::from_file(&path)
    }

    /// The path of the spec vendored in this crate.
    pub fn default_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("spec/BatchService.json")
    }

    /// Loads a spec from a file.
    pub fn from_file(path: &Path) -> Result<Spec, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let doc: Value = serde_json::from_str(&text).map_err(|source| SchemaError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_value(doc).map_err(|message| SchemaError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// The spec loaded once per process by [`Spec::load`]; a failed load is retried on the
    /// next call.
    pub fn try_shared() -> Result<&'static Spec, SchemaError> {
        if let Some(spec) = SHARED.get() {
            return Ok(spec);
        }
        let spec = Spec::load()?;
        Ok(SHARED.get_or_init(|| spec))
    }

    /// The spec of a served api-version: `2024-07-01.20.0` is [`Spec::try_shared`];
    /// `2025-06-01.21.0` (also spelled `2025-06-01`, as the azure-batch 15.1.0 Python SDK sends
    /// it) is `spec/2025-06-01.21.0/BatchService.min.json`, loaded once. `Ok(None)` for any
    /// other version.
    pub fn for_api_version(version: &str) -> Result<Option<&'static Spec>, SchemaError> {
        match version {
            "2024-07-01.20.0" => Spec::try_shared().map(Some),
            "2025-06-01.21.0" | "2025-06-01" => {
                if let Some(spec) = SHARED_2025.get() {
                    return Ok(Some(spec));
                }
                let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("spec/2025-06-01.21.0/BatchService.min.json");
                let spec = Spec::from_file(&path)?;
                Ok(Some(SHARED_2025.get_or_init(|| spec)))
            }
            _ => Ok(None),
        }
    }

    /// [`Spec::try_shared`] for tests, which want the spec or a clear failure.
    ///
    /// # Panics
    /// If the spec cannot be loaded; the message names the file and the cause.
    pub fn shared() -> &'static Spec {
        match Spec::try_shared() {
            Ok(spec) => spec,
            Err(e) => panic!("shipyard-batch-spec: cannot load the Batch Swagger spec ({e}); set {SPEC_ENV} to the path of BatchService.json"),
        }
    }

    /// The api-version of the spec (`info.version`), e.g. `2024-07-01.20.0`.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// Whether `#/definitions/<name>` exists.
    pub fn has_definition(&self, name: &str) -> bool {
        self.definitions.contains_key(name)
    }

    /// The names of all definitions, in spec order.
    pub fn definition_names(&self) -> impl Iterator<Item = &str> {
        self.definitions.keys().map(String::as_str)
    }

    /// Strict validation of `value` against `#/definitions/<definition>`: types, formats (int32
    /// range), required, enum (exact spelling), maxItems/minItems, $ref, allOf,
    /// additionalProperties maps, and unknown properties are violations (strict mode, for
    /// request bodies).
    pub fn validate(&self, definition: &str, value: &Value) -> Result<(), Vec<Violation>> {
        self.validate_mode(definition, value, true)
    }

    /// Lenient variant for responses: unknown properties allowed.
    pub fn validate_lenient(&self, definition: &str, value: &Value) -> Result<(), Vec<Violation>> {
        self.validate_mode(definition, value, false)
    }

    fn validate_mode(
        &self,
        definition: &str,
        value: &Value,
        strict: bool,
    ) -> Result<(), Vec<Violation>> {
        let Some(schema) = self.definitions.get(definition) else {
            return Err(vec![Violation {
                pointer: String::new(),
                message: format!("unknown definition {definition:?}"),
            }]);
        };
        let mut v = Validator {
            spec: self,
            strict,
            out: Vec::new(),
        };
        v.check(schema, value, &mut String::new(), 0);
        if v.out.is_empty() {
            Ok(())
        } else {
            Err(v.out)
        }
    }

    /// The operation for an HTTP method and a request path (no query), matching path templates
    /// such as `/jobs/{jobId}/tasks/{taskId}`; path params percent-decoded. A trailing
    /// `{filePath}` parameter may span several segments. When several templates match, the one
    /// with the most literal text wins.
    pub fn operation(&self, method: &str, path: &str) -> Option<Operation<'_>> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut best: Option<(&OpEntry, Vec<(String, String)>)> = None;
        for op in &self.operations {
            if !op.method.eq_ignore_ascii_case(method) {
                continue;
            }
            if let Some(params) = match_path(op, &segs) {
                if best
                    .as_ref()
                    .is_none_or(|(b, _)| op.literal_len > b.literal_len)
                {
                    best = Some((op, params));
                }
            }
        }
        best.map(|(op, path_params)| Operation {
            id: &op.id,
            path_params,
            body_definition: op.body_definition.as_deref(),
            body_required: op.body_required,
            required_query: op.required_query.iter().map(String::as_str).collect(),
            required_headers: op.required_headers.iter().map(String::as_str).collect(),
            success_statuses: op.success_statuses.clone(),
        })
    }

    /// The operation with this `operationId`, without path parameters.
    pub fn operation_by_id(&self, id: &str) -> Option<Operation<'_>> {
        self.operations
            .iter()
            .find(|op| op.id == id)
            .map(|op| Operation {
                id: &op.id,
                path_params: Vec::new(),
                body_definition: op.body_definition.as_deref(),
                body_required: op.body_required,
                required_query: op.required_query.iter().map(String::as_str).collect(),
                required_headers: op.required_headers.iter().map(String::as_str).collect(),
                success_statuses: op.success_statuses.clone(),
            })
    }

    /// The definition of the JSON body the spec gives operation `operation_id` for `status`,
    /// falling back to its `default` response (`BatchError`) for statuses it does not list.
    /// `None` for unknown operations and for responses without a JSON body (e.g. `202`, or the
    /// byte stream of `File_GetFromTask`).
    pub fn response_definition(&self, operation_id: &str, status: u16) -> Option<&str> {
        let op = self.operations.iter().find(|op| op.id == operation_id)?;
        let status = status.to_string();
        let find = |key: &str| op.responses.iter().find(|(s, _)| s == key);
        match find(&status) {
            Some((_, def)) => def.as_deref(),
            None => find("default").and_then(|(_, def)| def.as_deref()),
        }
    }

    /// All operations as `(method, path template, operationId)`, in spec order.
    pub fn operations(&self) -> impl Iterator<Item = (&str, String, &str)> {
        self.operations.iter().map(|op| {
            let template = op
                .segments
                .iter()
                .map(|seg| {
                    seg.iter()
                        .map(|p| match p {
                            Piece::Lit(s) => s.clone(),
                            Piece::Param(s) => format!("{{{s}}}"),
                        })
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
                .join("/");
            (op.method.as_str(), format!("/{template}"), op.id.as_str())
        })
    }

    fn from_value(doc: Value) -> Result<Spec, String> {
        let Value::Object(mut doc) = doc else {
            return Err("top level is not an object".into());
        };
        let api_version = doc
            .get("info")
            .and_then(|i| i.get("version"))
            .and_then(Value::as_str)
            .ok_or("missing info.version")?
            .to_string();
        let definitions = match doc.remove("definitions") {
            Some(Value::Object(d)) => d,
            _ => return Err("missing or malformed `definitions`".into()),
        };
        let global_params = match doc.get("parameters") {
            Some(Value::Object(p)) => p.clone(),
            _ => Map::new(),
        };
        let Some(Value::Object(paths)) = doc.get("paths") else {
            return Err("missing or malformed `paths`".into());
        };
        let mut operations = Vec::new();
        for (template, item) in paths {
            let Value::Object(item) = item else {
                return Err(format!("paths.{template} is not an object"));
            };
            let shared_params = item
                .get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (method, op) in item {
                if method == "parameters" || method.starts_with("x-") {
                    continue;
                }
                let id = op
                    .get("operationId")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("paths.{template}.{method}: missing operationId"))?
                    .to_string();
                let mut entry = OpEntry {
                    method: method.to_ascii_uppercase(),
                    segments: Vec::new(),
                    greedy_tail: false,
                    literal_len: 0,
                    id: id.clone(),
                    body_definition: None,
                    body_required: false,
                    required_query: Vec::new(),
                    required_headers: Vec::new(),
                    success_statuses: Vec::new(),
                    responses: Vec::new(),
                };
                parse_template(template, &mut entry);
                let params = shared_params.iter().chain(
                    op.get("parameters")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten(),
                );
                for p in params {
                    let p = match p.get("$ref").and_then(Value::as_str) {
                        Some(r) => {
                            let name = r.strip_prefix("#/parameters/").ok_or_else(|| {
                                format!("{id}: unsupported parameter reference {r}")
                            })?;
                            global_params.get(name).ok_or_else(|| {
                                format!("{id}: unresolvable parameter reference {r}")
                            })?
                        }
                        None => p,
                    };
                    let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
                    let required = p.get("required").and_then(Value::as_bool).unwrap_or(false);
                    match p.get("in").and_then(Value::as_str) {
                        Some("body") => {
                            entry.body_required = required;
                            entry.body_definition = p
                                .get("schema")
                                .and_then(|s| s.get("$ref"))
                                .and_then(Value::as_str)
                                .and_then(|r| r.strip_prefix("#/definitions/"))
                                .map(str::to_string);
                        }
                        Some("query") if required => entry.required_query.push(name.to_string()),
                        Some("header") if required => entry.required_headers.push(name.to_string()),
                        _ => {}
                    }
                }
                if let Some(Value::Object(responses)) = op.get("responses") {
                    entry.success_statuses = responses
                        .keys()
                        .filter_map(|k| k.parse::<u16>().ok())
                        .collect();
                    entry.responses = responses
                        .iter()
                        .map(|(status, r)| {
                            let def = r
                                .get("schema")
                                .and_then(|s| s.get("$ref"))
                                .and_then(Value::as_str)
                                .and_then(|r| r.strip_prefix("#/definitions/"))
                                .map(str::to_string);
                            (status.clone(), def)
                        })
                        .collect();
                }
                operations.push(entry);
            }
        }
        Ok(Spec {
            api_version,
            definitions,
            operations,
        })
    }

    fn resolve<'s>(&'s self, reference: &str) -> Option<&'s Value> {
        reference
            .strip_prefix("#/definitions/")
            .and_then(|name| self.definitions.get(name))
    }
}

fn parse_template(template: &str, entry: &mut OpEntry) {
    for seg in template.trim_start_matches('/').split('/') {
        let mut pieces = Vec::new();
        let mut rest = seg;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest.find('}').unwrap_or(rest.len());
                    pieces.push(Piece::Param(rest[1..end].to_string()));
                    rest = rest.get(end + 1..).unwrap_or("");
                }
                Some(i) => {
                    entry.literal_len += i;
                    pieces.push(Piece::Lit(rest[..i].to_string()));
                    rest = &rest[i..];
                }
                None => {
                    entry.literal_len += rest.len();
                    pieces.push(Piece::Lit(rest.to_string()));
                    rest = "";
                }
            }
        }
        entry.segments.push(pieces);
    }
    if let Some([Piece::Param(name)]) = entry.segments.last().map(Vec::as_slice) {
        entry.greedy_tail = name == "filePath";
    }
}

fn match_path(op: &OpEntry, segs: &[&str]) -> Option<Vec<(String, String)>> {
    let n = op.segments.len();
    if segs.len() != n && !(op.greedy_tail && segs.len() > n) {
        return None;
    }
    let mut params = Vec::new();
    for (i, pieces) in op.segments.iter().enumerate() {
        if op.greedy_tail && i == n - 1 {
            let raw = segs[i..].join("/");
            if raw.is_empty() {
                return None;
            }
            if let Some(Piece::Param(name)) = pieces.first() {
                params.push((name.clone(), percent_decode(&raw)));
            }
            break;
        }
        match_segment(pieces, segs[i], &mut params)?;
    }
    Some(params)
}

/// Matches one raw (still percent-encoded) segment against its template pieces. A parameter
/// takes text up to the first occurrence of the following literal, and must not be empty.
fn match_segment(pieces: &[Piece], raw: &str, params: &mut Vec<(String, String)>) -> Option<()> {
    let mut rest = raw;
    for (i, piece) in pieces.iter().enumerate() {
        match piece {
            Piece::Lit(lit) => rest = rest.strip_prefix(lit.as_str())?,
            Piece::Param(name) => {
                let end = match pieces.get(i + 1) {
                    Some(Piece::Lit(next)) => rest.find(next.as_str())?,
                    _ => rest.len(),
                };
                if end == 0 {
                    return None;
                }
                params.push((name.clone(), percent_decode(&rest[..end])));
                rest = &rest[end..];
            }
        }
    }
    rest.is_empty().then_some(())
}

/// Decodes `%XX` escapes; malformed escapes are kept literally, invalid UTF-8 is replaced.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Maximum schema nesting followed before giving up (guards against reference cycles that do
/// not consume the value).
const MAX_DEPTH: usize = 64;

struct Validator<'s> {
    spec: &'s Spec,
    strict: bool,
    out: Vec<Violation>,
}

/// Properties and constraints of an object schema, merged over `$ref` and `allOf`.
#[derive(Default)]
struct ObjectShape<'s> {
    properties: BTreeMap<&'s str, &'s Value>,
    required: Vec<&'s str>,
    additional: Option<&'s Value>,
}

impl<'s> Validator<'s> {
    fn violation(&mut self, pointer: &str, message: impl Into<String>) {
        self.out.push(Violation {
            pointer: pointer.to_string(),
            message: message.into(),
        });
    }

    fn check(&mut self, schema: &'s Value, value: &Value, ptr: &mut String, depth: usize) {
        if depth > MAX_DEPTH {
            self.violation(ptr, "schema nesting too deep (reference cycle?)");
            return;
        }
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            match self.spec.resolve(r) {
                Some(target) => self.check(target, value, ptr, depth + 1),
                None => self.violation(ptr, format!("unresolvable $ref {r}")),
            }
            return;
        }
        if value.is_null() {
            if !schema
                .get("x-nullable")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                let expected = schema_type(schema).unwrap_or("a value");
                self.violation(
                    ptr,
                    format!("null is not allowed here (expected {expected})"),
                );
            }
            return;
        }
        let ty = schema_type(schema);
        match ty {
            Some("string") => self.check_string(schema, value, ptr),
            Some("integer") => self.check_integer(schema, value, ptr),
            Some("number") => self.check_number(schema, value, ptr),
            Some("boolean") => {
                if !value.is_boolean() {
                    self.violation(ptr, format!("expected a boolean, got {}", kind(value)));
                }
            }
            Some("array") => self.check_array(schema, value, ptr, depth),
            Some("object") => self.check_object(schema, value, ptr, depth),
            Some(other) => self.violation(ptr, format!("unsupported schema type {other:?}")),
            None => {
                // No type: only allOf constraints (if any) apply.
                if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
                    for sub in all {
                        self.check(sub, value, ptr, depth + 1);
                    }
                }
            }
        }
    }

    fn check_string(&mut self, schema: &'s Value, value: &Value, ptr: &str) {
        let Some(s) = value.as_str() else {
            self.violation(ptr, format!("expected a string, got {}", kind(value)));
            return;
        };
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.iter().any(|a| a.as_str() == Some(s)) {
                let list: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
                self.violation(
                    ptr,
                    format!("{s:?} is not one of the allowed values {}", list.join("|")),
                );
            }
        }
        match schema.get("format").and_then(Value::as_str) {
            Some("date-time") if !is_date_time(s) => {
                self.violation(ptr, format!("{s:?} is not an RFC 3339 date-time"))
            }
            Some("duration") if !is_duration(s) => {
                self.violation(ptr, format!("{s:?} is not an ISO 8601 duration"))
            }
            _ => {}
        }
    }

    fn check_integer(&mut self, schema: &'s Value, value: &Value, ptr: &str) {
        let n = match value {
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => i as i128,
                (None, Some(u)) => u as i128,
                _ => {
                    self.violation(ptr, format!("expected an integer, got {n}"));
                    return;
                }
            },
            other => {
                self.violation(ptr, format!("expected an integer, got {}", kind(other)));
                return;
            }
        };
        let (lo, hi, fmt) = match schema.get("format").and_then(Value::as_str) {
            Some("int32") => (i32::MIN as i128, i32::MAX as i128, "int32"),
            _ => (i64::MIN as i128, i64::MAX as i128, "int64"),
        };
        if n < lo || n > hi {
            self.violation(ptr, format!("{n} is out of the {fmt} range"));
            return;
        }
        self.check_bounds(schema, n as f64, ptr);
    }

    fn check_number(&mut self, schema: &'s Value, value: &Value, ptr: &str) {
        match value.as_f64() {
            Some(f) => self.check_bounds(schema, f, ptr),
            None => self.violation(ptr, format!("expected a number, got {}", kind(value))),
        }
    }

    fn check_bounds(&mut self, schema: &Value, n: f64, ptr: &str) {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                self.violation(ptr, format!("{n} is below the minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                self.violation(ptr, format!("{n} is above the maximum {max}"));
            }
        }
    }

    fn check_array(&mut self, schema: &'s Value, value: &Value, ptr: &mut String, depth: usize) {
        let Some(items) = value.as_array() else {
            self.violation(ptr, format!("expected an array, got {}", kind(value)));
            return;
        };
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
            if items.len() as u64 > max {
                self.violation(ptr, format!("{} items exceed maxItems {max}", items.len()));
            }
        }
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if (items.len() as u64) < min {
                self.violation(
                    ptr,
                    format!("{} items are below minItems {min}", items.len()),
                );
            }
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&i.to_string());
                self.check(item_schema, item, ptr, depth + 1);
                ptr.truncate(len);
            }
        }
    }

    fn shape(&mut self, schema: &'s Value, shape: &mut ObjectShape<'s>, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            if let Some(target) = self.spec.resolve(r) {
                self.shape(target, shape, depth + 1);
            }
            return;
        }
        if let Some(Value::Object(props)) = schema.get("properties") {
            for (name, prop) in props {
                shape.properties.insert(name.as_str(), prop);
            }
        }
        if let Some(Value::Array(req)) = schema.get("required") {
            shape.required.extend(req.iter().filter_map(Value::as_str));
        }
        if let Some(add) = schema.get("additionalProperties") {
            shape.additional = Some(add);
        }
        if let Some(Value::Array(all)) = schema.get("allOf") {
            for sub in all {
                self.shape(sub, shape, depth + 1);
            }
        }
    }

    fn check_object(&mut self, schema: &'s Value, value: &Value, ptr: &mut String, depth: usize) {
        let Some(obj) = value.as_object() else {
            self.violation(ptr, format!("expected an object, got {}", kind(value)));
            return;
        };
        let mut shape = ObjectShape::default();
        self.shape(schema, &mut shape, depth);
        for name in &shape.required {
            if !obj.contains_key(*name) {
                self.violation(ptr, format!("missing required property {name:?}"));
            }
        }
        // `type: object` with neither properties nor additionalProperties is free-form.
        let free_form = shape.properties.is_empty() && shape.additional.is_none();
        for (key, val) in obj {
            let len = ptr.len();
            ptr.push('/');
            ptr.push_str(&key.replace('~', "~0").replace('/', "~1"));
            if let Some(prop) = shape.properties.get(key.as_str()) {
                self.check(prop, val, ptr, depth + 1);
            } else if let Some(add) = shape.additional {
                match add {
                    Value::Bool(false) => self.violation(ptr, format!("unknown property {key:?}")),
                    Value::Bool(true) => {}
                    add => self.check(add, val, ptr, depth + 1),
                }
            } else if self.strict && !free_form {
                self.violation(ptr, format!("unknown property {key:?}"));
            }
            ptr.truncate(len);
        }
        if let Some(Value::Array(all)) = schema.get("allOf") {
            // Non-object constraints of allOf members (objects were merged above).
            for sub in all {
                if schema_type(sub).is_some_and(|t| t != "object") {
                    self.check(sub, value, ptr, depth + 1);
                }
            }
        }
    }
}

/// The schema's `type`, treating a schema with `properties` or `allOf` but no `type` as an object.
fn schema_type(schema: &Value) -> Option<&str> {
    match schema.get("type").and_then(Value::as_str) {
        Some(t) => Some(t),
        None if schema.get("properties").is_some()
            || schema.get("additionalProperties").is_some() =>
        {
            Some("object")
        }
        None if schema.get("allOf").is_some() => Some("object"),
        None => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, as RFC 3339 requires (`T`/`Z` any case).
fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|d| d.len() == r.len() && d.iter().all(u8::is_ascii_digit))
    };
    if !(digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && matches!(b.get(10), Some(b'T' | b't' | b' '))
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19))
    {
        return false;
    }
    let num = |r: std::ops::Range<usize>| {
        std::str::from_utf8(&b[r])
            .ok()
            .and_then(|t| t.parse::<u32>().ok())
            .unwrap_or(99)
    };
    if !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 60
    {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len() && digits(i + 1..i + 3) && b[i + 3] == b':' && digits(i + 4..i + 6)
        }
        _ => false,
    }
}

/// ISO 8601 duration such as `PT15M`, `P1D`, `P10675199DT2H48M5.4775807S`.
fn is_duration(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('P') else {
        return false;
    };
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => {
            if t.is_empty() {
                return false;
            }
            (d, Some(t))
        }
        None => (rest, None),
    };
    if date.is_empty() && time.is_none() {
        return false;
    }
    fn units(part: &str, allowed: &[char], fraction_last: bool) -> bool {
        let mut idx = 0;
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || (c == '.' && fraction_last) {
                num.push(c);
                continue;
            }
            let Some(pos) = allowed.iter().skip(idx).position(|a| *a == c) else {
                return false;
            };
            if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
                return false;
            }
            if num.contains('.') && c != 'S' {
                return false;
            }
            idx += pos + 1;
            num.clear();
        }
        num.is_empty()
    }
    units(date, &['Y', 'M', 'W', 'D'], false)
        && time.is_none_or(|t| units(t, &['H', 'M', 'S'], true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> &'static Spec {
        Spec::shared()
    }

    fn messages(r: Result<(), Vec<Violation>>) -> Vec<String> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.to_string())
            .collect()
    }

    #[test]
    fn loads_vendored_spec() {
        assert_eq!(spec().api_version(), "2024-07-01.20.0");
        assert!(spec().has_definition("TaskAddParameter"));
        assert!(spec().operations().count() > 50);
    }

    #[test]
    fn accepts_minimal_task() {
        let body = json!({"id": "t1", "commandLine": "/bin/true"});
        assert_eq!(spec().validate("TaskAddParameter", &body), Ok(()));
    }

    #[test]
    fn required_missing() {
        let m = messages(spec().validate("TaskAddParameter", &json!({"id": "t1"})));
        assert_eq!(m, vec!["(root): missing required property \"commandLine\""]);
    }

    #[test]
    fn wrong_type() {
        let body = json!({"id": "t1", "commandLine": 5, "requiredSlots": "1"});
        let errs = spec()
            .validate("TaskAddParameter", &body)
            .expect_err("expected violations");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].pointer, "/commandLine");
        assert!(errs[0].message.contains("expected a string"));
        assert_eq!(errs[1].pointer, "/requiredSlots");
        assert!(errs[1].message.contains("expected an integer"));
    }

    #[test]
    fn unknown_property_strict_only() {
        let body = json!({"id": "t1", "commandLine": "x", "comandLine": "typo"});
        let errs = spec()
            .validate("TaskAddParameter", &body)
            .expect_err("expected violations");
        assert_eq!(
            errs,
            vec![Violation {
                pointer: "/comandLine".into(),
                message: "unknown property \"comandLine\"".into()
            }]
        );
        assert_eq!(spec().validate_lenient("TaskAddParameter", &body), Ok(()));
    }

    #[test]
    fn bad_enum_and_exact_spelling() {
        let body =
            json!({"id": "j", "poolInfo": {"poolId": "p"}, "onAllTasksComplete": "terminateJob"});
        let errs = spec()
            .validate("JobAddParameter", &body)
            .expect_err("expected violations");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].pointer, "/onAllTasksComplete");
        assert!(
            errs[0].message.contains("noaction|terminatejob"),
            "{}",
            errs[0]
        );
        let ok =
            json!({"id": "j", "poolInfo": {"poolId": "p"}, "onAllTasksComplete": "terminatejob"});
        assert_eq!(spec().validate("JobAddParameter", &ok), Ok(()));
    }

    #[test]
    fn int32_overflow() {
        let body = json!({"id": "t", "commandLine": "x", "requiredSlots": 2147483648u64});
        let errs = spec()
            .validate("TaskAddParameter", &body)
            .expect_err("expected violations");
        assert_eq!(errs[0].pointer, "/requiredSlots");
        assert!(errs[0].message.contains("int32"));
        let ok = json!({"id": "t", "commandLine": "x", "requiredSlots": 2147483647});
        assert_eq!(spec().validate("TaskAddParameter", &ok), Ok(()));
        let frac = json!({"id": "t", "commandLine": "x", "requiredSlots": 1.5});
        assert!(spec().validate("TaskAddParameter", &frac).is_err());
    }

    #[test]
    fn max_items_on_addtaskcollection() {
        let tasks = |n: usize| {
            let value: Vec<Value> = (0..n)
                .map(|i| json!({"id": format!("t{i}"), "commandLine": "x"}))
                .collect();
            json!({ "value": value })
        };
        assert_eq!(
            spec().validate("TaskAddCollectionParameter", &tasks(100)),
            Ok(())
        );
        let errs = spec()
            .validate("TaskAddCollectionParameter", &tasks(101))
            .expect_err("expected violations");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].pointer, "/value");
        assert!(errs[0].message.contains("maxItems 100"));
    }

    #[test]
    fn nested_ref_errors_have_pointers() {
        let body = json!({
            "value": [
                {"id": "a", "commandLine": "x"},
                {"id": "b", "commandLine": "x",
                 "multiInstanceSettings": {"numberOfInstances": 2},
                 "containerSettings": {"imageName": "i", "workingDirectory": "bogus",
                     "containerHostBatchBindMounts": [{"source": "Shared", "isReadOnly": "yes"}]},
                 "resourceFiles": [{"httpUrl": "http://x", "filePath": "f", "extra": 1}]}
            ]
        });
        let errs = spec()
            .validate("TaskAddCollectionParameter", &body)
            .expect_err("expected violations");
        let pointers: Vec<&str> = errs.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            vec![
                "/value/1/multiInstanceSettings",
                "/value/1/containerSettings/workingDirectory",
                "/value/1/containerSettings/containerHostBatchBindMounts/0/isReadOnly",
                "/value/1/resourceFiles/0/extra",
            ],
            "{errs:?}"
        );
        assert!(errs[0].message.contains("coordinationCommandLine"));
    }

    #[test]
    fn additional_properties_map_and_null() {
        let mut pool = json!({"id": "p", "vmSize": "standard_d2s_v3",
            "resourceTags": {"team": "hpc", "cost": 5}});
        let errs = spec()
            .validate("PoolAddParameter", &pool)
            .expect_err("expected violations");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].pointer, "/resourceTags/cost");
        pool["resourceTags"]["cost"] = json!("5");
        assert_eq!(spec().validate("PoolAddParameter", &pool), Ok(()));
        pool["enableInterNodeCommunication"] = Value::Null;
        let errs = spec()
            .validate("PoolAddParameter", &pool)
            .expect_err("expected violations");
        assert_eq!(errs[0].pointer, "/enableInterNodeCommunication");
    }

    #[test]
    fn formats() {
        let mut job = json!({"id": "j", "poolInfo": {"poolId": "p"},
            "constraints": {"maxWallClockTime": "PT1H30M", "maxTaskRetryCount": 3}});
        assert_eq!(spec().validate("JobAddParameter", &job), Ok(()));
        job["constraints"]["maxWallClockTime"] = json!("90 minutes");
        let errs = spec()
            .validate("JobAddParameter", &job)
            .expect_err("expected violations");
        assert_eq!(errs[0].pointer, "/constraints/maxWallClockTime");
        assert!(is_date_time("2024-01-02T03:04:05.1234567Z"));
        assert!(is_date_time("2024-01-02T03:04:05+01:00"));
        assert!(!is_date_time("2024-13-02T03:04:05Z"));
        assert!(!is_date_time("yesterday"));
        assert!(is_duration("P10675199DT2H48M5.4775807S"));
        assert!(is_duration("PT0S"));
        assert!(!is_duration("P"));
        assert!(!is_duration("PT"));
        assert!(!is_duration("PT1.5M"));
    }

    #[test]
    fn unknown_definition_is_a_violation() {
        let errs = spec()
            .validate("NoSuchThing", &json!({}))
            .expect_err("expected violations");
        assert!(errs[0].message.contains("NoSuchThing"));
    }

    #[test]
    fn path_matching() {
        let s = spec();
        let op = s
            .operation("GET", "/jobs/job-1/tasks/task%2F2")
            .expect("Task_Get");
        assert_eq!(op.id, "Task_Get");
        assert_eq!(
            op.path_params,
            vec![
                ("jobId".to_string(), "job-1".to_string()),
                ("taskId".to_string(), "task/2".to_string())
            ]
        );
        assert_eq!(op.body_definition, None);
        assert_eq!(op.required_query, vec!["api-version"]);
        assert_eq!(op.success_statuses, vec![200]);

        let op = s
            .operation("post", "/jobs/j/addtaskcollection")
            .expect("collection");
        assert_eq!(op.id, "Task_AddCollection");
        assert_eq!(op.body_definition, Some("TaskAddCollectionParameter"));
        assert!(op.body_required);

        let op = s.operation("POST", "/jobs/j/tasks").expect("Task_Add");
        assert_eq!(
            (op.id, op.body_definition),
            ("Task_Add", Some("TaskAddParameter"))
        );
        assert_eq!(op.success_statuses, vec![201]);
        assert_eq!(
            s.operation("GET", "/jobs/j/tasks").map(|o| o.id),
            Some("Task_List")
        );
        assert_eq!(
            s.operation("POST", "/pools").map(|o| o.id),
            Some("Pool_Add")
        );
        assert_eq!(
            s.operation("HEAD", "/pools/p").map(|o| o.id),
            Some("Pool_Exists")
        );
        assert_eq!(
            s.operation("POST", "/jobs/j/terminate")
                .map(|o| (o.id, o.body_required)),
            Some(("Job_Terminate", false))
        );

        let op = s
            .operation("GET", "/jobs/j/tasks/t/files/wd/out dir/stdout.txt")
            .expect("file");
        assert_eq!(op.id, "File_GetFromTask");
        assert_eq!(
            op.path_params[2],
            ("filePath".into(), "wd/out dir/stdout.txt".into())
        );
        assert_eq!(
            s.operation("GET", "/jobs/j/tasks/t/files").map(|o| o.id),
            Some("File_ListFromTask")
        );

        let op = s
            .operation(
                "GET",
                "/certificates(thumbprintAlgorithm=sha1,thumbprint=abc)",
            )
            .expect("cert");
        assert_eq!(op.id, "Certificate_Get");
        assert_eq!(op.path_params[1], ("thumbprint".into(), "abc".into()));

        assert!(s.operation("GET", "/jobs/j/nonsense").is_none());
        assert!(s.operation("PUT", "/pools").is_none());
        assert!(s.operation("GET", "/jobs//tasks").is_none());
    }

    #[test]
    fn response_definitions() {
        let s = spec();
        assert_eq!(
            s.response_definition("Task_List", 200),
            Some("CloudTaskListResult")
        );
        assert_eq!(
            s.response_definition("Task_AddCollection", 200),
            Some("TaskAddCollectionResult")
        );
        assert_eq!(
            s.response_definition("Task_Add", 201),
            None,
            "201 has no body"
        );
        assert_eq!(s.response_definition("Task_Add", 409), Some("BatchError"));
        assert_eq!(
            s.response_definition("File_GetFromTask", 200),
            None,
            "byte stream"
        );
        assert_eq!(s.response_definition("No_Such", 200), None);
        let op = s.operation_by_id("Pool_Exists").expect("Pool_Exists");
        assert_eq!(op.success_statuses, vec![200, 404]);
        assert!(op.path_params.is_empty());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2fc"), "a b/c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }
}
