//! End-to-end tests of the `shipyard` binary that need neither Docker nor Azure: help, usage
//! errors, configuration loading and checking, `--dry-run` rendering validated against the Batch
//! Swagger spec, completions.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;
use shipyard_batch_spec::schema::Spec;

fn shipyard() -> Command {
    let mut cmd = Command::cargo_bin("shipyard").expect("binary built");
    for var in [
        "SHIPYARD_CONFIG",
        "SHIPYARD_CONFIGDIR",
        "SHIPYARD_TARGET",
        "SHIPYARD_BATCH_ACCOUNT_NAME",
        "SHIPYARD_BATCH_ACCOUNT_URL",
        "SHIPYARD_BATCH_ACCOUNT_KEY",
        "SHIPYARD_AAD_TENANT_ID",
        "SHIPYARD_AAD_CLIENT_ID",
        "SHIPYARD_AAD_CLIENT_SECRET",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

/// `shipyard -c <config> config check`, asserted to fail as a usage/config error (exit 2).
fn config_check_fails(config: &Path) -> assert_cmd::assert::Assert {
    shipyard()
        .arg("-c")
        .arg(config)
        .args(["config", "check"])
        .assert()
        .code(2)
}

fn stdout_json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

const POOL: &str = r#"
[pool_specification]
id = "pool1"
vm_count = 2
inter_node_communication_enabled = true
"#;

const JOB: &str = r#"
[[job_specifications]]
id = "job1"
[[job_specifications.tasks]]
id = "t1"
image = "shipyard/mpi:bookworm"
command = "/opt/shipyard/bin/mpi-hello-openmpi"
[job_specifications.tasks.multi_instance]
num_instances = 2
mpi = { runtime = "openmpi", processes_per_node = 1 }
"#;

#[test]
fn help_teaches_with_examples() {
    shipyard()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("Examples:"))
        .stdout(predicate::str::contains(
            "shipyard run examples/local-openmpi.toml",
        ))
        .stdout(predicate::str::contains("--target"))
        .stdout(predicate::str::contains("--dry-run"));
    for sub in [
        "pool",
        "jobs",
        "tasks",
        "files",
        "run",
        "config",
        "completions",
    ] {
        shipyard()
            .args([sub, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::contains("Examples:\n  shipyard"));
    }
}

#[test]
fn usage_errors_exit_2() {
    shipyard()
        .arg("pool")
        .arg("lst")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("list"));
    shipyard()
        .arg("--target")
        .arg("mars")
        .arg("pool")
        .arg("list")
        .assert()
        .code(2);
    shipyard()
        .args(["run", "--timeout", "soon"])
        .assert()
        .code(2);
    shipyard().assert().code(2);
    // No configuration at all.
    shipyard()
        .args(["config", "check"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no configuration given"));
    // A file that does not exist is named.
    shipyard()
        .args(["-c", "/nonexistent/shipyard.toml", "config", "check"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/nonexistent/shipyard.toml"));
}

#[test]
fn every_example_passes_config_check() {
    let examples = examples();
    assert!(
        examples.len() >= 5,
        "expected the five seed examples, found {examples:?}"
    );
    for ex in examples {
        shipyard()
            .arg("-c")
            .arg(&ex)
            .args(["config", "check"])
            .assert()
            .success()
            .stdout(predicate::str::contains("configuration OK"));
    }
}

#[test]
fn every_example_renders_schema_valid_dry_run_json() {
    let spec = Spec::shared();
    for ex in examples() {
        let out = shipyard()
            .args(["--output", "json", "--target", "azure", "--dry-run", "run"])
            .arg(&ex)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}: {}",
            ex.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let requests = stdout_json(&out);
        let requests = requests.as_array().expect("an array of requests");
        let defs: Vec<&str> = requests
            .iter()
            .map(|r| r["definition"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(defs[0], "PoolAddParameter", "{}", ex.display());
        assert_eq!(defs[1], "JobAddParameter", "{}", ex.display());
        let (last, middle) = defs[2..].split_last().expect("tasks");
        assert!(
            middle.iter().all(|d| *d == "TaskAddCollectionParameter"),
            "{defs:?}"
        );
        assert!(
            *last == "TaskAddCollectionParameter" || *last == "JobPatchParameter",
            "{defs:?}"
        );
        for r in requests {
            let def = r["definition"].as_str().expect("definition");
            if let Err(violations) = spec.validate(def, &r["body"]) {
                panic!(
                    "{}: {} body violates the spec:\n{}\n{}",
                    ex.display(),
                    def,
                    violations
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                    serde_json::to_string_pretty(&r["body"]).unwrap_or_default()
                );
            }
            let method = r["method"].as_str().expect("method");
            let path = r["path"].as_str().expect("path");
            let path_only = path.split('?').next().unwrap_or(path);
            let op = spec
                .operation(method, path_only)
                .unwrap_or_else(|| panic!("{method} {path} is not a Batch operation"));
            assert_eq!(op.body_definition, Some(def), "{method} {path}");
        }
    }
}

#[test]
fn dry_run_never_prints_the_ssh_private_key() {
    let ex = examples_dir().join("local-openmpi.toml");
    let out = shipyard()
        .args(["--target", "azure", "--dry-run", "run"])
        .arg(&ex)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    assert!(text.contains("# POST /pools?api-version="), "{text}");
}

#[test]
fn malformed_config_reports_file_line_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(
        dir.path(),
        "broken.toml",
        "[pool_specification]\nid = \"p\"\nvm_count = \"x\n",
    );
    config_check_fails(&p).stderr(predicate::str::contains(format!("{}:3:14", p.display())));
    // A value of the wrong type names the field too.
    let p = write(
        dir.path(),
        "types.toml",
        "[pool_specification]\nid = \"p\"\nvm_count = true\n",
    );
    config_check_fails(&p)
        .stderr(predicate::str::contains(format!("{}:3:", p.display())))
        .stderr(predicate::str::contains("pool_specification.vm_count"));
}

#[test]
fn unknown_keys_get_a_did_you_mean_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "{POOL}{}",
        JOB.replace("num_instances = 2", "nmu_instances = 2")
    );
    let p = write(dir.path(), "typo.toml", &text);
    let line = text
        .lines()
        .position(|l| l.starts_with("nmu_instances"))
        .expect("line")
        + 1;
    config_check_fails(&p)
        .stderr(predicate::str::contains(format!(
            "{}:{line}:1",
            p.display()
        )))
        .stderr(predicate::str::contains(
            "job_specifications[0].tasks[0].multi_instance.nmu_instances",
        ))
        .stderr(predicate::str::contains("did you mean `num_instances`?"));
    let p = write(dir.path(), "top.toml", "[pool_specifcation]\nid = \"p\"\n");
    config_check_fails(&p).stderr(predicate::str::contains(
        "did you mean `pool_specification`?",
    ));
    let p = write(
        dir.path(),
        "variant.toml",
        &format!("{POOL}{}", JOB.replace("\"openmpi\"", "\"opnmpi\"")),
    );
    config_check_fails(&p).stderr(predicate::str::contains("did you mean `openmpi`?"));
}

#[test]
fn invalid_values_are_located_in_their_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "{POOL}{}",
        JOB.replace("image = \"shipyard/mpi:bookworm\"", "image = \"has space\"")
    );
    let p = write(dir.path(), "bad.toml", &text);
    let line = text
        .lines()
        .position(|l| l.starts_with("image"))
        .expect("line")
        + 1;
    config_check_fails(&p)
        .stderr(predicate::str::contains(format!(
            "{}:{line}:1",
            p.display()
        )))
        .stderr(predicate::str::contains(
            "job_specifications[0].tasks[0].image",
        ));
    // Instance counts beyond the pool's nodes are located at `num_instances`.
    let text = format!(
        "{POOL}{}",
        JOB.replace("num_instances = 2", "num_instances = 3")
    );
    let p = write(dir.path(), "toobig.toml", &text);
    let line = text
        .lines()
        .position(|l| l.starts_with("num_instances"))
        .expect("line")
        + 1;
    config_check_fails(&p)
        .stderr(predicate::str::contains(format!(
            "{}:{line}:1",
            p.display()
        )))
        .stderr(predicate::str::contains(
            "job_specifications[0].tasks[0].multi_instance.num_instances",
        ))
        .stderr(predicate::str::contains(
            "3 instances but pool `pool1` has 2 node(s)",
        ));
    // A pool without `inter_node_communication_enabled` is not refused: multi-instance tasks
    // turn it on in the pool they create (JobPlan::apply_to_pool).
    let text = format!(
        "{}{JOB}",
        POOL.replace("inter_node_communication_enabled = true", "")
    );
    let p = write(dir.path(), "noib.toml", &text);
    shipyard()
        .arg("-c")
        .arg(&p)
        .args(["config", "check"])
        .assert()
        .success();
    let out = shipyard()
        .args(["--output", "json", "--target", "azure", "--dry-run", "run"])
        .arg(&p)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests = stdout_json(&out);
    let pool = requests
        .as_array()
        .and_then(|r| r.iter().find(|r| r["definition"] == "PoolAddParameter"))
        .expect("a Pool_Add request");
    assert_eq!(pool["body"]["enableInterNodeCommunication"], true, "{pool}");
}

#[test]
fn split_configs_merge_and_duplicates_name_both_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "credentials.toml",
        "[credentials.batch]\naccount_name = \"acct\"\naccount_service_url = \"https://acct.westeurope.batch.azure.com\"\n",
    );
    write(dir.path(), "pool.toml", POOL);
    write(dir.path(), "jobs.toml", JOB);
    let out = shipyard()
        .arg("--configdir")
        .arg(dir.path())
        .args(["--output", "json", "config", "check"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    assert_eq!(v["pool"]["id"], "pool1");
    assert_eq!(v["jobs"][0]["id"], "job1");
    assert_eq!(v["files"].as_array().map(Vec::len), Some(3));
    // The same split given as --credentials/--pool/--jobs.
    shipyard()
        .arg("--credentials")
        .arg(dir.path().join("credentials.toml"))
        .arg("--pool")
        .arg(dir.path().join("pool.toml"))
        .arg("--jobs")
        .arg(dir.path().join("jobs.toml"))
        .args(["config", "check"])
        .assert()
        .success();
    // A second pool section is an error naming both files.
    let other = write(dir.path(), "other.toml", POOL);
    shipyard()
        .arg("--configdir")
        .arg(dir.path())
        .arg("-c")
        .arg(&other)
        .args(["config", "check"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("pool_specification"))
        .stderr(predicate::str::contains("pool.toml"))
        .stderr(predicate::str::contains("other.toml"));
}

#[test]
fn secrets_come_from_the_environment_and_are_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = write(
        dir.path(),
        "credentials.toml",
        "[credentials.batch]\naccount_name = \"acct\"\naccount_service_url = \"https://acct.westeurope.batch.azure.com\"\naccount_key = \"c2VjcmV0LWZyb20tZmlsZQ==\"\n",
    );
    let secret = "ZW52LXNlY3JldC1rZXk=";
    for format in ["table", "json"] {
        let out = shipyard()
            .env("SHIPYARD_BATCH_ACCOUNT_KEY", secret)
            .arg("-c")
            .arg(&creds)
            .args(["-vvv", "--output", format, "config", "check"])
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(all.contains("shared key for account acct"), "{all}");
        assert!(
            !all.contains(secret) && !all.contains("c2VjcmV0LWZyb20tZmlsZQ=="),
            "{all}"
        );
    }
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        shipyard()
            .args(["completions", shell])
            .assert()
            .success()
            .stdout(predicate::str::contains("shipyard"));
    }
    shipyard().args(["completions", "tcsh"]).assert().code(2);
}

