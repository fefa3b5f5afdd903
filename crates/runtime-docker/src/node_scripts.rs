//! The shell scripts shipyard runs on the nodes: sshd start-up, the wait for every node's
//! sshd, and the job preparation script (SSH key files, image pulls).

use shipyard_runtime::shell::{quote, quote_expanding};
use shipyard_runtime::ssh::{self, CONTAINER_SSH_DIR, SSHD_PORT};
use shipyard_runtime::{JobSpec, PoolFacts};

/// The variable holding the address sshd listens on (set by [`node_address_script`], and
/// passed into non-native containers).
pub const SSHD_ADDRESS_VAR: &str = "SHIPYARD_SSHD_ADDRESS";

/// The sshd options shipyard sets on the command line, whatever the image's `sshd_config`
/// says: public keys only, root by key only, and the job's `authorized_keys` only.
pub fn sshd_policy_options() -> Vec<String> {
    [
        "PasswordAuthentication=no".to_string(),
        "KbdInteractiveAuthentication=no".to_string(),
        "PermitRootLogin=prohibit-password".to_string(),
        "PubkeyAuthentication=yes".to_string(),
        format!(
            "AuthorizedKeysFile={CONTAINER_SSH_DIR}/{}",
            ssh::AUTHORIZED_KEYS_FILE
        ),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect()
}

/// Bash statements setting [`SSHD_ADDRESS_VAR`] to this node's address in
/// `$AZ_BATCH_HOST_LIST` (the address the other nodes use), found among `hostname -I`; they
/// exit 1, naming both lists, when there is none, rather than listen on every interface.
pub fn node_address_script() -> String {
    let v = SSHD_ADDRESS_VAR;
    format!(
        "{v}=; for shipyard_a in $(printf %s \"$AZ_BATCH_HOST_LIST\" | tr , \" \"); do \
for shipyard_l in $(hostname -I 2>/dev/null); do if [ \"$shipyard_a\" = \"$shipyard_l\" ]; then {v}=$shipyard_a; fi; done; done; \
if [ -z \"${v}\" ]; then echo \"shipyard: no address of this node ($(hostname -I 2>/dev/null)) is in AZ_BATCH_HOST_LIST ($AZ_BATCH_HOST_LIST); sshd would listen on every interface\" >&2; exit 1; fi"
    )
}

/// The script that starts sshd on port 23 in a container: creates `/run/sshd`, then runs sshd
/// with the job key pair as its host key, the authentication policy of
/// [`sshd_policy_options`], listening on `listen_address` only (`None`: the address in
/// `$SHIPYARD_SSHD_ADDRESS`). `foreground` keeps sshd as the container's main process;
/// otherwise it daemonizes and the script returns.
pub fn sshd_script(listen_address: Option<&str>, foreground: bool) -> String {
    let mut sshd = vec![
        "/usr/sbin/sshd".to_string(),
        "-p".to_string(),
        SSHD_PORT.to_string(),
        "-h".to_string(),
        format!("{CONTAINER_SSH_DIR}/{}", ssh::PRIVATE_KEY_FILE),
    ];
    if foreground {
        sshd.insert(1, "-D".to_string());
        sshd.insert(2, "-e".to_string());
    }
    sshd.extend(sshd_policy_options());
    let mut line = shipyard_runtime::shell::join(&sshd);
    line.push_str(" -o ");
    line.push_str(&match listen_address {
        Some(a) => quote(&format!("ListenAddress={a}")),
        None => quote_expanding(&format!("ListenAddress=${SSHD_ADDRESS_VAR}")),
    });
    format!(
        "mkdir -p /run/sshd && {}{line}",
        if foreground { "exec " } else { "" },
    )
}

/// The coordination script of a native multi-instance task (runs inside the container):
/// installs the job's key files into `/root/.ssh`, finds this node's address
/// ([`node_address_script`], unless `listen_address` is given) and starts sshd on port 23
/// there, daemonized.
pub fn native_coordination_script(job_id: &str, listen_address: Option<&str>) -> String {
    let dir = ssh::node_key_dir_shell(job_id);
    let address = match listen_address {
        Some(_) => String::new(),
        None => format!("{}; ", node_address_script()),
    };
    format!(
        "set -e; mkdir -p {ssh_dir} && chmod 700 {ssh_dir} && for f in {files}; do install -m 600 {src}/$f {ssh_dir}/$f; done; {address}{sshd}",
        ssh_dir = CONTAINER_SSH_DIR,
        files = [
            ssh::PRIVATE_KEY_FILE,
            ssh::PUBLIC_KEY_FILE,
            ssh::AUTHORIZED_KEYS_FILE,
            ssh::KNOWN_HOSTS_FILE,
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
/// from the task's environment (when `keys`) and unsets the key variables, so neither
/// `docker pull` nor the user's preparation command (an `env`, a `set -x`) ever sees the key;
/// then pulls missing images and runs the user's command.
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
printf '%s %s\\n' {ak_options} \"${pub_env}\" > {dir}/{ak}; \
printf '%s %s\\n' {kh_patterns} \"${pub_env}\" > {dir}/{kh}; \
printf '%s\\n' {config} > {dir}/{cfg}; \
chmod 600 {dir}/*; \
unset {priv_env} {pub_env}",
            priv_env = ssh::PRIVATE_KEY_ENV,
            pub_env = ssh::PUBLIC_KEY_ENV,
            priv_file = ssh::PRIVATE_KEY_FILE,
            pub_file = ssh::PUBLIC_KEY_FILE,
            ak = ssh::AUTHORIZED_KEYS_FILE,
            kh = ssh::KNOWN_HOSTS_FILE,
            // `authorized_keys_line`/`known_hosts_line` with the key left to the script
            ak_options = quote(ssh::authorized_keys_line("", &pool.subnet_pattern).trim_end()),
            kh_patterns = quote(ssh::known_hosts_line("", &pool.subnet_pattern).trim_end()),
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
