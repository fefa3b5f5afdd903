//! An example shipyard runtime plugin.
//!
//! Build it with `cargo build -p shipyard-plugin-example`; the shared library is
//! `target/<profile>/libshipyard_plugin_example.so`. Load it with
//! `shipyard_runtime::registry::load_plugin(path)` (or the CLI's plugin option) and select
//! the runtime `example` in a job's `runtime` field.
//!
//! The runtime runs plain (not multi-instance) container tasks on native container pools: each
//! task becomes a Batch task with `containerSettings` for its image and
//! `/bin/sh -c '<command>'` as its command line, and the pool prefetches the images. It shows
//! the whole plugin surface: implement [`ContainerRuntime`] with the domain and plan types of
//! `shipyard-runtime`, then [`export_runtime_plugin!`](shipyard_runtime::export_runtime_plugin).
//!
//! The library also exports three deliberately broken entry points used by shipyard's plugin
//! tests (`shipyard_test_wrong_version`, `shipyard_test_panicking`, `shipyard_test_malformed`);
//! a real plugin has only `shipyard_runtime_plugin_v1`.

use shipyard_runtime::batch::{
    pool_admin, ContainerConfiguration, ContainerType, ContainerWorkingDirectory,
    EnvironmentSetting, TaskAddParameter, TaskContainerSettings,
};
use shipyard_runtime::plugin::{export, PluginBuffer, PluginTableV1};
use shipyard_runtime::shell::quote;
use shipyard_runtime::{
    ContainerRuntime, Field, JobNeeds, JobPlan, JobSpec, PoolFacts, PoolNeeds, RuntimeError,
};

/// The example runtime.
#[derive(Debug, Default)]
pub struct ExampleRuntime;

/// Its registry name.
pub const NAME: &str = "example";

impl ContainerRuntime for ExampleRuntime {
    fn name(&self) -> &str {
        NAME
    }

    fn plan(&self, job: &JobSpec, pool: &PoolFacts) -> Result<JobPlan, RuntimeError> {
        job.validate()?;
        pool.validate()?;
        if !pool.native_containers {
            return Err(RuntimeError::unsupported(
                NAME,
                Field::pool().key("native_containers"),
                "the example runtime needs a native container pool",
            ));
        }
        let mut images: Vec<String> = Vec::new();
        let mut tasks = Vec::new();
        for (i, task) in job.tasks.iter().enumerate() {
            if task.multi_instance.is_some() {
                return Err(RuntimeError::unsupported(
                    NAME,
                    Field::job(&job.id)
                        .key("tasks")
                        .index(i)
                        .key("multi_instance"),
                    "the example runtime runs single-node tasks only",
                ));
            }
            if !images.contains(&task.image) {
                images.push(task.image.clone());
            }
            let env = job.environment(task);
            tasks.push(TaskAddParameter {
                id: job.task_id(i),
                command_line: format!(
                    "/bin/sh -c {}",
                    quote(task.command.as_deref().unwrap_or("true"))
                ),
                container_settings: Some(TaskContainerSettings {
                    image_name: task.image.clone(),
                    working_directory: Some(ContainerWorkingDirectory::TaskWorkingDirectory),
                    ..Default::default()
                }),
                environment_settings: (!env.is_empty()).then(|| {
                    env.into_iter()
                        .map(|(k, v)| EnvironmentSetting::new(k, v))
                        .collect()
                }),
                user_identity: Some(pool_admin()),
                ..Default::default()
            });
        }
        Ok(JobPlan {
            runtime: NAME.into(),
            pool: PoolNeeds {
                container_configuration: Some(ContainerConfiguration {
                    r#type: ContainerType::DockerCompatible,
                    container_image_names: Some(images.clone()),
                    container_registries: None,
                }),
                images,
                ..Default::default()
            },
            job: JobNeeds {
                uses_task_dependencies: job.uses_task_dependencies(),
                ..Default::default()
            },
            tasks,
        })
    }
}

shipyard_runtime::export_runtime_plugin!("example", ExampleRuntime);

// ---- deliberately broken entry points, for shipyard's plugin tests -------------------------

/// A runtime whose `plan` panics.
#[derive(Debug, Default)]
pub struct PanickingRuntime;

impl ContainerRuntime for PanickingRuntime {
    fn name(&self) -> &str {
        "example-panicking"
    }
    fn plan(&self, _job: &JobSpec, _pool: &PoolFacts) -> Result<JobPlan, RuntimeError> {
        panic!("the example plugin panics on purpose")
    }
}

extern "C" fn panicking_plan(input: *const u8, input_len: usize) -> PluginBuffer {
    // SAFETY: the host passes `input_len` readable bytes, per the ABI.
    unsafe { export::plan_entry(input, input_len, || PanickingRuntime) }
}

extern "C" fn malformed_plan(_input: *const u8, _input_len: usize) -> PluginBuffer {
    PluginBuffer::from_vec(b"{\"ok\": {\"runtime\": 42".to_vec())
}

static WRONG_VERSION: PluginTableV1 = PluginTableV1 {
    abi_version: 999,
    name: c"example-wrong-version".as_ptr(),
    plan: malformed_plan,
    free: export::free_buffer,
};

static PANICKING: PluginTableV1 = PluginTableV1 {
    abi_version: shipyard_runtime::plugin::ABI_VERSION,
    name: c"example-panicking".as_ptr(),
    plan: panicking_plan,
    free: export::free_buffer,
};

static MALFORMED: PluginTableV1 = PluginTableV1 {
    abi_version: shipyard_runtime::plugin::ABI_VERSION,
    name: c"example-malformed".as_ptr(),
    plan: malformed_plan,
    free: export::free_buffer,
};

/// Test entry point: a table announcing ABI version 999.
#[no_mangle]
pub extern "C" fn shipyard_test_wrong_version() -> *const PluginTableV1 {
    &WRONG_VERSION
}

/// Test entry point: a runtime that panics inside `plan`.
#[no_mangle]
pub extern "C" fn shipyard_test_panicking() -> *const PluginTableV1 {
    &PANICKING
}

/// Test entry point: a runtime answering malformed JSON.
#[no_mangle]
pub extern "C" fn shipyard_test_malformed() -> *const PluginTableV1 {
    &MALFORMED
}
