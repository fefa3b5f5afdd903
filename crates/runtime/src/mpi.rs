//! From a task's `multi_instance.mpi` settings to a [`shipyard_mpi_launch::LaunchRequest`]
//! (shared by the built-in runtimes).

use std::collections::BTreeMap;

use shipyard_mpi_launch::{
    default_env, Deferred, Flavor, Hosts, LaunchRequest, Part, Ppn, UserPlacement, Word,
};

use crate::domain::{MpiRuntime, MpiSpec, ProcessesPerNode};
use crate::error::{Field, RuntimeError};
use crate::vmsize::{self, FiProvider};
use shipyard_mpi_launch::shell::split_plain;

/// The launcher flavour of a configured MPI runtime.
pub fn flavor(runtime: MpiRuntime) -> Flavor {
    match runtime {
        MpiRuntime::OpenMpi => Flavor::OpenMpi,
        MpiRuntime::IntelMpi | MpiRuntime::IntelMpiOfa => Flavor::IntelMpi,
        MpiRuntime::Mpich | MpiRuntime::Mvapich => Flavor::Mpich,
        MpiRuntime::MsMpi => Flavor::MsMpi,
    }
}

/// The program and arguments every rank runs for `command`: its words when it is a plain word
/// list, otherwise `shell -c <command>` (so `$VAR`, pipes and redirections work per rank).
pub fn program_words(command: &str, shell: &str) -> Vec<String> {
    split_plain(command)
        .unwrap_or_else(|| vec![shell.to_string(), "-c".to_string(), command.to_string()])
}

/// What a launch needs besides the `mpi` settings.
#[derive(Debug, Clone, Copy)]
pub struct LaunchContext<'a> {
    /// The task, for errors (`job.tasks[0]`): they name its `multi_instance.mpi` settings or
    /// its `command`.
    pub task: &'a Field,
    /// The remote sshd port when not 22 (23 in shipyard's containers).
    pub ssh_port: Option<u16>,
    /// The launcher runs as root (Open MPI needs `--allow-run-as-root`).
    pub run_as_root: bool,
    /// The task's environment (job and task variables). A variable the launcher would set by
    /// default (Intel MPI's `I_MPI_FABRICS`, `FI_PROVIDER`, ...) keeps the user's value.
    pub user_env: &'a BTreeMap<String, String>,
    /// The task uses InfiniBand: fabric settings per `mpi.rdma` ([`vmsize::fi_provider`],
    /// [`vmsize::uses_partition_key`]), each unless the user set the variable.
    pub infiniband: bool,
}

impl<'a> LaunchContext<'a> {
    /// The context of task `task` with environment `user_env`: the launcher reaches the other
    /// nodes' sshd on its default port and does not run as root (see [`Self::ssh_port`],
    /// [`Self::run_as_root`]).
    pub fn new(task: &'a Field, user_env: &'a BTreeMap<String, String>, infiniband: bool) -> Self {
        LaunchContext {
            task,
            ssh_port: None,
            run_as_root: false,
            user_env,
            infiniband,
        }
    }

    /// The remote sshd listens on `port`.
    pub fn ssh_port(self, port: u16) -> Self {
        LaunchContext {
            ssh_port: Some(port),
            ..self
        }
    }

    /// Whether the launcher runs as root.
    pub fn run_as_root(self, on: bool) -> Self {
        LaunchContext {
            run_as_root: on,
            ..self
        }
    }
}

