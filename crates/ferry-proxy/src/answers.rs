//! The router's own answers (not a server's): plain text that says why,
//! 503s with Retry-After for what passes (a site being moved, no server
//! available, maintenance). A leaf: built from the body type alone.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::ProxyBody;

/// A plain-text answer, the message on one line.
pub(crate) fn text(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) fn unavailable(retry_after: u32, html: Option<&str>, msg: &str) -> Response<ProxyBody> {
    let mut r = match html {
        Some(page) => {
            let mut r = Response::new(ProxyBody::full(Bytes::copy_from_slice(page.as_bytes())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        None => text(StatusCode::SERVICE_UNAVAILABLE, msg),
    };
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// No (other) server to send to: 503 with Retry-After when the pool had
/// none, 502 when the one tried failed and no other is left.
pub(crate) fn no_server(pool: &str, first: bool, retry_after: u32) -> Response<ProxyBody> {
    if first {
        let msg = format!("no server of pool {pool} is available");
        let mut r = text(StatusCode::SERVICE_UNAVAILABLE, &msg);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        r
    } else {
        let msg = format!("no other server of pool {pool} could be reached");
        text(StatusCode::BAD_GATEWAY, &msg)
    }
}

/// The answer to a request cut while it waited for its upstream: the site
/// is being moved; the client retries and is held, then sent to where the
/// site lives after the flip.
pub(crate) fn cut_answer(retry_after: u32) -> Response<ProxyBody> {
    let mut r = http::Response::new(ProxyBody::full(
        "site is being moved; the request was cut at the freeze's drain deadline; retry shortly\n",
    ));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = r.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // The client may still be sending a body nobody will read.
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
