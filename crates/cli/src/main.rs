//! The `shipyard` command-line tool.

use clap::Parser;

/// Run containerized MPI jobs on Azure Batch and on this machine.
#[derive(Debug, Parser)]
#[command(name = "shipyard", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
