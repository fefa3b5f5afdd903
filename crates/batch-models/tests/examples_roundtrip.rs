//! Every request and response body of the spec's examples deserializes into the models and
//! re-serializes with no field lost; every request body passes the strict Swagger validator.
//!
//! The example → operation mapping comes from the spec's `x-ms-examples`; the operation → model
//! type mapping from the operation's body parameter and per-status response schemas (the
//! `default` response schema is `BatchError`). Known defects of the vendored examples are listed
//! in [`EXCEPTIONS`], each with its reason, and each is asserted to still be defective so the
//! list cannot go stale silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use shipyard_batch_models::{self as models, *};
use shipyard_batch_spec::schema::Spec;

/// Round-trips `value` through the model type named `definition`.
fn roundtrip_as(definition: &str, value: &Value) -> Result<Value, String> {
    fn rt<T: DeserializeOwned + Serialize>(value: &Value) -> Result<Value, String> {
        let model: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        serde_json::to_value(&model).map_err(|e| e.to_string())
    }
    macro_rules! dispatch {
        ($($ty:ident),+ $(,)?) => {
            match definition {
                $(stringify!($ty) => rt::<models::$ty>(value),)+
                other => Err(format!("no model type mapped for definition {other}")),
            }
        };
    }
    // Every definition the spec uses as a request or response body.
    dispatch!(
        AccountListSupportedImagesResult,
        ApplicationListResult,
        ApplicationSummary,
        AutoScaleRun,
        BatchError,
        Certificate,
        CertificateAddParameter,
        CertificateListResult,
        CloudJob,
        CloudJobListPreparationAndReleaseTaskStatusResult,
        CloudJobListResult,
        CloudJobSchedule,
        CloudJobScheduleListResult,
        CloudPool,
        CloudPoolListResult,
        CloudTask,
        CloudTaskListResult,
        CloudTaskListSubtasksResult,
        ComputeNode,
        ComputeNodeGetRemoteLoginSettingsResult,
        ComputeNodeListResult,
        ComputeNodeUser,
        JobAddParameter,
        JobDisableParameter,
        JobPatchParameter,
        JobScheduleAddParameter,
        JobSchedulePatchParameter,
        JobScheduleTerminateParameter,
        JobScheduleUpdateParameter,
        JobTerminateParameter,
        JobUpdateParameter,
        NodeDeallocateParameter,
        NodeDisableSchedulingParameter,
        NodeFileListResult,
        NodeRebootParameter,
        NodeReimageParameter,
        NodeRemoveParameter,
        NodeUpdateUserParameter,
        NodeVMExtension,
        NodeVMExtensionList,
        PoolAddParameter,
        PoolEnableAutoScaleParameter,
        PoolEvaluateAutoScaleParameter,
        PoolListUsageMetricsResult,
        PoolNodeCountsListResult,
        PoolPatchParameter,
        PoolResizeParameter,
        PoolUpdatePropertiesParameter,
        TaskAddCollectionParameter,
        TaskAddCollectionResult,
        TaskAddParameter,
        TaskCountsResult,
        TaskUpdateParameter,
        UploadBatchServiceLogsConfiguration,
        UploadBatchServiceLogsResult,
    )
}

/// A known defect of a vendored example.
struct Exception {
    file: &'static str,
    reason: &'static str,
    /// What the validator reports for the request body: (JSON pointer, message fragment).
    violation: Option<(&'static str, &'static str)>,
    /// Turns the original request body into what the models are expected to re-serialize.
    expected_roundtrip: fn(&mut Value),
}

fn no_change(_: &mut Value) {}

