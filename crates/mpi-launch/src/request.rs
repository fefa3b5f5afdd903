//! The typed launch request (a builder with consuming setters).

use crate::word::Word;
use crate::{Flavor, LaunchError, LaunchPlan};

/// The variable Azure Batch sets on multi-instance tasks: the nodes' IPs, comma-separated.
pub const AZ_BATCH_HOST_LIST: &str = "AZ_BATCH_HOST_LIST";

/// Where the launcher's nodes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hosts {
    /// Known now.
    List(Vec<String>),
    /// A comma-separated list in this environment variable, read at run time
    /// (for MS-MPI: `mpiexec` reads `CCP_NODES` itself, whatever the name).
    Env(String),
}

impl Hosts {
    /// A literal host list.
    pub fn list<I, S>(hosts: I) -> Hosts
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Hosts::List(hosts.into_iter().map(Into::into).collect())
    }

    /// The Batch default, `$AZ_BATCH_HOST_LIST` at run time.
    pub fn batch() -> Hosts {
        Hosts::Env(AZ_BATCH_HOST_LIST.to_string())
    }
}

impl Default for Hosts {
    fn default() -> Self {
        Hosts::batch()
    }
}

/// Processes per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ppn {
    /// A fixed count.
    Count(u32),
    /// One per core, resolved at run time with `$(nproc)` on the launching node.
    AllCores,
    /// The number a shell command prints on the launching node at run time (Batch
    /// Shipyard's `processes_per_node: nvidia-smi -L | wc -l`); POSIX-sh rendering only.
    Command(String),
}

/// Placement the user's own launcher options already set: shipyard then leaves out its
/// flags of that kind (Batch Shipyard's `mpi.options` with `-np`, `-hosts`, `-ppn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserPlacement {
    /// The user passes the rank count (`-np`, `-n`): shipyard's is left out.
    pub ranks: bool,
    /// The user passes the hosts (`--host`, `-hosts`, `--hostfile`, `-f`, `-machinefile`):
    /// shipyard's host list or hostfile flag is left out.
    pub hosts: bool,
    /// The user passes the processes per node (`-ppn`, `-perhost`, `--map-by`,
    /// `--npernode`): shipyard's is left out.
    pub per_node: bool,
}

impl Default for Ppn {
    fn default() -> Self {
        Ppn::Count(1)
    }
}

/// A wall-clock limit, rendered as a `timeout -k <grace> <secs>` prefix (MS-MPI: `-timeout`).
/// MPICH's hydra hangs forever when ssh to a node fails; this bounds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    /// Seconds before SIGTERM.
    pub secs: u32,
    /// Seconds after SIGTERM before SIGKILL.
    pub grace_secs: u32,
}

impl WallClock {
    /// A limit of `secs` seconds with a 10-second grace period.
    pub fn new(secs: u32) -> WallClock {
        WallClock {
            secs,
            grace_secs: 10,
        }
    }

    /// Sets the grace period.
    pub fn grace(mut self, secs: u32) -> WallClock {
        self.grace_secs = secs;
        self
    }
}

/// Which container engine wraps each rank's program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerWrapper {
    /// `singularity exec`, env via `SINGULARITYENV_`.
    Singularity,
    /// `apptainer exec`, env via `APPTAINERENV_`.
    Apptainer,
    /// Charliecloud's `ch-run [--join|--join-ct=N] [-b SRC:DST] [-c DIR] [--env-no-expand
    /// --set-env=K=V ...] [options] IMAGE_DIR -- program args`; variables are passed with
    /// `--set-env`, not through a prefix.
    Charliecloud,
}

impl ContainerWrapper {
    /// Default executable name.
    pub fn default_program(self) -> &'static str {
        match self {
            ContainerWrapper::Singularity => "singularity",
            ContainerWrapper::Apptainer => "apptainer",
            ContainerWrapper::Charliecloud => "ch-run",
        }
    }

    /// Prefix that injects a variable into the container; empty for Charliecloud, which sets
    /// the container's variables with `--set-env=NAME=VALUE` arguments instead.
    pub fn env_prefix(self) -> &'static str {
        match self {
            ContainerWrapper::Singularity => "SINGULARITYENV_",
            ContainerWrapper::Apptainer => "APPTAINERENV_",
            ContainerWrapper::Charliecloud => "",
        }
    }
}

