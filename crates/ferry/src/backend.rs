//! `ferry backend`: a tiny HTTP/1.1 server that answers every request with its
//! name, the path and the client address it saw. Used by `ferry demo` and tests.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Name put in every answer.
    #[arg(long)]
    name: String,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let listener = TcpListener::bind(args.listen).await?;
    println!("{}", listener.local_addr()?);
    let (_tx, rx) = watch::channel(false);
    serve(listener, args.name, rx).await;
    Ok(())
}

/// Serves until `stop` turns true; connections still open are dropped then,
/// which is what a crashed server looks like to the router.
pub async fn serve(listener: TcpListener, name: String, mut stop: watch::Receiver<bool>) {
    let name: std::sync::Arc<str> = name.into();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = stop.changed() => break,
        };
        let name = std::sync::Arc::clone(&name);
        conns.spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let name = std::sync::Arc::clone(&name);
                async move {
                    let xff = req
                        .headers()
                        .get("x-forwarded-for")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    let body = format!("{name} {} {xff}\n", req.uri().path());
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    if let Ok(v) = http::HeaderValue::from_str(&name) {
                        resp.headers_mut().insert("x-backend", v);
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    conns.abort_all();
}
