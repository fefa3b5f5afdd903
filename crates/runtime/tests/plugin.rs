//! Loads `plugins/example-runtime` from its shared library and exercises the C ABI, including
//! every error case. The library is built by the test itself (`cargo build -p
//! shipyard-plugin-example` into a separate target directory, so it never waits for the lock of
//! the cargo command running this test).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use shipyard_runtime::plugin::{PluginError, PluginRuntime};
use shipyard_runtime::{registry, ContainerRuntime, JobSpec, OsFamily, PoolFacts, RuntimeError};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the example plugin once and returns the path of its `.so`.
fn example_plugin() -> &'static Path {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        let root = workspace_root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("plugin-test");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let out = std::process::Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "-p",
                "shipyard-plugin-example",
                "--target-dir",
            ])
            .arg(&target)
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "building the example plugin failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let so = target.join("debug").join(format!(
            "{}shipyard_plugin_example{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ));
        assert!(so.is_file(), "{} missing after the build", so.display());
        so
    })
}

fn job() -> JobSpec {
    toml::from_str(
        r#"
        id = "plugjob"
        runtime = "example"
        [environment_variables]
        GREETING = "hi"
        [[tasks]]
        image = "busybox:1"
        command = "echo $GREETING"
        [[tasks]]
        id = "second"
        image = "alpine:3"
        command = "true"
        depends_on = ["task-00000"]
        "#,
    )
    .expect("job")
}

fn pool(native: bool) -> PoolFacts {
    PoolFacts {
        pool_id: "pool".into(),
        native_containers: native,
        os: OsFamily::Linux,
        subnet_pattern: "10.0.*".into(),
        node_count: 1,
        slots_per_node: 4,
        cores_per_node: None,
    }
}

fn plugin_error(e: RuntimeError) -> PluginError {
    match e {
        RuntimeError::Plugin(p) => p,
        other => panic!("expected a plugin error, got {other:?}"),
    }
}

#[test]
fn example_plugin_renders_a_job_and_registers_by_name() {
    let so = example_plugin();
    let rt = PluginRuntime::load(so).expect("load");
    assert_eq!(rt.name(), "example");
    let plan = rt.plan(&job(), &pool(true)).expect("plan");
    assert_eq!(plan.runtime, "example");
    assert_eq!(plan.tasks.len(), 2);
    let t0 = serde_json::to_value(&plan.tasks[0]).expect("json");
    assert_eq!(
        t0,
        serde_json::json!({
            "id": "task-00000",
            "commandLine": "/bin/sh -c 'echo $GREETING'",
            "containerSettings": {"imageName": "busybox:1", "workingDirectory": "taskWorkingDirectory"},
            "environmentSettings": [{"name": "GREETING", "value": "hi"}],
            "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}
        })
    );
    assert!(plan.job.uses_task_dependencies);
    let images = plan
        .pool
        .container_configuration
        .as_ref()
        .and_then(|c| c.container_image_names.clone());
    assert_eq!(
        images,
        Some(vec!["busybox:1".to_string(), "alpine:3".to_string()])
    );
    // each rendered task is a valid Batch TaskAddParameter
    for t in &plan.tasks {
        let v = serde_json::to_value(t).expect("json");
        shipyard_batch_spec::schema::Spec::shared()
            .validate("TaskAddParameter", &v)
            .unwrap_or_else(|e| panic!("{e:?}"));
    }

    // through the registry: loaded plugins are selectable by name and listed in errors
    assert_eq!(registry::load_plugin(so).expect("register"), "example");
    let by_name = registry::get("example").expect("get");
    assert_eq!(by_name.plan(&job(), &pool(true)).expect("plan"), plan);
    let msg = registry::get("exampel").expect_err("unknown").to_string();
    assert!(msg.contains("unknown container runtime `exampel`"), "{msg}");
    assert!(msg.contains("example"), "{msg}");
    // loading it twice is refused
    assert!(matches!(
        registry::load_plugin(so),
        Err(RuntimeError::DuplicateRuntime { .. })
    ));
}

#[test]
fn the_plugins_own_errors_come_back_with_the_field() {
    let rt = PluginRuntime::load(example_plugin()).expect("load");
    match plugin_error(rt.plan(&job(), &pool(false)).expect_err("non-native")) {
        PluginError::Failed {
            plugin,
            kind,
            message,
        } => {
            assert_eq!(plugin, "example");
            assert_eq!(kind, "plan");
            assert!(message.contains("pool.native_containers"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_file_is_reported_with_its_path() {
    let e = PluginRuntime::load(Path::new("/nonexistent/libnothing.so")).expect_err("missing");
    assert!(matches!(e, PluginError::NotFound { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("/nonexistent/libnothing.so: no such file"),
        "{e}"
    );
}

#[test]
fn a_file_that_is_not_a_library_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bogus = dir.path().join("libbogus.so");
    std::fs::write(&bogus, b"this is not an ELF file").expect("write");
    let e = PluginRuntime::load(&bogus).expect_err("bogus");
    assert!(matches!(e, PluginError::Load { .. }), "{e:?}");
    assert!(
        e.to_string().contains("cannot load it as a shared library"),
        "{e}"
    );
}

#[test]
fn a_library_without_the_symbol_is_reported() {
    let e = PluginRuntime::load_symbol(example_plugin(), "shipyard_runtime_plugin_v0")
        .expect_err("no symbol");
    match &e {
        PluginError::MissingSymbol { symbol, .. } => {
            assert_eq!(symbol, "shipyard_runtime_plugin_v0")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string().contains("is it a shipyard runtime plugin?"),
        "{e}"
    );
}

#[test]
fn a_wrong_abi_version_is_refused_before_use() {
    let e = PluginRuntime::load_symbol(example_plugin(), "shipyard_test_wrong_version")
        .expect_err("version");
    match e {
        PluginError::WrongVersion {
            found, expected, ..
        } => {
            assert_eq!(found, 999);
            assert_eq!(expected, shipyard_runtime::plugin::ABI_VERSION);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_panic_inside_the_plugin_is_caught_and_reported() {
    let rt = PluginRuntime::load_symbol(example_plugin(), "shipyard_test_panicking").expect("load");
    match plugin_error(rt.plan(&job(), &pool(true)).expect_err("panic")) {
        PluginError::Panicked { plugin, message } => {
            assert_eq!(plugin, "example-panicking");
            assert_eq!(message, "the example plugin panics on purpose");
        }
        other => panic!("{other:?}"),
    }
    // the host (and the plugin) still work afterwards
    let rt2 = PluginRuntime::load(example_plugin()).expect("load");
    assert!(rt2.plan(&job(), &pool(true)).is_ok());
}

#[test]
fn malformed_json_from_the_plugin_is_reported() {
    let rt = PluginRuntime::load_symbol(example_plugin(), "shipyard_test_malformed").expect("load");
    let e = plugin_error(rt.plan(&job(), &pool(true)).expect_err("malformed"));
    assert!(matches!(e, PluginError::MalformedOutput { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("`example-malformed` returned malformed JSON"),
        "{e}"
    );
}