/// A bind mount `src:dst[:ro]`; either path may hold run-time values such as
/// `$AZ_BATCH_NODE_ROOT_DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Host path.
    pub src: Word,
    /// Container path.
    pub dst: Word,
    /// Read-only.
    pub read_only: bool,
}

/// The host-launcher-wraps-container form: each rank runs
/// `singularity|apptainer exec [--bind ...] [--pwd d] [--nv] [options] IMAGE program args`, or
/// for [`ContainerWrapper::Charliecloud`]
/// `ch-run [--join|--join-ct=N] [-b ...] [-c d] [--env-no-expand --set-env=K=V ...] [options] IMAGE -- program args`.
///
/// The image may hold run-time values (`$AZ_BATCH_NODE_SHARED_DIR/...`), like every other
/// word; they are expanded by the shell that runs the launcher line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub(crate) wrapper: ContainerWrapper,
    pub(crate) program: Option<String>,
    pub(crate) image: Word,
    pub(crate) join: bool,
    pub(crate) binds: Vec<Bind>,
    pub(crate) pwd: Option<Word>,
    pub(crate) nv: bool,
    pub(crate) env: Vec<(String, Word)>,
    pub(crate) options: Vec<String>,
}

impl Container {
    /// `singularity exec ... image`.
    pub fn singularity(image: impl Into<String>) -> Container {
        Container::new(ContainerWrapper::Singularity, image.into())
    }

    /// `apptainer exec ... image`.
    pub fn apptainer(image: impl Into<String>) -> Container {
        Container::new(ContainerWrapper::Apptainer, image.into())
    }

    /// `ch-run ... image_dir -- program`.
    pub fn charliecloud(image_dir: impl Into<Word>) -> Container {
        Container::new(ContainerWrapper::Charliecloud, image_dir)
    }

    /// A `wrapper` running `image`.
    pub fn new(wrapper: ContainerWrapper, image: impl Into<Word>) -> Container {
        Container {
            wrapper,
            program: None,
            image: image.into(),
            join: false,
            binds: Vec::new(),
            pwd: None,
            nv: false,
            env: Vec::new(),
            options: Vec::new(),
        }
    }

    /// Overrides the runtime's executable (default `singularity` / `apptainer`).
    pub fn program(mut self, path: impl Into<String>) -> Container {
        self.program = Some(path.into());
        self
    }

    /// Adds `--bind src:dst`.
    pub fn bind(mut self, src: impl Into<Word>, dst: impl Into<Word>) -> Container {
        self.binds.push(Bind {
            src: src.into(),
            dst: dst.into(),
            read_only: false,
        });
        self
    }

    /// Adds `--bind src:dst:ro`.
    pub fn bind_ro(mut self, src: impl Into<Word>, dst: impl Into<Word>) -> Container {
        self.binds.push(Bind {
            src: src.into(),
            dst: dst.into(),
            read_only: true,
        });
        self
    }

    /// Charliecloud: the ranks of a node share one container (one set of namespaces, so
    /// shared-memory transports work). Open MPI: `--join` (`ch-run` reads the peer count from
    /// each rank's `OMPI_COMM_WORLD_LOCAL_SIZE`); hydra (MPICH, Intel MPI):
    /// `--join-ct=<processes per node>` (a literal, or `$(nproc)` expanded with the launcher
    /// line), which needs every node to run exactly that many ranks. An error with the other
    /// wrappers.
    pub fn join(mut self, on: bool) -> Container {
        self.join = on;
        self
    }

    /// Sets the working directory in the container (`--pwd`; Charliecloud `-c`).
    pub fn pwd(mut self, dir: impl Into<Word>) -> Container {
        self.pwd = Some(dir.into());
        self
    }

    /// Sets `--nv`.
    pub fn nv(mut self, on: bool) -> Container {
        self.nv = on;
        self
    }

