//! The registry of container runtimes: built-ins registered at link time with [`inventory`],
//! plus plugins loaded at run time.
//!
//! A built-in runtime crate registers itself with
//! `inventory::submit! { RuntimeRegistration { name: "docker", factory: make_docker } }`.
//! Its crate must be linked into the final binary (reference any item of it, e.g. its
//! `link()` function) for the registration to be present.

use std::collections::BTreeMap;
#[cfg(feature = "plugins")]
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::error::RuntimeError;
#[cfg(feature = "plugins")]
use crate::plugin::PluginRuntime;
use crate::ContainerRuntime;

/// A built-in runtime: its name and a constructor with default settings.
#[derive(Debug)]
pub struct RuntimeRegistration {
    /// The configuration name.
    pub name: &'static str,
    /// Builds the runtime.
    pub factory: fn() -> Box<dyn ContainerRuntime>,
}

inventory::collect!(RuntimeRegistration);

fn plugins() -> &'static RwLock<BTreeMap<String, Arc<dyn ContainerRuntime>>> {
    static PLUGINS: std::sync::OnceLock<RwLock<BTreeMap<String, Arc<dyn ContainerRuntime>>>> =
        std::sync::OnceLock::new();
    PLUGINS.get_or_init(|| RwLock::new(BTreeMap::new()))
}

/// Names of every known runtime (built-ins and loaded plugins), sorted.
pub fn names() -> Vec<String> {
    let mut names: Vec<String> = inventory::iter::<RuntimeRegistration>
        .into_iter()
        .map(|r| r.name.to_string())
        .collect();
    if let Ok(p) = plugins().read() {
        names.extend(p.keys().cloned());
    }
    names.sort();
    names.dedup();
    names
}

/// The runtime called `name`: a loaded plugin or a built-in. Unknown names give
/// [`RuntimeError::UnknownRuntime`] listing the known names.
pub fn get(name: &str) -> Result<Arc<dyn ContainerRuntime>, RuntimeError> {
    if let Ok(p) = plugins().read() {
        if let Some(rt) = p.get(name) {
            return Ok(Arc::clone(rt));
        }
    }
    if let Some(reg) = inventory::iter::<RuntimeRegistration>
        .into_iter()
        .find(|r| r.name == name)
    {
        return Ok(Arc::from((reg.factory)()));
    }
    Err(RuntimeError::UnknownRuntime {
        name: name.to_string(),
        known: names(),
    })
}

/// Registers a runtime object under its [`ContainerRuntime::name`]. A name already taken by a
/// built-in or another registered runtime is refused.
pub fn register(runtime: Arc<dyn ContainerRuntime>) -> Result<(), RuntimeError> {
    let name = runtime.name().to_string();
    if inventory::iter::<RuntimeRegistration>
        .into_iter()
        .any(|r| r.name == name)
    {
        return Err(RuntimeError::DuplicateRuntime { name });
    }
    let mut p = plugins()
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if p.contains_key(&name) {
        return Err(RuntimeError::DuplicateRuntime { name });
    }
    p.insert(name, runtime);
    Ok(())
}

/// Loads the plugin library at `path` and registers its runtime; returns the runtime's name
/// (cargo feature `plugins`, on by default).
#[cfg(feature = "plugins")]
pub fn load_plugin(path: &Path) -> Result<String, RuntimeError> {
    let rt = PluginRuntime::load(path)?;
    let name = rt.name().to_string();
    register(Arc::new(rt))?;
    tracing::info!(plugin = %path.display(), runtime = %name, "loaded runtime plugin");
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobPlan, JobSpec, PoolFacts};

    #[derive(Debug)]
    struct Fake(&'static str);
    impl ContainerRuntime for Fake {
        fn name(&self) -> &str {
            self.0
        }
        fn plan(&self, _job: &JobSpec, _pool: &PoolFacts) -> Result<JobPlan, RuntimeError> {
            Err(RuntimeError::Ssh("fake".into()))
        }
    }

    #[test]
    fn unknown_name_lists_registered_runtimes() {
        register(Arc::new(Fake("fake-registry-test"))).unwrap();
        assert!(get("fake-registry-test").is_ok());
        let err = get("nope").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown container runtime `nope`"), "{msg}");
        assert!(msg.contains("fake-registry-test"), "{msg}");
        assert!(matches!(
            register(Arc::new(Fake("fake-registry-test"))),
            Err(RuntimeError::DuplicateRuntime { .. })
        ));
    }
}
