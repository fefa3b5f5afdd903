//! Dynamic runtime plugins: a versioned C ABI exchanging JSON, loaded with [`libloading`].
//!
//! This is the only module of the workspace that allows `unsafe` code.
//!
//! # The ABI (version 1)
//!
//! A plugin is a shared library (`cdylib`) exporting one symbol, [`ENTRY_SYMBOL`]
//! (`shipyard_runtime_plugin_v1`), of type `extern "C" fn() -> *const PluginTableV1`. The table
//! ([`PluginTableV1`], `#[repr(C)]`) holds, in this order:
//!
//! 1. `abi_version: u32` — must equal [`ABI_VERSION`] (checked before anything else is read);
//! 2. `name: *const c_char` — the runtime's name, NUL-terminated UTF-8, valid while loaded;
//! 3. `plan: extern "C" fn(input: *const u8, input_len: usize) -> PluginBuffer` — `input` is
//!    UTF-8 JSON `{"abi_version": 1, "job": <JobSpec>, "pool": <PoolFacts>}`; the returned buffer
//!    holds UTF-8 JSON, either `{"ok": <JobPlan>}` or
//!    `{"error": {"kind": "invalid_input" | "plan" | "panic", "message": "..."}}`;
//! 4. `free: extern "C" fn(PluginBuffer)` — releases a buffer returned by `plan` (the host
//!    copies the bytes and hands the buffer back; memory never changes allocator).
//!
//! The plugin must never unwind across the boundary: [`export::plan_entry`] (used by the
//! [`export_runtime_plugin!`](crate::export_runtime_plugin) macro) catches panics and reports
//! them as `{"error": {"kind": "panic", ...}}`. Plugins must be built with `panic = "unwind"`
//! (the default).
//!
//! # Writing a plugin
//!
//! ```ignore
//! #[derive(Debug, Default)]
//! struct MyRuntime;
//! impl shipyard_runtime::ContainerRuntime for MyRuntime { /* name() and plan() */ }
//! shipyard_runtime::export_runtime_plugin!("my-runtime", MyRuntime::default());
//! ```
//! with `crate-type = ["cdylib"]`; the crate must not `forbid(unsafe_code)` (the macro emits a
//! `#[no_mangle]` function). See `plugins/example-runtime`.
#![allow(unsafe_code)]

use std::ffi::c_char;
#[cfg(feature = "plugins")]
use std::ffi::CStr;
#[cfg(feature = "plugins")]
use std::path::Path;
use std::path::PathBuf;
#[cfg(feature = "plugins")]
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[cfg(feature = "plugins")]
use crate::error::RuntimeError;
use crate::{ContainerRuntime, JobPlan, JobSpec, PoolFacts};

/// The ABI version this crate speaks.
pub const ABI_VERSION: u32 = 1;
/// The symbol every plugin exports.
pub const ENTRY_SYMBOL: &str = "shipyard_runtime_plugin_v1";

/// A byte buffer owned by the plugin (returned by `plan`, released by `free`).
#[repr(C)]
#[derive(Debug)]
pub struct PluginBuffer {
    /// Start of the bytes.
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
    /// Allocated capacity (for the plugin's own deallocation).
    pub cap: usize,
}

impl PluginBuffer {
    /// Hands a vector's bytes over the boundary (release with [`export::free_buffer`]).
    pub fn from_vec(v: Vec<u8>) -> PluginBuffer {
        let mut v = std::mem::ManuallyDrop::new(v);
        PluginBuffer {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            cap: v.capacity(),
        }
    }
}

/// The function table of ABI version 1.
#[repr(C)]
#[derive(Debug)]
pub struct PluginTableV1 {
    /// Must be [`ABI_VERSION`].
    pub abi_version: u32,
    /// NUL-terminated UTF-8 runtime name.
    pub name: *const c_char,
    /// Plans a job: JSON in, JSON out.
    pub plan: extern "C" fn(input: *const u8, input_len: usize) -> PluginBuffer,
    /// Releases a buffer returned by `plan`.
    pub free: extern "C" fn(buffer: PluginBuffer),
}

// SAFETY: the table is immutable after construction and `name` points to static data.
unsafe impl Sync for PluginTableV1 {}

/// The entry point's type.
pub type EntryFn = extern "C" fn() -> *const PluginTableV1;