    /// Sets a variable inside the container (forwarded as `SINGULARITYENV_NAME` /
    /// `APPTAINERENV_NAME`; Charliecloud `--set-env=NAME=VALUE` after `--env-no-expand`, so
    /// `ch-run` does not expand `$` in the value again).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<Word>) -> Container {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Adds a raw option (placed after the generated ones, before the image).
    pub fn option(mut self, opt: impl Into<String>) -> Container {
        self.options.push(opt.into());
        self
    }
}

/// Which host specification the launcher gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum HostSpec {
    /// On the command line (`--host`, `-hosts`).
    #[default]
    Inline,
    /// A hostfile at this path, in the flavour's format.
    File(String),
}

/// A typed MPI launch request. Build with [`Default`] (or [`LaunchRequest::new`]) and the
/// consuming setters, then [`LaunchRequest::build`].
///
/// ```
/// use shipyard_mpi_launch::{Flavor, Hosts, LaunchRequest, Ppn};
/// let plan = LaunchRequest::new(Flavor::Mpich)
///     .hosts(Hosts::batch())
///     .ppn(Ppn::Count(2))
///     .program("/app/solver")
///     .arg("--input=case 1")
///     .build()
///     .unwrap();
/// assert!(plan.render_sh().contains("'--input=case 1'"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct LaunchRequest {
    pub(crate) flavor: Flavor,
    pub(crate) launcher: Option<String>,
    pub(crate) hosts: Hosts,
    pub(crate) host_spec: HostSpec,
    pub(crate) ppn: Ppn,
    pub(crate) ranks: Option<u32>,
    pub(crate) forward_env: Vec<String>,
    pub(crate) env: Vec<(String, Word)>,
    pub(crate) without_defaults: Vec<String>,
    pub(crate) ssh_port: Option<u16>,
    pub(crate) ssh_options: Vec<(String, String)>,
    pub(crate) workdir: Option<Word>,
    pub(crate) run_as_root: bool,
    pub(crate) oversubscribe: bool,
    pub(crate) iface: Option<String>,
    pub(crate) extra_options: Vec<Word>,
    pub(crate) user_placement: UserPlacement,
    pub(crate) wall_clock: Option<WallClock>,
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) container: Option<Container>,
    pub(crate) open_mpi_major: Option<u32>,
}

impl LaunchRequest {
    /// A request for `flavor` with the defaults: hosts from `$AZ_BATCH_HOST_LIST`, one process
    /// per node, ranks = nodes × ppn.
    pub fn new(flavor: Flavor) -> LaunchRequest {
        LaunchRequest {
            flavor,
            ..LaunchRequest::default()
        }
    }

    /// Sets the flavour.
    pub fn flavor(mut self, flavor: Flavor) -> LaunchRequest {
        self.flavor = flavor;
        self
    }

    /// Overrides the launcher executable (default [`Flavor::default_launcher`]), e.g.
    /// `/usr/bin/mpirun.openmpi`.
    pub fn launcher(mut self, path: impl Into<String>) -> LaunchRequest {
        self.launcher = Some(path.into());
        self
    }

    /// Sets the hosts.
    pub fn hosts(mut self, hosts: Hosts) -> LaunchRequest {
        self.hosts = hosts;
        self
    }

    /// Passes the hosts in a hostfile at `path` (in the flavour's own format; see
    /// [`LaunchPlan::hostfile`]) instead of on the command line.
    pub fn hostfile(mut self, path: impl Into<String>) -> LaunchRequest {
        self.host_spec = HostSpec::File(path.into());
        self
    }

    /// Sets the processes per node.
    pub fn ppn(mut self, ppn: Ppn) -> LaunchRequest {
        self.ppn = ppn;
        self
    }

    /// Sets the total ranks (default nodes × ppn).
    pub fn ranks(mut self, ranks: u32) -> LaunchRequest {
        self.ranks = Some(ranks);
        self
    }

    /// Forwards the launcher's value of variable `name` to every rank.
    pub fn forward_env(mut self, name: impl Into<String>) -> LaunchRequest {
        self.forward_env.push(name.into());
        self
    }

