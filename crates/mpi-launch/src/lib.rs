//! Pure builder of MPI launcher command lines (Open MPI, Intel MPI, MPICH, MS-MPI).
//!
//! A [`LaunchRequest`] describes what to run: the MPI [`Flavor`], the launcher executable, the
//! [`Hosts`] (a literal list, or `$AZ_BATCH_HOST_LIST` read at run time), processes per node
//! ([`Ppn`]: a count or all cores via `$(nproc)`), total ranks (default nodes × ppn), the
//! environment, the sshd port of the remote nodes (23 inside shipyard's containers), the
//! working directory, the user's own launcher options, a wall-clock limit, an optional
//! `singularity`/`apptainer exec` [`Container`] wrapper, and the program with its arguments.
//!
//! [`LaunchRequest::build`] validates it (typed [`LaunchError`]s naming the field) and returns a
//! [`LaunchPlan`]: argv as [`Word`]s — literals, or values deferred to run time such as the host
//! list, `$(nproc)` or the computed rank count — the launcher's environment, and an optional
//! [`Hostfile`] in the flavour's own format. From the plan:
//!
//! - [`LaunchPlan::render_sh`]: one POSIX-sh line (exact quoting; deferred values expanded by
//!   the shell), ready for `/bin/sh -c` or, through [`batch_sh_command_line`], a Batch task;
//! - [`LaunchPlan::render_cmd`]: a cmd.exe line for MS-MPI;
//! - [`LaunchPlan::resolve`]: concrete argv, env and hostfile given the run-time values
//!   ([`RunEnv`]), for callers that exec without a shell.
//!
//! Only flags verified against the real launchers are emitted (see [`flags`]). Every variable
//! shipyard sets by default ([`default_env`]) is replaced by the user's value of the same name,
//! and left out with [`LaunchRequest::without_default_env`]. A value that exists only on the
//! node (a file's content) is a [`Deferred::Output`] word, read when the line runs.
//! The crate does no I/O and spawns nothing.
//!
//! # Environment values and secrets
//!
//! Values given with [`LaunchRequest::env`] appear in the rendered line (`NAME='value' mpirun
//! ...`), in `Debug` output, and for Intel MPI, MPICH and MS-MPI in the launcher's argv
//! (`-genv NAME value`). Do not pass secrets that way: put them in the task's environment and
//! name them with [`LaunchRequest::forward_env`] (Open MPI `-x NAME`; hydra `-genv NAME "$NAME"`,
//! expanded only when the line runs; MS-MPI `-genvlist`).
//!
//! # Flavour notes
//!
//! - Open MPI: 4.x flags by default; [`LaunchRequest::open_mpi_major`]`(5)` switches the runtime
//!   parameters to PRRTE (`--prtemca plm_ssh_args`, `prte_if_include`). Placement is
//!   `--host h:N,...` (or `--hostfile`, `host slots=N`) plus `--map-by ppr:N:node`; with
//!   oversubscription `--oversubscribe` instead of the `ppr` mapping.
//! - Intel MPI: `-hosts h1,h2` with `-ppn N` (never `h:N`), or `-machinefile` with `host:N`;
//!   ssh arguments via `-bootstrap ssh -bootstrap-exec-args`; defaults `I_MPI_FABRICS=shm:ofi`,
//!   `FI_PROVIDER=tcp`; [`LaunchRequest::iface`] sets `I_MPI_HYDRA_IFACE` and `FI_TCP_IFACE`.
//! - MPICH (and MVAPICH): `-hosts` with `-ppn`, or `-f` with `host:N`; ssh arguments in
//!   `HYDRA_LAUNCHER_EXTRA_ARGS`; `-iface`. Hydra hangs when ssh to a node fails: set a
//!   [`WallClock`] limit.
//! - MS-MPI: `-hosts n h1 N h2 N`, or with run-time hosts nothing but `-c N` (mpiexec reads
//!   `CCP_NODES`); `-genv`, `-genvlist`, `-wdir`, `-timeout`. No ssh, no interface pinning, no
//!   container wrapper: those are errors.
//!
//! ```
//! use shipyard_mpi_launch::{Flavor, Hosts, LaunchRequest, Ppn, RunEnv};
//! let plan = LaunchRequest::new(Flavor::OpenMpi)
//!     .launcher("/usr/bin/mpirun.openmpi")
//!     .run_as_root(true)
//!     .hosts(Hosts::list(["10.0.0.4", "10.0.0.5"]))
//!     .ppn(Ppn::Count(2))
//!     .ssh_port(23)
//!     .program("/app/hello")
//!     .build()?;
//! let argv = plan.resolve(&RunEnv::new())?.argv;
//! assert_eq!(argv[..6], ["/usr/bin/mpirun.openmpi", "--allow-run-as-root", "-np", "4", "--host", "10.0.0.4:2,10.0.0.5:2"]);
//! # Ok::<(), shipyard_mpi_launch::LaunchError>(())
//! ```

#![warn(missing_docs)]

mod error;
pub mod flags;
mod flavor;
mod plan;
mod render;
mod request;
pub mod shell;
mod word;

pub use error::LaunchError;
pub use flavor::{Flavor, KNOWN_FLAVOR_NAMES};
pub use plan::{default_env, Hostfile, HostfileHosts, LaunchPlan, Resolved};
pub use render::{batch_cmd_command_line, batch_sh_command_line, sh_quote, sh_quote_always};
pub use request::{
    Bind, Container, ContainerWrapper, Hosts, LaunchRequest, Ppn, UserPlacement, WallClock,
    AZ_BATCH_HOST_LIST,
};
pub use word::{Deferred, Num, Part, RunEnv, Word};