/// Errors of loading or calling a plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The library file does not exist.
    #[error("runtime plugin {}: no such file", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// A bare file name (no directory): the dynamic loader would search the library path for
    /// it instead of opening the file the user means.
    #[error("runtime plugin `{}`: give a path to the library file (such as ./{}), not a bare name: the dynamic loader would search the system library path for it", path.display(), path.display())]
    BareName {
        /// The name given.
        path: PathBuf,
    },
    /// The file exists but is not a loadable library.
    #[error("runtime plugin {}: cannot load it as a shared library: {reason}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The library lacks the entry symbol.
    #[error("runtime plugin {}: symbol `{symbol}` not found (is it a shipyard runtime plugin?): {reason}", path.display())]
    MissingSymbol {
        /// The file.
        path: PathBuf,
        /// The symbol looked up.
        symbol: String,
        /// The loader's message.
        reason: String,
    },
    /// The entry point returned a null table or a name that is not UTF-8.
    #[error("runtime plugin {}: invalid function table: {reason}", path.display())]
    BadTable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The plugin speaks another ABI version.
    #[error("runtime plugin {}: ABI version {found}, but this shipyard supports version {expected}", path.display())]
    WrongVersion {
        /// The file.
        path: PathBuf,
        /// The plugin's version.
        found: u32,
        /// [`ABI_VERSION`].
        expected: u32,
    },
    /// The plugin's answer is not the expected JSON.
    #[error("runtime plugin `{plugin}` returned malformed JSON: {reason}")]
    MalformedOutput {
        /// The runtime's name.
        plugin: String,
        /// The parser's message.
        reason: String,
    },
    /// The plugin panicked (caught inside the plugin).
    #[error("runtime plugin `{plugin}` panicked: {message}")]
    Panicked {
        /// The runtime's name.
        plugin: String,
        /// The panic message.
        message: String,
    },
    /// The plugin reported an error.
    #[error("runtime plugin `{plugin}` failed ({kind}): {message}")]
    Failed {
        /// The runtime's name.
        plugin: String,
        /// `invalid_input` or `plan`.
        kind: String,
        /// The plugin's message.
        message: String,
    },
}

/// The request JSON sent to a plugin.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRequest {
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// The job.
    pub job: JobSpec,
    /// The pool.
    pub pool: PoolFacts,
}

/// An error reported by a plugin.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginErrorBody {
    /// `invalid_input`, `plan` or `panic`.
    pub kind: String,
    /// Message.
    pub message: String,
}

/// The response JSON of a plugin.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PluginResponse {
    /// The plan.
    Ok(Box<JobPlan>),
    /// An error.
    Error(PluginErrorBody),
}

/// A runtime implemented by a loaded plugin library (cargo feature `plugins`, on by default).
#[cfg(feature = "plugins")]
#[derive(Debug)]
pub struct PluginRuntime {
    name: String,
    path: PathBuf,
    plan_fn: extern "C" fn(*const u8, usize) -> PluginBuffer,
    free_fn: extern "C" fn(PluginBuffer),
    // Keeps the code behind the function pointers mapped; dropped last.
    _lib: Arc<libloading::Library>,
}

