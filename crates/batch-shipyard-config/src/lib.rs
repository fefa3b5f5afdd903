//! Reads Batch Shipyard's configuration (`credentials.yaml`, `config.yaml`, `pool.yaml`,
//! `jobs.yaml`, or their JSON twins) and translates it into the equivalent shipyard TOML.
//!
//! * Every node of the YAML knows its line and column ([`yaml`], built on the maintained,
//!   pure-Rust `saphyr-parser`; JSON is read by the same parser after `serde_json` checked
//!   its syntax), so errors name `file:line:col` with a rustc-style snippet and a "did you
//!   mean" hint for unknown keys. Secret values never appear in a snippet.
//! * Every key Batch Shipyard documents is in the [`catalogue`]: copied, translated,
//!   warned about or refused, by name and with the reason. Unknown keys are errors.
//! * The result ([`Translation`]) is a `toml_edit` document with a `#` comment wherever the
//!   meaning changed, a span map from TOML field paths back to YAML locations (for errors the
//!   TOML loader finds later), the warnings, and the keys shipyard's loader does not know yet.
//!
//! ```
//! use shipyard_bs_config::{translate_sources, SourceFile, TranslateOptions};
//! let pool = SourceFile::new("pool.yaml", "pool_specification:\n  id: p\n  vm_size: STANDARD_HB60rs\n  vm_count:\n    dedicated: 2\n  vm_configuration:\n    platform_image:\n      publisher: microsoft-dsvm\n      offer: ubuntu-hpc\n      sku: '2204'\n");
//! let t = translate_sources(vec![pool], TranslateOptions::default()).unwrap();
//! assert!(t.to_toml_string().contains("node_agent_sku_id = \"batch.node.ubuntu 22.04\""));
//! assert_eq!(t.yaml_location("pool_specification.vm_count").unwrap().line, 4);
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod catalogue;
pub mod error;
pub mod semantics;
pub mod source;
mod translate;
pub mod yaml;

use std::path::{Path, PathBuf};

pub use error::{BsConfigError, Location, Warning};
pub use source::SourceFile;
pub use translate::{TranslateOptions, Translation};

/// File stems looked up in a `--configdir`, in this order; each as `.yaml`, `.yml` or `.json`.
pub const CONFIGDIR_STEMS: [&str; 4] = ["credentials", "config", "pool", "jobs"];

/// Translates the Batch Shipyard files of `dir` (any subset of [`CONFIGDIR_STEMS`]).
pub fn translate_dir(dir: &Path, opts: TranslateOptions) -> Result<Translation, BsConfigError> {
    let mut paths = Vec::new();
    for stem in CONFIGDIR_STEMS {
        for ext in ["yaml", "yml", "json"] {
            let p = dir.join(format!("{stem}.{ext}"));
            if p.is_file() {
                paths.push(p);
                break;
            }
        }
    }
    if paths.is_empty() {
        return Err(BsConfigError::Missing {
            what: format!(
                "no Batch Shipyard configuration in {} (looked for credentials, config, pool and jobs .yaml/.yml/.json)",
                dir.display()
            ),
        });
    }
    translate_files(&paths, opts)
}

/// Translates the given files (each may hold any of the top-level sections).
pub fn translate_files(
    paths: &[PathBuf],
    opts: TranslateOptions,
) -> Result<Translation, BsConfigError> {
    let sources = paths
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|text| SourceFile::new(p.clone(), text))
                .map_err(|source| BsConfigError::Read {
                    path: p.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    translate_sources(sources, opts)
}

fn is_credentials(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.to_ascii_lowercase().contains("credentials"))
}

fn parse_source(src: &mut SourceFile) -> Result<Option<yaml::Node>, BsConfigError> {
    let is_json = src
        .path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_credentials(&src.path) {
        // until the tree exists we cannot tell where the secrets are
        src.hide_all_lines();
    }
    if is_json {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&src.text) {
            let pos = yaml::Pos {
                line: e.line().max(1),
                column: e.column().max(1),
            };
            return Err(BsConfigError::Syntax {
                location: Box::new(src.location(pos, 1)),
                message: format!("invalid JSON: {e}"),
            });
        }
    }
    let root = yaml::parse(&src.text).map_err(|e| BsConfigError::Syntax {
        location: Box::new(src.location(e.pos, 1)),
        message: e.message,
    })?;
    let mut fresh = SourceFile::new(src.path.clone(), std::mem::take(&mut src.text));
    if let Some(r) = &root {
        fresh.collect_secrets(r);
    }
    *src = fresh;
    Ok(root)
}

/// Translates already-read files.
pub fn translate_sources(
    mut sources: Vec<SourceFile>,
    opts: TranslateOptions,
) -> Result<Translation, BsConfigError> {
    let mut roots = Vec::with_capacity(sources.len());
    for src in &mut sources {
        roots.push(parse_source(src)?);
    }
    // one section per file set: a top-level key given twice is an error naming both places
    let mut seen: Vec<(String, Location)> = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        for (k, _) in root.as_ref().and_then(|r| r.entries()).unwrap_or_default() {
            let key = k.as_text().unwrap_or_default().to_string();
            let here = sources[i].location(k.pos, k.width);
            if let Some((_, first)) = seen.iter().find(|(s, _)| *s == key) {
                return Err(BsConfigError::Duplicate {
                    section: key,
                    first: Box::new(first.clone()),
                    second: Box::new(here),
                });
            }
            seen.push((key, here));
        }
    }
    let mut order: Vec<usize> = (0..sources.len()).collect();
    let rank = |p: &Path| {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        CONFIGDIR_STEMS
            .iter()
            .position(|s| stem.contains(s))
            .unwrap_or(CONFIGDIR_STEMS.len())
    };
    order.sort_by_key(|&i| rank(&sources[i].path));
    let mut doc = toml_edit::DocumentMut::new();
    let mut ctx = translate::Ctx::new(&sources, opts);
    for i in order {
        if let Some(root) = &roots[i] {
            ctx.root(i, root, doc.as_table_mut())?;
        }
    }
    Ok(ctx.finish(doc))
}

/// The closest candidate to `bad` (Jaro-Winkler ≥ 0.8 or edit distance ≤ 2), as shipyard's TOML
/// loader suggests.
pub fn suggest<'a>(bad: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    candidates
        .map(|c| (strsim::jaro_winkler(bad, c), strsim::levenshtein(bad, c), c))
        .filter(|(jw, lev, _)| *jw >= 0.8 || *lev <= 2)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, _, c)| c.to_string())
}
