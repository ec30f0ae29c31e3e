//! The response body type: either a body we generated, or an upstream body that
//! keeps its request counted (in flight for the site, active for the server) until
//! the last byte has gone to the client. An upstream body that stops yielding
//! for `body_timeout` ends with an error (`deadline::BodyDeadline`); a client that
//! stops reading is cut by the connection's `deadline::SendDeadline`. Either
//! way the body is dropped and its counts released.
//!
//! On HTTP/2 a client can stop reading without blocking the socket: it grants
//! no more flow-control window, hyper stops polling the body, and the
//! connection's other streams go on. Such bodies are [`Watched`]: a watchdog
//! task cuts one that hyper has not come back to for `body_timeout` after
//! taking a frame (upstream body dropped, counts released, the stream gets
//! an error when hyper next polls it).

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use ferry_router::{Pick, Tracked};
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};

use crate::deadline::{BodyDeadline, BodyStalled, BoxError};
use crate::stats::Stalled;
use crate::straggler::Cuttable;
use crate::upstream::UpstreamBody;

pub enum ProxyBody {
    Full(Full<Bytes>),
    Upstream {
        body: BodyDeadline<Cuttable<UpstreamBody>>,
        _in_flight: Option<Tracked>,
        _server: Option<Pick>,
    },
    /// An upstream body on an HTTP/2 stream (see the module comment).
    Watched(Arc<Mutex<Slot>>),
}

/// What a [`ProxyBody::Watched`] shares with its watchdog.
pub struct Slot {
    /// `None` once finished or cut.
    body: Option<BodyDeadline<Cuttable<UpstreamBody>>>,
    counts: Option<(Option<Tracked>, Option<Pick>)>,
    /// When hyper last took a frame; `None` while it waits on the upstream
    /// (that stall is `BodyDeadline`'s to judge).
    taken_at: Option<Instant>,
    cut: Option<Duration>,
}

impl ProxyBody {
    /// An upstream body watched for a client that stops taking frames;
    /// starts its watchdog.
    pub fn watched(
        body: BodyDeadline<Cuttable<UpstreamBody>>,
        in_flight: Option<Tracked>,
        server: Option<Pick>,
        timeout: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> ProxyBody {
        let slot = Arc::new(Mutex::new(Slot {
            body: Some(body),
            counts: Some((in_flight, server)),
            taken_at: Some(Instant::now()),
            cut: None,
        }));
        tokio::spawn(watchdog(Arc::downgrade(&slot), timeout, metrics));
        ProxyBody::Watched(slot)
    }
}

/// Cuts the body once hyper has not come back for a frame for `timeout`;
/// ends when the body is finished, cut or dropped.
async fn watchdog(
    slot: Weak<Mutex<Slot>>,
    timeout: Duration,
    metrics: Arc<crate::metrics::Metrics>,
) {
    loop {
        let wake = {
            let Some(slot) = slot.upgrade() else { return };
            let s = slot.lock();
            if s.body.is_none() {
                return;
            }
            match s.taken_at {
                Some(t) => t + timeout,
                None => Instant::now() + timeout,
            }
        };
        tokio::time::sleep_until(wake).await;
        let Some(slot) = slot.upgrade() else { return };
        let mut s = slot.lock();
        if s.body.is_none() {
            return;
        }
        if s.taken_at.is_some_and(|t| t + timeout <= Instant::now()) {
            s.body = None;
            s.counts = None;
            s.cut = Some(timeout);
            metrics.deadlines.count(Stalled::ClientReceive);
            tracing::debug!(?timeout, "HTTP/2 client took no frame of its response: cut");
            return;
        }
    }
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Full::new(b.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(f) => match Pin::new(f).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            ProxyBody::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
            ProxyBody::Watched(slot) => {
                let mut s = slot.lock();
                if let Some(timeout) = s.cut {
                    s.cut = None;
                    return Poll::Ready(Some(Err(Box::new(BodyStalled::new(
                        "response body (client)",
                        timeout,
                    )))));
                }
                let Some(body) = s.body.as_mut() else {
                    return Poll::Ready(None);
                };
                let r = Pin::new(body).poll_frame(cx);
                match &r {
                    Poll::Pending => s.taken_at = None,
                    Poll::Ready(Some(Ok(_))) => s.taken_at = Some(Instant::now()),
                    // Finished or failed: nothing more will move; the counts
                    // go now (as a dropped body's would).
                    Poll::Ready(_) => {
                        s.body = None;
                        s.counts = None;
                    }
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(f) => f.is_end_stream(),
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Watched(slot) => slot.lock().body.as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(f) => f.size_hint(),
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Watched(slot) => slot
                .lock()
                .body
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint()),
        }
    }
}
