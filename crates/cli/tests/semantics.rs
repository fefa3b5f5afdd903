//! Batch Shipyard semantics wired into planning: task factories and the merge task, storage
//! output data signed with `credentials.storage`, registry logins from
//! `credentials.docker_registry` — and none of their secrets in `--dry-run` output.

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

const POOL: &str = r#"
[pool_specification]
id = "pool1"
vm_size = "Standard_D4s_v5"
vm_count = 2
[pool_specification.vm_configuration.platform_image]
publisher = "microsoft-dsvm"
offer = "ubuntu-hpc"
sku = "2204"
node_agent_sku_id = "batch.node.ubuntu 22.04"
native = true
"#;

fn dry_run(dir: &Path, text: &str) -> (String, Value) {
    let p = dir.join("config.toml");
    std::fs::write(&p, text).expect("write config");
    let out = Command::cargo_bin("shipyard")
        .expect("binary")
        .env_remove("SHIPYARD_STORAGE_ACCOUNT_KEY_MYSTORE")
        .arg("-c")
        .arg(&p)
        .args(["--output", "json", "--target", "azure", "--dry-run", "run"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout).expect("json");
    (stdout, v)
}

fn tasks(v: &Value) -> Vec<Value> {
    v.as_array()
        .expect("array")
        .iter()
        .filter(|r| r["definition"] == "TaskAddCollectionParameter")
        .flat_map(|r| r["body"]["value"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn a_parametric_sweep_expands_to_its_product_and_the_merge_task_waits_for_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "{POOL}\n[[job_specifications]]\nid = \"sweep\"\n\
         [[job_specifications.tasks]]\nimage = \"shipyard/mpi:bookworm\"\ncommand = \"/bin/echo {{0}} {{1}}\"\n\
         [job_specifications.tasks.task_factory.parametric_sweep]\n\
         product = [{{ start = 0, stop = 3, step = 1 }}, {{ start = 0, stop = 2, step = 1 }}]\n\
         [job_specifications.merge_task]\nimage = \"shipyard/mpi:bookworm\"\ncommand = \"/bin/echo merge\"\n"
    );
    let (_, v) = dry_run(dir.path(), &text);
    let tasks = tasks(&v);
    assert_eq!(tasks.len(), 7, "6 swept tasks + the merge task: {tasks:#?}");
    let merge = tasks.last().expect("merge task");
    let deps = merge["dependsOn"]["taskIds"].as_array().expect("dependsOn");
    let others: Vec<&Value> = tasks[..6].iter().map(|t| &t["id"]).collect();
    assert_eq!(deps.iter().collect::<Vec<_>>(), others);
    let lines: Vec<String> = tasks[..6]
        .iter()
        .map(|t| t["commandLine"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("/bin/echo 2 1")),
        "{lines:#?}"
    );
}

#[test]
fn output_data_gets_a_signed_container_url_whose_signature_is_not_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[credentials.storage.mystore]\naccount = \"acct1\"\naccount_key = \"a2V5a2V5a2V5a2V5a2V5\"\n\
         {POOL}\n[[job_specifications]]\nid = \"out\"\n\
         [[job_specifications.tasks]]\nid = \"t1\"\nimage = \"shipyard/mpi:bookworm\"\ncommand = \"/bin/true\"\n\
         [[job_specifications.tasks.output_data.azure_storage]]\n\
         storage_account_settings = \"mystore\"\nremote_path = \"results/run1\"\ninclude = [\"*.txt\"]\n"
    );
    let (stdout, v) = dry_run(dir.path(), &text);
    let tasks = tasks(&v);
    let url = tasks[0]["outputFiles"][0]["destination"]["container"]["containerUrl"]
        .as_str()
        .expect("containerUrl");
    assert!(
        url.starts_with("https://acct1.blob.core.windows.net/results?"),
        "{url}"
    );
    assert!(url.contains("sig=<redacted>"), "{url}");
    assert!(url.contains("sp="), "a SAS with permissions: {url}");
    assert!(
        !stdout.contains("sig=%")
            && stdout.matches("sig=").count() == stdout.matches("sig=<redacted>").count()
    );
}

#[test]
fn a_registry_login_goes_to_the_native_pool_and_its_password_is_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[credentials.docker_registry.\"myreg.azurecr.io\"]\nusername = \"me\"\npassword = \"HUNTER2SECRET\"\n\
         {POOL}\n[[job_specifications]]\nid = \"priv\"\n\
         [[job_specifications.tasks]]\nid = \"t1\"\nimage = \"myreg.azurecr.io/app:1\"\ncommand = \"/bin/true\"\n"
    );
    let (stdout, v) = dry_run(dir.path(), &text);
    assert!(!stdout.contains("HUNTER2SECRET"), "{stdout}");
    let pool = v
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["definition"] == "PoolAddParameter")
        .expect("pool add");
    let regs = pool["body"]["virtualMachineConfiguration"]["containerConfiguration"]
        ["containerRegistries"]
        .as_array()
        .expect("containerRegistries");
    assert_eq!(regs[0]["registryServer"], "myreg.azurecr.io");
    assert_eq!(regs[0]["username"], "me");
    assert_eq!(regs[0]["password"], "<redacted>");
}