/// A launch request for `mpi` running `command` on the Batch host list (`$AZ_BATCH_HOST_LIST`),
/// reaching the other nodes' sshd on `ctx.ssh_port` (when the flavour uses ssh).
pub fn launch_request(
    mpi: &MpiSpec,
    command: &str,
    ctx: LaunchContext<'_>,
) -> Result<LaunchRequest, RuntimeError> {
    let field = mpi_field(ctx.task);
    let flavor = flavor(mpi.runtime);
    let ppn = match &mpi.processes_per_node {
        None => Ppn::Count(1),
        Some(ProcessesPerNode::Count(n)) => Ppn::Count(*n),
        Some(ProcessesPerNode::Command(c)) if c.trim() == "nproc" => Ppn::AllCores,
        // Any other command runs on the launching node when the line runs (`$(cmd)`).
        Some(ProcessesPerNode::Command(c)) => Ppn::Command(c.trim().to_string()),
    };
    let mut options = Vec::new();
    for (i, entry) in mpi.options.iter().enumerate() {
        let words = option_words(entry).map_err(|reason| RuntimeError::Mpi {
            field: field.key("options").index(i),
            reason,
        })?;
        options.extend(words);
    }
    let placement = user_placement(&options);
    let shell = if flavor == Flavor::MsMpi {
        "cmd"
    } else {
        "/bin/sh"
    };
    let words = if flavor == Flavor::MsMpi {
        split_plain(command).ok_or_else(|| RuntimeError::Mpi {
            field: ctx.task.key("command"),
            reason: "an MS-MPI command must be a plain word list".into(),
        })?
    } else {
        program_words(command, shell)
    };
    let mut req = LaunchRequest::new(flavor)
        .hosts(Hosts::batch())
        .ppn(ppn)
        .run_as_root(ctx.run_as_root)
        .user_placement(placement)
        .program(words[0].clone())
        .args(words[1..].iter().cloned());
    for o in options {
        req = req.extra_option_word(o);
    }
    if let Some(exe) = &mpi.executable_path {
        req = req.launcher(exe.clone());
    }
    if flavor.uses_ssh() {
        if let Some(port) = ctx.ssh_port {
            req = req.ssh_port(port);
        }
    }
    // Never overwrite the user's value of a variable the launcher sets by default (Batch
    // Shipyard issue #339): pass it through from the task's environment instead.
    for (name, _) in default_env(flavor) {
        if ctx.user_env.contains_key(name) {
            req = req.env(name, Word::var(name));
        }
    }
    // Open MPI passes only its own OMPI_MCA_* variables to the ranks: forward UCX's
    // (`UCX_NET_DEVICES` on SR-IOV InfiniBand, see `vmsize::fabric_env`).
    if flavor == Flavor::OpenMpi {
        for name in ctx.user_env.keys().filter(|k| k.starts_with("UCX_")) {
            req = req.forward_env(name.clone());
        }
    }
    // Batch Shipyard's `intelmpi-ofa`: the OFA fabric (Intel MPI 2018/2019 on InfiniBand), no
    // libfabric provider.
    if ctx.infiniband
        && !ctx.user_env.contains_key(FABRICS)
        && mpi.runtime == MpiRuntime::IntelMpiOfa
    {
        req = req.env(FABRICS, "shm:ofa");
    }
    // libfabric's provider: decided here, where the VM size is known (the fabric itself may
    // be the user's `${I_MPI_FABRICS}`, known only when the line runs).
    if !ctx.user_env.contains_key(FI_PROVIDER) {
        match vmsize::fi_provider(mpi.runtime, ctx.infiniband, mpi.rdma) {
            FiProvider::Default => {}
            FiProvider::Set(p) => req = req.env(FI_PROVIDER, p),
            FiProvider::Unset => req = req.without_default_env(FI_PROVIDER),
        }
    }
    // UCX's InfiniBand partition key on SR-IOV, read when the line runs from the file node
    // preparation wrote (the user's own value, forwarded above, wins).
    if ctx.infiniband
        && vmsize::uses_partition_key(mpi.runtime, mpi.rdma)
        && !ctx.user_env.contains_key(vmsize::UCX_IB_PKEY)
    {
        req = req.env(
            vmsize::UCX_IB_PKEY,
            Word::deferred(Deferred::Output(vmsize::partition_key_command())),
        );
    }
    Ok(req)
}

const FABRICS: &str = "I_MPI_FABRICS";
const FI_PROVIDER: &str = "FI_PROVIDER";

