//! `shipyard serve`: the Azure Batch data-plane REST API on this machine (`shipyard_serve`).
//!
//! The account name comes from `SHIPYARD_SERVE_ACCOUNT` (default `local`) and the Shared Key
//! from `SHIPYARD_SERVE_KEY`; without one a random key is generated and printed once, to
//! stderr. The server listens on loopback unless `--listen` names another address. It runs
//! until Ctrl-C or SIGTERM.
//!
//! The local engine (`shipyard_local::Engine`, through `shipyard_serve::engine`) executes the
//! work, with its state under `--state-dir`: after a restart on the same directory nothing is
//! lost, and work that was running is failed with a reason.

use std::path::PathBuf;

use shipyard_serve::ServeOptions;

use crate::args::ServeArgs;
use crate::{CliError, CliResult};

/// Environment variable with the account name `serve` accepts (default [`DEFAULT_ACCOUNT`]).
pub const ENV_SERVE_ACCOUNT: &str = "SHIPYARD_SERVE_ACCOUNT";
/// Environment variable with the base64 Shared Key `serve` accepts.
pub const ENV_SERVE_KEY: &str = "SHIPYARD_SERVE_KEY";
/// The account name without [`ENV_SERVE_ACCOUNT`].
pub const DEFAULT_ACCOUNT: &str = "local";

/// Where `serve` keeps its state without `--state-dir`.
pub fn default_state_dir() -> PathBuf {
    let base = std::env::var_os("SHIPYARD_STATE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("shipyard")))
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir)
                .join(".local/state/shipyard")
        });
    base.join("serve")
}

/// `shipyard serve`.
pub fn command(args: &ServeArgs) -> CliResult {
    let account = std::env::var(ENV_SERVE_ACCOUNT)
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| DEFAULT_ACCOUNT.to_string());
    let key = match std::env::var(ENV_SERVE_KEY).ok().filter(|k| !k.is_empty()) {
        Some(k) => k,
        None => {
            let k = ServeOptions::random_key();
            // Printed once, here, so that a client can be configured; never logged.
            eprintln!("shipyard serve: no {ENV_SERVE_KEY} set; generated account key: {k}");
            k
        }
    };
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "shipyard serve: warning: listening on {} serves plain http beyond this machine; \
             requests (not the key) are visible on the network",
            args.listen
        );
    }
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state_dir).map_err(|e| {
        CliError::Failed(anyhow::anyhow!(
            "cannot create the state directory {}: {e}",
            state_dir.display()
        ))
    })?;
    let opts = ServeOptions::new(&account, key).listen(args.listen);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let served = shipyard_serve::engine::serve_engine(opts, state_dir.clone())
            .await
            .map_err(|e| match e {
                shipyard_serve::ServeError::InvalidKey(_) => {
                    CliError::Usage(format!("{ENV_SERVE_KEY}: {e}"))
                }
                e => CliError::Failed(anyhow::anyhow!(e)),
            })?;
        eprintln!(
            "shipyard serve: account `{account}` at http://{} (local engine); state in {}",
            served.server.addr(),
            state_dir.display()
        );
        // Handlers first, so a signal right after the URL is printed stops the server cleanly.
        use tokio::signal::unix::{signal, SignalKind};
        let signals =
            signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
        let (mut term, mut int) =
            signals.map_err(|e| CliError::Failed(anyhow::anyhow!("cannot handle signals: {e}")))?;
        // The URL alone on stdout, for scripts.
        println!("http://{}", served.server.addr());
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("shipyard serve: signal received, stopping the server");
        served.shutdown().await;
        Ok(())
    })
}
