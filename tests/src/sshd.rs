//! Throw-away sshd instances on loopback addresses, standing in for the nodes of an MPI job.
//!
//! [`SshNodes::start`] generates a temporary host key and a temporary client key pair, then
//! starts one `/usr/sbin/sshd -D` per address, listening **only** on `<addr>:23` (never port 22),
//! accepting that one client key for root (`AuthorizedKeysFile` in the temp dir), logging to its
//! own file (`-E`). Every sshd is killed when the [`SshNodes`] value is dropped.
//!
//! Needs root (port 23, sshd's privilege separation). Use distinct addresses in tests that may
//! run at the same time (nextest runs each test in its own process).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The sshd port inside shipyard's containers, and of these stand-in nodes.
pub const SSH_PORT: u16 = 23;

const SSHD: &str = "/usr/sbin/sshd";

/// Running sshd instances on loopback addresses, plus the client key that logs into them.
#[derive(Debug)]
pub struct SshNodes {
    dir: tempfile::TempDir,
    nodes: Vec<(String, Child)>,
}

fn keygen(path: &Path) -> anyhow::Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "shipyard-test", "-f"])
        .arg(path)
        .output()
        .context("running ssh-keygen")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl SshNodes {
    /// Starts one sshd per address (e.g. `127.0.0.2`), each on port [`SSH_PORT`], and waits
    /// until every one accepts TCP connections (10 s at most each).
    pub fn start(addrs: &[&str]) -> anyhow::Result<SshNodes> {
        if !Path::new(SSHD).is_file() {
            bail!("{SSHD} is missing: run `bash scripts/setup.sh` (openssh-server)");
        }
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let dir = tempfile::Builder::new()
            .prefix("shipyard-sshd-")
            .tempdir()
            .context("creating the sshd temp dir")?;
        keygen(&dir.path().join("host_key"))?;
        keygen(&dir.path().join("id_ed25519"))?;
        std::fs::copy(
            dir.path().join("id_ed25519.pub"),
            dir.path().join("authorized_keys"),
        )
        .context("writing authorized_keys")?;
        let mut nodes = SshNodes {
            dir,
            nodes: Vec::new(),
        };
        for addr in addrs {
            let log = nodes.log_path(addr);
            let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
            let child = Command::new(SSHD)
                .arg("-D")
                .args(["-f", "/dev/null"])
                .args(["-E"])
                .arg(&log)
                .args(["-o", &format!("ListenAddress={addr}:{SSH_PORT}")])
                .args(["-o", &opt("HostKey", &nodes.dir.path().join("host_key"))])
                .args([
                    "-o",
                    &opt(
                        "AuthorizedKeysFile",
                        &nodes.dir.path().join("authorized_keys"),
                    ),
                ])
                .args(["-o", "StrictModes=no"])
                .args(["-o", "PasswordAuthentication=no"])
                .args(["-o", "KbdInteractiveAuthentication=no"])
                .args(["-o", "PermitRootLogin=prohibit-password"])
                .args(["-o", "UsePAM=no"])
                .args(["-o", "PidFile=none"])
                .args(["-o", "LogLevel=INFO"])
                .args(["-o", "MaxStartups=100"])
                .args(["-o", "MaxSessions=100"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting sshd on {addr}:{SSH_PORT}"))?;
            nodes.nodes.push((addr.to_string(), child));
            nodes.wait_ready(addr)?;
        }
        Ok(nodes)
    }

    fn wait_ready(&mut self, addr: &str) -> anyhow::Result<()> {
        let sock: SocketAddr = format!("{addr}:{SSH_PORT}")
            .parse()
            .with_context(|| format!("bad address {addr}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some((_, child)) = self.nodes.iter_mut().find(|(a, _)| a == addr) {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "sshd on {sock} exited ({status}): {}",
                        self.log(addr).unwrap_or_default()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "sshd on {sock} did not accept connections within 10 s: {}",
                    self.log(addr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client's private key (give it to ssh as `-o IdentityFile=<path>`).
    pub fn identity_file(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// The log file of the sshd on `addr`.
    pub fn log_path(&self, addr: &str) -> PathBuf {
        self.dir.path().join(format!("sshd-{addr}.log"))
    }

    /// The log of the sshd on `addr`.
    pub fn log(&self, addr: &str) -> anyhow::Result<String> {
        let path = self.log_path(addr);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// How many public-key logins the sshd on `addr` accepted so far.
    pub fn accepted_logins(&self, addr: &str) -> anyhow::Result<usize> {
        Ok(self
            .log(addr)?
            .lines()
            .filter(|l| l.contains("Accepted publickey for root"))
            .count())
    }
}

impl Drop for SshNodes {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// True when something accepts TCP connections on `addr:port` (used to prove port 22 is shut).
pub fn port_open(addr: &str, port: u16) -> bool {
    format!("{addr}:{port}")
        .parse::<SocketAddr>()
        .is_ok_and(|s| TcpStream::connect_timeout(&s, Duration::from_millis(500)).is_ok())
}
