//! `shipyard serve` over the local engine (what the CLI's `shipyard serve` runs), for tests and
//! scripts: listens on `SHIPYARD_SERVE_LISTEN` (default 127.0.0.1:0) with account
//! `SHIPYARD_SERVE_ACCOUNT` (default `local`) and key `SHIPYARD_SERVE_KEY`, keeps its state under
//! `SHIPYARD_SERVE_STATE_DIR`, prints `listening http://ADDR` and serves until killed.

use std::io::Write as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::var("SHIPYARD_SERVE_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".into());
    let account = std::env::var("SHIPYARD_SERVE_ACCOUNT").unwrap_or_else(|_| "local".into());
    let key = std::env::var("SHIPYARD_SERVE_KEY")?;
    let state_dir = std::env::var("SHIPYARD_SERVE_STATE_DIR")?;
    let opts = shipyard_serve::ServeOptions::new(account, key).listen(listen.parse()?);
    let served = shipyard_serve::engine::serve_engine(opts, state_dir.into()).await?;
    println!("listening http://{}", served.server.addr());
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await?;
    served.shutdown().await;
    Ok(())
}
