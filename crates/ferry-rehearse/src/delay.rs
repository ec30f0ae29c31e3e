//! Latency for kernels built without netem (CONFIG_NET_SCH_NETEM): a TCP
//! relay inside a namespace that holds every chunk `delay` before passing
//! it on, both ways, so an exchange through it pays 2 x `delay` more per
//! round trip, as through a netem link. The link's rate still comes from
//! the kernel (tbf on the veth). Coarser than netem (the handshake itself
//! is not delayed, chunks not packets), honest enough for freezes and
//! pre-copies measured in milliseconds and more.
//!
//! A [`Gate`] is the same relay without delay, with a switch: shut, it
//! stops passing bytes both ways on every connection (and opens no new one
//! to its target), as a link that drops everything does; open again, the
//! bytes held in the sockets go on. It cuts one process off from a service
//! when its namespace's link cannot (two routers share a namespace).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Chunks in flight per direction and connection (64 KiB each): enough for
/// a 1 Gbit/s link at 100 ms, and a bound on memory.
const IN_FLIGHT: usize = 256;

/// Accepts on `listener` (on the current runtime, in its namespace) and
/// relays each connection to `to`, delaying both directions. Runs until
/// the runtime stops.
pub async fn relay(listener: TcpListener, to: SocketAddr, delay: Duration) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(pass(client, to, delay, None));
    }
}

/// Connects to `to` and pumps both ways between it and `client`, reading
/// only while `open` says so (when given).
async fn pass(
    client: TcpStream,
    to: SocketAddr,
    delay: Duration,
    open: Option<watch::Receiver<bool>>,
) {
    let Ok(server) = TcpStream::connect(to).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let back = open.clone();
    tokio::join!(pump(cr, sw, delay, open), pump(sr, cw, delay, back));
}

/// A relay that can be shut (module doc). Clones share the switch.
#[derive(Clone)]
pub struct Gate {
    open: Arc<watch::Sender<bool>>,
}

impl Gate {
    /// An open gate; [`Gate::serve`] puts it in front of services.
    pub fn new() -> Gate {
        Gate {
            open: Arc::new(watch::Sender::new(true)),
        }
    }

    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }

    /// Accepts on `listener` and relays each connection to `to` while the
    /// gate is open. Runs until the runtime stops.
    pub async fn serve(self, listener: TcpListener, to: SocketAddr) {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let mut open = self.open.subscribe();
            tokio::spawn(async move {
                if open.wait_for(|o| *o).await.is_ok() {
                    pass(client, to, Duration::ZERO, Some(open)).await;
                }
            });
        }
    }
}

impl Default for Gate {
    fn default() -> Gate {
        Gate::new()
    }
}

/// One direction: read as it comes (only while `open` says so, when
/// given), write each chunk `delay` after it was read; EOF is passed on
/// (after the data before it).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    mut open: Option<watch::Receiver<bool>>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let read = async move {
        loop {
            if let Some(open) = open.as_mut() {
                if open.wait_for(|o| *o).await.is_err() {
                    break;
                }
            }
            let mut buf = vec![0u8; 64 * 1024];
            let read = match open.as_mut() {
                None => from.read(&mut buf).await,
                // Shut while waiting for bytes: they stay in the socket.
                Some(open) => tokio::select! {
                    r = from.read(&mut buf) => r,
                    _ = open.wait_for(|o| !*o) => continue,
                },
            };
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send((Instant::now() + delay, buf)).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((at, buf)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&buf).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback, and a listener for what goes before it.
    async fn echo_and_front() -> (SocketAddr, TcpListener) {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (echo_addr, TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// Shut, a gate passes nothing either way on a connection it already
    /// relays, nor opens one to its target; open again, what was sent
    /// arrives.
    #[tokio::test]
    async fn a_shut_gate_passes_nothing_until_it_opens() {
        let (echo_addr, front) = echo_and_front().await;
        let front_addr = front.local_addr().unwrap();
        let gate = Gate::new();
        tokio::spawn(gate.clone().serve(front, echo_addr));
        let mut kept = TcpStream::connect(front_addr).await.unwrap();
        let mut b = [0u8; 4];
        kept.write_all(b"ping").await.unwrap();
        kept.read_exact(&mut b).await.unwrap();

        gate.set_open(false);
        kept.write_all(b"pong").await.unwrap();
        let mut fresh = TcpStream::connect(front_addr).await.unwrap();
        fresh.write_all(b"new!").await.unwrap();
        let wait = Duration::from_millis(300);
        assert!(tokio::time::timeout(wait, kept.read_exact(&mut b))
            .await
            .is_err());
        assert!(tokio::time::timeout(wait, fresh.read_exact(&mut b))
            .await
            .is_err());

        gate.set_open(true);
        kept.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"pong");
        fresh.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"new!");
    }

    /// On loopback: an exchange through the relay pays the delay both ways,
    /// and a large body arrives whole and in order.
    #[tokio::test]
    async fn an_exchange_pays_the_delay_each_way_and_bytes_arrive_in_order() {
        let (echo_addr, front) = echo_and_front().await;
        let front_addr = front.local_addr().unwrap();
        tokio::spawn(relay(front, echo_addr, Duration::from_millis(30)));

        let mut c = TcpStream::connect(front_addr).await.unwrap();
        let t0 = std::time::Instant::now();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        assert!(
            t0.elapsed() >= Duration::from_millis(60),
            "{:?}",
            t0.elapsed()
        );

        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = c.into_split();
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert!(back == body, "{} bytes back of {}", back.len(), body.len());
    }
}
