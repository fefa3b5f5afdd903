//! Command-line arguments (clap derive). Kept free of heavy work so `shipyard --help` is fast.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Run containerized MPI jobs on Azure Batch and on this machine.";

const LONG_ABOUT: &str = "\
Run containerized MPI jobs (Docker or Singularity/Apptainer; Open MPI, Intel MPI, MPICH, MS-MPI)
as Azure Batch multi-instance tasks, or on this machine with Docker containers as the nodes.

The same TOML configuration drives both targets through the same Batch client: `--target
local` (the default) runs on shipyard's local engine, a Batch endpoint on this machine whose
nodes are Docker containers (or, with --vm-nodes, VM-like nodes with their own dockerd);
`--target azure` talks to an Azure Batch account.";

const AFTER_HELP: &str = "\
Examples:
  # Run a 3-node Open MPI hello world on this machine and exit with its exit code
  shipyard run examples/local-openmpi.toml

  # Check a configuration split Batch-Shipyard style (TOML, or Batch Shipyard's own YAML)
  shipyard --configdir myconfig/ config check

  # Translate a Batch Shipyard directory into shipyard TOML
  shipyard config import my-batch-shipyard-config/ --out myconfig/

  # Print the REST bodies a submission to Azure Batch would send, send nothing
  shipyard --target azure --dry-run -c examples/native-intelmpi.toml jobs add

  # List the tasks of a job as JSON; terminate it from another shell
  shipyard --output json tasks list --job hello-openmpi
  shipyard jobs term hello-openmpi

  # Run the non-native plan exactly as on Azure: VM-like nodes, each with its own dockerd
  shipyard --vm-nodes run examples/local-openmpi.toml

Configuration files: -c FILE (repeatable), or --credentials/--pool/--jobs, or --configdir DIR
(config.toml, credentials.toml, pool.toml, jobs.toml, or Batch Shipyard's .yaml/.json). Secrets come from the environment:
SHIPYARD_BATCH_ACCOUNT_KEY, SHIPYARD_AAD_CLIENT_SECRET.";

/// The `shipyard` command line.
#[derive(Debug, Parser)]
#[command(
    name = "shipyard",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// Global options.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file (repeatable; sections are merged).
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        value_name = "FILE",
        env = "SHIPYARD_CONFIG"
    )]
    pub config: Vec<PathBuf>,
    /// Directory with config.toml / credentials.toml / pool.toml / jobs.toml, or with Batch
    /// Shipyard's credentials / config / pool / jobs .yaml (or .json).
    #[arg(long, global = true, value_name = "DIR", env = "SHIPYARD_CONFIGDIR")]
    pub configdir: Option<PathBuf>,
    /// Credentials file (TOML, or Batch Shipyard's credentials.yaml).
    #[arg(long, global = true, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Pool file (TOML, or Batch Shipyard's pool.yaml).
    #[arg(long, global = true, value_name = "FILE")]
    pub pool: Option<PathBuf>,
    /// Jobs file (TOML, or Batch Shipyard's jobs.yaml).
    #[arg(long, global = true, value_name = "FILE")]
    pub jobs: Option<PathBuf>,
    /// Where to run: this machine's Docker engine, or Azure Batch.
    #[arg(short = 't', long, global = true, value_enum, default_value_t = Target::Local, env = "SHIPYARD_TARGET")]
    pub target: Target,
    /// With `--target local`: give a non-native pool (`native = false`) VM-like nodes and run
    /// Batch Shipyard's non-native plan on them, exactly as on Azure (a dockerd per node, the
    /// job preparation's `docker pull`, `docker run -d` of sshd, `docker exec` of mpirun, the
    /// release cleanup). Without it such a pool runs locally on container nodes, the way a
    /// native pool runs (one container per task), which starts in seconds. Pools without
    /// container configuration (singularity, charliecloud) always get VM-like nodes.
    /// (`--engine` is the older name.)
    #[arg(long, global = true, alias = "engine", env = "SHIPYARD_LOCAL_VM_NODES", value_parser = clap::builder::BoolishValueParser::new())]
    pub vm_nodes: bool,
    /// With `--target local`: run jobs in this process on the per-run backend instead of the
    /// local engine (nothing persists after the run; no `jobs term` from another shell; jobs
    /// with resource files or host-MPI runtimes still go to the engine). Kept for comparison.
    #[arg(long, global = true, env = "SHIPYARD_LOCAL_PER_RUN", conflicts_with = "vm_nodes", value_parser = clap::builder::BoolishValueParser::new())]
    pub per_run: bool,
    /// Print the REST request bodies that would be sent to Azure Batch; send nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// More logging (repeat for more); logs go to stderr.
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars.
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
    /// Load a runtime plugin (a shared library exporting `shipyard_runtime_plugin_v1`);
    /// repeatable. Jobs select it with `runtime = "<its name>"`.
    #[arg(
        long = "plugin",
        global = true,
        value_name = "FILE",
        env = "SHIPYARD_PLUGIN"
    )]
    pub plugins: Vec<PathBuf>,
}

