//! The command agent of a container node's long-lived containers (holders and kept
//! multi-instance containers): commands start through a FIFO instead of `docker exec`.
//!
//! A `docker exec` costs the Docker daemon, containerd and runc a process setup each time
//! (about 0.05 s of CPU here, 0.3 s for the eight coordination commands of an 8-node task on 2
//! cores). The agent is the container's main process under `--init`: a POSIX sh loop that reads
//! request ids from `<dir>/in` and starts each request's script, read from its own FIFO (so the
//! task's environment, which may hold secrets, is never written to a file), in the background.
//! The exit code comes back through a second FIFO. The script redirects its own output to the
//! task's files, sets the environment and working directory, and `exec`s the command, so the
//! command runs as under `docker exec`: same container, user, environment, directory and
//! files. Only where that holds does the engine use the agent (root user, environment names
//! that are shell names, output files under the node root); everything else still uses
//! `docker exec`, as does a container made before the agent existed.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use super::node::NODE_ROOT_DIR;
use shipyard_runtime::shell::quote;

/// The agents' directory under a node root.
pub(crate) const DIR: &str = ".shipyard-agent";

/// The agent directory name of a node's holder (kept containers use their first name).
pub(crate) const HOLDER: &str = "node";

/// The loop, run by `/bin/sh -c SCRIPT shipyard-agent DIR`. Requests run detached (a subshell
/// that exits at once, so the agent never collects zombies; `--init` reaps them). Async lists
/// of a non-interactive shell start with SIGINT and SIGQUIT ignored: GNU `env` puts them back
/// where it can, so a command gets the signal dispositions `docker exec` would give it.
const SCRIPT: &str = r#"d=$1
exec 3<>"$d/in" || exit 1
if env --default-signal=INT,QUIT true 2>/dev/null; then set -- env --default-signal=INT,QUIT; else set --; fi
: >"$d/up"
while read -r id <&3; do
  ( ( exec 3<&-; "$@" sh "$d/$id/s" </dev/null; c=$?; { exec 4<>"$d/$id/x" && echo "$c" >&4; } 2>/dev/null ) & )
done
"#;

/// Numbers requests apart.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Where a container's agent lives: on the host and inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Agent {
    host: PathBuf,
    inside: String,
}

/// What a request failed on before its command ran: the caller may use `docker exec` instead.
#[derive(Debug, thiserror::Error)]
#[error("command agent {dir}: {what}: {source}")]
pub(crate) struct AgentError {
    dir: PathBuf,
    what: &'static str,
    #[source]
    source: std::io::Error,
}

/// A request whose command runs: its exit code arrives on `exit`.
pub(crate) struct Running {
    dir: PathBuf,
    exit: tokio::io::BufReader<tokio::net::unix::pipe::Receiver>,
}

impl Agent {
    /// The agent named `name` on the node whose root is `root` (host path).
    pub(crate) fn new(root: &Path, name: &str) -> Self {
        Agent {
            host: root.join(DIR).join(name),
            inside: format!("{NODE_ROOT_DIR}/{DIR}/{name}"),
        }
    }

    /// The entrypoint of a container run by this agent.
    pub(crate) fn entrypoint(&self) -> Vec<String> {
        vec![
            "/bin/sh".into(),
            "-c".into(),
            SCRIPT.into(),
            "shipyard-agent".into(),
            self.inside.clone(),
        ]
    }