    /// Sets `name=value` for the launcher and every rank. Replaces a default shipyard would set
    /// for the same name (e.g. Intel MPI's `I_MPI_FABRICS`, `FI_PROVIDER`).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<Word>) -> LaunchRequest {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Leaves out shipyard's default for variable `name` ([`crate::default_env`]): the
    /// launcher and the ranks then see whatever their environment holds, if anything. For a
    /// caller that knows the default does not fit (Intel MPI's `FI_PROVIDER=tcp` when the
    /// fabric is not libfabric's). A value set with [`Self::env`] is still set.
    pub fn without_default_env(mut self, name: impl Into<String>) -> LaunchRequest {
        self.without_defaults.push(name.into());
        self
    }

    /// The port of the remote sshd (23 inside shipyard's containers). An error with MS-MPI.
    pub fn ssh_port(mut self, port: u16) -> LaunchRequest {
        self.ssh_port = Some(port);
        self
    }

    /// Adds an ssh client option `-o key=value` (e.g. `IdentityFile`); replaces a default with
    /// the same key (see [`crate::flags::SSH_DEFAULT_OPTIONS`]).
    pub fn ssh_option(mut self, key: impl Into<String>, value: impl Into<String>) -> LaunchRequest {
        self.ssh_options.push((key.into(), value.into()));
        self
    }

    /// Sets the ranks' working directory.
    pub fn workdir(mut self, dir: impl Into<Word>) -> LaunchRequest {
        self.workdir = Some(dir.into());
        self
    }

    /// Allows running as root (Open MPI refuses otherwise; no-op for the others).
    pub fn run_as_root(mut self, on: bool) -> LaunchRequest {
        self.run_as_root = on;
        self
    }

    /// Allows more ranks than nodes × ppn.
    pub fn oversubscribe(mut self, on: bool) -> LaunchRequest {
        self.oversubscribe = on;
        self
    }

    /// Pins MPI and launcher traffic to a network interface (`eth0`, `lo`, `ib0`).
    pub fn iface(mut self, name: impl Into<String>) -> LaunchRequest {
        self.iface = Some(name.into());
        self
    }

    /// Adds one of the user's launcher options (placed first, right after the launcher).
    pub fn extra_option(mut self, opt: impl Into<String>) -> LaunchRequest {
        self.extra_options.push(Word::lit(opt.into()));
        self
    }

    /// Adds one of the user's launcher options as a word that may hold run-time values
    /// (`-np "$np"`: the variable is expanded when the line runs).
    pub fn extra_option_word(mut self, opt: Word) -> LaunchRequest {
        self.extra_options.push(opt);
        self
    }

    /// Declares which placement the user's options already set (see [`UserPlacement`]).
    pub fn user_placement(mut self, placement: UserPlacement) -> LaunchRequest {
        self.user_placement = placement;
        self
    }

    /// Adds several of the user's launcher options.
    pub fn extra_options<I, S>(mut self, opts: I) -> LaunchRequest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_options
            .extend(opts.into_iter().map(|o| Word::lit(o.into())));
        self
    }

    /// Sets a wall-clock limit.
    pub fn wall_clock(mut self, limit: WallClock) -> LaunchRequest {
        self.wall_clock = Some(limit);
        self
    }

    /// Sets the program every rank runs.
    pub fn program(mut self, path: impl Into<String>) -> LaunchRequest {
        self.program = path.into();
        self
    }

    /// Appends one program argument.
    pub fn arg(mut self, arg: impl Into<String>) -> LaunchRequest {
        self.args.push(arg.into());
        self
    }

    /// Appends program arguments.
    pub fn args<I, S>(mut self, args: I) -> LaunchRequest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs the program in a container started per rank by the host launcher.
    pub fn container(mut self, container: Container) -> LaunchRequest {
        self.container = Some(container);
        self
    }

    /// The Open MPI major version (4 by default; 5 switches the runtime parameters to PRRTE's
    /// `--prtemca plm_ssh_args` / `prte_if_include`).
    pub fn open_mpi_major(mut self, major: u32) -> LaunchRequest {
        self.open_mpi_major = Some(major);
        self
    }

    /// Validates the request and builds the plan.
    pub fn build(&self) -> Result<LaunchPlan, LaunchError> {
        crate::plan::build(self)
    }
}
