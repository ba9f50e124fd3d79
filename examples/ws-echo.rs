//! `ws-echo`: telehub's WebSocket transport as a plain `ws://` echo server, the target for
//! conformance suites such as Autobahn|Testsuite's fuzzingclient.
//!
//! ```text
//! cargo run --release --example ws-echo -- --listen 127.0.0.1:9001
//! ```
//!
//! The HTTP upgrade goes through hyper exactly as in the hub: `handshake::accept` checks
//! the request and negotiates permessage-deflate (on, with the hub's default policy),
//! hyper sends the 101, and `hyper::upgrade::on` hands over the stream. Every data
//! message is echoed unchanged; pings are answered and the close handshake completed by
//! `Connection::read`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use telehub::ws::handshake::{self, ServerDeflatePolicy};
use telehub::ws::{Config, Connection, Error, Role};
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(about = "Echo server for telehub's WebSocket transport (permessage-deflate on)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Largest accepted message (after inflation). Autobahn's 9.x cases need 16 MiB.
    #[arg(long, default_value_t = 16 << 20)]
    max_message_size: usize,
    /// Largest accepted frame.
    #[arg(long, default_value_t = 16 << 20)]
    max_frame_size: usize,
    /// Turn permessage-deflate off.
    #[arg(long)]
    no_deflate: bool,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    println!("ws-echo listening on ws://{}", listener.local_addr()?);
    let config = Config {
        max_message_size: args.max_message_size,
        max_frame_size: args.max_frame_size,
        ..Config::default()
    };
    let policy = if args.no_deflate {
        ServerDeflatePolicy::disabled()
    } else {
        ServerDeflatePolicy::default()
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: report and keep serving.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (config, policy) = (config.clone(), policy.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| upgrade(req, config.clone(), policy.clone()));
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                eprintln!("{peer}: http: {e}");
            }
        });
    }
}

async fn upgrade(
    mut req: Request<Incoming>,
    config: Config,
    policy: ServerDeflatePolicy,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let accept = match handshake::accept(req.method(), req.version(), req.headers(), &[], &policy) {
        Ok(a) => a,
        Err(e) => {
            let mut resp = Response::new(Empty::new());
            *resp.status_mut() = e.status();
            resp.headers_mut().extend(e.response_headers());
            return Ok(resp);
        }
    };
    let deflate = accept.deflate;
    tokio::spawn(async move {
        match hyper::upgrade::on(&mut req).await {
            Ok(upgraded) => {
                let conn = Connection::new(TokioIo::new(upgraded), Role::Server, config, deflate);
                if let Err(e) = echo(conn).await {
                    eprintln!("connection ended: {e}");
                }
            }
            Err(e) => eprintln!("upgrade failed: {e}"),
        }
    });
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().extend(accept.response_headers());
    Ok(resp)
}

async fn echo<S>(mut conn: Connection<S>) -> Result<(), Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = conn.read().await? {
        conn.send(&msg).await?;
    }
    Ok(())
}
