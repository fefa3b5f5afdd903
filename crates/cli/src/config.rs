//! shipyard's TOML configuration: one file, or split files as Batch Shipyard users know them
//! (`credentials.toml`, `pool.toml`, `jobs.toml`).
//!
//! Every file may hold any of the top-level sections; they are merged, and a section given twice
//! is an error naming both files:
//!
//! ```toml
//! [credentials.batch]                 # only for --target azure
//! account_name = "mybatch"
//! account_service_url = "https://mybatch.westeurope.batch.azure.com"
//! # account_key comes from SHIPYARD_BATCH_ACCOUNT_KEY, never from a committed file
//!
//! [pool_specification]
//! id = "mpipool"
//! vm_size = "Standard_HB120rs_v3"
//! vm_count = 3
//! inter_node_communication_enabled = true
//!
//! [[job_specifications]]
//! id = "hello"
//! [[job_specifications.tasks]]
//! image = "shipyard/mpi:bookworm"
//! command = "/opt/shipyard/bin/mpi-hello-openmpi"
//! ```
//!
//! Errors name the file, line and column and the field path, and unknown keys come with a
//! "did you mean" hint. Secrets ([`Secret`]) never appear in `Debug` output.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use shipyard_bs_config::{TranslateOptions, Translation};
use shipyard_runtime::{Field, FieldPath, JobSpec, PoolSpec, RuntimeError, Scope, Segment};

/// Environment variable with the Batch account name (wins over the config).
pub const ENV_ACCOUNT_NAME: &str = "SHIPYARD_BATCH_ACCOUNT_NAME";
/// Environment variable with the Batch account URL (wins over the config).
pub const ENV_ACCOUNT_URL: &str = "SHIPYARD_BATCH_ACCOUNT_URL";
/// Environment variable with the Batch account's Shared Key (wins over the config).
pub const ENV_ACCOUNT_KEY: &str = "SHIPYARD_BATCH_ACCOUNT_KEY";
/// Environment variable with the Entra ID tenant.
pub const ENV_AAD_TENANT: &str = "SHIPYARD_AAD_TENANT_ID";
/// Environment variable with the Entra ID application (client) id.
pub const ENV_AAD_CLIENT_ID: &str = "SHIPYARD_AAD_CLIENT_ID";
/// Environment variable with the Entra ID client secret.
pub const ENV_AAD_CLIENT_SECRET: &str = "SHIPYARD_AAD_CLIENT_SECRET";

pub use shipyard_batch_api::Secret;

/// `[credentials]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// `[credentials.batch]`: the Azure Batch account.
    #[serde(default)]
    pub batch: Option<BatchCredentials>,
    /// `[credentials.storage.<link>]`: storage accounts that `input_data`/`output_data` name.
    #[serde(default)]
    pub storage: std::collections::BTreeMap<String, StorageCredentials>,
    /// `[credentials.docker_registry.<server>]`: private registry logins.
    #[serde(default)]
    pub docker_registry: std::collections::BTreeMap<String, RegistryCredentials>,
}

/// `[credentials.storage.<link>]`: a storage account signed with its key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageCredentials {
    /// The storage account name.
    #[serde(default)]
    pub account: Option<String>,
    /// The account key (env `SHIPYARD_STORAGE_ACCOUNT_KEY_<LINK>`; prefer the environment).
    #[serde(default)]
    pub account_key: Option<Secret>,
    /// The endpoint suffix, default `core.windows.net`.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// `[credentials.docker_registry.<server>]`: a registry login.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    /// The user name.
    #[serde(default)]
    pub username: Option<String>,
    /// The password or token.
    #[serde(default)]
    pub password: Option<Secret>,
}

/// `[credentials.batch]`: an Azure Batch account reached with Shared Key or Entra ID.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchCredentials {
    /// The Batch account name (env `SHIPYARD_BATCH_ACCOUNT_NAME`).
    #[serde(default)]
    pub account_name: Option<String>,
    /// The account endpoint, e.g. `https://mybatch.westeurope.batch.azure.com`
    /// (env `SHIPYARD_BATCH_ACCOUNT_URL`).
    #[serde(default)]
    pub account_service_url: Option<String>,
    /// The Shared Key (env `SHIPYARD_BATCH_ACCOUNT_KEY`; prefer the environment).
    #[serde(default)]
    pub account_key: Option<Secret>,
    /// `[credentials.batch.aad]`: Entra ID service principal instead of Shared Key.
    #[serde(default)]
    pub aad: Option<AadCredentials>,
    /// Send credentials to hosts outside the Azure clouds' Batch and Entra ID hosts (a private
    /// endpoint or proxy); https is still required off loopback. See `docs/security.md`.
    #[serde(default)]
    pub allow_custom_endpoints: bool,
}

