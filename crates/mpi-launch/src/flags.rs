//! Launcher flag names and environment variable names, as verified in
//! `shared/reference/mpi-launchers.md` (Open MPI 4.1.4, MPICH 4.0.2, Intel MPI 2021.19;
//! MS-MPI from its documentation).

/// Open MPI `mpirun`.
pub mod openmpi {
    /// Allow running as root (refused otherwise, even `--help`).
    pub const ALLOW_RUN_AS_ROOT: &str = "--allow-run-as-root";
    /// Total ranks.
    pub const NP: &str = "-np";
    /// `h1:N,h2:N` host list with slots.
    pub const HOST: &str = "--host";
    /// Hostfile with `host slots=N` lines.
    pub const HOSTFILE: &str = "--hostfile";
    /// Mapping policy (`ppr:N:node`).
    pub const MAP_BY: &str = "--map-by";
    /// Allow more ranks than slots.
    pub const OVERSUBSCRIBE: &str = "--oversubscribe";
    /// Export a variable to the ranks (`-x NAME`).
    pub const EXPORT: &str = "-x";
    /// Working directory of the ranks.
    pub const WDIR: &str = "-wdir";
    /// Set an MCA parameter (MPI layer; runtime layer too in 4.x).
    pub const MCA: &str = "--mca";
    /// Set a PRRTE (runtime) parameter in Open MPI 5.x.
    pub const PRTEMCA: &str = "--prtemca";
    /// 4.x: extra arguments of the ssh agent.
    pub const PLM_RSH_ARGS: &str = "plm_rsh_args";
    /// 5.x: extra arguments of the ssh agent.
    pub const PLM_SSH_ARGS: &str = "plm_ssh_args";
    /// NIC of MPI TCP traffic.
    pub const BTL_TCP_IF_INCLUDE: &str = "btl_tcp_if_include";
    /// 4.x: NIC of runtime (orted) traffic.
    pub const OOB_TCP_IF_INCLUDE: &str = "oob_tcp_if_include";
    /// 5.x: NIC of runtime (prted) traffic.
    pub const PRTE_IF_INCLUDE: &str = "prte_if_include";
    /// Default env: no CMA single copy (needs ptrace, usually denied in containers).
    pub const ENV_VADER_SINGLE_COPY: &str = "OMPI_MCA_btl_vader_single_copy_mechanism";
}

/// Intel MPI `mpiexec.hydra`.
pub mod intel {
    /// Total ranks.
    pub const N: &str = "-n";
    /// Ranks per node.
    pub const PPN: &str = "-ppn";
    /// Plain host list (`h1,h2`; never `h:N`).
    pub const HOSTS: &str = "-hosts";
    /// Hostfile with `host:N` lines (`-f`/`-hostfile` would drop the `:N`).
    pub const MACHINEFILE: &str = "-machinefile";
    /// Set a variable for all ranks (`-genv NAME value`).
    pub const GENV: &str = "-genv";
    /// Working directory of the ranks.
    pub const WDIR: &str = "-wdir";
    /// Remote start method.
    pub const BOOTSTRAP: &str = "-bootstrap";
    /// Extra arguments of the bootstrap program (ssh).
    pub const BOOTSTRAP_EXEC_ARGS: &str = "-bootstrap-exec-args";
    /// Default env: fabric.
    pub const ENV_FABRICS: &str = "I_MPI_FABRICS";
    /// Default env: libfabric provider.
    pub const ENV_FI_PROVIDER: &str = "FI_PROVIDER";
    /// NIC of hydra's control traffic.
    pub const ENV_HYDRA_IFACE: &str = "I_MPI_HYDRA_IFACE";
    /// NIC of libfabric's tcp provider.
    pub const ENV_FI_TCP_IFACE: &str = "FI_TCP_IFACE";
}

/// MPICH (and MVAPICH) hydra `mpiexec`.
pub mod mpich {
    /// Total ranks.
    pub const N: &str = "-n";
    /// Ranks per node (overrides `:N`).
    pub const PPN: &str = "-ppn";
    /// Host list.
    pub const HOSTS: &str = "-hosts";
    /// Hostfile with `host:N` lines.
    pub const HOSTFILE: &str = "-f";
    /// Set a variable for all ranks.
    pub const GENV: &str = "-genv";
    /// Working directory of the ranks.
    pub const WDIR: &str = "-wdir";
    /// Remote start method.
    pub const LAUNCHER: &str = "-launcher";
    /// NIC of the control traffic.
    pub const IFACE: &str = "-iface";
    /// Extra arguments of the launcher (ssh), from the environment.
    pub const ENV_LAUNCHER_EXTRA_ARGS: &str = "HYDRA_LAUNCHER_EXTRA_ARGS";
}

/// MS-MPI `mpiexec`.
pub mod msmpi {
    /// Total ranks.
    pub const N: &str = "-n";
    /// Ranks per host, for every host (hosts from `CCP_NODES`).
    pub const CORES: &str = "-c";
    /// `-hosts n h1 m1 h2 m2 ...`.
    pub const HOSTS: &str = "-hosts";
    /// Hostfile with `host cores` lines.
    pub const MACHINEFILE: &str = "-machinefile";
    /// Set a variable for all ranks.
    pub const GENV: &str = "-genv";
    /// Pass the listed variables of mpiexec's environment.
    pub const GENVLIST: &str = "-genvlist";
    /// Working directory.
    pub const WDIR: &str = "-wdir";
    /// Wall-clock limit in seconds.
    pub const TIMEOUT: &str = "-timeout";
}

/// Container runtimes (`singularity exec` / `apptainer exec`).
pub mod container {
    /// Subcommand.
    pub const EXEC: &str = "exec";
    /// Bind mount `src:dst[:ro]`.
    pub const BIND: &str = "--bind";
    /// Working directory inside the container.
    pub const PWD: &str = "--pwd";
    /// NVIDIA GPU support.
    pub const NV: &str = "--nv";
}

/// Charliecloud's `ch-run` (0.31).
pub mod charliecloud {
    /// Join the node's peer group; the count comes from `OMPI_COMM_WORLD_LOCAL_SIZE`.
    pub const JOIN: &str = "--join";
    /// Join with an explicit peer count (`--join-ct=N`, implies `--join`).
    pub const JOIN_CT: &str = "--join-ct=";
    /// Bind mount `SRC[:DST]` (read-write; the destination must exist in the image).
    pub const BIND: &str = "-b";
    /// Initial working directory in the container.
    pub const CD: &str = "-c";
    /// Do not expand `$` in `--set-env` values (the shell already did).
    pub const ENV_NO_EXPAND: &str = "--env-no-expand";
    /// Set a variable in the container (`--set-env=NAME=VALUE`).
    pub const SET_ENV: &str = "--set-env=";
    /// Ends `ch-run`'s options: the program follows.
    pub const END: &str = "--";
}

/// ssh client options shipyard always sets (no prompts, no host-key checks).
pub const SSH_DEFAULT_OPTIONS: &[(&str, &str)] = &[
    ("StrictHostKeyChecking", "no"),
    ("UserKnownHostsFile", "/dev/null"),
    ("BatchMode", "yes"),
    ("ConnectTimeout", "10"),
];

/// The GNU coreutils `timeout` program used for the wall-clock limit.
pub const TIMEOUT_PROGRAM: &str = "timeout";
