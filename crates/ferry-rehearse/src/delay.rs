//! Latency for kernels built without netem (CONFIG_NET_SCH_NETEM): a TCP
//! relay inside a namespace that holds every chunk `delay` before passing
//! it on, both ways, so an exchange through it pays 2 x `delay` more per
//! round trip, as through a netem link. The link's rate still comes from
//! the kernel (tbf on the veth). Coarser than netem (the handshake itself
//! is not delayed, chunks not packets), honest enough for freezes and
//! pre-copies measured in milliseconds and more.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
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
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(to).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(pump(cr, sw, delay), pump(sr, cw, delay));
        });
    }
}

/// One direction: read as it comes, write each chunk `delay` after it was
/// read; EOF is passed on (after the data before it).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let read = async move {
        loop {
            let mut buf = vec![0u8; 64 * 1024];
            match from.read(&mut buf).await {
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
