//! Which request-body properties only api-version 2025-06-01 has, for the operations serve
//! accepts bodies on. serve keeps these beside the 2024 models (see `extras.rs`) for pools
//! and jobs, and extracts nothing from task bodies: this test fails when a spec update adds a
//! 2025-only property to a task body, or changes the list serve was written for.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use serde_json::{Map, Value};

fn spec(rel: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../batch-spec/spec")
        .join(rel);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

fn resolve<'a>(s: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        v = &s["definitions"][r.rsplit('/').next().unwrap()];
    }
    v
}

fn props(s: &Value, v: &Value) -> Map<String, Value> {
    let v = resolve(s, v);
    let mut out = v["properties"].as_object().cloned().unwrap_or_default();
    for sub in v["allOf"].as_array().into_iter().flatten() {
        out.extend(props(s, sub));
    }
    out
}

/// Paths of the properties `b` (2025) has under `vb` that `a` (2024) lacks under `va`.
fn only_in_b(a: &Value, va: &Value, b: &Value, vb: &Value, path: &str, out: &mut Vec<String>) {
    if path.matches('.').count() > 10 {
        return;
    }
    let pa = props(a, va);
    for (k, sub_b) in props(b, vb) {
        let here = format!("{path}.{k}");
        let Some(sub_a) = pa.get(&k) else {
            out.push(here);
            continue;
        };
        let (mut ra, mut rb, mut here) = (resolve(a, sub_a), resolve(b, &sub_b), here);
        if rb["type"] == "array" {
            ra = resolve(a, &ra["items"]);
            rb = resolve(b, &rb["items"]);
            here.push_str("[]");
        }
        only_in_b(a, ra, b, rb, &here, out);
    }
}

fn body_schema<'a>(s: &'a Value, path: &str, method: &str) -> &'a Value {
    let op = &s["paths"][path][method];
    op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["in"] == "body")
        .map(|p| &p["schema"])
        .unwrap()
}

#[test]
fn only_pool_and_job_bodies_have_2025_only_properties() {
    let a = spec("BatchService.json");
    let b = spec("2025-06-01.21.0/BatchService.min.json");
    let vm = [
        "virtualMachineConfiguration.dataDisks[].managedDisk",
        "virtualMachineConfiguration.diskEncryptionConfiguration.customerManagedKey",
        "virtualMachineConfiguration.osDisk.managedDisk.diskEncryptionSet",
        "virtualMachineConfiguration.securityProfile.proxyAgentSettings",
        "networkConfiguration.publicIPAddressConfiguration.ipFamilies",
        "taskSchedulingPolicy.jobDefaultOrder",
    ];
    let mut pool: Vec<String> = vm.iter().map(|p| format!(".{p}")).collect();
    pool.sort();
    let mut auto: Vec<String> = vm
        .iter()
        .map(|p| format!(".poolInfo.autoPoolSpecification.pool.{p}"))
        .collect();
    auto.sort();
    for (path, method, want) in [
        ("/pools", "post", pool.clone()),
        ("/pools/{poolId}", "patch", pool),
        ("/jobs", "post", auto.clone()),
        ("/jobs/{jobId}", "patch", auto),
        ("/pools/{poolId}/resize", "post", vec![]),
        ("/jobs/{jobId}/terminate", "post", vec![]),
        ("/jobs/{jobId}/tasks", "post", vec![]),
        ("/jobs/{jobId}/addtaskcollection", "post", vec![]),
    ] {
        let mut got = Vec::new();
        only_in_b(
            &a,
            body_schema(&a, path, method),
            &b,
            body_schema(&b, path, method),
            "",
            &mut got,
        );
        got.sort();
        assert_eq!(got, want, "{method} {path}");
    }
}
