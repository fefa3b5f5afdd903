//! Building a [`LaunchPlan`] from a [`LaunchRequest`], and rendering or resolving it.

use crate::flags::{self, container as cflags, intel, mpich, msmpi, openmpi};
use crate::render::{cmd_word, sh_host_lines, sh_quote, sh_suffix_sed, sh_word};
use crate::request::{Container, ContainerWrapper, HostSpec, Hosts, LaunchRequest, Ppn};
use crate::word::{Deferred, Num, Part, RunEnv, Word};
use crate::{Flavor, LaunchError};

/// Where the lines of a hostfile come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostfileHosts {
    /// Known now.
    List(Vec<String>),
    /// A comma-separated list variable, read at run time.
    Env(String),
}

/// A hostfile the launcher reads: one line per host, `<host><suffix><count>`, in the flavour's
/// own format (Open MPI `host slots=N`, MPICH and Intel MPI `host:N`, MS-MPI `host N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostfile {
    /// The path given to the launcher.
    pub path: String,
    /// The hosts.
    pub hosts: HostfileHosts,
    /// Text between host and count (`" slots="`, `":"`, `" "`).
    pub suffix: String,
    /// Processes per host.
    pub per_host: Num,
}

impl Hostfile {
    /// The contents, when known now.
    pub fn literal_contents(&self) -> Option<String> {
        match (&self.hosts, self.per_host.known()) {
            (HostfileHosts::List(hosts), Some(n)) => {
                Some(lines(hosts.iter(), &self.suffix, u64::from(n)))
            }
            _ => None,
        }
    }

    /// The contents, given the run-time values.
    pub fn resolve(&self, env: &RunEnv) -> Result<String, LaunchError> {
        let n = self.per_host.resolve(env)?;
        match &self.hosts {
            HostfileHosts::List(hosts) => Ok(lines(hosts.iter(), &self.suffix, n)),
            HostfileHosts::Env(var) => Ok(lines(env.hosts(var)?.into_iter(), &self.suffix, n)),
        }
    }

    /// A POSIX-sh command writing the file (`printf ... > path`).
    pub fn render_sh(&self) -> String {
        let path = sh_quote(&self.path);
        if let Some(contents) = self.literal_contents() {
            let quoted: Vec<String> = contents.lines().map(sh_quote).collect();
            return format!("printf '%s\\n' {} > {path}", quoted.join(" "));
        }
        let source = match &self.hosts {
            HostfileHosts::List(hosts) => {
                let quoted: Vec<String> = hosts.iter().map(|h| sh_quote(h)).collect();
                format!("printf '%s\\n' {}", quoted.join(" "))
            }
            HostfileHosts::Env(var) => sh_host_lines(var),
        };
        format!(
            "{source} | {} > {path}",
            sh_suffix_sed(&self.suffix, &self.per_host)
        )
    }
}

/// One `<host><suffix><n>` line per host.
fn lines<S: AsRef<str>>(hosts: impl Iterator<Item = S>, suffix: &str, n: u64) -> String {
    hosts
        .map(|h| format!("{}{suffix}{n}\n", h.as_ref()))
        .collect()
}

/// A launch plan: argv (words, some deferred to run time), the launcher's environment and an
/// optional hostfile. Strings are rendered from these, never parsed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    flavor: Flavor,
    argv: Vec<Word>,
    env: Vec<(String, Word)>,
    hostfile: Option<Hostfile>,
}

/// A plan with every deferred value substituted, for callers that exec without a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The argv, `argv[0]` being the program to exec (the `timeout` wrapper or the launcher).
    pub argv: Vec<String>,
    /// Variables to set in the launcher's environment (in addition to the inherited ones).
    pub env: Vec<(String, String)>,
    /// The hostfile to write before exec: (path, contents).
    pub hostfile: Option<(String, String)>,
}

impl LaunchPlan {
    /// The flavour.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The argv words.
    pub fn argv(&self) -> &[Word] {
        &self.argv
    }

    /// The launcher's environment (shipyard's defaults, replaced by the user's values).
    pub fn env(&self) -> &[(String, Word)] {
        &self.env
    }

    /// The hostfile to write first, if the request asked for one.
    pub fn hostfile(&self) -> Option<&Hostfile> {
        self.hostfile.as_ref()
    }

    /// The argv when every word is literal (no run-time values).
    pub fn literal_argv(&self) -> Option<Vec<String>> {
        self.argv
            .iter()
            .map(|w| w.as_literal().map(str::to_string))
            .collect()
    }