/// The absolute, symlink-free path of the plugin file at `path`, which must name a file with
/// at least one directory component (`./x.so`, `/opt/x.so`): `dlopen` searches the library
/// path for a bare name, so a bare name is refused, and the canonical path is what is opened.
pub fn canonical_plugin_path(path: &Path) -> Result<PathBuf, PluginError> {
    let bare = path.parent().is_none_or(|p| p.as_os_str().is_empty());
    if bare {
        return Err(PluginError::BareName {
            path: path.to_path_buf(),
        });
    }
    let canonical = std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PluginError::NotFound {
            path: path.to_path_buf(),
        },
        _ => PluginError::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })?;
    if !canonical.is_file() {
        return Err(PluginError::Load {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    Ok(canonical)
}

#[cfg(feature = "plugins")]
impl PluginRuntime {
    /// Loads the plugin at `path` through [`ENTRY_SYMBOL`].
    pub fn load(path: &Path) -> Result<PluginRuntime, PluginError> {
        Self::load_symbol(path, ENTRY_SYMBOL)
    }

    /// Loads a plugin through another entry symbol of the same type (libraries exporting
    /// several runtimes; tests).
    pub fn load_symbol(path: &Path, symbol: &str) -> Result<PluginRuntime, PluginError> {
        let path = &canonical_plugin_path(path)?;
        // SAFETY: loading a library runs its initializers; plugins are trusted code chosen by
        // the user, as documented.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| PluginError::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        // SAFETY: the symbol's type is fixed by the documented ABI.
        let entry: EntryFn = unsafe { lib.get::<EntryFn>(symbol.as_bytes()) }
            .map(|s| *s)
            .map_err(|e| PluginError::MissingSymbol {
                path: path.to_path_buf(),
                symbol: symbol.to_string(),
                reason: e.to_string(),
            })?;
        let table = entry();
        if table.is_null() {
            return Err(PluginError::BadTable {
                path: path.to_path_buf(),
                reason: "the entry point returned a null table".into(),
            });
        }
        // SAFETY: every ABI version starts its table with the u32 version; read only that first.
        let found = unsafe { *(table as *const u32) };
        if found != ABI_VERSION {
            return Err(PluginError::WrongVersion {
                path: path.to_path_buf(),
                found,
                expected: ABI_VERSION,
            });
        }
        // SAFETY: the version matches, so the table has the v1 layout and lives as long as the
        // library, which we keep loaded.
        let table = unsafe { &*table };
        if table.name.is_null() {
            return Err(PluginError::BadTable {
                path: path.to_path_buf(),
                reason: "the runtime name is null".into(),
            });
        }
        // SAFETY: non-null, NUL-terminated per the ABI.
        let name = unsafe { CStr::from_ptr(table.name) }
            .to_str()
            .map_err(|e| PluginError::BadTable {
                path: path.to_path_buf(),
                reason: format!("the runtime name is not UTF-8: {e}"),
            })?
            .to_string();
        if name.is_empty() {
            return Err(PluginError::BadTable {
                path: path.to_path_buf(),
                reason: "the runtime name is empty".into(),
            });
        }
        Ok(PluginRuntime {
            name,
            path: path.to_path_buf(),
            plan_fn: table.plan,
            free_fn: table.free,
            _lib: Arc::new(lib),
        })
    }

    /// The library file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn call(&self, input: &[u8]) -> Vec<u8> {
        let buf = (self.plan_fn)(input.as_ptr(), input.len());
        let out = if buf.ptr.is_null() || buf.len == 0 {
            Vec::new()
        } else {
            // SAFETY: the plugin returned `len` initialized bytes at `ptr`, valid until `free`.
            unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec()
        };
        (self.free_fn)(buf);
        out
    }
}

#[cfg(feature = "plugins")]
impl ContainerRuntime for PluginRuntime {
    fn name(&self) -> &str {
        &self.name
    }

    fn plan(&self, job: &JobSpec, pool: &PoolFacts) -> Result<JobPlan, RuntimeError> {
        let request = PluginRequest {
            abi_version: ABI_VERSION,
            job: job.clone(),
            pool: pool.clone(),
        };
        let input = serde_json::to_vec(&request).map_err(|e| {
            RuntimeError::invalid(
                crate::error::Field::job(&job.id),
                format!("cannot serialize for the plugin: {e}"),
            )
        })?;
        let out = self.call(&input);
        let response: PluginResponse =
            serde_json::from_slice(&out).map_err(|e| PluginError::MalformedOutput {
                plugin: self.name.clone(),
                reason: e.to_string(),
            })?;
        match response {
            PluginResponse::Ok(plan) => Ok(*plan),
            PluginResponse::Error(e) if e.kind == "panic" => Err(PluginError::Panicked {
                plugin: self.name.clone(),
                message: e.message,
            }
            .into()),
            PluginResponse::Error(e) => Err(PluginError::Failed {
                plugin: self.name.clone(),
                kind: e.kind,
                message: e.message,
            }
            .into()),
        }
    }
}

/// Plugin-side helpers (used by [`export_runtime_plugin!`](crate::export_runtime_plugin)).
pub mod export {
    use super::*;

    /// Releases a buffer made by [`PluginBuffer::from_vec`] (the table's `free`).
    pub extern "C" fn free_buffer(buffer: PluginBuffer) {
        if buffer.ptr.is_null() {
            return;
        }
        // SAFETY: the buffer came from `PluginBuffer::from_vec` in this same library.
        drop(unsafe { Vec::from_raw_parts(buffer.ptr, buffer.len, buffer.cap) });
    }

    fn respond(response: &PluginResponse) -> PluginBuffer {
        let bytes = serde_json::to_vec(response).unwrap_or_else(|e| {
            format!(
                "{{\"error\":{{\"kind\":\"plan\",\"message\":{}}}}}",
                serde_json::Value::String(format!("cannot serialize the plan: {e}"))
            )
            .into_bytes()
        });
        PluginBuffer::from_vec(bytes)
    }

    fn error(kind: &str, message: String) -> PluginBuffer {
        respond(&PluginResponse::Error(PluginErrorBody {
            kind: kind.into(),
            message,
        }))
    }

    /// The body of a plugin's `plan` function: parses the request, runs `make()`'s runtime and
    /// encodes the answer; a panic anywhere in it is caught and reported.
    ///
    /// # Safety
    ///
    /// `input` must point to `input_len` readable bytes (or be null with length 0).
    pub unsafe fn plan_entry<R: ContainerRuntime>(
        input: *const u8,
        input_len: usize,
        make: fn() -> R,
    ) -> PluginBuffer {
        let bytes: &[u8] = if input.is_null() || input_len == 0 {
            &[]
        } else {
            // SAFETY: guaranteed by the caller.
            unsafe { std::slice::from_raw_parts(input, input_len) }
        };
        let result = std::panic::catch_unwind(move || {
            let request: PluginRequest = match serde_json::from_slice(bytes) {
                Ok(r) => r,
                Err(e) => return error("invalid_input", format!("malformed request: {e}")),
            };
            if request.abi_version != ABI_VERSION {
                return error(
                    "invalid_input",
                    format!(
                        "request ABI version {} but the plugin speaks {ABI_VERSION}",
                        request.abi_version
                    ),
                );
            }
            match make().plan(&request.job, &request.pool) {
                Ok(plan) => respond(&PluginResponse::Ok(Box::new(plan))),
                Err(e) => error("plan", e.to_string()),
            }
        });
        match result {
            Ok(buf) => buf,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string panic payload".into());
                error("panic", message)
            }
        }
    }
}

