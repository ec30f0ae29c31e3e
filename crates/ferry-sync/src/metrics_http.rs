//! `GET /metrics` for Prometheus, from processes that have no HTTP server
//! of their own (the sync agent, `ferry sync --follow`): a small HTTP/1.1
//! responder on std threads, bounded like every listener of Ferry.
//!
//! Why not hyper: ferry-sync is std I/O + rayon, and one scrape every few
//! seconds needs one request line and one header; a tokio runtime and an
//! HTTP stack would be the larger part of the agent's listening code.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] at once (one more is answered 503 at
//! once, never queued), the request head within [`HEADER_DEADLINE`] (one
//! deadline for the whole head: a trickler is cut) and [`MAX_REQUEST`]
//! bytes (431 beyond), the response within [`RESPONSE_DEADLINE`], one
//! request per connection (`Connection: close`). Only `GET /metrics`.
//!
//! Access: with a token (a file read under ferry-secret's rule) a scrape
//! must carry `Authorization: Bearer TOKEN` (compared in constant time;
//! 401 otherwise), as the router's admin `/metrics`. Without one the
//! endpoint may only listen on a loopback address ([`check_listen`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_secret::Secret;

use crate::error::{Result, SyncError};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 4;
/// The whole request head must arrive within this.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(5);
/// Largest request head read (a scrape's is about 200 bytes).
pub const MAX_REQUEST: usize = 8 * 1024;
/// The response must be written within this.
pub const RESPONSE_DEADLINE: Duration = Duration::from_secs(10);

/// What renders the metrics text at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Refuses to serve metrics without a token on an address other hosts can
/// reach (as the router's admin listener refuses to run without its token).
pub fn check_listen(addr: SocketAddr, token: Option<&Secret>) -> Result<()> {
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(SyncError::Unsupported(format!(
            "metrics on {addr} need a token (--metrics-token-file): only a loopback address may serve them without one"
        )));
    }
    Ok(())
}

/// Serves `GET /metrics` on `listener` until `shutdown` is set; each
/// scrape is answered with `render()`.
pub fn serve_metrics(
    listener: TcpListener,
    token: Option<Secret>,
    render: Render,
    shutdown: Arc<AtomicBool>,
) -> Result<()> {
    if let Ok(addr) = listener.local_addr() {
        check_listen(addr, token.as_ref())?;
    }
    let token = Arc::new(token);
    let open = Arc::new(AtomicUsize::new(0));
    crate::accept::accept_until(
        &listener,
        &shutdown,
        "metrics",
        |s, _peer| {
            if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                open.fetch_sub(1, Ordering::AcqRel);
                // Into the new socket's empty send buffer: never blocks.
                let _ = s.set_nonblocking(true);
                let _ = (&s).write_all(&response(503, "busy\n", &[("Retry-After", "1")]));
                return;
            }
            let (open2, token, render) = (open.clone(), token.clone(), render.clone());
            let spawned = std::thread::Builder::new()
                .name("ferry-metrics".into())
                .spawn(move || {
                    answer(s, token.as_ref().as_ref(), &render);
                    open2.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                open.fetch_sub(1, Ordering::AcqRel);
            }
        },
        || {},
        || {},
    )
}

/// Reads one request head and answers it; any failure just closes.
fn answer(s: TcpStream, token: Option<&Secret>, render: &Render) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_write_timeout(Some(RESPONSE_DEADLINE));
    let reply = match read_head(&s) {
        Ok(head) => route(&head, token, render),
        Err(Some(code)) => response(code, "bad request\n", &[]),
        Err(None) => return,
    };
    let _ = (&s).write_all(&reply);
    let _ = s.shutdown(std::net::Shutdown::Write);
}

/// The request head (up to the blank line). `Err(Some(code))`: answer
/// with `code`; `Err(None)`: the peer went away or ran out of time.
fn read_head(s: &TcpStream) -> std::result::Result<String, Option<u16>> {
    let until = Instant::now() + HEADER_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return Err(None);
        }
        let n = match (&*s).read(&mut buf) {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => n,
        };
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return String::from_utf8(head).map_err(|_| Some(400));
        }
        if head.len() > MAX_REQUEST {
            return Err(Some(431));
        }
    }
}