const EXCEPTIONS: &[Exception] = &[
    Exception {
        file: "JobAdd_Complex.json",
        reason: "nodePlacementConfiguration.policy is \"Zonal\" but the enum spells it \"zonal\"; \
                 the models parse enums case-insensitively and write the spec's spelling",
        violation: Some((
            "/poolInfo/autoPoolSpecification/pool/virtualMachineConfiguration/nodePlacementConfiguration/policy",
            "not one of the allowed values",
        )),
        expected_roundtrip: |v| {
            v["poolInfo"]["autoPoolSpecification"]["pool"]["virtualMachineConfiguration"]
                ["nodePlacementConfiguration"]["policy"] = json!("zonal");
        },
    },
    Exception {
        file: "JobScheduleAdd_Complex.json",
        reason: "the same \"Zonal\" spelling as JobAdd_Complex, inside jobSpecification \
                 (not named in the spec README)",
        violation: Some((
            "/jobSpecification/poolInfo/autoPoolSpecification/pool/virtualMachineConfiguration/nodePlacementConfiguration/policy",
            "not one of the allowed values",
        )),
        expected_roundtrip: |v| {
            v["jobSpecification"]["poolInfo"]["autoPoolSpecification"]["pool"]
                ["virtualMachineConfiguration"]["nodePlacementConfiguration"]["policy"] =
                json!("zonal");
        },
    },
    Exception {
        file: "PoolAdd_SecurityProfile.json",
        reason: "securityProfile.uefiSettings.vTpmEnabled is null where the spec says boolean; \
                 null reads as None, which requests omit",
        violation: Some((
            "/virtualMachineConfiguration/securityProfile/uefiSettings/vTpmEnabled",
            "null is not allowed",
        )),
        expected_roundtrip: |v| {
            let uefi = &mut v["virtualMachineConfiguration"]["securityProfile"]["uefiSettings"];
            if let Some(u) = uefi.as_object_mut() {
                u.remove("vTpmEnabled");
            }
        },
    },
    Exception {
        file: "PoolAdd_VirtualMachineConfigurationWithExtensions.json",
        reason: "extensions[0].settings is a JSON text string where the spec says object; the \
                 model keeps free-form extension settings as serde_json::Value, so it round-trips",
        violation: Some((
            "/virtualMachineConfiguration/extensions/0/settings",
            "expected an object",
        )),
        expected_roundtrip: no_change,
    },
    Exception {
        file: "PoolAdd_CloudServiceConfiguration.json",
        reason: "cloudServiceConfiguration was removed in 2024-07-01.20.0 (the example is not \
                 referenced by the spec); the models ignore the unknown field",
        violation: Some(("/cloudServiceConfiguration", "unknown property")),
        expected_roundtrip: |v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("cloudServiceConfiguration");
            }
        },
    },
];

/// Response bodies that the lenient validator rejects: (file, pointer, reason). They still
/// round-trip through the models.
const RESPONSE_EXCEPTIONS: &[(&str, &str, &str)] = &[(
    "PoolGet_VirtualMachineConfigurationWithExtensions.json",
    "/virtualMachineConfiguration/extensions/0/settings",
    "extension settings given as a JSON text string where the spec says object",
)];

/// Examples that are not JSON at all.
const INVALID_JSON: &[(&str, &str)] = &[(
    "NodeStart.json",
    "trailing comma after the last parameter: not valid JSON",
)];

/// Examples without an operation in this api-version.
const NO_OPERATION: &[(&str, &str, &str)] = &[
    (
        "PoolAdd_CloudServiceConfiguration.json",
        "Pool_Add",
        "not referenced by the spec; still a PoolAddParameter request",
    ),
    (
        "NodeGetRemoteDesktop.json",
        "",
        "ComputeNode_GetRemoteDesktop was removed in 2024-07-01.20.0; its body is a byte-stream placeholder",
    ),
];

fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../batch-spec/spec")
}

/// Normalizes numbers to f64 so `1` and `1.0` compare equal.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| v.clone(), Value::Number),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), normalize(v))).collect())
        }
        other => other.clone(),
    }
}

/// Lists the JSON pointers where `a` and `b` differ.
fn diff(a: &Value, b: &Value, ptr: String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    Some(vb) => diff(va, vb, format!("{ptr}/{k}"), out),
                    None => out.push(format!("{ptr}/{k} lost")),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(format!("{ptr}/{k} added"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff(va, vb, format!("{ptr}/{i}"), out);
            }
        }
        _ if normalize(a) == normalize(b) => {}
        _ => out.push(format!("{ptr}: {a} became {b}")),
    }
}

#[derive(Clone)]
struct OpInfo {
    id: String,
    /// (parameter name, definition)
    body: Option<(String, String)>,
    body_required: bool,
    /// status (or "default") -> definition; `None` for a byte-stream (`format: file`) body
    responses: BTreeMap<String, Option<String>>,
}

fn def_name(schema: &Value) -> Option<String> {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/definitions/"))
        .map(str::to_string)
}

