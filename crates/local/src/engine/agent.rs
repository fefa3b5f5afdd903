//! The command agent of a container node's long-lived containers (holders and kept
//! multi-instance containers): commands start through a FIFO instead of `docker exec`.
//!
//! A `docker exec` costs the Docker daemon, containerd and runc a process setup each time
//! (about 0.05 s of CPU here, 0.3 s for the eight coordination commands of an 8-node task on 2
//! cores). The agent is the container's main process under `--init`: a POSIX sh loop that reads
//! request ids from `in` and starts each request's script, read from its own FIFO (so the
//! task's environment, which may hold secrets, is never written to a file), in a session of
//! its own. Its exit code comes back through a second FIFO, whose end of file says the request
//! died without one. The script redirects its own output to the task's files, sets the
//! environment and working directory, and `exec`s the command, so the command runs as under
//! `docker exec`: same container, user, environment, directory, files, signal dispositions and
//! a process group of its own.
//!
//! The agent's directory is on the host beside the node root (`<node>.agents/<container>`)
//! and bind-mounted into its own container only, at [`INSIDE`]: no other container of the node
//! can read a script or send a request. Only root may open its FIFOs, so a container whose user
//! is not root (or an engine with user-namespace remapping) keeps `sleep infinity`. The loop
//! runs only where it can give a command what `docker exec` would (`setsid`, GNU `env
//! --default-signal`), and says so in `up`; else it sleeps, and commands go by `docker exec`,
//! as they do for a container made before the agent existed.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use super::node::NODE_ROOT_DIR;
use shipyard_runtime::shell::quote;

/// Where an agent's directory is mounted in its container.
pub(crate) const INSIDE: &str = "/.shipyard-agent";

/// The agent directory name of a node's holder (kept containers use their first name).
pub(crate) const HOLDER: &str = "node";

/// The loop, run by `/bin/sh -c SCRIPT shipyard-agent DIR`. Requests run detached (a subshell
/// that exits at once, so the agent never collects zombies; `--init` reaps them). Each
/// request's subshell holds the exit FIFO open while its command runs (so its death is an end
/// of file there) and gives it the code. Async lists of a non-interactive shell start with
/// SIGINT and SIGQUIT ignored and in the loop's process group: GNU `env` puts the signals back
/// and `setsid` (the subshell is no group leader, so it does not fork) gives the command a
/// session of its own, so a `kill 0` in a task reaches its own processes only. Without either,
/// or without access to its FIFO, the loop sleeps instead and says `no` in `up` (`command`:
/// a failed redirection of the special built-in `exec` would end the shell, and the container).
const SCRIPT: &str = r#"d=$1
command exec 3<>"$d/in" 2>/dev/null || { echo no >"$d/up"; exec sleep infinity; }
if env --default-signal=INT,QUIT true 2>/dev/null && command -v setsid >/dev/null 2>&1; then
  echo ok >"$d/up"
else
  echo no >"$d/up"; exec sleep infinity
fi
while read -r id <&3; do
  ( ( exec 3<&- 4<>"$d/$id/x"; echo s >&4; setsid env --default-signal=INT,QUIT sh "$d/$id/s" 4>&- </dev/null; echo "$?" >&4 ) & )
done
"#;

/// Numbers requests apart (after a per-process random part, so that an engine restarted with
/// the same PID never meets an earlier request's directory).
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Where a container's agent lives: on the host and inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Agent {
    host: PathBuf,
    inside: String,
}

/// What a request failed on. Unless [`AgentError::may_have_run`], its command did not start
/// and the caller may use `docker exec` instead.
#[derive(Debug, thiserror::Error)]
#[error("command agent {dir}: {what}: {source}")]
pub(crate) struct AgentError {
    dir: PathBuf,
    what: &'static str,
    #[source]
    source: std::io::Error,
    /// The script had been handed over: the command may run.
    handed_over: bool,
}

impl AgentError {
    /// Whether the command may have started (its script was handed over): running it again
    /// by `docker exec` could run it twice.
    pub(crate) fn may_have_run(&self) -> bool {
        self.handed_over
    }

    /// The agent's directory and the I/O error.
    pub(crate) fn into_parts(self) -> (PathBuf, std::io::Error) {
        (self.dir, self.source)
    }
}

/// A request whose command runs: its exit code arrives on `exit` (the read end only: end of
/// file once the request's subshell is gone).
pub(crate) struct Running {
    dir: PathBuf,
    exit: tokio::io::BufReader<tokio::net::unix::pipe::Receiver>,
}

/// Where the agents of the node whose root is `root` keep their directories (removed with the
/// node).
pub(crate) fn node_dir(root: &Path) -> PathBuf {
    super::node::beside_root(root, "agents")
}

impl Agent {
    /// The agent named `name` on the node whose root is `root` (host path).
    pub(crate) fn new(root: &Path, name: &str) -> Self {
        Agent {
            host: node_dir(root).join(name),
            inside: INSIDE.to_string(),
        }
    }