/// The words of one `mpi.options` entry, split as the shell would (Batch Shipyard joins the
/// entries into its command line): whitespace separates words, quotes group them, and `$NAME` /
/// `${NAME}` outside single quotes are expanded when the line runs (the OpenFOAM recipe's
/// `-np $np`, set by its `pre_execution_command`). Command substitution is refused: the
/// reason says to set a variable in `pre_execution_command` instead.
pub fn option_words(entry: &str) -> Result<Vec<Word>, String> {
    let mut words = Vec::new();
    let mut parts: Vec<Part> = Vec::new();
    let mut lit = String::new();
    let mut in_word = false;
    let mut chars = entry.chars().peekable();
    let flush_lit = |lit: &mut String, parts: &mut Vec<Part>| {
        if !lit.is_empty() {
            parts.push(Part::Lit(std::mem::take(lit)));
        }
    };
    let mut dquote = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if !dquote || matches!(chars.peek(), Some('$' | '"' | '\\' | '`')) => {
                in_word = true;
                match chars.next() {
                    Some(n) => lit.push(n),
                    None => return Err("ends with a lone backslash".into()),
                }
            }
            '\'' if !dquote => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => lit.push(n),
                        None => return Err(format!("unterminated ' in `{entry}`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                dquote = !dquote;
            }
            '`' => {
                return Err(format!(
                    "command substitution in `{entry}` is not supported: set a variable in \
                     pre_execution_command and use `$NAME`"
                ))
            }
            '$' => {
                in_word = true;
                let braced = chars.peek() == Some(&'{');
                if braced {
                    chars.next();
                }
                if !braced && chars.peek() == Some(&'(') {
                    return Err(format!(
                        "command substitution in `{entry}` is not supported: set a variable \
                         in pre_execution_command and use `$NAME`"
                    ));
                }
                let mut name = String::new();
                while let Some(&n) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' {
                        name.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if braced && chars.next() != Some('}') {
                    return Err(format!("`${{{name}` is not closed in `{entry}`"));
                }
                if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                    if braced {
                        return Err(format!("`${{}}` names no variable in `{entry}`"));
                    }
                    lit.push('$');
                } else {
                    flush_lit(&mut lit, &mut parts);
                    parts.push(Part::Deferred(Deferred::Var(name)));
                }
            }
            c if c.is_whitespace() && !dquote => {
                if in_word {
                    flush_lit(&mut lit, &mut parts);
                    words.push(Word::concat(std::mem::take(&mut parts)));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                lit.push(c);
            }
        }
    }
    if dquote {
        return Err(format!("unterminated \" in `{entry}`"));
    }
    if in_word {
        flush_lit(&mut lit, &mut parts);
        words.push(Word::concat(parts));
    }
    Ok(words)
}

/// Launcher flags (of any flavour) that set the rank count, the hosts, or the ranks per node.
const RANK_FLAGS: &[&str] = &["-np", "--np", "-n", "--n", "-c"];
const HOST_FLAGS: &[&str] = &[
    "-H",
    "--host",
    "-host",
    "-hosts",
    "--hosts",
    "--hostfile",
    "-hostfile",
    "--machinefile",
    "-machinefile",
    "-f",
    "--default-hostfile",
];
const PER_NODE_FLAGS: &[&str] = &[
    "-ppn",
    "--ppn",
    "-perhost",
    "--map-by",
    "-map-by",
    "--npernode",
    "-npernode",
    "-N",
];

/// Which placement the user's option words set: their own `-np`, `--host`/`-hosts`/
/// `--hostfile`/`-f`/`-machinefile` or `-ppn`/`-perhost`/`--map-by` win over shipyard's.
pub fn user_placement(options: &[Word]) -> UserPlacement {
    let mut p = UserPlacement::default();
    for w in options {
        let Some(Part::Lit(first)) = w.parts().first() else {
            continue;
        };
        let flag = first.split('=').next().unwrap_or_default();
        let is = |set: &[&str]| set.contains(&flag);
        p.ranks |= is(RANK_FLAGS);
        p.hosts |= is(HOST_FLAGS);
        p.per_node |= is(PER_NODE_FLAGS);
    }
    p
}

/// The `multi_instance.mpi` field of `task`.
pub fn mpi_field(task: &Field) -> Field {
    task.key("multi_instance").key("mpi")
}

/// Builds `req` and renders its POSIX-sh line; errors name the `mpi` settings of `task`.
pub fn render_sh(req: &LaunchRequest, task: &Field) -> Result<String, RuntimeError> {
    req.build()
        .map(|p| p.render_sh())
        .map_err(|e| RuntimeError::Mpi {
            field: mpi_field(task),
            reason: e.to_string(),
        })
}