/// example file name -> operation, from the spec's `x-ms-examples`.
fn example_operations(spec: &Value) -> BTreeMap<String, OpInfo> {
    let mut out = BTreeMap::new();
    let mut by_id = BTreeMap::new();
    for item in spec["paths"].as_object().expect("paths").values() {
        for op in item.as_object().expect("path item").values() {
            let Some(id) = op.get("operationId").and_then(Value::as_str) else {
                continue;
            };
            let body = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|p| {
                    (p["in"] == "body").then(|| {
                        let name = p["name"].as_str().expect("body name").to_string();
                        (name, def_name(&p["schema"]).expect("body $ref"))
                    })
                });
            let responses = op["responses"]
                .as_object()
                .expect("responses")
                .iter()
                .filter_map(|(status, r)| Some((status.clone(), def_name(r.get("schema")?))))
                .collect();
            let files: Vec<String> = op
                .get("x-ms-examples")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(_, e)| e["$ref"].as_str())
                .map(|r| r.trim_start_matches("./examples/").to_string())
                .collect();
            let body_required = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["in"] == "body" && p["required"] == true);
            let info = OpInfo {
                id: id.to_string(),
                body,
                body_required,
                responses,
            };
            for f in files {
                out.insert(f, info.clone());
            }
            by_id.insert(id.to_string(), info);
        }
    }
    for (file, id, _) in NO_OPERATION {
        if let Some(info) = by_id.get(*id) {
            out.insert(file.to_string(), info.clone());
        }
    }
    out
}

fn resource_of(op_id: &str) -> &'static str {
    match op_id.split('_').next().unwrap_or_default() {
        "Pool" => "pools",
        "Job" => "jobs",
        "Task" => "tasks",
        "ComputeNode" | "ComputeNodeExtension" => "nodes",
        "File" => "files",
        "JobSchedule" => "job schedules",
        "Certificate" => "certificates",
        "Application" | "Account" => "account",
        _ => "other",
    }
}

