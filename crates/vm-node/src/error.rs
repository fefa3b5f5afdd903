//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while creating, using or removing VM-like nodes.
///
/// `scope` names what the failure belongs to: `node-1 of pool 3fa2c1d0`, or `pool 3fa2c1d0`
/// for pool-wide resources (bridge, iptables rule, registry).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmNodeError {
    /// A command ran and failed.
    #[error("{scope}: `{command}` failed ({status}): {stderr}")]
    Command {
        /// The node or pool the command was for.
        scope: String,
        /// The command line (program and arguments).
        command: String,
        /// Its exit status (`exit code 1`, `killed by a signal`).
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A command could not be started at all.
    #[error("{scope}: cannot run `{command}`: {source}")]
    Spawn {
        /// The node or pool the command was for.
        scope: String,
        /// The command line.
        command: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory operation failed.
    #[error("{scope}: {action} {}: {source}", path.display())]
    Io {
        /// The node or pool.
        scope: String,
        /// What was being done (`creating`, `writing`, `removing`).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A node's dockerd did not answer on its socket in time.
    #[error("{scope}: dockerd did not answer on {} within {waited:?}; last log lines: {log_tail}", socket.display())]
    EngineTimeout {
        /// The node.
        scope: String,
        /// The socket that was polled.
        socket: PathBuf,
        /// How long it was polled.
        waited: Duration,
        /// The end of dockerd's log.
        log_tail: String,
    },
    /// A node's dockerd is gone: the node is unusable.
    #[error("{scope}: the node's dockerd is dead ({reason})")]
    EngineDead {
        /// The node.
        scope: String,
        /// Why it is considered dead.
        reason: String,
    },
    /// Every candidate /24 is in use on this machine.
    #[error("no free /24 for a shipyard bridge in {range} (all in use by interfaces, routes or other pools)")]
    NoFreeSubnet {
        /// The range that was searched.
        range: String,
    },
    /// A pool's state record could not be read or written.
    #[error("pool state {}: {source}", path.display())]
    State {
        /// The record file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// An image pulled into the image cache is not the host's image.
    #[error("{scope}: image {image} pulled from the pool registry is not the host's: {ids}")]
    CacheMismatch {
        /// The pool.
        scope: String,
        /// The image reference.
        image: String,
        /// The pulled and the host's image IDs (`has id …, the host's is …`).
        ids: String,
    },
    /// The builder was given a value it cannot use.
    #[error("invalid VM-node configuration: {field}: {reason}")]
    InvalidConfig {
        /// The builder field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Shorthand result type.
pub type Result<T, E = VmNodeError> = std::result::Result<T, E>;

impl VmNodeError {
    pub(crate) fn io(
        scope: &str,
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> VmNodeError {
        VmNodeError::Io {
            scope: scope.to_string(),
            action,
            path: path.into(),
            source,
        }
    }
}