    /// Makes its directory and request FIFO, before the container starts.
    pub(crate) fn prepare(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.host)?;
        let _ = std::fs::remove_file(self.host.join("up"));
        match mkfifo(&self.host.join("in")) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }

    /// Whether its loop has said it is up.
    pub(crate) fn is_up(&self) -> bool {
        self.host.join("up").exists()
    }

    /// Waits up to `limit` for its loop to be up (a container just started).
    pub(crate) async fn wait_up(&self, limit: Duration) -> bool {
        let began = std::time::Instant::now();
        let mut step = Duration::from_millis(1);
        while !self.is_up() {
            if began.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(step).await;
            step = (step * 2).min(Duration::from_millis(20));
        }
        true
    }

    /// Removes its directory (the container went).
    pub(crate) fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.host) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(dir = %self.host.display(), error = %e, "agent directory left");
            }
        }
    }

    /// The path inside the container of `host`, a host path under the node root `root`.
    pub(crate) fn inside(root: &Path, host: &Path) -> Option<String> {
        let rel = host.strip_prefix(root).ok()?;
        let rel = rel.to_str()?;
        Some(if rel.is_empty() {
            NODE_ROOT_DIR.to_string()
        } else {
            format!("{NODE_ROOT_DIR}/{rel}")
        })
    }

    /// Starts `script` (from [`script`]) in the container. Fails, with nothing started, when
    /// the agent does not take requests (its container went, or never ran one).
    pub(crate) async fn start(
        &self,
        script: impl FnOnce(&str) -> String,
    ) -> Result<Running, AgentError> {
        let id = format!(
            "r{:x}-{}",
            std::process::id(),
            REQUESTS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = self.host.join(&id);
        let failed = |what, source| AgentError {
            dir: self.host.clone(),
            what,
            source,
        };
        std::fs::create_dir(&dir).map_err(|e| failed("making a request", e))?;
        let undo = |e: AgentError| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        let text = script(&format!("{}/{id}", self.inside));
        let sent = async {
            mkfifo(&dir.join("s")).map_err(|e| failed("making a request", e))?;
            mkfifo(&dir.join("x")).map_err(|e| failed("making a request", e))?;
            // Read-write: open at once, and no end of file before the agent writes.
            let exit = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(dir.join("x"))
                .map_err(|e| failed("opening the exit FIFO", e))?;
            // Non-blocking: a loop that is gone is an error (ENXIO), not a hang.
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(self.host.join("in"))
                .and_then(|mut f| f.write_all(format!("{id}\n").as_bytes()))
                .map_err(|e| failed("sending a request", e))?;
            // The script FIFO opens once the request's subshell reads it.
            let began = std::time::Instant::now();
            let mut tx = loop {
                match tokio::net::unix::pipe::OpenOptions::new().open_sender(dir.join("s")) {
                    Ok(tx) => break tx,
                    Err(e)
                        if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error())
                            && began.elapsed() < Duration::from_secs(10) =>
                    {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => return Err(failed("handing over a script", e)),
                }
            };
            tx.write_all(text.as_bytes())
                .await
                .map_err(|e| failed("handing over a script", e))?;
            drop(tx);
            Ok(Running {
                dir: dir.clone(),
                exit: tokio::io::BufReader::new(exit),
            })
        };
        sent.await.map_err(undo)
    }
}

