//! Small-file reads from an agent with a window of requests outstanding,
//! so a pass pays a round trip per window, not per file (issue 18: 4,400
//! files took 76-111 s at a 12.9 ms round trip, one `ReadSmallReq` at a
//! time).
//!
//! The frames are the protocol's own (`ReadSmallReq`, answered by
//! `FileData` or `Error`); an agent answers requests in the order it reads
//! them and keeps the session after an `Error`, so every agent that speaks
//! the protocol serves a window without knowing it. One thread writes the
//! requests, the caller's thread reads the answers: an agent blocked on
//! writing answers nobody reads would stop reading requests, and a single
//! thread doing both could wait forever on either.
//!
//! Bounds: at most [`Window::count`] requests and [`Window::bytes`] of
//! expected answers (sizes from the scan) are outstanding; the client holds
//! one answer at a time.

use std::io::{Read, Write};
use std::sync::{Condvar, Mutex};

use crate::error::{Result, SyncError};
use crate::limits::MAX_DATA;
use crate::path::RelPath;
use crate::proto::{self, Msg};

/// How much may be asked for and not yet answered.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    /// Requests outstanding.
    pub(crate) count: usize,
    /// Bytes of expected answers outstanding (one file larger than this is
    /// still asked for, alone).
    pub(crate) bytes: u64,
}

/// 256 requests of 4 KiB files keep 1 MiB in flight: at a 13 ms round trip
/// about 20,000 files a second, above what one agent thread reads.
pub(crate) const WINDOW: Window = Window {
    count: 256,
    bytes: 8 << 20,
};

/// What the writer and the reader share.
#[derive(Default)]
struct State {
    /// Requests written (not necessarily flushed) and answers read.
    sent: usize,
    answered: usize,
    /// Expected bytes of the requests not yet answered.
    bytes: u64,
    /// The writer has sent all it will (done, or stopped).
    writer_done: bool,
    /// The reader wants no more requests (a failure).
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    moved: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The size a request is counted at: what the scan saw, at most a frame.
fn expected(size: u64) -> u64 {
    size.min(MAX_DATA as u64)
}

/// Asks for every file in `files` (path, size seen by the scan) over `w`
/// and reads the answers from `r`, handing each to `out` with its index,
/// in order. An agent's `Error` answer is given to `out` as
/// [`SyncError::Remote`] (`out` decides whether it is fatal). After the
/// first error of `out` no more requests are sent and the outstanding
/// answers are read and dropped, so the connection stays in step. A broken
/// stream (I/O error, a frame of the wrong type) calls `hang_up`, which
/// must make both halves fail at once (shut the socket down): the other
/// thread may be blocked on it.
pub(crate) fn read_small_files<R, W>(
    peer: &str,
    r: &mut R,
    w: &mut W,
    files: &[(&RelPath, u64)],
    window: Window,
    out: &mut dyn FnMut(usize, Result<Vec<u8>>) -> Result<()>,
    hang_up: &(dyn Fn() + Sync),
) -> Result<()>
where
    R: Read,
    W: Write + Send,
{
    let shared = Shared {
        state: Mutex::new(State::default()),
        moved: Condvar::new(),
    };
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let sent = write_requests(peer, w, files, window, &shared);
            let mut st = shared.lock();
            st.writer_done = true;
            shared.moved.notify_all();
            drop(st);
            if sent.is_err() {
                hang_up();
            }
            sent
        });
        let read = read_answers(peer, r, files, &shared, out);
        if read.as_ref().is_err_and(|(broken, _)| *broken) {
            hang_up();
        }
        {
            let mut st = shared.lock();
            st.stop = true;
            shared.moved.notify_all();
        }
        let wrote = writer
            .join()
            .unwrap_or_else(|_| Err(SyncError::Protocol("request writer panicked".into())));
        // The reader's failure says more than the writer's broken pipe.
        read.map_err(|(_, e)| e)?;
        wrote
    })
}