    /// Whether its directory is under `dir`.
    pub(crate) fn is_under(&self, dir: &Path) -> bool {
        self.host.starts_with(dir)
    }

    /// The bind mount of its directory into its container.
    pub(crate) fn bind(&self) -> String {
        format!("{}:{}", self.host.display(), self.inside)
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
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(&self.host)?;
        std::fs::set_permissions(&self.host, std::fs::Permissions::from_mode(0o700))?;
        let _ = std::fs::remove_file(self.host.join("up"));
        match mkfifo(&self.host.join("in")) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }

    /// What its loop said: `Some(true)` it takes requests, `Some(false)` it cannot give a
    /// command what `docker exec` would, `None` not said yet.
    pub(crate) fn is_up(&self) -> Option<bool> {
        match read_regular(&self.host.join("up"))?.trim() {
            "ok" => Some(true),
            "no" => Some(false),
            _ => None,
        }
    }

    /// Waits up to `limit` for its loop to say whether it takes requests (a container just
    /// started).
    pub(crate) async fn wait_up(&self, limit: Duration) -> bool {
        let began = std::time::Instant::now();
        let mut step = Duration::from_millis(1);
        loop {
            if let Some(up) = self.is_up() {
                return up;
            }
            if began.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(step).await;
            step = (step * 2).min(Duration::from_millis(20));
        }
    }

