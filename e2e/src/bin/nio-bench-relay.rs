//! The floor of `scripts/bench/proxy`: a TCP relay that does no HTTP at
//! all. Each client connection gets its own connection to the backend and
//! bytes are copied both ways as they come, on one Tokio thread. It makes
//! the same four system calls per request as a proxy with a kept-alive
//! upstream connection (read the request, write it on, read the answer,
//! write it back) and nothing else, so its CPU time per request is what
//! the kernel costs, plus Tokio's loop, before a proxy does any work of
//! its own.
//!
//! `nio-bench-relay LISTEN BACKEND`

use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(backend)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: nio-bench-relay LISTEN BACKEND   (both host:port)");
    };
    let listener = TcpListener::bind(&listen).await?;
    eprintln!("bench relay listening on {}", listener.local_addr()?);
    loop {
        let (mut client, _) = listener.accept().await?;
        let backend = backend.clone();
        tokio::spawn(async move {
            let Ok(mut upstream) = TcpStream::connect(&backend).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}
