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

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

type Yield = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// A sleep that, once its deadline has passed, yields once before it is ready.
pub(crate) struct Settled {
    sleep: Pin<Box<tokio::time::Sleep>>,
    yielded: Option<Yield>,
}

impl Settled {
    pub fn until(deadline: tokio::time::Instant) -> Settled {
        Settled {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            yielded: None,
        }
    }

    fn reset(&mut self, deadline: tokio::time::Instant) {
        self.sleep.as_mut().reset(deadline);
        self.yielded = None;
    }
}

impl Future for Settled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.yielded
            .get_or_insert_with(|| Box::pin(tokio::task::yield_now()))
            .as_mut()
            .poll(cx)
    }
}

impl hyper::rt::Sleep for Settled {}

/// `sleep_until` that fires only after one more look at the sockets.
pub(crate) fn sleep_until(deadline: tokio::time::Instant) -> Settled {
    Settled::until(deadline)
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

/// hyper's timer with [`Settled`] sleeps (header read timeouts, HTTP/2 pings).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SettledTimer;

impl hyper::rt::Timer for SettledTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Settled::until(tokio::time::Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Settled::until(deadline.into()))
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

    #[tokio::test(start_paused = true)]
    async fn a_settled_sleep_takes_its_time_and_can_be_reset() {
        let start = tokio::time::Instant::now();
        let mut s = Settled::until(start + Duration::from_secs(5));
        s.reset(start + Duration::from_secs(8));
        s.await;
        assert_eq!(start.elapsed(), Duration::from_secs(8));
    }
}