/// `[credentials.batch.aad]`: a Microsoft Entra ID service principal.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AadCredentials {
    /// Directory (tenant) id (env `SHIPYARD_AAD_TENANT_ID`).
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Application (client) id (env `SHIPYARD_AAD_CLIENT_ID`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Client secret (env `SHIPYARD_AAD_CLIENT_SECRET`; prefer the environment).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// Authority host, default `https://login.microsoftonline.com`.
    #[serde(default)]
    pub authority_url: Option<String>,
}

/// `[local]`: settings of the local backend.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// Where job state and task output live (default `~/.local/state/shipyard`).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Tasks run at once (default: the number of CPUs).
    #[serde(default)]
    pub max_parallel_tasks: Option<usize>,
    /// Extra labels on every Docker object of local runs (tests use `shipyard.test = "1"`).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// One TOML file as written; all sections optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    credentials: Option<Credentials>,
    #[serde(default)]
    pool_specification: Option<PoolSpec>,
    #[serde(default)]
    job_specifications: Option<Vec<JobSpec>>,
    #[serde(default)]
    local: Option<LocalSettings>,
}

const TOP_LEVEL_KEYS: [&str; 4] = [
    "credentials",
    "pool_specification",
    "job_specifications",
    "local",
];

/// A position in a config file (the type Batch Shipyard files are located with, too).
pub use shipyard_bs_config::Location;

/// Everything that can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error or a value of the wrong shape, an unknown key, a bad enum value.
    #[error("{location}: {}{message}{}", field_prefix(field), hint_suffix(hint))]
    Parse {
        /// Where.
        location: Box<Location>,
        /// Field path, e.g. `job_specifications[0].tasks[0].multi_instance`.
        field: Option<String>,
        /// What is wrong.
        message: String,
        /// "did you mean" suggestion.
        hint: Option<String>,
    },
    /// A value that parses but is not acceptable.
    #[error("{}: `{field}`: {reason}", location.as_ref().map(|l| l.to_string()).unwrap_or_else(|| file.display().to_string()))]
    Invalid {
        /// The file the section came from.
        file: PathBuf,
        /// Where, when the field could be found in the file.
        location: Option<Box<Location>>,
        /// Field path.
        field: String,
        /// Why.
        reason: String,
    },
    /// The same section appears in two files.
    #[error("section `{section}` is given twice: in {} and in {}", first.display(), second.display())]
    Duplicate {
        /// The section (`pool_specification`, `credentials`, `local`).
        section: String,
        /// First file.
        first: PathBuf,
        /// Second file.
        second: PathBuf,
    },
    /// A Batch Shipyard YAML/JSON file could not be read or translated (located in it).
    #[error(transparent)]
    BatchShipyard(Box<shipyard_bs_config::BsConfigError>),
    /// Something the command needs is not configured.
    #[error("{what}; {hint}")]
    Missing {
        /// What is missing.
        what: String,
        /// How to provide it.
        hint: String,
    },
}

fn field_prefix(field: &Option<String>) -> String {
    match field {
        Some(f) if !f.is_empty() && f != "." => format!("`{f}`: "),
        _ => String::new(),
    }
}

fn hint_suffix(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!(" (did you mean `{h}`?)"),
        None => String::new(),
    }
}

impl ConfigError {
    /// The location of the error, when it has one.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Parse { location, .. } => Some(location),
            ConfigError::Invalid { location, .. } => location.as_deref(),
            _ => None,
        }
    }

    /// A rustc-style snippet pointing at the error (empty when there is no location).
    pub fn snippet(&self) -> String {
        if let ConfigError::BatchShipyard(e) = self {
            return e.snippet();
        }
        self.location().map_or_else(String::new, Location::snippet)
    }
}

/// A job of the configuration with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedJob {
    /// The job.
    pub spec: JobSpec,
    /// Index of its file in [`Config::files`].
    pub file: usize,
    /// Index in that file's `job_specifications`.
    pub index: usize,
}