    /// Removes its directory (the container went).
    pub(crate) fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.host) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(dir = %self.host.display(), error = %e, "agent directory left");
            }
        }
    }

    /// The path inside a node's containers of `host`, a host path under the node root `root`.
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
        static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let run = RUN.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string());
        let id = format!("r{run}-{}", REQUESTS.fetch_add(1, Ordering::Relaxed));
        let dir = self.host.join(&id);
        let failed = |what, source| AgentError {
            dir: self.host.clone(),
            what,
            source,
            handed_over: false,
        };
        std::fs::create_dir(&dir).map_err(|e| failed("making a request", e))?;
        let undo = |e: AgentError| {
            // A subshell that opened the script FIFO just too late waits for a writer: this
            // one lets it read an empty script (nothing runs) and end.
            let _ = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(dir.join("s"));
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
            let failed = |what, source| AgentError {
                handed_over: true,
                ..failed(what, source)
            };
            // The subshell wrote `s` before it opened the script: read exactly that, then keep
            // only a read end, so that the subshell's death is an end of file.
            let mut exit = exit;
            let mut started = [0u8; 2];
            tokio::io::AsyncReadExt::read_exact(&mut exit, &mut started)
                .await
                .map_err(|e| failed("waiting for a request to start", e))?;
            let reader = tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(dir.join("x"))
                .map_err(|e| failed("opening the exit FIFO", e))?;
            drop(exit);
            Ok(Running {
                dir: dir.clone(),
                exit: tokio::io::BufReader::new(reader),
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

    /// Waits for the command's exit code (`None`: the request's subshell went without giving
    /// one, as when its container stopped).
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
/// inside the container. One brace group, which the shell parses whole before it runs any of
/// it: a script cut short (its sender gone mid-way) is a syntax error, never half a command.
pub(crate) fn script(
    req: &str,
    stdout: &str,
    stderr: &str,
    env: &[String],
    dir: Option<&str>,
    argv: &[String],
) -> String {
    let mut s = format!(
        "{{\necho $$ >{}\nexec >>{} 2>>{}\n",
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
    s.push_str("\n}\n");
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
    let root = |s: &str| matches!(s, "0" | "root");
    match user.map(|u| u.split_once(':').unwrap_or((u, "0"))) {
        None => true,
        // Another group would be lost: the agent runs as root:root.
        Some((u, g)) => root(u) && root(g),
    }
}

/// The text of `path` when it is a small regular file, read without blocking or following a
/// link (the agent's files are writable from its container: a FIFO put there must not stall
/// the engine).
pub(crate) fn read_regular(path: &Path) -> Option<String> {
    use std::io::Read as _;
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOFOLLOW;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.len() > 4096 {
        return None;
    }
    let mut s = String::new();
    f.read_to_string(&mut s).ok()?;
    Some(s)
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
            "/.shipyard-agent/r1",
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
            "{\necho $$ >/.shipyard-agent/r1/pid\n\
             exec >>/mnt/batch/tasks/wd/stdout.txt 2>>/mnt/batch/tasks/wd/stderr.txt\n\
             export A='it'\\''s'\nexport B=''\nexport C='$HOME x'\n\
             cd /mnt/batch/tasks/wd || exit 126\n\
             exec /bin/bash -c 'echo \"$A\"; exit 3'\n}\n"
        );
    }

    #[test]
    fn only_shell_names_and_root_take_the_agent() {
        assert!(shell_names(&["AZ_BATCH_X=1".into(), "_a1=".into()]));
        assert!(!shell_names(&["a.b=1".into()]));
        assert!(!shell_names(&["1A=1".into()]));
        assert!(!shell_names(&["=1".into()]));
        assert!(is_root(None) && is_root(Some("0:0")) && is_root(Some("root")));
        assert!(is_root(Some("root:root")) && is_root(Some("0")));
        assert!(!is_root(Some("1000:1000")));
        assert!(!is_root(Some("root:users")) && !is_root(Some("0:100")));
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

    /// An agent whose loop runs on the host, its directory under `root` (the same path
    /// outside and "inside").
    fn host_agent(root: &Path) -> Agent {
        let host = root.join("agents/t");
        Agent {
            inside: host.display().to_string(),
            host,
        }
    }

    /// The agent's loop, run by the host's `/bin/sh`.
    fn spawn_loop(agent: &Agent) -> tokio::process::Child {
        tokio::process::Command::new("/bin/sh")
            .args(["-c", SCRIPT, "shipyard-agent", &agent.inside])
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("sh runs")
    }

    /// A loop that cannot open its request FIFO says `no` and keeps its container running
    /// (sleeping), instead of ending the shell: a failed redirection of `exec` alone would.
    #[tokio::test]
    async fn a_loop_without_its_fifo_says_no_and_keeps_running() {
        let root = tempfile::tempdir().expect("tempdir");
        let agent = host_agent(root.path());
        // `in` a directory: it cannot be opened for reading and writing.
        std::fs::create_dir_all(agent.host.join("in")).expect("dirs");
        let mut child = spawn_loop(&agent);
        assert!(!agent.wait_up(Duration::from_secs(10)).await, "says no");
        assert_eq!(agent.is_up(), Some(false));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the loop's process keeps running"
        );
        let _ = child.kill().await;
    }

    /// Only small regular files are read; a FIFO (which a container could put in place of a
    /// file) is refused at once instead of blocking.
    #[test]
    fn only_regular_files_are_read() {
        let root = tempfile::tempdir().expect("tempdir");
        let f = root.path().join("pid");
        std::fs::write(&f, "42\n").expect("write");
        assert_eq!(read_regular(&f).as_deref(), Some("42\n"));
        let fifo = root.path().join("fifo");
        mkfifo(&fifo).expect("mkfifo");
        assert_eq!(read_regular(&fifo), None);
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&f, &link).expect("symlink");
        assert_eq!(read_regular(&link), None);
        assert_eq!(read_regular(&root.path().join("missing")), None);
    }

    /// The agent loop itself, run by the host's sh (Debian's dash, with util-linux `setsid`
    /// and GNU `env`, as in the test image) in a temporary directory: commands start, their
    /// output and exit codes come back, two run at once, SIGINT is not ignored, a `kill 0`
    /// reaches only the command's own processes, a request whose subshell dies ends without a
    /// code, a script cut short runs nothing, and a stopped loop refuses requests.
    #[tokio::test]
    async fn the_loop_runs_requests_and_reports_their_exit_codes() {
        let root = tempfile::tempdir().expect("tempdir");
        let agent = host_agent(root.path());
        agent.prepare().expect("prepare");
        let mut child = spawn_loop(&agent);
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
        // SIGINT reaches a command with the default disposition.
        let (code, _) = run(sh("kill -INT $$; sleep 5; exit 0"), vec![]).await;
        assert_eq!(code, Some(130), "the shell died of SIGINT");
        // `kill 0` reaches the command's process group, not the loop's.
        let (code, _) = run(sh("kill 0; sleep 5"), vec![]).await;
        assert_eq!(code, Some(143), "the command died of its own SIGTERM");
        assert_eq!(run(sh("exit 5"), vec![]).await.0, Some(5), "the loop lives");
        // The request's subshell killed: no code, and no hang.
        let (code, _) = tokio::time::timeout(
            Duration::from_secs(10),
            run(sh("kill -KILL $PPID; sleep 1"), vec![]),
        )
        .await
        .expect("an end of file, not a hang");
        assert_eq!(code, None);
        // A script cut short (no closing brace) runs none of its commands.
        let marker = root.path().join("ran");
        let cut = {
            let mut r = agent
                .start(|req| {
                    let full = script(
                        req,
                        "/dev/null",
                        "/dev/null",
                        &[],
                        None,
                        &["/bin/touch".into(), marker.display().to_string()],
                    );
                    full[..full.len() - 2].to_string()
                })
                .await
                .expect("started");
            r.exit_code().await
        };
        assert_eq!(cut, Some(2), "a syntax error");
        assert!(!marker.exists(), "nothing of a cut script ran");
        child.kill().await.expect("kill");
        let _ = child.wait().await;
        let refused = agent.start(|_| String::new()).await;
        assert!(refused.is_err(), "a loop that is gone takes no request");
    }
}