#[test]
fn every_example_body_roundtrips_and_requests_validate() {
    let dir = spec_dir();
    let spec_text = std::fs::read_to_string(dir.join("BatchService.json")).expect("spec");
    let spec_json: Value = serde_json::from_str(&spec_text).expect("spec JSON");
    let validator = Spec::from_file(&dir.join("BatchService.json")).expect("spec loads");
    let ops = example_operations(&spec_json);

    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("examples"))
        .expect("examples dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 102, "the vendored spec has 102 examples");

    let mut failures = Vec::new();
    let mut covered: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    let (mut examples, mut requests, mut responses, mut validated) = (0, 0, 0, 0);
    let (mut exceptions_seen, mut streams) = (0, 0);

    for path in &files {
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .expect("file name")
            .to_string();
        let text = std::fs::read_to_string(path).expect("example readable");
        let example: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                assert!(
                    INVALID_JSON.iter().any(|(f, _)| *f == file),
                    "{file} is not valid JSON ({e}) and is not a named exception"
                );
                exceptions_seen += 1;
                continue;
            }
        };
        assert!(
            !INVALID_JSON.iter().any(|(f, _)| *f == file),
            "{file} is listed as invalid JSON but parses now; remove the exception"
        );
        let Some(op) = ops.get(&file) else {
            assert!(
                NO_OPERATION.iter().any(|(f, _, _)| *f == file),
                "{file} is not referenced by any operation and is not a named exception"
            );
            let json_body = example["responses"].as_object().is_some_and(|r| {
                r.values()
                    .any(|v| v.get("body").is_some_and(|b| !b.is_string()))
            });
            assert!(!json_body, "{file}: unmapped example has a JSON body");
            exceptions_seen += 1;
            continue;
        };
        examples += 1;
        let stats = covered.entry(resource_of(&op.id)).or_default();
        stats.0 += 1;
        let exception = EXCEPTIONS.iter().find(|e| e.file == file);

        // Request body.
        if let Some((param, definition)) = &op.body {
            if let Some(body) = example["parameters"].get(param) {
                requests += 1;
                stats.1 += 1;
                let mut expected = body.clone();
                if let Some(exc) = exception {
                    (exc.expected_roundtrip)(&mut expected);
                    exceptions_seen += 1;
                }
                match roundtrip_as(definition, body) {
                    Ok(back) => {
                        let mut d = Vec::new();
                        diff(&expected, &back, String::new(), &mut d);
                        if !d.is_empty() {
                            failures.push(format!("{file} request {definition}: {d:?}"));
                        }
                    }
                    Err(e) => failures.push(format!("{file} request {definition}: {e}")),
                }
                match (
                    validator.validate(definition, body),
                    exception.and_then(|e| e.violation),
                ) {
                    (Ok(()), None) => validated += 1,
                    (Err(v), None) => {
                        failures.push(format!("{file} request fails validation: {v:?}"))
                    }
                    (Ok(()), Some(_)) => failures.push(format!(
                        "{file}: validates now; remove its exception ({})",
                        exception.map_or("", |e| e.reason)
                    )),
                    (Err(v), Some((pointer, fragment))) => {
                        if !(v.len() == 1
                            && v[0].pointer == pointer
                            && v[0].message.contains(fragment))
                        {
                            failures.push(format!(
                                "{file}: expected only {pointer} ({fragment}), got {v:?}"
                            ));
                        }
                    }
                }
            } else if op.body_required {
                failures.push(format!("{file}: required body parameter {param} missing"));
            }
        }

        // Response bodies.
        for (status, response) in example["responses"].as_object().expect("responses") {
            let Some(body) = response.get("body") else {
                continue;
            };
            let schema = op
                .responses
                .get(status)
                .or_else(|| op.responses.get("default"));
            let definition = match schema {
                Some(Some(definition)) => definition,
                Some(None) => {
                    assert!(
                        body.is_string(),
                        "{file}: byte-stream response with a JSON body"
                    );
                    streams += 1;
                    continue;
                }
                None => {
                    failures.push(format!("{file}: no schema for response {status}"));
                    continue;
                }
            };
            responses += 1;
            stats.2 += 1;
            match roundtrip_as(definition, body) {
                Ok(back) => {
                    let mut d = Vec::new();
                    diff(body, &back, String::new(), &mut d);
                    if !d.is_empty() {
                        failures.push(format!("{file} response {status} {definition}: {d:?}"));
                    }
                }
                Err(e) => failures.push(format!("{file} response {status} {definition}: {e}")),
            }
            let known = RESPONSE_EXCEPTIONS.iter().find(|(f, _, _)| *f == file);
            match (validator.validate_lenient(definition, body), known) {
                (Ok(()), None) => {}
                (Err(v), None) => failures.push(format!(
                    "{file} response {status} fails lenient validation: {v:?}"
                )),
                (Ok(()), Some(_)) => failures.push(format!(
                    "{file}: response validates now; remove its exception"
                )),
                (Err(v), Some((_, pointer, _))) => {
                    exceptions_seen += 1;
                    if !(v.len() == 1 && v[0].pointer == *pointer) {
                        failures.push(format!("{file}: expected only {pointer}, got {v:?}"));
                    }
                }
            }
        }
    }

    println!(
        "covered {examples} examples: {requests} request bodies ({validated} validated strictly), \
         {responses} response bodies ({streams} byte-stream bodies skipped); \
         {exceptions_seen} named exceptions"
    );
    for (resource, (n, rq, rs)) in &covered {
        println!("  {resource:>14}: {n} examples, {rq} requests, {rs} responses");
    }
    println!("named exceptions:");
    for e in EXCEPTIONS {
        println!("  {} (request): {}", e.file, e.reason);
    }
    for (file, _, reason) in RESPONSE_EXCEPTIONS {
        println!("  {file} (response validation): {reason}");
    }
    for (file, reason) in INVALID_JSON {
        println!("  {file}: {reason}");
    }
    for (file, _, reason) in NO_OPERATION {
        println!("  {file}: {reason}");
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        exceptions_seen,
        EXCEPTIONS.len() + RESPONSE_EXCEPTIONS.len() + INVALID_JSON.len() + 1
    );
    assert!(requests >= 40 && responses >= 30, "too few bodies covered");
}