/// Where commands act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// This machine: Docker containers are the nodes.
    Local,
    /// An Azure Batch account from `[credentials.batch]` / the environment.
    Azure,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// JSON for programs.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the pool (the nodes jobs run on).
    #[command(
        subcommand,
        after_help = "Examples:\n  shipyard --target azure -c pool.toml pool add\n  shipyard --target azure -c pool.toml pool resize --dedicated 8\n  shipyard --target azure --output json pool nodes --pool-id mpipool\n  shipyard pool del          # locally: remove leftovers of runs whose process died"
    )]
    Pool(PoolCommand),
    /// Manage jobs.
    #[command(
        subcommand,
        after_help = "Examples:\n  shipyard --target azure -c config.toml jobs add --job hello\n  shipyard jobs list\n  shipyard jobs tasks hello-openmpi\n  shipyard --target azure jobs term hello -c credentials.toml"
    )]
    Jobs(JobsCommand),
    /// Inspect and stop tasks.
    #[command(
        subcommand,
        after_help = "Examples:\n  shipyard tasks list --job hello-openmpi\n  shipyard --output json tasks get --job hello-openmpi hello\n  shipyard --target azure -c credentials.toml tasks term --job hello hello"
    )]
    Tasks(TasksCommand),
    /// Download a task's stdout/stderr or other files from its directory.
    #[command(
        after_help = "Examples:\n  shipyard files --job hello --task task-00000\n  shipyard files --job hello --task task-00000 --file stderr.txt --out ./logs\n  shipyard files --job hello --task task-00000 --follow"
    )]
    Files(FilesArgs),
    /// Submit the job(s), wait for them, and exit with the (first failed) task's exit code.
    #[command(
        after_help = "Examples:\n  shipyard run examples/local-openmpi.toml\n  shipyard run --tail examples/local-openmpi.toml\n  shipyard --target azure run -c config.toml --job hello"
    )]
    Run(RunArgs),
    /// Serve the Azure Batch REST API on this machine (Shared Key; account from
    /// SHIPYARD_SERVE_ACCOUNT, default `local`; key from SHIPYARD_SERVE_KEY, else a random one
    /// printed once to stderr).
    #[command(after_help = "Examples:
  shipyard serve
  SHIPYARD_SERVE_KEY=$(openssl rand -base64 32) shipyard serve --listen 127.0.0.1:9000 --state-dir /tmp/serve
  # then, in another shell:
  SHIPYARD_BATCH_ACCOUNT_URL=http://127.0.0.1:8711 SHIPYARD_BATCH_ACCOUNT_NAME=local \\
    SHIPYARD_BATCH_ACCOUNT_KEY=... shipyard --target azure run examples/local-openmpi.toml")]
    Serve(ServeArgs),
    /// Configuration helpers.
    #[command(
        subcommand,
        after_help = "Examples:\n  shipyard config check examples/local-openmpi.toml\n  shipyard --configdir myconfig/ --output json config check\n  shipyard config import batch-shipyard-dir/ --out myconfig/"
    )]
    Config(ConfigCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  shipyard completions bash > /etc/bash_completion.d/shipyard\n  shipyard completions zsh > ~/.zfunc/_shipyard"
    )]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `pool ...`.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create the pool of `[pool_specification]`.
    Add,
    /// List pools.
    List,
    /// Delete a pool (default: the configured one).
    Del {
        /// Pool id.
        #[arg(long = "pool-id")]
        pool_id: Option<String>,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
    /// Change the number of nodes.
    Resize {
        /// Dedicated nodes.
        #[arg(long)]
        dedicated: u32,
        /// Low-priority nodes.
        #[arg(long, default_value_t = 0)]
        low_priority: u32,
        /// Pool id (default: the configured one).
        #[arg(long = "pool-id")]
        pool_id: Option<String>,
    },
    /// List the nodes of the pool: state, address and start task errors.
    Nodes {
        /// Pool id (default: the configured one).
        #[arg(long = "pool-id")]
        pool_id: Option<String>,
    },
    /// Log in to a node. Azure: adds a node user with your SSH public key (Batch
    /// `ComputeNode_AddUser`) and runs ssh to the node's remote login address. Locally: an
    /// interactive shell in a node container of a running `shipyard run`.
    #[command(
        after_help = "Examples:\n  shipyard -c pool.toml pool ssh\n  shipyard -c pool.toml pool ssh --node tvmps_0001_d --key ~/.ssh/id_ed25519.pub\n  shipyard --target local pool ssh --node node-0 --job hello"
    )]
    Ssh(SshArgs),
}

