//! The floor under any HTTP proxy on bench/proxy-vs-haproxy: a relay that
//! does nothing but the four socket operations a request needs (the
//! request read from the client and written upstream, the response read
//! from upstream and written back), with just enough HTTP to know where a
//! request and a response end. No routing, no header rewriting, no
//! timeouts: not a proxy anyone should run, a measure of what the kernel
//! alone costs a request.
//!
//! Two ways to drive the sockets:
//! - `tokio`: one current-thread runtime, a task per client connection,
//!   epoll readiness and one system call per operation (ferry's model,
//!   and HAProxy's);
//! - `uring`: one io_uring, every operation a submission, all the
//!   operations ready at once submitted and reaped by one `io_uring_enter`.
//!
//! Usage: `proxy-floor tokio|uring LISTEN_ADDR UPSTREAM_ADDR` (client
//! connections each get their own upstream connection). Runs until killed.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

const BUF: usize = 16 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: proxy-floor tokio|uring LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    }
    let addr = |what: &str, text: &str| -> SocketAddr {
        text.parse().unwrap_or_else(|e| {
            eprintln!("proxy-floor: {what} {text:?} is not an ip:port ({e})");
            std::process::exit(2);
        })
    };
    let listen = addr("LISTEN_ADDR", &args[2]);
    let upstream = addr("UPSTREAM_ADDR", &args[3]);
    let result = match args[1].as_str() {
        "tokio" => run_tokio(listen, upstream),
        "uring" => run_uring(listen, upstream),
        other => {
            eprintln!("proxy-floor: unknown mode {other:?} (tokio or uring)");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("proxy-floor: {e}");
        std::process::exit(1);
    }
}

/// Where the message at the start of `buf` ends: after the head for a
/// request (bodiless GETs only), after head and `Content-Length` bytes for
/// a response. `None` while incomplete.
fn message_end(buf: &[u8], response: bool) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if !response {
        return Some(head_end);
    }
    let head = &buf[..head_end];
    let length = head
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
            name.eq_ignore_ascii_case(b"content-length")
                .then(|| {
                    std::str::from_utf8(&value[1..])
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .flatten()
        })
        .unwrap_or(0);
    (buf.len() >= head_end + length).then_some(head_end + length)
}

fn run_tokio(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (mut client, _) = listener.accept().await?;
            client.set_nodelay(true)?;
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(upstream).await?;
                server.set_nodelay(true)?;
                let (mut req, mut resp) = (Vec::with_capacity(BUF), Vec::with_capacity(BUF));
                loop {
                    req.clear();
                    let n = loop {
                        if client.read_buf(&mut req).await? == 0 {
                            return Ok::<(), std::io::Error>(());
                        }
                        if let Some(n) = message_end(&req, false) {
                            break n;
                        }
                    };
                    server.write_all(&req[..n]).await?;
                    resp.clear();
                    let n = loop {
                        if server.read_buf(&mut resp).await? == 0 {
                            return Ok(());
                        }
                        if let Some(n) = message_end(&resp, true) {
                            break n;
                        }
                    };
                    client.write_all(&resp[..n]).await?;
                }
            });
        }
    })
}

/// What a connection pair is waiting for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    ReadClient,
    WriteServer,
    ReadServer,
    WriteClient,
}

struct Pair {
    client: TcpStream,
    server: TcpStream,
    step: Step,
    buf: Box<[u8]>,
    /// Bytes of `buf` filled (reading) or the message's length (writing).
    len: usize,
    /// Bytes of the message written so far.
    sent: usize,
}

impl Pair {
    /// Takes `n` bytes read or written by the step's operation; false when
    /// the pair cannot go on (a message larger than the buffer).
    fn advance(&mut self, n: usize) -> bool {
        match self.step {
            Step::ReadClient | Step::ReadServer => {
                self.len += n;
                let response = self.step == Step::ReadServer;
                match message_end(&self.buf[..self.len], response) {
                    Some(end) => {
                        self.len = end;
                        self.sent = 0;
                        self.step = if response {
                            Step::WriteClient
                        } else {
                            Step::WriteServer
                        };
                    }
                    None if self.len == BUF => return false,
                    None => {}
                }
            }
            Step::WriteServer | Step::WriteClient => {
                self.sent += n;
                if self.sent == self.len {
                    self.step = if self.step == Step::WriteServer {
                        Step::ReadServer
                    } else {
                        Step::ReadClient
                    };
                    self.len = 0;
                }
            }
        }
        true
    }
}

/// The accept's `user_data`; a pair's is its index.
const ACCEPT: u64 = u64::MAX;

fn run_uring(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    use io_uring::{opcode, types, IoUring};
    let listener = TcpListener::bind(listen)?;
    let mut ring: IoUring = IoUring::builder()
        .setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(1024)?;
    let mut pairs: Vec<Option<Pair>> = Vec::new();

    // The operation a pair's step needs.
    fn entry(i: usize, p: &mut Pair) -> io_uring::squeue::Entry {
        let (fd, at, len) = match p.step {
            Step::ReadClient => (p.client.as_raw_fd(), p.len, BUF - p.len),
            Step::ReadServer => (p.server.as_raw_fd(), p.len, BUF - p.len),
            Step::WriteServer => (p.server.as_raw_fd(), p.sent, p.len - p.sent),
            Step::WriteClient => (p.client.as_raw_fd(), p.sent, p.len - p.sent),
        };
        let ptr = p.buf[at..].as_mut_ptr();
        let fd: RawFd = fd;
        match p.step {
            Step::ReadClient | Step::ReadServer => {
                opcode::Recv::new(types::Fd(fd), ptr, len as u32).build()
            }
            Step::WriteServer | Step::WriteClient => {
                opcode::Send::new(types::Fd(fd), ptr, len as u32).build()
            }
        }
        .user_data(i as u64)
    }

    let accept = opcode::Accept::new(
        types::Fd(listener.as_raw_fd()),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
    .build()
    .user_data(ACCEPT);
    let mut pending = vec![accept.clone()];
    loop {
        {
            let mut sq = ring.submission();
            for e in pending.drain(..) {
                // SAFETY: every buffer an entry points into is a pair's
                // boxed buffer, kept (and not touched) until its completion.
                unsafe { sq.push(&e).expect("submission queue has room") };
            }
        }
        ring.submit_and_wait(1)?;
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (data, result) in done {
            if data == ACCEPT {
                pending.push(accept.clone());
                if result < 0 {
                    continue;
                }
                // SAFETY: the accept's result is a new socket this process owns.
                let client = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(result) };
                let server = TcpStream::connect(upstream)?;
                client.set_nodelay(true)?;
                server.set_nodelay(true)?;
                let pair = Pair {
                    client,
                    server,
                    step: Step::ReadClient,
                    buf: vec![0u8; BUF].into_boxed_slice(),
                    len: 0,
                    sent: 0,
                };
                let i = pairs.iter().position(Option::is_none).unwrap_or_else(|| {
                    pairs.push(None);
                    pairs.len() - 1
                });
                let p = pairs[i].insert(pair);
                pending.push(entry(i, p));
                continue;
            }
            let i = data as usize;
            let Some(p) = pairs[i].as_mut() else { continue };
            if result <= 0 {
                pairs[i] = None; // closed, or failed: both sockets close
                continue;
            }
            if !p.advance(result as usize) {
                pairs[i] = None;
                continue;
            }
            pending.push(entry(i, p));
        }
    }
}