/// `job_specifications[i]` of a loaded job.
fn job_path(job: &LoadedJob) -> FieldPath {
    FieldPath::root().key("job_specifications").index(job.index)
}

/// A source file that was read.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Its path as given (for Batch Shipyard files: the first of them).
    pub path: PathBuf,
    /// Its TOML text (for Batch Shipyard files: their translation).
    pub text: String,
    /// For Batch Shipyard YAML/JSON files: their translation, whose span map locates errors
    /// in the YAML.
    pub translation: Option<Box<Translation>>,
}

impl SourceFile {
    /// Where `field` is: in the YAML for a translation, else in the TOML text.
    fn locate(&self, field: &FieldPath) -> Option<Location> {
        match &self.translation {
            Some(t) => t.yaml_location(&field.to_string()).cloned(),
            None => locate_field(&self.path, &self.text, field),
        }
    }
}

/// Whether `path` is a Batch Shipyard configuration file (`.yaml`, `.yml`, `.json`).
pub fn is_batch_shipyard_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["yaml", "yml", "json"].contains(&e.to_ascii_lowercase().as_str()))
}

/// The merged configuration of one or more files.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The files, in load order.
    pub files: Vec<SourceFile>,
    /// `[credentials]` (after environment overrides).
    pub credentials: Credentials,
    /// `[pool_specification]` and its file index.
    pub pool: Option<(PoolSpec, usize)>,
    /// All `[[job_specifications]]`.
    pub jobs: Vec<LoadedJob>,
    /// `[local]`.
    pub local: LocalSettings,
    /// Index in [`Config::files`] of the file with `[credentials]`.
    pub credentials_file: Option<usize>,
    /// `account_service_url` came from `SHIPYARD_BATCH_ACCOUNT_URL`.
    pub account_url_from_env: bool,
    /// Warnings of the Batch Shipyard translation (keys ignored or changed), located.
    pub warnings: Vec<String>,
}

/// File names looked up in a `--configdir`, in order.
pub const CONFIGDIR_FILES: [&str; 4] =
    ["config.toml", "credentials.toml", "pool.toml", "jobs.toml"];

