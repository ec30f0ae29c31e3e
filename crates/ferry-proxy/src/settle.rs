//! Deadlines that fire only after the runtime has looked at the sockets
//! once more.
//!
//! When the process was not scheduled for a while (a stalled VM, a paused
//! container, SIGSTOP), its timers and the bytes that arrived meanwhile come
//! due together. Tokio hands a socket's readiness to its task only when the
//! I/O driver has run; a task woken by its timer first reads nothing (the
//! readiness is stale), sees its deadline passed and closes the connection,
//! with a request sitting unread in the kernel's buffer (the client gets a
//! reset: a POST fails). The router was the one not listening, not the client.
//!
//! So every client deadline here, hyper's included, yields to the runtime
//! once after its time has come (`tokio::task::yield_now` wakes the task
//! only after the driver has polled the sockets) and fires only if the
//! connection still has nothing to show then.
//!
//! The yield is not enough on the multi-threaded runtime: the driver may be
//! held by another worker that has not delivered the readiness yet (the
//! demo's stop-router fault still lost one forwarded POST in twenty runs).
//! A deadline that knows its socket ([`Unread`]) therefore asks the kernel
//! itself (a non-blocking MSG_PEEK) and, while bytes wait unread, gives the
//! connection a little longer, a bounded number of times.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

type Yield = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// How much longer a deadline waits, each time, for bytes the kernel holds
/// unread, and how many times: a stalled process catches up within
/// milliseconds; a client cannot stretch a deadline by more than a second.
const UNREAD_GRACE: Duration = Duration::from_millis(50);
const UNREAD_GRACES: u8 = 20;

/// The socket of a client connection, asked at a deadline whether bytes
/// wait unread in the kernel: a duplicate of its descriptor (one dup per
/// connection, dropped with the connection's deadlines).
#[derive(Clone, Debug, Default)]
pub(crate) struct Unread(Option<Arc<std::os::fd::OwnedFd>>);

impl Unread {
    pub fn of(socket: &impl std::os::fd::AsFd) -> Unread {
        Unread(socket.as_fd().try_clone_to_owned().ok().map(Arc::new))
    }

    /// Whether the peer sent bytes not read yet (an EOF is not).
    pub fn waiting(&self) -> bool {
        let Some(fd) = &self.0 else {
            return false;
        };
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // Sockets of the runtime are non-blocking: an empty buffer is WouldBlock.
        matches!(
            socket2::SockRef::from(fd.as_ref()).peek(&mut byte),
            Ok(n) if n > 0
        )
    }
}

/// A sleep that, once its deadline has passed, yields once before it is
/// ready, and waits a little longer while its socket holds unread bytes.
pub(crate) struct Settled {
    sleep: Pin<Box<tokio::time::Sleep>>,
    yielded: Option<Yield>,
    unread: Unread,
    graces: u8,
}

impl Settled {
    pub fn until(deadline: tokio::time::Instant) -> Settled {
        Settled::watching(deadline, Unread::default())
    }

    pub fn watching(deadline: tokio::time::Instant, unread: Unread) -> Settled {
        Settled {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            yielded: None,
            unread,
            graces: 0,
        }
    }

    /// A new deadline, and a fresh yield and graces for it.
    pub fn reset(&mut self, deadline: tokio::time::Instant) {
        self.sleep.as_mut().reset(deadline);
        self.yielded = None;
        self.graces = 0;
    }
}

impl Future for Settled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let yielded = this
                .yielded
                .get_or_insert_with(|| Box::pin(tokio::task::yield_now()));
            if yielded.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if this.graces < UNREAD_GRACES && this.unread.waiting() {
                this.graces += 1;
                this.sleep
                    .as_mut()
                    .reset(tokio::time::Instant::now() + UNREAD_GRACE);
                this.yielded = None;
                continue;
            }
            return Poll::Ready(());
        }
    }
}

impl hyper::rt::Sleep for Settled {}

/// `sleep_until` that fires only after one more look at the sockets.
pub(crate) fn sleep_until(deadline: tokio::time::Instant) -> Settled {
    Settled::until(deadline)
}

/// [`sleep_until`] that also waits (bounded) while `unread` holds bytes.
pub(crate) fn sleep_until_read(deadline: tokio::time::Instant, unread: Unread) -> Settled {
    Settled::watching(deadline, unread)
}

/// `tokio::time::timeout_at` whose deadline is [`Settled`]: the future is
/// polled first, and once more after the deadline's yield.
pub(crate) async fn timeout_at<F: Future>(
    deadline: tokio::time::Instant,
    fut: F,
) -> Result<F::Output, Elapsed> {
    tokio::pin!(fut);
    let mut timer = std::pin::pin!(Settled::until(deadline));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => match fut.as_mut().poll(cx) {
                // Ready after all: what the yield was for.
                Poll::Ready(v) => Poll::Ready(Ok(v)),
                Poll::Pending => Poll::Ready(Err(Elapsed)),
            },
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// The deadline of [`timeout_at`] passed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// hyper's timer with [`Settled`] sleeps (header read timeouts, HTTP/2
/// pings), watching the connection's socket for unread bytes.
#[derive(Clone, Debug, Default)]
pub(crate) struct SettledTimer(pub Unread);

impl hyper::rt::Timer for SettledTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Settled::watching(
            tokio::time::Instant::now() + duration,
            self.0.clone(),
        ))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Settled::watching(deadline.into(), self.0.clone()))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Settled>() {
            // Settled is Unpin (its parts are boxed).
            Some(s) => s.get_mut().reset(new_deadline.into()),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_future_ready_when_the_deadline_comes_wins() {
        // The future becomes ready only after the runtime has run once
        // more past the deadline (as a socket whose readiness the driver
        // has not yet delivered): it must win over the deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let late = async {
            tokio::time::sleep_until(deadline).await;
            tokio::task::yield_now().await;
            7
        };
        assert_eq!(timeout_at(deadline, late).await, Ok(7));
        // One that stays silent still times out.
        let silent = std::future::pending::<()>();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        assert_eq!(timeout_at(deadline, silent).await, Err(Elapsed));
    }

    #[tokio::test]
    async fn a_deadline_waits_while_the_kernel_holds_unread_bytes_but_not_forever() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let unread = Unread::of(&server);
        assert!(!unread.waiting(), "nothing sent yet");
        // Silent socket: the deadline fires on time.
        let t0 = std::time::Instant::now();
        sleep_until_read(tokio::time::Instant::now(), unread.clone()).await;
        let silent = t0.elapsed();
        // A request the connection has not read (a stalled process): the
        // deadline gives it every grace, and then fires all the same.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        while !unread.waiting() {
            tokio::task::yield_now().await;
        }
        let t0 = std::time::Instant::now();
        sleep_until_read(tokio::time::Instant::now(), unread).await;
        let waited = t0.elapsed();
        assert!(
            waited >= UNREAD_GRACE * u32::from(UNREAD_GRACES),
            "unread bytes bought {waited:?} (silent: {silent:?})"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_settled_sleep_takes_its_time_and_can_be_reset() {
        let start = tokio::time::Instant::now();
        let mut s = Settled::until(start + Duration::from_secs(5));
        s.reset(start + Duration::from_secs(8));
        s.await;
        assert_eq!(start.elapsed(), Duration::from_secs(8));
    }
}