    /// One POSIX-sh command line: `[<write hostfile> && ]NAME=value ... argv...`. Literals are
    /// quoted exactly; deferred values are expanded by the shell at run time. Suitable for
    /// `/bin/sh -c` (see [`crate::batch_sh_command_line`] for a Batch task command line).
    pub fn render_sh(&self) -> String {
        let mut out = String::new();
        if let Some(hf) = &self.hostfile {
            out.push_str(&hf.render_sh());
            out.push_str(" && ");
        }
        for (name, value) in &self.env {
            out.push_str(name);
            out.push('=');
            out.push_str(&sh_word(value, false));
            out.push(' ');
        }
        let words: Vec<String> = self
            .argv
            .iter()
            .enumerate()
            .map(|(i, w)| sh_word(w, i == 0))
            .collect();
        out.push_str(&words.join(" "));
        out
    }

    /// A cmd.exe command line (MS-MPI only): Windows argv quoting, cmd metacharacters escaped
    /// with `^`, run-time variables as `%NAME%`. A hostfile must be written by the caller first,
    /// so a plan with one is refused.
    pub fn render_cmd(&self) -> Result<String, LaunchError> {
        if self.flavor != Flavor::MsMpi {
            return Err(LaunchError::Unsupported {
                flavor: self.flavor.to_string(),
                field: "render_cmd",
                reason: "cmd.exe lines are rendered for MS-MPI only; use render_sh".to_string(),
            });
        }
        if let Some(hf) = &self.hostfile {
            return Err(LaunchError::Unsupported {
                flavor: self.flavor.to_string(),
                field: "hostfile",
                reason: format!(
                    "write {} from LaunchPlan::hostfile before running the cmd.exe line",
                    hf.path
                ),
            });
        }
        let words = self
            .argv
            .iter()
            .map(|w| cmd_word(w, "argv"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(words.join(" "))
    }

    /// Substitutes the run-time values: concrete argv, environment and hostfile.
    pub fn resolve(&self, env: &RunEnv) -> Result<Resolved, LaunchError> {
        Ok(Resolved {
            argv: self
                .argv
                .iter()
                .map(|w| w.resolve(env))
                .collect::<Result<_, _>>()?,
            env: self
                .env
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.resolve(env)?)))
                .collect::<Result<_, LaunchError>>()?,
            hostfile: self
                .hostfile
                .as_ref()
                .map(|hf| Ok::<_, LaunchError>((hf.path.clone(), hf.resolve(env)?)))
                .transpose()?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// validation

fn invalid(field: &'static str, reason: impl Into<String>) -> LaunchError {
    LaunchError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn unsupported(flavor: Flavor, field: &'static str, reason: impl Into<String>) -> LaunchError {
    LaunchError::Unsupported {
        flavor: flavor.to_string(),
        field,
        reason: reason.into(),
    }
}

fn no_nul(field: &'static str, s: &str) -> Result<(), LaunchError> {
    if s.contains('\0') {
        Err(LaunchError::NulByte { field })
    } else {
        Ok(())
    }
}

fn word_no_nul(field: &'static str, w: &Word) -> Result<(), LaunchError> {
    for p in w.parts() {
        match p {
            Part::Lit(s) => no_nul(field, s)?,
            Part::Deferred(Deferred::Var(name)) => env_name(field, name)?,
            Part::Deferred(_) => {}
        }
    }
    Ok(())
}

fn env_name(field: &'static str, name: &str) -> Result<(), LaunchError> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{name:?} is not a valid environment variable name"),
        ))
    }
}

/// A token that must stay one whitespace-free word (hosts, ssh options, interface names).
fn token(field: &'static str, s: &str, forbidden: &[char]) -> Result<(), LaunchError> {
    no_nul(field, s)?;
    if s.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || forbidden.contains(c))
    {
        return Err(invalid(field, format!("{s:?} must not contain {c:?}")));
    }
    Ok(())
}