/// `pool ssh`.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// Node id (default: the first node that is idle or running; see `pool nodes`).
    #[arg(long)]
    pub node: Option<String>,
    /// Pool id (default: the configured one).
    #[arg(long = "pool-id")]
    pub pool_id: Option<String>,
    /// User to add (default: pool_specification.ssh.username, else `shipyard`).
    #[arg(long)]
    pub user: Option<String>,
    /// Public key file to install (default: pool_specification.ssh, else ~/.ssh/id_ed25519.pub,
    /// id_ecdsa.pub or id_rsa.pub). Its private key (the same path without `.pub`) is given to ssh.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Locally: the job whose node to enter (when several runs have a node of that id).
    #[arg(long)]
    pub job: Option<String>,
    /// Command to run instead of an interactive shell (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `jobs ...`.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Submit the job(s) of the configuration (do not wait).
    Add {
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Delete a finished job with the same id first (an active job is refused).
        #[arg(long)]
        recreate: bool,
    },
    /// List jobs.
    List,
    /// Delete a job (and its tasks and leftovers).
    Del {
        /// Job id.
        job: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
    /// Terminate a job: running tasks stop, the job release task runs.
    Term {
        /// Job id.
        job: String,
    },
    /// List the tasks of a job.
    Tasks {
        /// Job id.
        job: String,
    },
    /// Clean up the containers of multi-instance tasks of a job (non-native pools).
    Cmi {
        /// Job id.
        job: String,
    },
}

/// `tasks ...`.
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// List the tasks of a job.
    List {
        /// Job id.
        #[arg(long)]
        job: String,
    },
    /// Show one task.
    Get {
        /// Job id.
        #[arg(long)]
        job: String,
        /// Task id.
        task: String,
    },
    /// Terminate a running task.
    Term {
        /// Job id.
        #[arg(long)]
        job: String,
        /// Task id.
        task: String,
    },
}

/// `files`.
#[derive(Debug, Clone, Args)]
pub struct FilesArgs {
    /// Job id.
    #[arg(long)]
    pub job: String,
    /// Task id.
    #[arg(long)]
    pub task: String,
    /// File in the task directory (default: stdout.txt and stderr.txt).
    #[arg(long)]
    pub file: Vec<String>,
    /// Directory to write into (default: print to stdout).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Stream the file as it grows until the task completes (like Batch Shipyard's
    /// `data files stream`); one file (default stdout.txt), printed to stdout.
    #[arg(long, conflicts_with = "out")]
    pub follow: bool,
}

/// `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration files (same as -c).
    #[arg(value_name = "CONFIG")]
    pub configs: Vec<PathBuf>,
    /// Only this job.
    #[arg(long)]
    pub job: Option<String>,
    /// Stream every node's output live, prefixed with the node id.
    #[arg(long)]
    pub tail: bool,
    /// Give up after this many seconds (the job is terminated).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Delete a finished job with the same id first (an active job is refused).
    #[arg(long)]
    pub recreate: bool,
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Loopback by default; any other address serves plain http to the
    /// network (say so explicitly).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8711")]
    pub listen: std::net::SocketAddr,
    /// Where pools, jobs, tasks and their output are kept (default
    /// `~/.local/state/shipyard/serve`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse and validate the configuration; print a summary.
    Check {
        /// Configuration files (same as -c; TOML, or Batch Shipyard YAML/JSON).
        #[arg(value_name = "CONFIG")]
        configs: Vec<PathBuf>,
    },
    /// Translate a Batch Shipyard configuration directory (credentials, config, pool, jobs as
    /// YAML or JSON) into shipyard TOML, with a comment wherever the meaning changed. Secrets
    /// are not copied: the TOML names the environment variables that carry them.
    Import {
        /// The Batch Shipyard directory.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Where to write config.toml (created if missing; an existing config.toml is kept).
        #[arg(long, value_name = "DIR2")]
        out: PathBuf,
    },
}
