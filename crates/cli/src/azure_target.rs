//! `--target azure`: an Azure Batch account through `shipyard_batch_api`.

use crate::args::{Command, GlobalArgs, RunArgs};
use crate::config::Config;
use crate::{CliError, CliResult};

pub(crate) fn command(_global: &GlobalArgs, _command: Command) -> CliResult {
    Err(CliError::Usage(
        "the Azure Batch client is not available in this build yet".into(),
    ))
}

pub(crate) fn run(_global: &GlobalArgs, _config: &Config, _args: &RunArgs) -> CliResult {
    Err(CliError::Usage(
        "the Azure Batch client is not available in this build yet".into(),
    ))
}
