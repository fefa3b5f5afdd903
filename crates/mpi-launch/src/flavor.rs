//! MPI flavours and their names.

use std::fmt;
use std::str::FromStr;

use crate::LaunchError;

/// An MPI implementation family; decides the launcher's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Flavor {
    /// Open MPI (`mpirun`; ORTE in 4.x, PRRTE in 5.x — see [`crate::LaunchRequest::open_mpi_major`]).
    #[default]
    OpenMpi,
    /// Intel MPI (hydra, `mpiexec.hydra`).
    IntelMpi,
    /// MPICH and hydra-compatible derivatives such as MVAPICH (`mpiexec`).
    Mpich,
    /// Microsoft MPI on Windows (`mpiexec`, SMPD).
    MsMpi,
}

/// The names [`Flavor::from_str`] accepts (Batch Shipyard's `mpi.runtime` names).
pub const KNOWN_FLAVOR_NAMES: &str = "openmpi, intelmpi, intelmpi-ofa, mpich, mvapich, msmpi";

impl Flavor {
    /// All flavours.
    pub const ALL: [Flavor; 4] = [
        Flavor::OpenMpi,
        Flavor::IntelMpi,
        Flavor::Mpich,
        Flavor::MsMpi,
    ];

    /// The canonical lowercase name (`openmpi`, `intelmpi`, `mpich`, `msmpi`).
    pub fn name(self) -> &'static str {
        match self {
            Flavor::OpenMpi => "openmpi",
            Flavor::IntelMpi => "intelmpi",
            Flavor::Mpich => "mpich",
            Flavor::MsMpi => "msmpi",
        }
    }

    /// The launcher used when the request does not name one.
    pub fn default_launcher(self) -> &'static str {
        match self {
            Flavor::OpenMpi => "mpirun",
            Flavor::IntelMpi => "mpiexec.hydra",
            Flavor::Mpich => "mpiexec",
            Flavor::MsMpi => "mpiexec",
        }
    }

    /// True when the launcher reaches other nodes over ssh (all but MS-MPI, which uses SMPD).
    pub fn uses_ssh(self) -> bool {
        self != Flavor::MsMpi
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Flavor {
    type Err = LaunchError;

    /// Parses Batch Shipyard's names, case-insensitively: `openmpi`, `intelmpi`, `intelmpi-ofa`
    /// (Intel MPI; the OFA fabric itself is gone from Intel MPI 2021), `mpich`, `mvapich`
    /// (hydra-compatible, launched like MPICH) and `msmpi`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openmpi" => Ok(Flavor::OpenMpi),
            "intelmpi" | "intelmpi-ofa" => Ok(Flavor::IntelMpi),
            "mpich" | "mvapich" => Ok(Flavor::Mpich),
            "msmpi" => Ok(Flavor::MsMpi),
            _ => Err(LaunchError::UnknownFlavor {
                field: "flavor",
                value: s.to_string(),
                known: KNOWN_FLAVOR_NAMES,
            }),
        }
    }
}
