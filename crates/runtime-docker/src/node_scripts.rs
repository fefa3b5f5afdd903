//! The shell scripts shipyard runs on the nodes: sshd start-up, the wait for every node's
//! sshd, and the job preparation script (SSH key files, image pulls).

use shipyard_runtime::shell::{quote, quote_expanding};
use shipyard_runtime::ssh::{self, CONTAINER_SSH_DIR, SSHD_PORT};
use shipyard_runtime::{JobSpec, PoolFacts};

/// The script that starts sshd on port 23 in a container: creates `/run/sshd`, generates an
/// ed25519 host key if missing, then runs sshd (`foreground` keeps it as the container's main
/// process; otherwise it daemonizes and the script returns).
pub fn sshd_script(listen_address: Option<&str>, foreground: bool) -> String {
    let key = "/etc/ssh/ssh_host_ed25519_key";
    let mut sshd = vec![
        "/usr/sbin/sshd".to_string(),
        "-p".to_string(),
        SSHD_PORT.to_string(),
        "-h".to_string(),
        key.to_string(),
    ];
    if foreground {
        sshd.insert(1, "-D".to_string());
        sshd.insert(2, "-e".to_string());
    }
    if let Some(a) = listen_address {
        sshd.push("-o".into());
        sshd.push(format!("ListenAddress={a}"));
    }
    format!(
        "mkdir -p /run/sshd && {{ test -s {key} || ssh-keygen -q -t ed25519 -N '' -f {key}; }} && {}{}",
        if foreground { "exec " } else { "" },
        shipyard_runtime::shell::join(&sshd)
    )
}

/// The coordination script of a native multi-instance task (runs inside the container):
/// installs the job's key files into `/root/.ssh` and starts sshd on port 23, daemonized.
pub fn native_coordination_script(job_id: &str, listen_address: Option<&str>) -> String {
    let dir = ssh::node_key_dir_shell(job_id);
    format!(
        "set -e; mkdir -p {ssh_dir} && chmod 700 {ssh_dir} && for f in {files}; do install -m 600 {src}/$f {ssh_dir}/$f; done; {sshd}",
        ssh_dir = CONTAINER_SSH_DIR,
        files = [
            ssh::PRIVATE_KEY_FILE,
            ssh::PUBLIC_KEY_FILE,
            ssh::AUTHORIZED_KEYS_FILE,
            ssh::CLIENT_CONFIG_FILE
        ]
        .join(" "),
        src = quote_expanding(&dir),
        sshd = sshd_script(listen_address, false),
    )
}

/// A bash snippet waiting until every host of `$AZ_BATCH_HOST_LIST` accepts TCP connections on
/// port 23, for at most `timeout_secs`; on timeout it prints the hosts that never came up and
/// exits 1.
pub fn wait_for_sshd_script(timeout_secs: u32) -> String {
    format!(
        "shipyard_hosts=$(printf %s \"$AZ_BATCH_HOST_LIST\" | tr , \" \"); \
if [ -z \"$shipyard_hosts\" ]; then echo \"shipyard: AZ_BATCH_HOST_LIST is empty\" >&2; exit 1; fi; \
shipyard_deadline=$((SECONDS + {timeout_secs})); \
while :; do shipyard_down=; \
for h in $shipyard_hosts; do timeout 3 bash -c \"exec 3<>/dev/tcp/$h/{SSHD_PORT}\" 2>/dev/null || shipyard_down=\"$shipyard_down $h\"; done; \
[ -z \"$shipyard_down\" ] && break; \
if [ $SECONDS -ge $shipyard_deadline ]; then echo \"shipyard: sshd on port {SSHD_PORT} did not accept connections within {timeout_secs}s on:$shipyard_down\" >&2; exit 1; fi; \
sleep 1; done"
    )
}

/// The job preparation script of a non-native or native Linux job: writes the SSH key files
/// from the task's environment (when `keys`), then pulls missing images (when `pull`).
pub(crate) fn preparation_script(
    job: &JobSpec,
    pool: &PoolFacts,
    docker: &str,
    images: &[String],
    keys: bool,
) -> String {
    let mut parts = vec!["set -e".to_string()];
    if keys {
        let dir = quote_expanding(&ssh::node_key_dir_shell(&job.id));
        let config_lines: Vec<String> = ssh::client_config(&pool.subnet_pattern)
            .lines()
            .map(quote)
            .collect();
        parts.push(format!(
            "umask 077; mkdir -p {dir}; chmod 700 {dir}; \
printf '%s\\n' \"${priv_env}\" > {dir}/{priv_file}; \
printf '%s\\n' \"${pub_env}\" > {dir}/{pub_file}; \
cp {dir}/{pub_file} {dir}/{ak}; \
printf '%s\\n' {config} > {dir}/{cfg}; \
chmod 600 {dir}/*",
            priv_env = ssh::PRIVATE_KEY_ENV,
            pub_env = ssh::PUBLIC_KEY_ENV,
            priv_file = ssh::PRIVATE_KEY_FILE,
            pub_file = ssh::PUBLIC_KEY_FILE,
            ak = ssh::AUTHORIZED_KEYS_FILE,
            cfg = ssh::CLIENT_CONFIG_FILE,
            config = config_lines.join(" "),
        ));
    }
    let docker = quote(docker);
    for image in images {
        let i = quote(image);
        parts.push(format!(
            "{docker} image inspect {i} >/dev/null 2>&1 || {docker} pull {i}"
        ));
    }
    if let Some(user) = &job.job_preparation {
        parts.push(user.command.clone());
    }
    parts.join("; ")
}
