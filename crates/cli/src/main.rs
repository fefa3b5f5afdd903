//! The `shipyard` command-line tool; see the `shipyard_cli` library for the implementation.

fn main() -> std::process::ExitCode {
    shipyard_cli::main_with_args()
}