#[test]
fn dry_run_of_management_commands_prints_their_requests() {
    let ex = examples_dir().join("local-openmpi.toml");
    let cases: &[(&[&str], &str, &str)] = &[
        (&["pool", "list"], "GET", "/pools?api-version="),
        (&["pool", "del", "--yes"], "DELETE", "/pools/mpipool?"),
        (
            &["pool", "resize", "--dedicated", "5"],
            "POST",
            "/pools/mpipool/resize?",
        ),
        (&["pool", "nodes"], "GET", "/pools/mpipool/nodes?"),
        (&["jobs", "list"], "GET", "/jobs?"),
        (&["jobs", "del", "j1", "--yes"], "DELETE", "/jobs/j1?"),
        (&["jobs", "term", "j1"], "POST", "/jobs/j1/terminate?"),
        (&["jobs", "tasks", "j1"], "GET", "/jobs/j1/tasks?"),
        (&["tasks", "list", "--job", "j1"], "GET", "/jobs/j1/tasks?"),
        (
            &["tasks", "get", "--job", "j1", "t1"],
            "GET",
            "/jobs/j1/tasks/t1?",
        ),
        (
            &["tasks", "term", "--job", "j1", "t1"],
            "POST",
            "/jobs/j1/tasks/t1/terminate?",
        ),
        (
            &["files", "--job", "j1", "--task", "t1"],
            "GET",
            "/jobs/j1/tasks/t1/files/stdout.txt?",
        ),
    ];
    let spec = Spec::shared();
    for (args, method, path) in cases {
        let out = shipyard()
            .arg("-c")
            .arg(&ex)
            .args(["--dry-run", "--output", "json"])
            .args(*args)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = stdout_json(&out);
        assert_eq!(v[0]["method"], *method, "{args:?}");
        let p = v[0]["path"].as_str().expect("path");
        assert!(p.starts_with(path), "{args:?}: {p}");
        let op = spec.operation(method, p.split('?').next().unwrap_or(p));
        assert!(op.is_some(), "{method} {p} is not in the Batch spec");
        if let Some(def) = op.and_then(|o| o.body_definition) {
            if !v[0]["body"].is_null() {
                assert!(
                    spec.validate(def, &v[0]["body"]).is_ok(),
                    "{args:?}: {}",
                    v[0]["body"]
                );
            }
        }
    }
    // Without a pool, pool commands that need one say so.
    shipyard()
        .args(["--dry-run", "pool", "nodes"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("pool_specification"));
}

#[test]
fn dry_run_splits_large_jobs_into_task_collections_of_100() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = String::from(POOL);
    text.push_str("[[job_specifications]]\nid = \"bag\"\n");
    for i in 0..250 {
        text.push_str(&format!(
            "[[job_specifications.tasks]]\nimage = \"shipyard/mpi:bookworm\"\ncommand = \"/bin/echo {i}\"\n"
        ));
    }
    let p = write(dir.path(), "bag.toml", &text);
    let out = shipyard()
        .arg("-c")
        .arg(&p)
        .args(["--dry-run", "--output", "json", "jobs", "add"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    let reqs = v.as_array().expect("array");
    assert_eq!(reqs.len(), 4, "job + 3 collections");
    let sizes: Vec<usize> = reqs[1..]
        .iter()
        .map(|r| r["body"]["value"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(sizes, vec![100, 100, 50]);
    let spec = Spec::shared();
    for r in reqs {
        let def = r["definition"].as_str().expect("definition");
        assert!(spec.validate(def, &r["body"]).is_ok(), "{def}");
    }
}

#[test]
fn unknown_job_id_suggests_the_closest() {
    let ex = examples_dir().join("local-openmpi.toml");
    shipyard()
        .arg("-c")
        .arg(&ex)
        .args(["--dry-run", "jobs", "add", "--job", "hello-openmp"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("did you mean `hello-openmpi`?"));
}

#[test]
fn local_store_commands_on_an_empty_state_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        shipyard()
            .env("SHIPYARD_STATE_DIR", dir.path())
            .arg("--per-run")
            .args(args)
            .output()
            .expect("runs")
    };
    let out = run(&["--output", "json", "jobs", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out), serde_json::json!([]));
    let out = run(&["jobs", "list"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("JOB"));
    let out = run(&["tasks", "list", "--job", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no local job `nope`"));
    let out = run(&["files", "--job", "nope", "--task", "t"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["pool", "nodes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for args in [
        &["pool", "resize", "--dedicated", "2"][..],
        &["jobs", "term", "j1"][..],
        &["jobs", "del", "j1", "--yes"][..],
        &["jobs", "cmi", "j1"][..],
        &["tasks", "term", "--job", "j1", "t1"][..],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--target local"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_missing_plugin_is_a_clear_usage_error() {
    shipyard()
        .args(["--plugin", "/nonexistent/libplugin.so", "-c"])
        .arg(examples_dir().join("local-openmpi.toml"))
        .args(["config", "check"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/nonexistent/libplugin.so"));
}

/// Builds the example plugin (quick when up to date) and returns its shared library.
fn example_plugin() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-q", "-p", "shipyard-plugin-example", "--lib"])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the example plugin");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug").join("libshipyard_plugin_example.so")
}

#[test]
fn a_plugin_runtime_plans_jobs_that_select_it() {
    let plugin = example_plugin();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        dir.path(),
        "plugin.toml",
        r#"
[pool_specification]
id = "p"
vm_count = 1
[pool_specification.vm_configuration.platform_image]
publisher = "microsoft-dsvm"
offer = "ubuntu-hpc"
sku = "2204"
node_agent_sku_id = "batch.node.ubuntu 22.04"
native = true

[[job_specifications]]
id = "viaplugin"
runtime = "example"
[[job_specifications.tasks]]
image = "busybox"
command = "echo hi"
"#,
    );
    // Without the plugin the runtime is unknown, and the error lists the known ones.
    config_check_fails(&cfg)
        .stderr(predicate::str::contains(
            "unknown container runtime `example`",
        ))
        .stderr(predicate::str::contains("docker"));
    let out = shipyard()
        .arg("--plugin")
        .arg(&plugin)
        .arg("-c")
        .arg(&cfg)
        .args(["--dry-run", "--output", "json", "jobs", "add"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    let task = &v[1]["body"]["value"][0];
    assert_eq!(task["containerSettings"]["imageName"], "busybox");
    assert!(Spec::shared()
        .validate("TaskAddCollectionParameter", &v[1]["body"])
        .is_ok());
}

#[test]
fn runtime_planning_errors_are_located_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = r#"[pool_specification]
id = "p"
vm_count = 2
inter_node_communication_enabled = true
[pool_specification.vm_configuration.platform_image]
publisher = "microsoft-dsvm"
offer = "ubuntu-hpc"
sku = "2204"
node_agent_sku_id = "batch.node.ubuntu 22.04"
native = true
[[job_specifications]]
id = "j"
runtime = "singularity"
[[job_specifications.tasks]]
image = "x.sif"
command = "x"
multi_instance = { num_instances = 2 }
"#;
    let p = write(dir.path(), "sing.toml", text);
    config_check_fails(&p)
        .stderr(predicate::str::contains(format!("{}:10:1", p.display())))
        .stderr(predicate::str::contains(
            "pool_specification.vm_configuration.platform_image.native",
        ));
}

/// Issue 13, finding 4: a typo in `[credentials]` must not print the secret on that line.
#[test]
fn config_errors_never_echo_a_credentials_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    for body in [
        "acount_key = \"SUPERSECRETVALUE\"\n",
        "account_key = \"SUPERSECRETVALUE\n",
        "aad = \"SUPERSECRETVALUE\"\n",
    ] {
        let cfg = write(
            dir.path(),
            "credentials.toml",
            &format!("[credentials.batch]\naccount_name = \"a\"\n{body}"),
        );
        let out = config_check_fails(&cfg).get_output().clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("SUPERSECRETVALUE"), "{stderr}");
        assert!(stderr.contains("credentials.toml:3:"), "{stderr}");
        assert!(stderr.contains("may hold a secret"), "{stderr}");
    }
}

/// Issue 13, finding 5: credentials go only to https Azure hosts (or loopback) unless the
/// config opts in.
#[test]
fn credentials_go_only_to_azure_hosts_over_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = examples_dir().join("local-openmpi.toml");
    let check = |creds: &str| {
        let c = write(dir.path(), "credentials.toml", creds);
        shipyard()
            .arg("-c")
            .arg(&ex)
            .arg("--credentials")
            .arg(&c)
            .args(["config", "check"])
            .output()
            .expect("runs")
    };
    let refused = [
        ("[credentials.batch]\naccount_service_url = \"http://b.westeurope.batch.azure.com\"\n", "must use https"),
        ("[credentials.batch]\naccount_service_url = \"https://collector.example.com\"\n", "allow_custom_endpoints"),
        (
            "[credentials.batch]\naccount_service_url = \"https://b.westeurope.batch.azure.com\"\n[credentials.batch.aad]\nauthority_url = \"https://login.example.net\"\n",
            "credentials.batch.aad.authority_url",
        ),
    ];
    for (creds, why) in refused {
        let out = check(creds);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{creds}: {stderr}");
        assert!(stderr.contains(why), "{creds}: {stderr}");
        assert!(stderr.contains("credentials.toml:"), "{stderr}");
    }
    for creds in [
        "[credentials.batch]\naccount_service_url = \"https://b.westeurope.batch.azure.com\"\n",
        "[credentials.batch]\naccount_service_url = \"http://127.0.0.1:8711\"\n",
        "[credentials.batch]\naccount_service_url = \"https://collector.example.com\"\nallow_custom_endpoints = true\n",
    ] {
        let out = check(creds);
        assert!(out.status.success(), "{creds}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The client refuses it too (not only `config check`): nothing is sent.
    let c = write(
        dir.path(),
        "credentials.toml",
        "[credentials.batch]\naccount_name = \"a\"\naccount_service_url = \"https://collector.example.com\"\n",
    );
    shipyard()
        .env("SHIPYARD_BATCH_ACCOUNT_KEY", "a2V5")
        .args(["--target", "azure", "-c"])
        .arg(&ex)
        .arg("--credentials")
        .arg(&c)
        .args(["pool", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("allow_custom_endpoints"));
}

fn bs_fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../batch-shipyard-config/tests/fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("fixtures")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// Replaces the values of `SHIPYARD_REGISTRY_PASSWORD_<i>` settings in a dry run's JSON
/// with a marker; how many there were.
fn blank_registry_passwords(v: &mut Value) -> usize {
    match v {
        Value::Object(m) => {
            let is_password = m
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.starts_with("SHIPYARD_REGISTRY_PASSWORD_"));
            if is_password {
                m.insert("value".into(), Value::String("<password>".into()));
                return 1;
            }
            m.values_mut().map(blank_registry_passwords).sum()
        }
        Value::Array(a) => a.iter_mut().map(blank_registry_passwords).sum(),
        _ => 0,
    }
}

/// Issue 11: Batch Shipyard directories are read as they are (`--configdir`, and the files
/// one by one with -c/--credentials/--pool/--jobs), and `config import` gives TOML whose
/// dry run is identical to the YAML's. Every fixture qualifies: no key is left for later.
#[test]
fn batch_shipyard_yaml_checks_and_imports_to_the_same_dry_run() {
    let mut checked = 0;
    let fixtures = bs_fixtures();
    for fixture in &fixtures {
        shipyard_bs_config::translate_dir(fixture, Default::default()).expect("fixture translates");
        let fixture = fixture.clone();
        let name = fixture.display().to_string();
        let out = shipyard()
            .arg("--configdir")
            .arg(&fixture)
            .args(["--output", "json", "config", "check"])
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{name}: {stderr}");
        assert_eq!(stdout_json(&out)["valid"], true, "{name}");
        let dry = |args: &mut Command| {
            let out = args
                .args(["--output", "json", "--target", "azure", "--dry-run", "run"])
                .output()
                .expect("runs");
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout_json(&out)
        };
        let from_yaml = dry(shipyard().arg("--configdir").arg(&fixture));
        // The same files named one by one.
        let mut one_by_one = shipyard();
        for (flag, stem) in [
            ("--credentials", "credentials"),
            ("--pool", "pool"),
            ("--jobs", "jobs"),
        ] {
            if let Some(p) = ["yaml", "yml", "json"]
                .iter()
                .map(|e| fixture.join(format!("{stem}.{e}")))
                .find(|p| p.is_file())
            {
                one_by_one.arg(flag).arg(p);
            }
        }
        if let Some(p) = ["yaml", "json"]
            .iter()
            .map(|e| fixture.join(format!("config.{e}")))
            .find(|p| p.is_file())
        {
            one_by_one.arg("-c").arg(p);
        }
        assert_eq!(dry(&mut one_by_one), from_yaml, "{name}: one by one");
        let out_dir = tempfile::tempdir().expect("tempdir");
        let imported = shipyard()
            .args(["config", "import"])
            .arg(&fixture)
            .arg("--out")
            .arg(out_dir.path())
            .output()
            .expect("runs");
        assert!(
            imported.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
        let toml_path = out_dir.path().join("config.toml");
        let toml = std::fs::read_to_string(&toml_path).expect("config.toml written");
        assert!(
            toml.contains('#'),
            "{name}: the import keeps its comments:\n{toml}"
        );
        // Identical, except the registry passwords the import deliberately does not copy.
        let mut imported = dry(shipyard().arg("--configdir").arg(out_dir.path()));
        let blanked = blank_registry_passwords(&mut imported);
        let mut expected = from_yaml.clone();
        assert_eq!(
            blank_registry_passwords(&mut expected),
            blanked,
            "{name}: the same registry logins"
        );
        assert_eq!(imported, expected, "{name}: imported");
        // A second import does not overwrite the first.
        shipyard()
            .args(["config", "import"])
            .arg(&fixture)
            .arg("--out")
            .arg(out_dir.path())
            .assert()
            .code(2);
        checked += 1;
    }
    assert_eq!(checked, fixtures.len(), "every fixture is compared");
    assert!(checked >= 8, "only {checked} fixtures");
}

/// Errors in a Batch Shipyard file name the YAML file, line and column.
#[test]
fn batch_shipyard_errors_are_located_in_the_yaml() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "pool.yaml",
        "pool_specification:\n  id: p\n  vm_size: STANDARD_HB60rs\n  vm_cuont:\n    dedicated: 2\n",
    );
    shipyard()
        .arg("--configdir")
        .arg(dir.path())
        .args(["config", "check"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("pool.yaml:4:3"))
        .stderr(predicate::str::contains("vm_count"));
    // A positional file, as `run FILE` takes.
    shipyard()
        .args(["config", "check"])
        .arg(dir.path().join("pool.yaml"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("pool.yaml:4:3"));
    shipyard()
        .args(["config", "check"])
        .arg(examples_dir().join("local-openmpi.toml"))
        .assert()
        .success();
}

/// `pool ssh --target local --per-run` outside a run says the per-run backend has no
/// persistent nodes.
#[test]
fn local_pool_ssh_says_the_local_target_has_no_persistent_nodes() {
    let state = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        dir.path(),
        "local.toml",
        &format!("[local]\nstate_dir = \"{}\"\n", state.path().display()),
    );
    shipyard()
        .arg("-c")
        .arg(&cfg)
        .args(["--target", "local", "--per-run", "pool", "ssh"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no persistent nodes"))
        .stderr(predicate::str::contains("pool nodes"));
}

/// A bad `vm_count` says what is allowed, in TOML and in Batch Shipyard YAML; `config check`
/// takes the file as a positional argument, like `run FILE` (issue 11, point 9).
#[test]
fn a_bad_vm_count_says_what_is_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = write(
        dir.path(),
        "pool.toml",
        "[pool_specification]\nid = \"p\"\nvm_size = \"x\"\nvm_count = \"lots\"\n",
    );
    let yaml = write(
        dir.path(),
        "pool.yaml",
        "pool_specification:\n  id: p\n  vm_size: x\n  vm_count: lots\n",
    );
    shipyard()
        .args(["config", "check"])
        .arg(&toml)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("pool.toml:4:12"))
        .stderr(predicate::str::contains(
            "a node count (integer) or a table `{ dedicated = N, low_priority = M }`",
        ))
        .stderr(predicate::str::contains("untagged enum").not());
    shipyard()
        .args(["config", "check"])
        .arg(&yaml)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("pool.yaml:4:13"))
        .stderr(predicate::str::contains(
            "`dedicated:`/`low_priority:` counts (or an integer)",
        ));
}

/// `pool ssh --target local --per-run` enters the node container of a running task: `docker ps`
/// by the job/task/node labels, then `docker exec -it` (docker is a recorder here).
#[test]
fn local_pool_ssh_execs_a_shell_in_the_running_node_container() {
    use std::os::unix::fs::PermissionsExt as _;
    let state = tempfile::tempdir().expect("tempdir");
    let store = shipyard_local::Store::new(state.path().join(shipyard_local::STORE_FILE));
    let job: shipyard_local::JobRecord = serde_json::from_value(serde_json::json!({
        "id": "hello", "state": "active", "runId": "r1",
        "creationTime": "2026-01-01T00:00:00Z", "taskCount": 1,
    }))
    .expect("job record");
    let task: shipyard_local::TaskRecord = serde_json::from_value(serde_json::json!({
        "jobId": "hello", "id": "task-00000", "state": "running", "retryCount": 0,
        "nodes": ["node-0", "node-1"], "taskDir": state.path().join("t").display().to_string(),
    }))
    .expect("task record");
    store.put_batch(&[job], &[task]).expect("store");
    let docker = state.path().join("docker-recorder");
    std::fs::write(
        &docker,
        "#!/bin/sh\nprintf '%s\\n' \"$@\" >> \"$0.args\"\nif [ \"$1\" = ps ]; then echo c0ffee; fi\nexit 0\n",
    )
    .expect("recorder");
    std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        dir.path(),
        "local.toml",
        &format!("[local]\nstate_dir = \"{}\"\n", state.path().display()),
    );
    let ssh = |extra: &[&str]| {
        shipyard()
            .env("SHIPYARD_DOCKER", &docker)
            .arg("-c")
            .arg(&cfg)
            .args(["--target", "local", "--per-run", "pool", "ssh"])
            .args(extra)
            .assert()
    };
    // Two nodes are running: one must be picked.
    ssh(&[]).code(2).stderr(predicate::str::contains(
        "node-0 (job hello, task task-00000)",
    ));
    ssh(&["--node", "node-1", "--", "hostname"]).success();
    let args = std::fs::read_to_string(state.path().join("docker-recorder.args")).expect("ran");
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        [
            "ps",
            "-q",
            "--filter",
            "label=shipyard.job=hello",
            "--filter",
            "label=shipyard.task=task-00000",
            "--filter",
            "label=shipyard.node=node-1",
            "exec",
            "-it",
            "c0ffee",
            "hostname",
        ]
    );
}

/// `pool ssh` on the local engine (the default `--target local`) runs the command in the
/// node's holder container: the node of a container pool, with the node's hostname. A node id
/// that does not exist is named; the pool is deleted afterwards.
#[test]
fn engine_pool_ssh_runs_in_the_nodes_holder_container() {
    if !shipyard_e2e::require_test_image() {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = format!("ssh-pool-{}", std::process::id());
    let cfg = write(
        dir.path(),
        "pool.toml",
        &format!(
            "[pool_specification]\nid = \"{pool}\"\nvm_count = 1\n\
             [pool_specification.vm_configuration.platform_image]\npublisher = \"p\"\n\
             offer = \"o\"\nsku = \"s\"\nnode_agent_sku_id = \"batch.node.ubuntu 22.04\"\n\
             native = true\n\
             [[job_specifications]]\nid = \"unused\"\n\
             [[job_specifications.tasks]]\nimage = \"shipyard/mpi:bookworm\"\ncommand = \"true\"\n"
        ),
    );
    let cli = || {
        let mut c = shipyard();
        c.env("SHIPYARD_STATE_DIR", state.path())
            .arg("-c")
            .arg(&cfg);
        c
    };
    cli().args(["-q", "pool", "add"]).assert().success();
    let ssh = cli()
        .args(["pool", "ssh", "--", "hostname"])
        .output()
        .expect("pool ssh");
    let del = cli()
        .args(["-q", "pool", "del", "--yes"])
        .output()
        .expect("pool del");
    assert!(
        ssh.status.success(),
        "{}",
        String::from_utf8_lossy(&ssh.stderr)
    );
    let hostname = String::from_utf8_lossy(&ssh.stdout).trim().to_string();
    assert!(
        hostname.starts_with(&pool),
        "the holder's hostname names the pool's node: {hostname:?}"
    );
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
}
