//! The response body type: either a body we generated, or an upstream body that
//! keeps its request counted (in flight for the site, active for the server) until
//! the last byte has gone to the client. An upstream body that stops yielding
//! for `body_timeout` ends with an error (`deadline::Progress`); a client that
//! stops reading is cut by the connection's `deadline::SendDeadline`. Either
//! way the body is dropped and its counts released.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use ferry_router::{Pick, Tracked};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::deadline::{BoxError, Progress};

pub enum ProxyBody {
    Full(Full<Bytes>),
    Upstream {
        body: Progress<Incoming>,
        _in_flight: Option<Tracked>,
        _server: Option<Pick>,
    },
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(f) => f.is_end_stream(),
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(f) => f.size_hint(),
            ProxyBody::Upstream { body, .. } => body.size_hint(),
        }
    }
}
