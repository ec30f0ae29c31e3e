//! HTTP/1.1 answers read off a raw connection, for tests that hold their
//! sockets themselves (half-sent requests, pipelined keep-alive clients).

use std::io::{BufRead, Error, ErrorKind, Result};

/// One response with a Content-Length body.
pub struct Response {
    pub status: u16,
    pub body: String,
    /// The server said `Connection: close`.
    pub close: bool,
}

/// Reads one response; an error when the connection ends first or the
/// status line or Content-Length is not one.
pub fn read_response(r: &mut impl BufRead) -> Result<Response> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0;
    let mut close = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(Error::new(ErrorKind::UnexpectedEof, "end of the head"));
        }
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(v) = header.strip_prefix("content-length:") {
            len = v
                .trim()
                .parse()
                .map_err(|_| Error::other(format!("bad {header:?}")))?;
        }
        close |= header.starts_with("connection:") && header.contains("close");
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        close,
    })
}
