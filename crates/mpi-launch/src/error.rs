//! The crate's error type.

/// Everything that can be wrong with a launch request, or with the values supplied when a plan
/// is resolved. Every message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// A flavour name that is not one of the known names.
    #[error("unknown MPI flavour {value:?} in `{field}`; known names: {known}")]
    UnknownFlavor {
        /// The field that held the name (`flavor`).
        field: &'static str,
        /// The name given.
        value: String,
        /// The accepted names, comma-separated.
        known: &'static str,
    },
    /// A field whose value is not acceptable.
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        /// The field (`ranks`, `ppn`, `hosts`, `program`, ...).
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// More ranks than nodes × processes per node, without oversubscription.
    #[error(
        "invalid `ranks`: {ranks} ranks exceed {nodes} node(s) × {ppn} process(es) per node = {capacity}; \
         lower `ranks` or enable `oversubscribe`"
    )]
    TooManyRanks {
        /// Ranks requested.
        ranks: u32,
        /// Number of hosts.
        nodes: u32,
        /// Processes per node.
        ppn: u32,
        /// nodes × ppn.
        capacity: u64,
    },
    /// A NUL byte, which can never be part of an argument or environment value.
    #[error("invalid `{field}`: contains a NUL byte")]
    NulByte {
        /// The field holding it.
        field: &'static str,
    },
    /// An option the chosen flavour (or rendering) cannot express.
    #[error("`{field}` is not supported with {flavor}: {reason}")]
    Unsupported {
        /// The flavour (or rendering target).
        flavor: String,
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A run-time value needed by [`crate::LaunchPlan::resolve`] was not supplied.
    #[error("cannot resolve the plan: {what} is not set in the run-time environment")]
    Unresolved {
        /// The missing value (`variable AZ_BATCH_HOST_LIST`, `nproc`).
        what: String,
    },
}