#[test]
fn unknown_fields_and_enum_values_are_tolerated() {
    let body = json!({
        "id": "task1",
        "state": "hibernating",
        "previousState": "RUNNING",
        "someFutureField": {"nested": [1, 2, 3]},
        "commandLine": "/bin/true",
        "executionInfo": {"retryCount": 0, "requeueCount": 0, "result": "partialSuccess"},
        "multiInstanceSettings": {"coordinationCommandLine": "x", "newKnob": true}
    });
    let task: CloudTask = serde_json::from_value(body).expect("unknown fields are ignored");
    assert_eq!(task.state, Some(TaskState::Unknown("hibernating".into())));
    assert!(task.state.as_ref().is_some_and(TaskState::is_unknown));
    assert_eq!(
        task.previous_state,
        Some(TaskState::Running),
        "enums ignore case"
    );
    let exec = task.execution_info.as_ref().expect("executionInfo");
    assert_eq!(
        exec.result,
        Some(TaskExecutionResult::Unknown("partialSuccess".into()))
    );

    let back = serde_json::to_value(&task).expect("serializes");
    assert_eq!(
        back["state"], "hibernating",
        "unknown enum text round-trips"
    );
    assert_eq!(
        back["previousState"], "running",
        "known values use the spec spelling"
    );
    assert!(back.get("someFutureField").is_none());

    // Unknown enum values also survive inside arrays and maps of typed values.
    let slots: Vec<CertificateVisibility> =
        serde_json::from_value(json!(["task", "StartTask", "quantum"])).expect("enum array");
    assert_eq!(
        slots,
        vec![
            CertificateVisibility::Task,
            CertificateVisibility::StartTask,
            CertificateVisibility::Unknown("quantum".into())
        ]
    );
    assert_eq!(
        "terminatejob".parse::<OnAllTasksComplete>(),
        Ok(OnAllTasksComplete::TerminateJob)
    );
    assert_eq!(OnAllTasksComplete::TerminateJob.to_string(), "terminatejob");
    assert_eq!(
        ComputeNodeState::from_wire("unknown"),
        ComputeNodeState::StateUnknown,
        "the service's own `unknown` node state is a known variant"
    );
}

#[test]
fn requests_omit_absent_fields_and_use_exact_names() {
    let task = TaskAddParameter {
        multi_instance_settings: Some(MultiInstanceSettings::new(2, "setup.sh")),
        container_settings: Some(TaskContainerSettings {
            container_host_batch_bind_mounts: Some(vec![ContainerHostBatchBindMountEntry {
                source: Some(ContainerHostDataPath::Shared),
                is_read_only: Some(true),
            }]),
            working_directory: Some(ContainerWorkingDirectory::TaskWorkingDirectory),
            ..TaskContainerSettings::new("shipyard/mpi:bookworm")
        }),
        user_identity: Some(UserIdentity::auto_user(
            AutoUserScope::Pool,
            ElevationLevel::Admin,
        )),
        depends_on: Some(TaskDependencies {
            task_id_ranges: Some(vec![TaskIdRange::new(1, 10)]),
            ..TaskDependencies::default()
        }),
        ..TaskAddParameter::new("t1", "mpirun -np 2 hello")
    };
    let v = serde_json::to_value(&task).expect("serializes");
    assert_eq!(
        v,
        json!({
            "id": "t1",
            "commandLine": "mpirun -np 2 hello",
            "containerSettings": {
                "imageName": "shipyard/mpi:bookworm",
                "workingDirectory": "taskWorkingDirectory",
                "containerHostBatchBindMounts": [{"source": "Shared", "isReadOnly": true}]
            },
            "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "admin"}},
            "multiInstanceSettings": {"numberOfInstances": 2, "coordinationCommandLine": "setup.sh"},
            "dependsOn": {"taskIdRanges": [{"start": 1, "end": 10}]}
        })
    );
    let spec = Spec::shared();
    assert_eq!(spec.validate("TaskAddParameter", &v), Ok(()));

    let page: CloudTaskListResult = serde_json::from_value(json!({
        "odata.metadata": "https://a.b/$metadata#tasks",
        "value": [],
        "odata.nextLink": "https://a.b/jobs/j/tasks?skiptoken=x"
    }))
    .expect("list page");
    assert_eq!(
        page.odata_next_link.as_deref(),
        Some("https://a.b/jobs/j/tasks?skiptoken=x")
    );
    let back = serde_json::to_value(&page).expect("serializes");
    assert_eq!(
        back["odata.nextLink"],
        "https://a.b/jobs/j/tasks?skiptoken=x"
    );
    assert_eq!(back["odata.metadata"], "https://a.b/$metadata#tasks");

    let pool = serde_json::to_value(VirtualMachineConfiguration::new(
        ImageReference::default(),
        "batch.node.ubuntu 22.04",
    ))
    .expect("serializes");
    assert_eq!(pool["nodeAgentSKUId"], "batch.node.ubuntu 22.04");
}