/// Builds `req` and renders its cmd.exe line (MS-MPI); errors name the `mpi` settings of
/// `task`.
pub fn render_cmd(req: &LaunchRequest, task: &Field) -> Result<String, RuntimeError> {
    req.build()
        .and_then(|p| p.render_cmd())
        .map_err(|e| RuntimeError::Mpi {
            field: mpi_field(task),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmsize::Rdma;

    #[test]
    fn plain_commands_run_as_words_others_in_a_shell() {
        assert_eq!(
            program_words("/app -x 'a b'", "/bin/sh"),
            vec!["/app", "-x", "a b"]
        );
        assert_eq!(
            program_words("echo $X", "/bin/sh"),
            vec!["/bin/sh", "-c", "echo $X"]
        );
    }

    #[test]
    fn user_values_of_launcher_defaults_win() {
        let mpi = MpiSpec {
            runtime: MpiRuntime::IntelMpi,
            options: vec![],
            processes_per_node: Some(ProcessesPerNode::Count(1)),
            executable_path: None,
            rdma: None,
        };
        let mut env = BTreeMap::new();
        let task = Field::job("j").key("tasks").index(0);
        fn ctx<'a>(env: &'a BTreeMap<String, String>, task: &'a Field) -> LaunchContext<'a> {
            LaunchContext {
                task,
                ssh_port: Some(23),
                run_as_root: true,
                user_env: env,
                infiniband: true,
            }
        }
        let line = render_sh(
            &launch_request(&mpi, "/app", ctx(&env, &task)).unwrap(),
            &task,
        )
        .unwrap();
        assert!(line.contains("FI_PROVIDER=mlx"), "{line}");
        assert!(line.contains("I_MPI_FABRICS=shm:ofi"), "{line}");
        env.insert("FI_PROVIDER".to_string(), "verbs".to_string());
        env.insert("I_MPI_FABRICS".to_string(), "ofi".to_string());
        let line = render_sh(
            &launch_request(&mpi, "/app", ctx(&env, &task)).unwrap(),
            &task,
        )
        .unwrap();
        assert!(line.contains("FI_PROVIDER=\"${FI_PROVIDER}\""), "{line}");
        assert!(
            line.contains("I_MPI_FABRICS=\"${I_MPI_FABRICS}\""),
            "{line}"
        );
        assert!(!line.contains("mlx") && !line.contains("shm:ofi"), "{line}");
    }

    fn line(mpi: &MpiSpec, command: &str, env: &BTreeMap<String, String>, ib: bool) -> String {
        let task = Field::job("j").key("tasks").index(0);
        let ctx = LaunchContext {
            task: &task,
            ssh_port: None,
            run_as_root: false,
            user_env: env,
            infiniband: ib,
        };
        render_sh(&launch_request(mpi, command, ctx).unwrap(), &task).unwrap()
    }

    fn spec(runtime: MpiRuntime, options: &[&str], ppn: Option<ProcessesPerNode>) -> MpiSpec {
        MpiSpec {
            runtime,
            options: options.iter().map(|o| o.to_string()).collect(),
            processes_per_node: ppn,
            executable_path: Some("mpirun".into()),
            rdma: None,
        }
    }

    #[test]
    fn any_ppn_command_runs_at_task_time() {
        let mpi = spec(
            MpiRuntime::Mpich,
            &[],
            Some(ProcessesPerNode::Command("nvidia-smi -L | wc -l".into())),
        );
        let l = line(&mpi, "/app", &BTreeMap::new(), false);
        assert!(l.contains("-ppn \"$(nvidia-smi -L | wc -l)\""), "{l}");
        assert!(l.contains("* $(nvidia-smi -L | wc -l)"), "{l}");
    }

    #[test]
    fn bad_option_entry_names_the_field() {
        let mpi = spec(MpiRuntime::Mpich, &["-x A", "-genv X $(hostname)"], None);
        let env = BTreeMap::new();
        let task = Field::job("j").key("tasks").index(0);
        let ctx = LaunchContext {
            task: &task,
            ssh_port: None,
            run_as_root: false,
            user_env: &env,
            infiniband: false,
        };
        let e = launch_request(&mpi, "/app", ctx).unwrap_err().to_string();
        assert!(
            e.contains("job.tasks[0].multi_instance.mpi.options[1]"),
            "{e}"
        );
        assert!(e.contains("pre_execution_command"), "{e}");
    }

    #[test]
    fn option_entries_split_into_words_with_run_time_variables() {
        let w = option_words("-mca btl_base_warn_component_unused 0").unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(w[1].as_literal(), Some("btl_base_warn_component_unused"));
        let w = option_words("-np $np -x 'A B' \"${HOME}/x\" --a=$Y").unwrap();
        assert_eq!(w.len(), 6, "{w:?}");
        assert!(w[1].is_deferred());
        assert_eq!(w[3].as_literal(), Some("A B"));
        assert_eq!(
            w[4].parts(),
            [
                Part::Deferred(Deferred::Var("HOME".into())),
                Part::Lit("/x".into())
            ]
        );
        assert_eq!(w[5].parts()[0], Part::Lit("--a=".into()));
        assert!(option_words("'open").is_err());
        assert!(option_words("-x `id`").is_err());
        assert_eq!(
            option_words("cost$").unwrap()[0].as_literal(),
            Some("cost$")
        );
    }

    #[test]
    fn users_placement_flags_win_over_shipyards() {
        // OpenFOAM recipe: Intel MPI with its own -np/-ppn/-hosts and no processes_per_node.
        let mpi = spec(
            MpiRuntime::IntelMpi,
            &["-np $np", "-ppn $ppn", "-hosts $AZ_BATCH_HOST_LIST"],
            None,
        );
        let l = line(&mpi, "simpleFoam -parallel", &BTreeMap::new(), false);
        assert!(
            l.contains(
                "mpirun -np \"${np}\" -ppn \"${ppn}\" -hosts \"${AZ_BATCH_HOST_LIST}\" -bootstrap ssh"
            ),
            "{l}"
        );
        assert_eq!(l.matches("-np").count(), 1, "{l}");
        assert_eq!(l.matches("-ppn").count(), 1, "{l}");
        assert!(!l.contains(" -n "), "{l}");
        // Open MPI: the user's hostfile drops shipyard's --host, keeps -np and --map-by.
        let mpi = spec(
            MpiRuntime::OpenMpi,
            &["--hostfile hosts.txt"],
            Some(ProcessesPerNode::Count(2)),
        );
        let l = line(&mpi, "/app", &BTreeMap::new(), false);
        assert!(!l.contains("--host "), "{l}");
        assert!(l.contains("--hostfile hosts.txt"), "{l}");
        assert!(l.contains("--map-by ppr:2:node"), "{l}");
        assert!(l.contains("-np \"$(( "), "{l}");
        assert_eq!(
            user_placement(&option_words("-H a,b -npernode=2").unwrap()),
            UserPlacement {
                ranks: false,
                hosts: true,
                per_node: true
            }
        );
    }

    fn on(rdma: Rdma, runtime: MpiRuntime) -> MpiSpec {
        MpiSpec {
            rdma: Some(rdma),
            ..spec(runtime, &[], Some(ProcessesPerNode::Count(1)))
        }
    }

    /// The partition key as a launch line reads it: the key file's command, expanded once.
    fn pkey_value() -> String {
        format!("\"$({})\"", vmsize::partition_key_command())
    }

    #[test]
    fn ucx_mpis_on_sriov_read_the_partition_key_at_run_time() {
        let none = BTreeMap::new();
        // Open MPI: set for mpirun and exported to every rank
        let l = line(&on(Rdma::SrIov, MpiRuntime::OpenMpi), "/app", &none, true);
        assert!(
            l.starts_with(&format!(
                "OMPI_MCA_btl_vader_single_copy_mechanism=none UCX_IB_PKEY={} mpirun ",
                pkey_value()
            )),
            "{l}"
        );
        assert!(l.contains(" -x UCX_IB_PKEY "), "{l}");
        // MPICH and MVAPICH (Hydra): -genv for every rank
        for rt in [MpiRuntime::Mpich, MpiRuntime::Mvapich] {
            let l = line(&on(Rdma::SrIov, rt), "/app", &none, true);
            assert!(
                l.contains(&format!("-genv UCX_IB_PKEY {}", pkey_value())),
                "{l}"
            );
        }
        // not without InfiniBand, not on NetworkDirect or an unknown size, not for Intel MPI
        for (mpi, ib) in [
            (on(Rdma::SrIov, MpiRuntime::OpenMpi), false),
            (on(Rdma::NetworkDirect, MpiRuntime::OpenMpi), true),
            (spec(MpiRuntime::OpenMpi, &[], None), true),
            (on(Rdma::SrIov, MpiRuntime::IntelMpi), true),
            (on(Rdma::SrIov, MpiRuntime::IntelMpiOfa), true),
        ] {
            let l = line(&mpi, "/app", &none, ib);
            assert!(!l.contains("UCX_IB_PKEY"), "{mpi:?} ib={ib}: {l}");
        }
    }

    #[test]
    fn users_partition_key_wins() {
        let mut env = BTreeMap::new();
        env.insert("UCX_IB_PKEY".to_string(), "0x0005".to_string());
        let l = line(&on(Rdma::SrIov, MpiRuntime::OpenMpi), "/app", &env, true);
        assert!(!l.contains("sed -n"), "{l}");
        // forwarded from the task's environment
        assert!(l.contains(" -x UCX_IB_PKEY "), "{l}");
        let l = line(&on(Rdma::SrIov, MpiRuntime::Mpich), "/app", &env, true);
        assert!(
            !l.contains("sed -n") && !l.contains("-genv UCX_IB_PKEY"),
            "{l}"
        );
    }

    /// The `FI_PROVIDER` every rank gets (`None`: not set at all).
    fn fi_provider_of(mpi: &MpiSpec, env: &BTreeMap<String, String>, ib: bool) -> Option<String> {
        let task = Field::job("j").key("tasks").index(0);
        let ctx = LaunchContext::new(&task, env, ib);
        let plan = launch_request(mpi, "/app", ctx).unwrap().build().unwrap();
        plan.env()
            .iter()
            .find(|(k, _)| k == "FI_PROVIDER")
            .map(|(_, v)| match v.as_literal() {
                Some(l) => l.to_string(),
                None => format!("{v:?}"),
            })
    }

    #[test]
    fn fi_provider_follows_the_flavour_and_the_size() {
        let none = BTreeMap::new();
        let intel = || spec(MpiRuntime::IntelMpi, &[], None);
        let ofa = || spec(MpiRuntime::IntelMpiOfa, &[], None);
        let mlx = Some("mlx".to_string());
        let tcp = Some("tcp".to_string());
        for (mpi, ib, want) in [
            // no InfiniBand: the launcher's tcp default
            (intel(), false, tcp.clone()),
            (ofa(), false, tcp.clone()),
            // SR-IOV (and InfiniBand on a size shipyard does not classify): mlx
            (on(Rdma::SrIov, MpiRuntime::IntelMpi), true, mlx.clone()),
            (intel(), true, mlx.clone()),
            // NetworkDirect: DAPL, no libfabric provider at all
            (on(Rdma::NetworkDirect, MpiRuntime::IntelMpi), true, None),
            (on(Rdma::NetworkDirect, MpiRuntime::IntelMpiOfa), true, None),
            // intelmpi-ofa: the OFA fabric, none either
            (on(Rdma::SrIov, MpiRuntime::IntelMpiOfa), true, None),
            (ofa(), true, None),
        ] {
            assert_eq!(fi_provider_of(&mpi, &none, ib), want, "{mpi:?} ib={ib}");
        }
        // the user's value wins everywhere, passed through
        let mut env = BTreeMap::new();
        env.insert("FI_PROVIDER".to_string(), "verbs".to_string());
        for mpi in [
            on(Rdma::SrIov, MpiRuntime::IntelMpi),
            on(Rdma::NetworkDirect, MpiRuntime::IntelMpi),
            on(Rdma::SrIov, MpiRuntime::IntelMpiOfa),
        ] {
            let got = fi_provider_of(&mpi, &env, true).unwrap_or_default();
            assert!(got.contains("Var(\"FI_PROVIDER\")"), "{mpi:?}: {got}");
        }
    }

    #[test]
    fn intelmpi_ofa_uses_the_ofa_fabric_on_infiniband() {
        let mpi = spec(
            MpiRuntime::IntelMpiOfa,
            &[],
            Some(ProcessesPerNode::Count(1)),
        );
        let l = line(&mpi, "/app", &BTreeMap::new(), true);
        assert!(l.contains("I_MPI_FABRICS=shm:ofa"), "{l}");
        assert!(!l.contains("FI_PROVIDER=mlx"), "{l}");
        let mut env = BTreeMap::new();
        env.insert("I_MPI_FABRICS".to_string(), "shm:ofi".to_string());
        let l = line(&mpi, "/app", &env, true);
        assert!(!l.contains("shm:ofa"), "{l}");
        let l = line(&mpi, "/app", &BTreeMap::new(), false);
        assert!(!l.contains("shm:ofa"), "{l}");
        // mvapich launches like MPICH (hydra `-ppn`)
        let mpi = spec(MpiRuntime::Mvapich, &[], Some(ProcessesPerNode::Count(1)));
        let l = line(&mpi, "/app", &BTreeMap::new(), false);
        assert!(l.contains("-ppn 1 -hosts"), "{l}");
    }
}