/// The answer to a request head.
fn route(head: &str, token: Option<&Secret>, render: &Render) -> Vec<u8> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return response(405, "only GET\n", &[("Allow", "GET")]);
    }
    if path != "/metrics" {
        return response(404, "not found (try /metrics)\n", &[]);
    }
    if let Some(token) = token {
        let presented = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.trim().strip_prefix("Bearer "))
            .map(str::trim);
        if !presented.is_some_and(|p| token.matches(p.as_bytes())) {
            return response(
                401,
                "a bearer token is required\n",
                &[("WWW-Authenticate", "Bearer")],
            );
        }
    }
    response(200, &render(), &[])
}

fn response(code: u16, body: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    // Metrics in the text exposition format; anything else is a message.
    let kind = match code {
        200 => "text/plain; version=0.0.4; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A responder on a loopback port; stopped when dropped.
    struct Server {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<Result<()>>>,
    }

    impl Server {
        fn start(token: Option<&str>) -> Server {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let token = token.map(|t| Secret::new("test token", t).unwrap());
            let render: Render = Arc::new(|| "ferry_test_total 7\n".to_string());
            let s2 = stop.clone();
            let thread = Some(std::thread::spawn(move || {
                serve_metrics(l, token, render, s2)
            }));
            Server { addr, stop, thread }
        }

        /// Sends `request` and reads the whole answer.
        fn ask(&self, request: &[u8]) -> String {
            let mut s = TcpStream::connect(self.addr).unwrap();
            s.write_all(request).unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                t.join().unwrap().unwrap();
            }
        }
    }

    #[test]
    fn a_scrape_with_the_token_gets_the_metrics_and_others_are_refused() {
        let s = Server::start(Some("scrape-token-0123456789"));
        let ok = s.ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer scrape-token-0123456789\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
            "{ok}"
        );
        assert!(ok.ends_with("\r\n\r\nferry_test_total 7\n"), "{ok}");
        let none = s.ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(none.starts_with("HTTP/1.1 401 "), "{none}");
        let wrong = s.ask(b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n");
        assert!(wrong.starts_with("HTTP/1.1 401 "), "{wrong}");
        let path = s.ask(b"GET / HTTP/1.1\r\n\r\n");
        assert!(path.starts_with("HTTP/1.1 404 "), "{path}");
        let post = s.ask(b"POST /metrics HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    }

    #[test]
    fn an_oversized_head_gets_431_and_a_trickler_is_cut_by_the_deadline() {
        let s = Server::start(None);
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_REQUEST + 10));
        let r = s.ask(&big);
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        // Half a head, then nothing: closed once the head's deadline passes.
        let mut t = TcpStream::connect(s.addr).unwrap();
        t.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let started = Instant::now();
        let mut out = Vec::new();
        let _ = t.read_to_end(&mut out);
        assert!(out.is_empty());
        assert!(started.elapsed() < HEADER_DEADLINE + Duration::from_secs(3));
        // No token on loopback: served.
        let ok = s.ask(b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    }

    #[test]
    fn more_connections_than_the_cap_are_answered_busy_at_once() {
        let s = Server::start(None);
        // Connections that send nothing hold their slots (until the head's
        // deadline); wait until the responder counts them all.
        let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(s.addr).unwrap())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = s.ask(b"GET /metrics HTTP/1.1\r\n\r\n");
            if r.starts_with("HTTP/1.1 503 ") {
                assert!(r.contains("Retry-After: 1"), "{r}");
                break;
            }
            assert!(Instant::now() < deadline, "never busy: {r}");
        }
        drop(held);
    }

    #[test]
    fn a_network_address_without_a_token_is_refused() {
        let any: SocketAddr = "0.0.0.0:9".parse().unwrap();
        assert!(check_listen(any, None).is_err());
        assert!(check_listen("127.0.0.1:9".parse().unwrap(), None).is_ok());
        assert!(check_listen("[::1]:9".parse().unwrap(), None).is_ok());
        let t = Secret::new("t", "0123456789abcdef").unwrap();
        assert!(check_listen(any, Some(&t)).is_ok());
    }
}