impl Running {
    /// The request's directory on the host (its `pid` file holds the command's PID inside the
    /// container once it runs).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits for the command's exit code (`None`: the agent wrote none that parses).
    pub(crate) async fn exit_code(&mut self) -> Option<i64> {
        let mut line = String::new();
        self.exit.read_line(&mut line).await.ok()?;
        line.trim().parse().ok()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The script of one command: its PID into `req/pid`, output appended to `stdout`/`stderr`,
/// `env` exported (every name a shell name), `dir` entered, then `argv` exec'd. Paths are
/// inside the container.
pub(crate) fn script(
    req: &str,
    stdout: &str,
    stderr: &str,
    env: &[String],
    dir: Option<&str>,
    argv: &[String],
) -> String {
    let mut s = format!(
        "echo $$ >{}\nexec >>{} 2>>{}\n",
        quote(&format!("{req}/pid")),
        quote(stdout),
        quote(stderr)
    );
    for kv in env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    if let Some(d) = dir {
        s.push_str(&format!("cd {} || exit 126\n", quote(d)));
    }
    s.push_str("exec");
    for a in argv {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s.push('\n');
    s
}

/// Whether every `NAME=value` of `env` has a name the shell can export.
pub(crate) fn shell_names(env: &[String]) -> bool {
    env.iter().all(|kv| {
        let name = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Whether `user` (`user[:group]`, `None` = the image's) is root, who the agent runs as in a
/// holder; in a kept container the agent runs as the container's user.
pub(crate) fn is_root(user: Option<&str>) -> bool {
    match user {
        None => true,
        Some(u) => matches!(u.split(':').next(), Some("0" | "root")),
    }
}

fn mkfifo(path: &Path) -> std::io::Result<()> {
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        path,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .map_err(std::io::Error::from)
}

/// The host PID of the process whose PID in its own namespace is `inner`, among `candidates`
/// (the processes of one container).
pub(crate) fn host_pid(inner: i32, candidates: &[i32]) -> Option<i32> {
    candidates.iter().copied().find(|p| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|ids| ids.split_whitespace().last())
                    .and_then(|id| id.parse::<i32>().ok())
            })
            == Some(inner)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_quotes_every_value_and_execs_the_command() {
        let s = script(
            "/mnt/batch/tasks/.shipyard-agent/x/r1",
            "/mnt/batch/tasks/wd/stdout.txt",
            "/mnt/batch/tasks/wd/stderr.txt",
            &["A=it's".into(), "B=".into(), "C=$HOME x".into()],
            Some("/mnt/batch/tasks/wd"),
            &[
                "/bin/bash".into(),
                "-c".into(),
                "echo \"$A\"; exit 3".into(),
            ],
        );
        assert_eq!(
            s,
            "echo $$ >/mnt/batch/tasks/.shipyard-agent/x/r1/pid\n\
             exec >>/mnt/batch/tasks/wd/stdout.txt 2>>/mnt/batch/tasks/wd/stderr.txt\n\
             export A='it'\\''s'\nexport B=''\nexport C='$HOME x'\n\
             cd /mnt/batch/tasks/wd || exit 126\n\
             exec /bin/bash -c 'echo \"$A\"; exit 3'\n"
        );
    }

    #[test]
    fn only_shell_names_and_root_take_the_agent() {
        assert!(shell_names(&["AZ_BATCH_X=1".into(), "_a1=".into()]));
        assert!(!shell_names(&["a.b=1".into()]));
        assert!(!shell_names(&["1A=1".into()]));
        assert!(!shell_names(&["=1".into()]));
        assert!(is_root(None) && is_root(Some("0:0")) && is_root(Some("root")));
        assert!(!is_root(Some("1000:1000")));
    }

    #[test]
    fn host_paths_under_the_node_root_map_inside() {
        let root = Path::new("/srv/nodes/n1");
        assert_eq!(
            Agent::inside(root, Path::new("/srv/nodes/n1/workitems/j/t/stdout.txt")).as_deref(),
            Some("/mnt/batch/tasks/workitems/j/t/stdout.txt")
        );
        assert_eq!(Agent::inside(root, Path::new("/srv/other/x")), None);
    }

    /// The agent loop itself, run by the host's sh in a temporary directory standing for the
    /// node root: commands start, their output and exit codes come back, SIGINT is not
    /// ignored where GNU env can restore it, and a stopped loop refuses requests.
    #[tokio::test]
    async fn the_loop_runs_requests_and_reports_their_exit_codes() {
        let root = tempfile::tempdir().expect("tempdir");
        // Run the loop on the host with the node root's path mapped onto the temporary one.
        let agent = Agent {
            host: root.path().join(DIR).join("t"),
            inside: root.path().join(DIR).join("t").display().to_string(),
        };
        agent.prepare().expect("prepare");
        let mut child = tokio::process::Command::new("/bin/sh")
            .args(["-c", SCRIPT, "shipyard-agent", &agent.inside])
            .kill_on_drop(true)
            .spawn()
            .expect("sh runs");
        assert!(agent.wait_up(Duration::from_secs(10)).await, "agent up");
        let out = root.path().join("out.txt");
        let err = root.path().join("err.txt");
        let run = |argv: Vec<String>, env: Vec<String>| {
            let (out, err) = (out.display().to_string(), err.display().to_string());
            let dir = root.path().display().to_string();
            let agent = agent.clone();
            async move {
                let mut r = agent
                    .start(|req| script(req, &out, &err, &env, Some(&dir), &argv))
                    .await
                    .expect("started");
                let code = r.exit_code().await;
                (code, r.dir().to_path_buf())
            }
        };
        let sh = |c: &str| vec!["/bin/sh".to_string(), "-c".into(), c.to_string()];
        let (code, dir) = run(
            sh("echo \"$GREETING\" $(pwd); echo oops >&2; exit 7"),
            vec!["GREETING=it's me".into()],
        )
        .await;
        assert_eq!(code, Some(7));
        assert!(!dir.exists(), "the request's directory is removed");
        let pwd = std::fs::canonicalize(root.path()).expect("canonical");
        assert_eq!(
            std::fs::read_to_string(&out).expect("stdout"),
            format!("it's me {}\n", pwd.display())
        );
        assert_eq!(std::fs::read_to_string(&err).expect("stderr"), "oops\n");
        // Two at once, each with its own code.
        let (a, b) = tokio::join!(
            run(sh("sleep 0.3; exit 3"), vec![]),
            run(sh("exit 4"), vec![])
        );
        assert_eq!((a.0, b.0), (Some(3), Some(4)));
        // A missing command is the shell's 127, as the exec of one would be.
        assert_eq!(run(vec!["/no/such/cmd".into()], vec![]).await.0, Some(127));
        // SIGINT reaches a command with the default disposition when GNU env is there.
        let gnu_env = std::process::Command::new("env")
            .args(["--default-signal=INT", "true"])
            .status()
            .is_ok_and(|s| s.success());
        if gnu_env {
            let (code, _) = run(sh("kill -INT $$; sleep 5; exit 0"), vec![]).await;
            assert_eq!(code, Some(130), "the shell died of SIGINT");
        }
        child.kill().await.expect("kill");
        let _ = child.wait().await;
        let refused = agent.start(|_| String::new()).await;
        assert!(refused.is_err(), "a loop that is gone takes no request");
    }
}