fn validate(req: &LaunchRequest) -> Result<(), LaunchError> {
    let flavor = req.flavor;
    if req.program.is_empty() {
        return Err(invalid("program", "must not be empty"));
    }
    no_nul("program", &req.program)?;
    for a in &req.args {
        no_nul("args", a)?;
    }
    if let Some(l) = &req.launcher {
        if l.is_empty() {
            return Err(invalid("launcher", "must not be empty"));
        }
        no_nul("launcher", l)?;
    }
    for o in &req.extra_options {
        word_no_nul("extra_options", o)?;
    }
    match &req.hosts {
        Hosts::List(hosts) => {
            if hosts.is_empty() {
                return Err(invalid("hosts", "the host list is empty"));
            }
            for h in hosts {
                token("hosts", h, &[',', ':', '\'', '"', '\\', '$', '`'])?;
            }
        }
        Hosts::Env(var) => env_name("hosts", var)?,
    }
    if let HostSpec::File(path) = &req.host_spec {
        if path.is_empty() {
            return Err(invalid("hostfile", "the path must not be empty"));
        }
        no_nul("hostfile", path)?;
    }
    if req.ppn == Ppn::Count(0) {
        return Err(invalid("ppn", "processes per node must be at least 1"));
    }
    if req.ranks == Some(0) {
        return Err(invalid("ranks", "must be at least 1"));
    }
    for name in &req.forward_env {
        env_name("forward_env", name)?;
    }
    for (name, value) in &req.env {
        env_name("env", name)?;
        word_no_nul("env", value)?;
    }
    if let Some(port) = req.ssh_port {
        if !flavor.uses_ssh() {
            return Err(unsupported(
                flavor,
                "ssh_port",
                "MS-MPI starts ranks through SMPD, not ssh",
            ));
        }
        if port == 0 {
            return Err(invalid("ssh_port", "must be 1-65535"));
        }
    }
    for (k, v) in &req.ssh_options {
        if !flavor.uses_ssh() {
            return Err(unsupported(
                flavor,
                "ssh_options",
                "MS-MPI starts ranks through SMPD, not ssh",
            ));
        }
        token("ssh_options", k, &['='])?;
        token("ssh_options", v, &[])?;
    }
    if let Some(w) = &req.workdir {
        word_no_nul("workdir", w)?;
    }
    if let Some(i) = &req.iface {
        if flavor == Flavor::MsMpi {
            return Err(unsupported(
                flavor,
                "iface",
                "no verified MS-MPI flag pins the interface",
            ));
        }
        token("iface", i, &[','])?;
    }
    if let Some(wc) = &req.wall_clock {
        if wc.secs == 0 {
            return Err(invalid("wall_clock", "the limit must be at least 1 second"));
        }
    }
    if let Some(c) = &req.container {
        if flavor == Flavor::MsMpi {
            return Err(unsupported(
                flavor,
                "container",
                "container wrappers run on Linux only",
            ));
        }
        validate_container(c)?;
        if c.join && flavor != Flavor::OpenMpi {
            // hydra places `-ppn` ranks per node only when the total fills every node
            if req.ranks.is_some() || req.oversubscribe {
                return Err(unsupported(
                    flavor,
                    "container.join",
                    "the peer count per node is the processes per node, so `ranks` and \
                     `oversubscribe` cannot be set",
                ));
            }
        }
    }
    if let Some(m) = req.open_mpi_major {
        if !(1..=99).contains(&m) {
            return Err(invalid(
                "open_mpi_major",
                format!("{m} is not an Open MPI major version"),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// building

/// Checks a container wrapper on its own (also for [`Container::render_sh`]).
fn validate_container(c: &Container) -> Result<(), LaunchError> {
    if c.image.as_literal().is_some_and(str::is_empty) {
        return Err(invalid("container.image", "must not be empty"));
    }
    word_no_nul("container.image", &c.image)?;
    if let Some(p) = &c.program {
        token("container.program", p, &[])?;
    }
    let cc = c.wrapper == ContainerWrapper::Charliecloud;
    if c.join && !cc {
        return Err(invalid(
            "container.join",
            format!("{} has no peer groups", c.wrapper.default_program()),
        ));
    }
    if c.nv && cc {
        return Err(invalid(
            "container.nv",
            "ch-run has no --nv: inject the GPU libraries with ch-fromhost",
        ));
    }
    for b in &c.binds {
        if b.read_only && cc {
            return Err(invalid(
                "container.binds",
                "ch-run binds are read-write; it has no read-only bind",
            ));
        }
        for w in [&b.src, &b.dst] {
            word_no_nul("container.binds", w)?;
            if w.parts().is_empty() {
                return Err(invalid("container.binds", "a bind path must not be empty"));
            }
            for p in w.parts() {
                if let Part::Lit(s) = p {
                    if let Some(c) = s.chars().find(|c| matches!(c, ',' | ':')) {
                        return Err(invalid(
                            "container.binds",
                            format!("{s:?} must not contain {c:?}"),
                        ));
                    }
                }
            }
        }
    }
    if let Some(p) = &c.pwd {
        word_no_nul("container.pwd", p)?;
    }
    for (name, value) in &c.env {
        env_name("container.env", name)?;
        word_no_nul("container.env", value)?;
    }
    for o in &c.options {
        no_nul("container.options", o)?;
    }
    Ok(())
}

/// The wrapper's argv up to (and including) the image, or for Charliecloud the `--` after it.
/// `join` is the `--join` word(s) of a Charliecloud peer group (see [`Container::join`]).
fn container_argv(c: &Container, join: Option<Word>) -> Vec<Word> {
    let lit = |s: &str| Word::lit(s);
    let mut argv = vec![Word::lit(
        c.program.as_deref().unwrap_or(c.wrapper.default_program()),
    )];
    let bind_word = |b: &crate::Bind| {
        let mut parts: Vec<Part> = b.src.parts().to_vec();
        parts.push(Part::Lit(":".into()));
        parts.extend(b.dst.parts().iter().cloned());
        if b.read_only {
            parts.push(Part::Lit(":ro".into()));
        }
        Word::concat(parts)
    };
    if c.wrapper == ContainerWrapper::Charliecloud {
        use flags::charliecloud as ch;
        argv.extend(join);
        for b in &c.binds {
            argv.extend([lit(ch::BIND), bind_word(b)]);
        }
        if let Some(p) = &c.pwd {
            argv.extend([lit(ch::CD), p.clone()]);
        }
        if !c.env.is_empty() {
            argv.push(lit(ch::ENV_NO_EXPAND));
            for (k, v) in &c.env {
                let mut parts = vec![Part::Lit(format!("{}{k}=", ch::SET_ENV))];
                parts.extend(v.parts().iter().cloned());
                argv.push(Word::concat(parts));
            }
        }
        argv.extend(c.options.iter().map(Word::lit));
        argv.push(c.image.clone());
        argv.push(lit(ch::END));
        return argv;
    }
    argv.push(lit(cflags::EXEC));
    for b in &c.binds {
        argv.extend([lit(cflags::BIND), bind_word(b)]);
    }
    if let Some(p) = &c.pwd {
        argv.extend([lit(cflags::PWD), p.clone()]);
    }
    if c.nv {
        argv.push(lit(cflags::NV));
    }
    argv.extend(c.options.iter().map(Word::lit));
    argv.push(c.image.clone());
    argv
}

impl Container {
    /// The container started once, without an MPI launcher: one POSIX-sh line
    /// `ch-run ... IMAGE -- program args` (or `singularity exec ... IMAGE program args`), its
    /// run-time values expanded by the shell. [`Container::join`] needs a launcher and is an
    /// error here.
    pub fn render_sh<S: AsRef<str>>(
        &self,
        program: &str,
        args: &[S],
    ) -> Result<String, LaunchError> {
        validate_container(self)?;
        if self.join {
            return Err(invalid(
                "container.join",
                "a peer group needs an MPI launcher",
            ));
        }
        if program.is_empty() {
            return Err(invalid("program", "must not be empty"));
        }
        no_nul("program", program)?;
        let mut argv = container_argv(self, None);
        argv.push(Word::lit(program));
        for a in args {
            no_nul("args", a.as_ref())?;
            argv.push(Word::lit(a.as_ref()));
        }
        Ok(argv
            .iter()
            .enumerate()
            .map(|(i, w)| crate::render::sh_word(w, i == 0))
            .collect::<Vec<_>>()
            .join(" "))
    }
}

/// Environment values shipyard sets by default for a flavour (before the user's values, which
/// replace them by name).
pub fn default_env(flavor: Flavor) -> Vec<(&'static str, &'static str)> {
    match flavor {
        Flavor::OpenMpi => vec![(openmpi::ENV_VADER_SINGLE_COPY, "none")],
        Flavor::IntelMpi => vec![
            (intel::ENV_FABRICS, "shm:ofi"),
            (intel::ENV_FI_PROVIDER, "tcp"),
        ],
        Flavor::Mpich | Flavor::MsMpi => vec![],
    }
}

fn ssh_args(req: &LaunchRequest) -> String {
    let mut opts: Vec<(String, String)> = flags::SSH_DEFAULT_OPTIONS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &req.ssh_options {
        match opts.iter_mut().find(|(key, _)| key.eq_ignore_ascii_case(k)) {
            Some(slot) => slot.1 = v.clone(),
            None => opts.push((k.clone(), v.clone())),
        }
    }
    let mut parts = Vec::new();
    if let Some(port) = req.ssh_port {
        parts.push(format!("-p {port}"));
    }
    parts.extend(opts.iter().map(|(k, v)| format!("-o {k}={v}")));
    parts.join(" ")
}

fn set_env(env: &mut Vec<(String, Word)>, name: &str, value: Word) {
    env.retain(|(k, _)| k != name);
    env.push((name.to_string(), value));
}

pub(crate) fn build(req: &LaunchRequest) -> Result<LaunchPlan, LaunchError> {
    validate(req)?;
    let flavor = req.flavor;
    let ompi5 = req.open_mpi_major.unwrap_or(4) >= 5;

    // rank and host arithmetic
    let nodes = match &req.hosts {
        Hosts::List(h) => {
            Num::Lit(u32::try_from(h.len()).map_err(|_| invalid("hosts", "too many hosts"))?)
        }
        Hosts::Env(var) => Num::HostCount(var.clone()),
    };
    let ppn = match &req.ppn {
        Ppn::Count(n) => Num::Lit(*n),
        Ppn::AllCores => Num::Nproc,
        Ppn::Command(cmd) => Num::Command(cmd.clone()),
    };
    let user = req.user_placement;
    let capacity = Num::times(nodes.clone(), ppn.clone(), "ranks")?;
    let ranks = req.ranks.map(Num::Lit).unwrap_or_else(|| capacity.clone());
    if let (Some(r), Some(n), Some(p)) = (req.ranks, nodes.known(), ppn.known()) {
        let cap = u64::from(n) * u64::from(p);
        if u64::from(r) > cap && !req.oversubscribe {
            return Err(LaunchError::TooManyRanks {
                ranks: r,
                nodes: n,
                ppn: p,
                capacity: cap,
            });
        }
    }

    // environment: defaults, flavour knobs, then the user's values (which win)
    let mut env: Vec<(String, Word)> = default_env(flavor)
        .into_iter()
        .filter(|(k, _)| !req.without_defaults.iter().any(|w| w == k))
        .map(|(k, v)| (k.to_string(), Word::lit(v)))
        .collect();
    if let (Flavor::IntelMpi, Some(i)) = (flavor, &req.iface) {
        set_env(&mut env, intel::ENV_HYDRA_IFACE, Word::lit(i));
        set_env(&mut env, intel::ENV_FI_TCP_IFACE, Word::lit(i));
    }
    let ssh = ssh_args(req);
    if flavor == Flavor::Mpich {
        set_env(&mut env, mpich::ENV_LAUNCHER_EXTRA_ARGS, Word::lit(&ssh));
    }
    // the user's pairs, and the container's (prefixed) pairs
    let mut pairs: Vec<(String, Word)> = Vec::new();
    for (k, v) in &req.env {
        set_env(&mut pairs, k, v.clone());
    }
    if let Some(c) = req
        .container
        .as_ref()
        .filter(|c| c.wrapper != ContainerWrapper::Charliecloud)
    {
        for (k, v) in &c.env {
            set_env(
                &mut pairs,
                &format!("{}{k}", c.wrapper.env_prefix()),
                v.clone(),
            );
        }
    }
    if flavor != Flavor::MsMpi {
        for (k, v) in &pairs {
            set_env(&mut env, k, v.clone());
        }
    }
    let mut forward: Vec<String> = Vec::new();
    for name in &req.forward_env {
        if !forward.contains(name) && !pairs.iter().any(|(k, _)| k == name) {
            forward.push(name.clone());
        }
    }

    // argv
    let mut argv: Vec<Word> = Vec::new();
    let lit = |s: &str| Word::lit(s);
    if let (Some(wc), true) = (&req.wall_clock, flavor != Flavor::MsMpi) {
        argv.extend([
            lit(flags::TIMEOUT_PROGRAM),
            lit("-k"),
            Word::lit(wc.grace_secs.to_string()),
            Word::lit(wc.secs.to_string()),
        ]);
    }
    argv.push(Word::lit(
        req.launcher.as_deref().unwrap_or(flavor.default_launcher()),
    ));
    argv.extend(req.extra_options.iter().cloned());

    let hostfile = match &req.host_spec {
        HostSpec::Inline => None,
        HostSpec::File(path) => {
            let suffix = match flavor {
                Flavor::OpenMpi => " slots=",
                Flavor::IntelMpi | Flavor::Mpich => ":",
                Flavor::MsMpi => " ",
            };
            let hosts = match &req.hosts {
                Hosts::List(h) => HostfileHosts::List(h.clone()),
                Hosts::Env(_) if flavor == Flavor::MsMpi => {
                    return Err(unsupported(
                        flavor,
                        "hostfile",
                        "with run-time hosts, mpiexec reads CCP_NODES itself",
                    ));
                }
                Hosts::Env(var) => HostfileHosts::Env(var.clone()),
            };
            if flavor == Flavor::MsMpi && ppn.known().is_none() {
                return Err(unsupported(
                    flavor,
                    "ppn",
                    "all-cores needs `$(nproc)`, which cmd.exe lacks",
                ));
            }
            Some(Hostfile {
                path: path.clone(),
                hosts,
                suffix: suffix.to_string(),
                per_host: ppn.clone(),
            })
        }
    };

    match flavor {
        Flavor::OpenMpi => {
            if req.run_as_root {
                argv.push(lit(openmpi::ALLOW_RUN_AS_ROOT));
            }
            if !user.ranks {
                argv.extend([lit(openmpi::NP), Word::num(ranks)]);
            }
            match &hostfile {
                _ if user.hosts => {}
                Some(hf) => argv.extend([lit(openmpi::HOSTFILE), Word::lit(&hf.path)]),
                None => {
                    let hosts = match &req.hosts {
                        Hosts::List(hs) => {
                            let mut parts = Vec::new();
                            for (i, h) in hs.iter().enumerate() {
                                if i > 0 {
                                    parts.push(Part::Lit(",".into()));
                                }
                                parts.push(Part::Lit(format!("{h}:")));
                                parts.extend(Word::num(ppn.clone()).parts().iter().cloned());
                            }
                            Word::concat(parts)
                        }
                        Hosts::Env(var) => Word::deferred(Deferred::HostList {
                            var: var.clone(),
                            suffix: Some((":".to_string(), ppn.clone())),
                        }),
                    };
                    argv.extend([lit(openmpi::HOST), hosts]);
                }
            }
            if req.oversubscribe {
                argv.push(lit(openmpi::OVERSUBSCRIBE));
            } else if !user.per_node {
                let mut parts = vec![Part::Lit("ppr:".into())];
                parts.extend(Word::num(ppn.clone()).parts().iter().cloned());
                parts.push(Part::Lit(":node".into()));
                argv.extend([lit(openmpi::MAP_BY), Word::concat(parts)]);
            }
            if let Some(w) = &req.workdir {
                argv.extend([lit(openmpi::WDIR), w.clone()]);
            }
            let (rt_flag, rsh) = if ompi5 {
                (openmpi::PRTEMCA, openmpi::PLM_SSH_ARGS)
            } else {
                (openmpi::MCA, openmpi::PLM_RSH_ARGS)
            };
            argv.extend([lit(rt_flag), lit(rsh), Word::lit(&ssh)]);
            if let Some(i) = &req.iface {
                argv.extend([lit(openmpi::MCA), lit(openmpi::BTL_TCP_IF_INCLUDE), lit(i)]);
                if ompi5 {
                    argv.extend([lit(openmpi::PRTEMCA), lit(openmpi::PRTE_IF_INCLUDE), lit(i)]);
                } else {
                    argv.extend([lit(openmpi::MCA), lit(openmpi::OOB_TCP_IF_INCLUDE), lit(i)]);
                }
            }
            for (k, _) in &pairs {
                argv.extend([lit(openmpi::EXPORT), lit(k)]);
            }
            for k in &forward {
                argv.extend([lit(openmpi::EXPORT), lit(k)]);
            }
        }
        Flavor::IntelMpi | Flavor::Mpich => {
            let (n, ppn_flag, hosts_flag, file_flag, wdir, genv) = if flavor == Flavor::IntelMpi {
                (
                    intel::N,
                    intel::PPN,
                    intel::HOSTS,
                    intel::MACHINEFILE,
                    intel::WDIR,
                    intel::GENV,
                )
            } else {
                (
                    mpich::N,
                    mpich::PPN,
                    mpich::HOSTS,
                    mpich::HOSTFILE,
                    mpich::WDIR,
                    mpich::GENV,
                )
            };
            if !user.ranks {
                argv.extend([lit(n), Word::num(ranks)]);
            }
            match &hostfile {
                Some(hf) if !user.hosts => argv.extend([lit(file_flag), Word::lit(&hf.path)]),
                Some(_) => {}
                None => {
                    if !user.per_node {
                        argv.extend([lit(ppn_flag), Word::num(ppn.clone())]);
                    }
                    if !user.hosts {
                        let hosts = match &req.hosts {
                            Hosts::List(hs) => Word::lit(hs.join(",")),
                            Hosts::Env(var) => Word::var(var),
                        };
                        argv.extend([lit(hosts_flag), hosts]);
                    }
                }
            }
            if let Some(w) = &req.workdir {
                argv.extend([lit(wdir), w.clone()]);
            }
            if flavor == Flavor::IntelMpi {
                argv.extend([
                    lit(intel::BOOTSTRAP),
                    lit("ssh"),
                    lit(intel::BOOTSTRAP_EXEC_ARGS),
                    Word::lit(&ssh),
                ]);
            } else {
                argv.extend([lit(mpich::LAUNCHER), lit("ssh")]);
                if let Some(i) = &req.iface {
                    argv.extend([lit(mpich::IFACE), lit(i)]);
                }
            }
            for (k, v) in &pairs {
                argv.extend([lit(genv), lit(k), v.clone()]);
            }
            for k in &forward {
                argv.extend([lit(genv), lit(k), Word::var(k)]);
            }
        }
        Flavor::MsMpi => {
            match (&hostfile, &req.hosts) {
                (Some(hf), _) => {
                    if let Some(r) = req.ranks {
                        argv.extend([lit(msmpi::N), Word::lit(r.to_string())]);
                    }
                    argv.extend([lit(msmpi::MACHINEFILE), Word::lit(&hf.path)]);
                }
                (None, Hosts::List(hs)) => {
                    let Some(p) = ppn.known() else {
                        return Err(unsupported(flavor, "ppn", "all-cores with a literal host list has no MS-MPI form; use run-time hosts (CCP_NODES)"));
                    };
                    if let (Some(r), Some(cap)) = (req.ranks, capacity.known()) {
                        if r != cap {
                            return Err(unsupported(
                                flavor,
                                "ranks",
                                format!(
                                    "`-hosts` sets the count to {cap}; only one of -n/-hosts may"
                                ),
                            ));
                        }
                    }
                    argv.extend([lit(msmpi::HOSTS), Word::lit(hs.len().to_string())]);
                    for h in hs {
                        argv.extend([lit(h), Word::lit(p.to_string())]);
                    }
                }
                (None, Hosts::Env(_)) => {
                    if let Some(r) = req.ranks {
                        argv.extend([lit(msmpi::N), Word::lit(r.to_string())]);
                    }
                    if let Some(p) = ppn.known() {
                        argv.extend([lit(msmpi::CORES), Word::lit(p.to_string())]);
                    }
                }
            }
            if let Some(w) = &req.workdir {
                argv.extend([lit(msmpi::WDIR), w.clone()]);
            }
            for (k, v) in &pairs {
                argv.extend([lit(msmpi::GENV), lit(k), v.clone()]);
            }
            if !forward.is_empty() {
                argv.extend([lit(msmpi::GENVLIST), Word::lit(forward.join(","))]);
            }
            if let Some(wc) = &req.wall_clock {
                argv.extend([lit(msmpi::TIMEOUT), Word::lit(wc.secs.to_string())]);
            }
        }
    }

    if let Some(c) = &req.container {
        let join = c.join.then(|| match flavor {
            Flavor::OpenMpi => Word::lit(flags::charliecloud::JOIN),
            _ => {
                let mut parts = vec![Part::Lit(flags::charliecloud::JOIN_CT.into())];
                parts.extend(Word::num(ppn.clone()).parts().iter().cloned());
                Word::concat(parts)
            }
        });
        argv.extend(container_argv(c, join));
    }
    argv.push(Word::lit(&req.program));
    argv.extend(req.args.iter().map(Word::lit));

    let env = if flavor == Flavor::MsMpi {
        Vec::new()
    } else {
        env
    };
    Ok(LaunchPlan {
        flavor,
        argv,
        env,
        hostfile,
    })
}
