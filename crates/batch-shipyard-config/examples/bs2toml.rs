//! Prints the shipyard TOML of a Batch Shipyard config directory, then its warnings:
//! `cargo run -p shipyard-bs-config --example bs2toml -- DIR`.

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: bs2toml DIR"))?;
    match shipyard_bs_config::translate_dir(dir.as_ref(), Default::default()) {
        Ok(t) => {
            print!("{}", t.to_toml_string());
            for w in &t.warnings {
                eprintln!("warning: {w}");
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e}\n{}", e.snippet());
            std::process::exit(2)
        }
    }
}
