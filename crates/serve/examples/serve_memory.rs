//! `shipyard serve` over the in-memory backend, for scripts/bench-serve.sh: listens on
//! `SHIPYARD_SERVE_LISTEN` (default 127.0.0.1:0) with account `SHIPYARD_SERVE_ACCOUNT` and key
//! `SHIPYARD_SERVE_KEY`, prints `listening http://ADDR` and serves until killed.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::var("SHIPYARD_SERVE_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".into());
    let account = std::env::var("SHIPYARD_SERVE_ACCOUNT").unwrap_or_else(|_| "local".into());
    let key = std::env::var("SHIPYARD_SERVE_KEY")?;
    let dir = tempfile::tempdir()?;
    let opts = shipyard_serve::ServeOptions::new(account, key).listen(listen.parse()?);
    let server =
        shipyard_serve::Server::bind(opts, shipyard_serve::memory::MemoryBackend::new(dir.path()))
            .await?;
    println!("listening http://{}", server.addr());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
