//! A tiny HTTP backend for the quickstart and manual tries: answers every
//! request with JSON naming itself and echoing the method, path and headers
//! it received (so the gateway's forwarding headers are visible).
//!
//! `nio-demo-backend [ADDR] [NAME]` (default `127.0.0.1:8081 demo`).

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "--help" || a == "-h") {
        println!("usage: nio-demo-backend [ADDR] [NAME]   (default 127.0.0.1:8081 demo)");
        return Ok(());
    }
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8081".into())
        .parse()?;
    let name = args.next().unwrap_or_else(|| "demo".into());
    let backend = nio_e2e::TestBackend::start_on(addr, &name).await?;
    eprintln!("demo backend \"{name}\" listening on {}", backend.addr);
    backend.run_forever().await
}