#[test]
fn error_body_parses() {
    let body = json!({
        "odata.metadata": "https://account.region.batch.azure.com/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
        "code": "TaskDependenciesNotSpecifiedOnJob",
        "message": {"lang": "en-US", "value": "The job does not use task dependencies.\nRequestId:1\nTime:2024-01-01T00:00:00.0000000Z"},
        "values": [{"key": "Reason", "value": "usesTaskDependencies is false"}]
    });
    let err: BatchError = serde_json::from_value(body.clone()).expect("error body");
    assert_eq!(
        err.code.as_deref(),
        Some("TaskDependenciesNotSpecifiedOnJob")
    );
    assert!(err
        .message_text()
        .is_some_and(|m| m.starts_with("The job does not use")));
    assert_eq!(err.detail("Reason"), Some("usesTaskDependencies is false"));
    assert_eq!(Spec::shared().validate_lenient("BatchError", &body), Ok(()));
    let back = serde_json::to_value(&err).expect("serializes");
    assert_eq!(
        back, body,
        "error bodies, odata.metadata included, round-trip"
    );

    let result: TaskAddCollectionResult = serde_json::from_value(json!({"value": [
        {"status": "success", "taskId": "a", "eTag": "0x1", "lastModified": "2024-01-01T00:00:00Z",
         "location": "https://x/jobs/j/tasks/a"},
        {"status": "serverError", "taskId": "b",
         "error": {"code": "ServerBusy", "message": {"lang": "en-US", "value": "busy"}}}
    ]}))
    .expect("collection result");
    let statuses: Vec<&TaskAddStatus> = result.value.iter().flatten().map(|r| &r.status).collect();
    assert_eq!(
        statuses,
        vec![&TaskAddStatus::Success, &TaskAddStatus::ServerError]
    );
    let failed = &result.value.as_ref().expect("value")[1];
    assert_eq!(
        failed.error.as_ref().and_then(|e| e.code.as_deref()),
        Some("ServerBusy")
    );
}

#[test]
fn every_spec_definition_and_property_has_a_model() {
    let dir = spec_dir();
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("BatchService.json")).expect("spec"),
    )
    .expect("spec JSON");
    let models_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut source = String::new();
    for entry in std::fs::read_dir(&models_dir).expect("models dir") {
        source += &std::fs::read_to_string(entry.expect("entry").path()).expect("model source");
    }
    let mut missing = Vec::new();
    let (mut structs, mut enums, mut properties) = (0, 0, 0);
    for (name, def) in spec["definitions"].as_object().expect("definitions") {
        if def.get("enum").is_some() {
            enums += 1;
            if !source.contains(&format!("pub enum {name} {{")) {
                missing.push(format!("enum {name}"));
            }
            continue;
        }
        structs += 1;
        if !source.contains(&format!("pub struct {name} {{")) {
            missing.push(format!("struct {name}"));
        }
        for (prop, schema) in def["properties"].as_object().into_iter().flatten() {
            properties += 1;
            // Every property is either renamed explicitly or follows the camelCase rule; the
            // generator writes the explicit rename whenever the snake_case form differs.
            let renamed = source.contains(&format!("rename = \"{prop}\""));
            let snake: String = prop
                .chars()
                .flat_map(|c| {
                    if c.is_ascii_uppercase() {
                        vec!['_', c.to_ascii_lowercase()]
                    } else {
                        vec![c]
                    }
                })
                .collect();
            let plain = source.contains(&format!("pub {snake}:"))
                || source.contains(&format!("pub r#{snake}:"));
            if !renamed && !plain {
                missing.push(format!("property {name}.{prop}"));
            }
            if let Some(e) = schema.pointer("/x-ms-enum/name").and_then(Value::as_str) {
                if !source.contains(&format!("pub enum {e} {{")) {
                    missing.push(format!("inline enum {e} of {name}.{prop}"));
                }
            }
        }
    }
    println!(
        "spec: {structs} object definitions, {enums} enum definitions, {properties} properties"
    );
    assert!(missing.is_empty(), "missing from the models: {missing:#?}");
}