/// Exports a runtime as a shipyard plugin: `export_runtime_plugin!("name", constructor_expr);`
/// defines the [`ENTRY_SYMBOL`] function and its static table. The name must be a string literal
/// and should equal the runtime's [`ContainerRuntime::name`].
#[macro_export]
macro_rules! export_runtime_plugin {
    ($name:literal, $make:expr) => {
        const _: () = {
            extern "C" fn __shipyard_plugin_plan(
                input: *const u8,
                input_len: usize,
            ) -> $crate::plugin::PluginBuffer {
                fn make() -> impl $crate::ContainerRuntime {
                    $make
                }
                // SAFETY: the host passes `input_len` readable bytes, per the ABI.
                unsafe { $crate::plugin::export::plan_entry(input, input_len, make) }
            }
            static __SHIPYARD_PLUGIN_TABLE: $crate::plugin::PluginTableV1 =
                $crate::plugin::PluginTableV1 {
                    abi_version: $crate::plugin::ABI_VERSION,
                    name: concat!($name, "\0").as_ptr() as *const ::std::ffi::c_char,
                    plan: __shipyard_plugin_plan,
                    free: $crate::plugin::export::free_buffer,
                };
            #[no_mangle]
            pub extern "C" fn shipyard_runtime_plugin_v1() -> *const $crate::plugin::PluginTableV1 {
                &__SHIPYARD_PLUGIN_TABLE
            }
        };
    };
}

#[cfg(all(test, feature = "plugins"))]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_refused_before_the_loader_searches_for_it() {
        // libc.so.6 is on every loader path here: dlopen("libc.so.6") would succeed.
        let e = PluginRuntime::load(Path::new("libc.so.6"))
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(
            e.contains("not a bare name") && e.contains("./libc.so.6"),
            "{e}"
        );
    }

    #[test]
    fn the_canonical_path_is_what_gets_opened() {
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        assert!(libc.exists(), "this test needs {}", libc.display());
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("sub/../plugin.so");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(libc, dir.path().join("plugin.so")).unwrap();
        // libc has no plugin entry point: the error names the file that was really opened.
        match PluginRuntime::load(&link) {
            Err(PluginError::MissingSymbol { path, .. }) => {
                assert_eq!(path, std::fs::canonicalize(libc).unwrap())
            }
            other => panic!("{:?}", other.err()),
        }
        assert!(matches!(
            PluginRuntime::load(&dir.path().join("missing.so")),
            Err(PluginError::NotFound { .. })
        ));
        assert!(matches!(
            PluginRuntime::load(dir.path()),
            Err(PluginError::Load { .. })
        ));
    }
}
