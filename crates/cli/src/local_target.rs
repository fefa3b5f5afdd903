//! `--target local`: this machine's Docker engine through `shipyard_local`.

use crate::args::{Command, GlobalArgs, RunArgs};
use crate::config::{Config, PoolSpecification, VmConfiguration, VmCount};
use crate::{CliError, CliResult};

/// The pool assumed when the configuration has none: this machine, one node per instance.
pub(crate) fn default_pool() -> PoolSpecification {
    PoolSpecification {
        id: "local".into(),
        vm_size: "local".into(),
        vm_count: VmCount::Dedicated(250),
        inter_node_communication_enabled: true,
        task_slots_per_node: 1,
        vm_configuration: VmConfiguration::default(),
        subnet_pattern: None,
        cores_per_node: None,
    }
}

pub(crate) fn command(_global: &GlobalArgs, _command: Command) -> CliResult {
    Err(CliError::Usage(
        "the local backend is not available in this build yet".into(),
    ))
}

pub(crate) fn run(_global: &GlobalArgs, _config: &Config, _args: &RunArgs) -> CliResult {
    Err(CliError::Usage(
        "the local backend is not available in this build yet".into(),
    ))
}