/// The writer's side: one request per file as the window opens, flushed
/// before waiting (a request in a buffer is never answered).
fn write_requests<W: Write>(
    peer: &str,
    w: &mut W,
    files: &[(&RelPath, u64)],
    window: Window,
    shared: &Shared,
) -> Result<()> {
    let net = |e: std::io::Error| SyncError::Net {
        peer: peer.to_string(),
        source: e,
    };
    'files: for (path, size) in files {
        let size = expected(*size);
        let mut st = shared.lock();
        loop {
            if st.stop {
                // What was written is answered: it must leave the buffer.
                break 'files;
            }
            let outstanding = st.sent - st.answered;
            let fits =
                outstanding == 0 || (outstanding < window.count && st.bytes + size <= window.bytes);
            if fits {
                break;
            }
            drop(st);
            w.flush().map_err(net)?;
            st = shared.lock();
            while !st.stop && st.sent - st.answered == outstanding {
                st = shared.moved.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
        st.bytes += size;
        drop(st);
        proto::write_msg(
            w,
            &Msg::ReadSmallReq {
                path: (*path).clone(),
            },
        )
        .map_err(net)?;
        let mut st = shared.lock();
        st.sent += 1;
        shared.moved.notify_all();
    }
    w.flush().map_err(net)
}

/// The reader's side: one answer per request sent, in order. `Err((true,
/// _))`: the stream is broken.
fn read_answers<R: Read>(
    peer: &str,
    r: &mut R,
    files: &[(&RelPath, u64)],
    shared: &Shared,
    out: &mut dyn FnMut(usize, Result<Vec<u8>>) -> Result<()>,
) -> std::result::Result<(), (bool, SyncError)> {
    let mut failed: Option<SyncError> = None;
    for (i, (_, size)) in files.iter().enumerate() {
        {
            let mut st = shared.lock();
            while st.sent == i && !st.writer_done {
                st = shared.moved.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.sent == i {
                break;
            }
        }
        let answer = match proto::read_msg(r) {
            Ok(Some(Ok(Msg::FileData(d)))) => Ok(d),
            Ok(Some(Ok(Msg::Error { message }))) => Err(SyncError::Remote(message)),
            Ok(Some(Ok(m))) => {
                return Err((
                    true,
                    SyncError::Protocol(format!(
                        "unexpected answer {:?} to a small read",
                        std::mem::discriminant(&m)
                    )),
                ))
            }
            Ok(Some(Err(e))) => return Err((true, e)),
            Ok(None) => {
                return Err((
                    true,
                    SyncError::Net {
                        peer: peer.to_string(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "connection closed by the agent",
                        ),
                    },
                ))
            }
            Err(e) => {
                return Err((
                    true,
                    SyncError::Net {
                        peer: peer.to_string(),
                        source: e,
                    },
                ))
            }
        };
        {
            let mut st = shared.lock();
            st.answered += 1;
            st.bytes -= expected(*size);
            shared.moved.notify_all();
        }
        if failed.is_none() {
            if let Err(e) = out(i, answer) {
                // Ask for nothing more; read what was asked.
                shared.lock().stop = true;
                shared.moved.notify_all();
                failed = Some(e);
            }
        }
    }
    match failed {
        Some(e) => Err((false, e)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// An agent stand-in: answers each `ReadSmallReq` with the path's bytes,
    /// or an `Error` for paths starting with "gone", in order, once it has
    /// read every request already in its buffer; returns the most requests
    /// it held at once (only a window lets it hold more than one).
    fn fake_agent(mut s: UnixStream) -> usize {
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut most_pending = 0;
        let mut pending = Vec::new();
        loop {
            match proto::read_msg(&mut r).unwrap() {
                None => break,
                Some(Ok(Msg::ReadSmallReq { path })) => pending.push(path),
                Some(other) => panic!("unexpected {other:?}"),
            }
            // Answer once the client's buffer of requests is drained.
            if r.buffer().is_empty() {
                most_pending = most_pending.max(pending.len());
                for p in pending.drain(..) {
                    let m = if p.as_bytes().starts_with(b"gone") {
                        Msg::Error {
                            message: format!("{}no such file", proto::VANISHED),
                        }
                    } else {
                        Msg::FileData(p.as_bytes().to_vec())
                    };
                    proto::write_msg(&mut s, &m).unwrap();
                }
            }
        }
        most_pending
    }

    fn paths(n: usize, gone_every: usize) -> Vec<RelPath> {
        (0..n)
            .map(|i| {
                let name = match gone_every > 0 && i % gone_every == 0 {
                    true => format!("gone{i}"),
                    false => format!("f{i}"),
                };
                RelPath::new(name.as_bytes()).unwrap()
            })
            .collect()
    }

    fn run(n: usize, window: Window, stop_at: Option<usize>) -> (Vec<usize>, usize, Result<()>) {
        let (client, server) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || fake_agent(server));
        let ps = paths(n, 7);
        let files: Vec<(&RelPath, u64)> = ps.iter().map(|p| (p, 4096)).collect();
        let mut seen = Vec::new();
        let hang = {
            let c = client.try_clone().unwrap();
            move || {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        };
        let mut r = client.try_clone().unwrap();
        let mut w = std::io::BufWriter::new(client.try_clone().unwrap());
        let res = read_small_files(
            "test",
            &mut r,
            &mut w,
            &files,
            window,
            &mut |i, a| {
                if Some(i) == stop_at {
                    return Err(SyncError::Protocol("stop".into()));
                }
                match a {
                    Ok(d) => assert_eq!(d, ps[i].as_bytes()),
                    Err(SyncError::Remote(m)) => {
                        assert!(m.starts_with(proto::VANISHED));
                        assert!(ps[i].as_bytes().starts_with(b"gone"));
                    }
                    Err(e) => panic!("{e}"),
                }
                seen.push(i);
                Ok(())
            },
            &hang,
        );
        if !matches!(res, Err(SyncError::Net { .. })) {
            // In step: the next answer is the next request's.
            let after = RelPath::new(&b"after"[..]).unwrap();
            proto::write_msg(&mut w, &Msg::ReadSmallReq { path: after }).unwrap();
            w.flush().unwrap();
            let m = proto::read_msg(&mut r).unwrap().unwrap().unwrap();
            assert_eq!(m, Msg::FileData(b"after".to_vec()));
        }
        drop(w);
        client.shutdown(std::net::Shutdown::Both).unwrap();
        let most = agent.join().unwrap();
        (seen, most, res)
    }

    #[test]
    fn every_answer_arrives_in_order_with_requests_outstanding() {
        let window = Window {
            count: 16,
            bytes: 1 << 20,
        };
        let (seen, most, res) = run(1000, window, None);
        res.unwrap();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        assert!(most > 1, "the agent never saw two requests at once");
        assert!(most <= 16, "{most} requests outstanding, window 16");
    }

    #[test]
    fn the_byte_window_bounds_what_is_outstanding() {
        let window = Window {
            count: 1000,
            bytes: 3 * 4096,
        };
        let (seen, most, res) = run(200, window, None);
        res.unwrap();
        assert_eq!(seen.len(), 200);
        assert!(
            most <= 3,
            "{most} requests of 4 KiB outstanding, window 12 KiB"
        );
    }

    #[test]
    fn a_failing_consumer_stops_the_requests_and_keeps_the_stream_in_step() {
        let (seen, _, res) = run(5000, WINDOW, Some(10));
        assert!(matches!(res, Err(SyncError::Protocol(m)) if m == "stop"));
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }
}
