//! `--recreate` on `--target local`: a finished job id is rerun only when asked.

use assert_cmd::Command;

const CONFIG: &str = r#"
[local]
labels = { "shipyard.test" = "1" }

[[job_specifications]]
id = "c2recreate"
runtime = "docker"

[[job_specifications.tasks]]
id = "t"
image = "shipyard/mpi:bookworm"
command = "/bin/echo rerun"
"#;

#[test]
fn a_finished_local_job_reruns_only_with_recreate() {
    if !shipyard_e2e::require_test_image() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("job.toml");
    std::fs::write(&cfg, CONFIG).expect("config");
    let run = |extra: &[&str]| {
        let mut cmd = Command::cargo_bin("shipyard").expect("binary");
        for var in ["SHIPYARD_CONFIG", "SHIPYARD_CONFIGDIR", "SHIPYARD_TARGET"] {
            cmd.env_remove(var);
        }
        cmd.env("SHIPYARD_STATE_DIR", dir.path().join("state"))
            .args(["--quiet", "run"])
            .args(extra)
            .arg(&cfg)
            .output()
            .expect("runs")
    };
    let first = run(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let again = run(&[]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--recreate"), "{stderr}");
    let recreated = run(&["--recreate"]);
    assert!(
        recreated.status.success(),
        "{}",
        String::from_utf8_lossy(&recreated.stderr)
    );
}