impl Config {
    /// Reads and merges `paths`, applies environment overrides; does not validate jobs.
    ///
    /// Batch Shipyard YAML/JSON files among `paths` ([`is_batch_shipyard_file`]) are
    /// translated together (`shipyard_bs_config`, secrets kept in memory) and loaded as one
    /// more TOML source, after the TOML files; its errors are located in the YAML.
    pub fn load(paths: &[PathBuf]) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let mut sources: [Option<usize>; 3] = [None, None, None];
        let (yaml, toml): (Vec<PathBuf>, Vec<PathBuf>) = paths
            .iter()
            .cloned()
            .partition(|p| is_batch_shipyard_file(p));
        let mut inputs = Vec::with_capacity(toml.len() + 1);
        for path in toml {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            inputs.push(SourceFile {
                path,
                text,
                translation: None,
            });
        }
        if let Some(first) = yaml.first() {
            let opts = TranslateOptions {
                include_secrets: true,
            };
            let t = shipyard_bs_config::translate_files(&yaml, opts)
                .map_err(|e| ConfigError::BatchShipyard(Box::new(e)))?;
            config
                .warnings
                .extend(t.warnings.iter().map(|w| w.to_string()));
            inputs.push(SourceFile {
                path: first.clone(),
                text: t.to_toml_string(),
                translation: Some(Box::new(t)),
            });
        }
        for file in inputs {
            let path = &file.path.clone();
            let idx = config.files.len();
            let parsed = parse_file(path, &file.text).map_err(|e| match &file.translation {
                Some(t) => in_yaml(e, t),
                None => e,
            })?;
            config.files.push(file);
            let mut take = |slot: usize, section: &str, present: bool| -> Result<(), ConfigError> {
                if !present {
                    return Ok(());
                }
                if let Some(first) = sources[slot] {
                    return Err(ConfigError::Duplicate {
                        section: section.to_string(),
                        first: config.files[first].path.clone(),
                        second: path.clone(),
                    });
                }
                sources[slot] = Some(idx);
                Ok(())
            };
            take(0, "credentials", parsed.credentials.is_some())?;
            take(1, "pool_specification", parsed.pool_specification.is_some())?;
            take(2, "local", parsed.local.is_some())?;
            if let Some(c) = parsed.credentials {
                config.credentials = c;
                config.credentials_file = Some(idx);
            }
            if let Some(p) = parsed.pool_specification {
                config.pool = Some((p, idx));
            }
            if let Some(l) = parsed.local {
                config.local = l;
            }
            for (index, spec) in parsed
                .job_specifications
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                config.jobs.push(LoadedJob {
                    spec,
                    file: idx,
                    index,
                });
            }
        }
        config.apply_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
        Ok(config)
    }

    /// The config files of a Batch-Shipyard-style directory that exist: the TOML ones
    /// ([`CONFIGDIR_FILES`]), or, when there are none, Batch Shipyard's own
    /// (`credentials`, `config`, `pool`, `jobs` as `.yaml`, `.yml` or `.json`).
    pub fn files_in_dir(dir: &Path) -> Vec<PathBuf> {
        let toml: Vec<PathBuf> = CONFIGDIR_FILES
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| p.is_file())
            .collect();
        if !toml.is_empty() {
            return toml;
        }
        shipyard_bs_config::CONFIGDIR_STEMS
            .iter()
            .filter_map(|stem| {
                ["yaml", "yml", "json"]
                    .iter()
                    .map(|ext| dir.join(format!("{stem}.{ext}")))
                    .find(|p| p.is_file())
            })
            .collect()
    }

    /// Overrides credentials from the environment (`SHIPYARD_BATCH_ACCOUNT_KEY`, ...).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        let batch = self.credentials.batch.get_or_insert_with(Default::default);
        if let Some(v) = get(ENV_ACCOUNT_NAME) {
            batch.account_name = Some(v);
        }
        if let Some(v) = get(ENV_ACCOUNT_URL) {
            batch.account_service_url = Some(v);
            self.account_url_from_env = true;
        }
        if let Some(v) = get(ENV_ACCOUNT_KEY) {
            batch.account_key = Some(Secret::new(v));
        }
        let tenant = get(ENV_AAD_TENANT);
        let client = get(ENV_AAD_CLIENT_ID);
        let secret = get(ENV_AAD_CLIENT_SECRET);
        if tenant.is_some() || client.is_some() || secret.is_some() {
            let aad = batch.aad.get_or_insert_with(Default::default);
            if let Some(v) = tenant {
                aad.tenant_id = Some(v);
            }
            if let Some(v) = client {
                aad.client_id = Some(v);
            }
            if let Some(v) = secret {
                aad.client_secret = Some(Secret::new(v));
            }
        }
    }

    /// Checks the pool and every job, each job against the pool
    /// ([`shipyard_runtime::validate::job_against_pool`]); errors are located in their file
    /// (`pool_specification.vm_count`, `job_specifications[i].tasks[0].image`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some((pool, file)) = &self.pool {
            pool.validate().map_err(|e| self.pool_error(*file, &e))?;
        }
        let facts = self.pool.as_ref().map(|(p, _)| p.facts());
        let mut ids = std::collections::BTreeMap::new();
        for job in &self.jobs {
            match &facts {
                Some(f) => shipyard_runtime::validate::job_against_pool(&job.spec, f),
                None => job.spec.validate(),
            }
            .map_err(|e| self.plan_error(job, e))?;
            if let Some(prev) = ids.insert(job.spec.id.clone(), job) {
                return Err(self.invalid(
                    job.file,
                    &job_path(job).key("id"),
                    format!(
                        "job id `{}` is also used by job_specifications[{}] in {}",
                        job.spec.id,
                        prev.index,
                        self.files[prev.file].path.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks `account_service_url` and `aad.authority_url` ([`crate::endpoints`]): https
    /// (except loopback), and Azure hosts unless `allow_custom_endpoints` opts in.
    pub fn check_endpoints(&self) -> Result<(), ConfigError> {
        use crate::endpoints::{check, Endpoint};
        let Some(batch) = &self.credentials.batch else {
            return Ok(());
        };
        let base = FieldPath::root().key("credentials").key("batch");
        let mut urls = Vec::new();
        if let Some(u) = &batch.account_service_url {
            urls.push((
                u,
                Endpoint::BatchAccount,
                base.key("account_service_url"),
                self.account_url_from_env,
            ));
        }
        if let Some(u) = batch.aad.as_ref().and_then(|a| a.authority_url.as_ref()) {
            urls.push((
                u,
                Endpoint::EntraAuthority,
                base.key("aad").key("authority_url"),
                false,
            ));
        }
        for (url, endpoint, field, from_env) in urls {
            let Err(reason) = check(url, endpoint, batch.allow_custom_endpoints) else {
                continue;
            };
            return Err(match self.credentials_file {
                Some(file) if !from_env => self.invalid(file, &field, reason),
                _ => ConfigError::Invalid {
                    file: PathBuf::from(if from_env {
                        ENV_ACCOUNT_URL
                    } else {
                        "environment"
                    }),
                    location: None,
                    field: field.to_string(),
                    reason,
                },
            });
        }
        Ok(())
    }

    fn invalid(&self, file: usize, field: &FieldPath, reason: String) -> ConfigError {
        let f = &self.files[file];
        ConfigError::Invalid {
            file: f.path.clone(),
            location: f.locate(field).map(Box::new),
            field: field.to_string(),
            reason,
        }
    }

    /// An error in the pool's scope, located in the pool's file (`pool_specification.<key>`;
    /// runtimes name [`shipyard_runtime::PoolFacts`] fields, mapped to their spec keys).
    fn pool_error(&self, file: usize, e: &RuntimeError) -> ConfigError {
        let path = match e.field() {
            Some(Field {
                scope: Scope::Pool,
                path,
            }) => PoolSpec::field_of_fact(path),
            _ => FieldPath::root(),
        };
        self.invalid(
            file,
            &FieldPath::root().key("pool_specification").join(&path),
            e.reason(),
        )
    }

    /// A validation or planning error of `job`, located by its typed field: job fields in the
    /// job's file (`job_specifications[i].<path>`), pool fields in the pool's file.
    pub fn plan_error(&self, job: &LoadedJob, e: RuntimeError) -> ConfigError {
        match (e.field(), &self.pool) {
            (
                Some(Field {
                    scope: Scope::Pool, ..
                }),
                Some((_, pool_file)),
            ) => self.pool_error(*pool_file, &e),
            (
                Some(Field {
                    scope: Scope::Job(_),
                    path,
                }),
                _,
            ) => self.invalid(job.file, &job_path(job).join(path), e.reason()),
            _ => self.invalid(job.file, &job_path(job), e.reason()),
        }
    }

    /// The pool, or an error saying how to configure one.
    pub fn pool(&self) -> Result<&PoolSpec, ConfigError> {
        self.pool
            .as_ref()
            .map(|(p, _)| p)
            .ok_or_else(|| ConfigError::Missing {
                what: "no [pool_specification] in the configuration".into(),
                hint: "add one (see examples/) or pass its file with --pool".into(),
            })
    }

    /// The job with `id`, or the only job when `id` is `None`.
    pub fn job(&self, id: Option<&str>) -> Result<&LoadedJob, ConfigError> {
        match id {
            Some(id) => self.jobs.iter().find(|j| j.spec.id == id).ok_or_else(|| {
                let known: Vec<&str> = self.jobs.iter().map(|j| j.spec.id.as_str()).collect();
                ConfigError::Missing {
                    what: format!("no job `{id}` in the configuration"),
                    hint: match suggest(id, known.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`? (jobs: {})", known.join(", ")),
                        None => format!("jobs: {}", known.join(", ")),
                    },
                }
            }),
            None => match self.jobs.as_slice() {
                [only] => Ok(only),
                [] => Err(ConfigError::Missing {
                    what: "no [[job_specifications]] in the configuration".into(),
                    hint: "add one (see examples/) or pass its file with --jobs".into(),
                }),
                many => Err(ConfigError::Missing {
                    what: format!("the configuration has {} jobs", many.len()),
                    hint: format!(
                        "choose one with --job ({})",
                        many.iter()
                            .map(|j| j.spec.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }),
            },
        }
    }
}

/// A parse error of translated TOML, located in the YAML it came from (by its field; by the
/// nearest translated parent when the field itself has no span).
fn in_yaml(e: ConfigError, t: &Translation) -> ConfigError {
    match e {
        ConfigError::Parse {
            location,
            field,
            message,
            hint,
        } => {
            let yaml = field.as_deref().and_then(|f| t.yaml_location(f));
            ConfigError::Parse {
                location: match yaml {
                    Some(l) => Box::new(l.clone()),
                    None => location,
                },
                field,
                message,
                hint,
            }
        }
        other => other,
    }
}

/// Parses one file, turning serde errors into [`ConfigError::Parse`] with location, field
/// path and a "did you mean" hint for unknown keys and values.
fn parse_file(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| parse_error(path, text, None, &e))?;
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(de, &mut track);
    match ConfigFile::deserialize(tracked) {
        Ok(f) => Ok(f),
        Err(e) => {
            let field = track.path().to_string();
            Err(parse_error(path, text, Some(field), &e))
        }
    }
}

fn parse_error(path: &Path, text: &str, field: Option<String>, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_string();
    let span = e.span().unwrap_or(0..0);
    let hint = did_you_mean(&message);
    let mut field = field.filter(|f| !f.is_empty() && f != ".");
    // For an unknown key the tracked path ends at the parent table; name the key itself.
    if let Some(unknown) = backticked_after(&message, "unknown field `") {
        field = Some(match field {
            Some(f) if f == unknown || f.ends_with(&format!(".{unknown}")) => f,
            Some(f) => format!("{f}.{unknown}"),
            None => unknown.to_string(),
        });
    }
    let location = location(path, text, span);
    // A value quoted in the message of a line that may hold a secret is not shown either.
    let message = if location.source_line == REDACTED_LINE {
        scrub_quoted(&message)
    } else {
        message
    };
    ConfigError::Parse {
        location: Box::new(location),
        field,
        message,
        hint,
    }
}

/// `message` with every `"..."` replaced by `"<redacted>"`.
fn scrub_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for (i, part) in message.split('"').enumerate() {
        if i > 0 {
            out.push('"');
        }
        out.push_str(if i % 2 == 1 { "<redacted>" } else { part });
    }
    out
}

fn backticked_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(&rest[..rest.find('`')?])
}

/// "did you mean" for serde's "unknown field `x`, expected one of `a`, `b`" and
/// "unknown variant `x`, expected ..." messages.
pub fn did_you_mean(message: &str) -> Option<String> {
    let bad = backticked_after(message, "unknown field `")
        .or_else(|| backticked_after(message, "unknown variant `"))?;
    let expected = &message[message.find("expected")?..];
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let candidates: Vec<&str> = if candidates.is_empty() && message.contains("unknown field `") {
        TOP_LEVEL_KEYS.to_vec()
    } else {
        candidates
    };
    suggest(bad, candidates.into_iter())
}

/// The closest candidate to `bad` (Jaro-Winkler ≥ 0.8 or edit distance ≤ 2).
pub use shipyard_bs_config::suggest;

/// What an error snippet shows instead of a line that may hold a secret.
pub const REDACTED_LINE: &str = "<line not shown: it may hold a secret>";

/// Key names whose values are secrets (matched as parts of a key, case-insensitively).
const SECRET_KEY_PARTS: [&str; 6] = ["key", "secret", "password", "token", "sas", "auth"];

/// Whether `line` (preceded by `before` in its file) may hold a secret: it is in a
/// `[credentials...]` table (TOML) or under a top-level `credentials:` key (YAML), or its key
/// names a secret (`account_key`, `client_secret`, `password`, ...).
pub fn may_hold_secret(before: &str, line: &str) -> bool {
    let key = line
        .trim_start()
        .trim_start_matches("- ")
        .split(['=', ':'])
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"')
        .to_ascii_lowercase();
    if (line.contains('=') || line.contains(':'))
        && SECRET_KEY_PARTS.iter().any(|p| key.contains(p))
    {
        return true;
    }
    let in_credentials = |l: &str| {
        let t = l.trim();
        let header = t.trim_start_matches('[').trim_start();
        (t.starts_with('[') && header.starts_with("credentials"))
            || t.starts_with("credentials")
            || t.starts_with("\"credentials")
    };
    // The enclosing section: the nearest TOML table header or unindented YAML key.
    let opener = std::iter::once(line).chain(before.lines().rev()).find(|l| {
        let t = l.trim_start();
        t.starts_with('[')
            || (!l.starts_with([' ', '\t', '#', '-'])
                && !t.is_empty()
                && t.contains(':')
                && !t.contains('='))
    });
    opener.is_some_and(in_credentials) || in_credentials(line)
}

/// Line/column of a byte span.
pub fn location(path: &Path, text: &str, span: std::ops::Range<usize>) -> Location {
    let start = span.start.min(text.len());
    let start = (0..=start)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let source_line = text[line_start..line_end]
        .trim_end_matches('\r')
        .to_string();
    let source_line = if may_hold_secret(&text[..line_start], &source_line) {
        REDACTED_LINE.to_string()
    } else {
        source_line
    };
    let end = span.end.clamp(start, line_end);
    let width = text.get(start..end).map_or(1, |s| s.chars().count()).max(1);
    Location {
        file: path.to_path_buf(),
        line,
        column,
        source_line,
        width,
    }
}

/// Finds a field such as `job_specifications[0].tasks[1].image` in a TOML text: the span of
/// the deepest key/value of `field` that exists.
pub fn locate_field(path: &Path, text: &str, field: &FieldPath) -> Option<Location> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut span = None;
    let mut current = toml::de::DeValue::Table(root.into_inner());
    for segment in field.segments() {
        let next = match (&current, segment) {
            (toml::de::DeValue::Table(t), Segment::Key(k)) => t
                .iter()
                .find(|(key, _)| key.get_ref().as_ref() == k.as_str())
                .map(|(key, v)| {
                    span = Some(key.span());
                    v.get_ref().clone()
                }),
            (toml::de::DeValue::Array(a), Segment::Index(i)) => a.get(*i).map(|v| {
                span = Some(v.span());
                v.get_ref().clone()
            }),
            _ => None,
        };
        match next {
            Some(v) => current = v,
            None => break,
        }
    }
    span.map(|s| location(path, text, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_close_keys() {
        let m = "unknown field `nmu_instances`, expected one of `num_instances`, `coordination_command`";
        assert_eq!(did_you_mean(m).as_deref(), Some("num_instances"));
        let m = "unknown variant `opnmpi`, expected one of `openmpi`, `intelmpi`";
        assert_eq!(did_you_mean(m).as_deref(), Some("openmpi"));
        let m = "unknown field `zzzzzz`, expected `id`";
        assert_eq!(did_you_mean(m), None);
    }

    #[test]
    fn location_counts_lines_and_columns() {
        let text = "a = 1\n  bb = 2\n";
        let loc = location(Path::new("f.toml"), text, 8..10);
        assert_eq!((loc.line, loc.column, loc.width), (2, 3, 2));
        assert_eq!(loc.to_string(), "f.toml:2:3");
    }

    #[test]
    fn snippets_never_show_a_line_that_may_hold_a_secret() {
        let path = Path::new("c.toml");
        for text in [
            "[credentials.batch]\nacount_key = \"SUPERSECRET\"\n",
            "[credentials.batch]\naccount_key = \"SUPERSECRET\n",
            "[credentials.batch]\naad = \"SUPERSECRET\"\n",
            "credentials = { batch = { acount_key = \"SUPERSECRET\" } }\n",
            "[pool_specification]\npassword = \"SUPERSECRET\"\n",
        ] {
            let e = parse_file(path, text).expect_err(text);
            let shown = format!("{e}\n{}", e.snippet());
            assert!(!shown.contains("SUPERSECRET"), "{text}: {shown}");
            assert!(shown.contains(REDACTED_LINE), "{text}: {shown}");
            assert!(shown.contains("c.toml:"), "{shown}");
        }
        // Other lines are shown as written.
        let e = parse_file(path, "[pool_specification]\nvm_sise = 3\n").expect_err("typo");
        assert!(e.snippet().contains("vm_sise = 3"), "{}", e.snippet());
        // YAML: everything under `credentials:`.
        assert!(may_hold_secret(
            "credentials:\n  batch:\n",
            "    account_name: x"
        ));
        assert!(!may_hold_secret("pool_specification:\n", "  vm_size: x"));
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
    }

    #[test]
    fn locate_field_walks_arrays_of_tables() {
        let text = "[[job_specifications]]\nid = \"a\"\n[[job_specifications.tasks]]\nimage = \"x\"\n[[job_specifications.tasks]]\nimage = \"y y\"\n";
        let field = FieldPath::root()
            .key("job_specifications")
            .index(0)
            .key("tasks")
            .index(1)
            .key("image");
        let loc = locate_field(Path::new("j.toml"), text, &field).expect("found");
        assert_eq!((loc.line, loc.column), (6, 1));
    }
}
