//! What went wrong with one admin call: always the router and the route.

use std::time::Duration;

/// An admin call that did not give the answer asked for. `route` is the
/// method and path, e.g. `PUT /v1/sites/www.example.com`.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Not sent, refused, reset, or broken off.
    #[error("router {router}: {route}: {message}")]
    Transport {
        router: String,
        route: String,
        message: String,
    },
    /// No whole answer in time.
    #[error("router {router}: {route}: no answer within {after:?}")]
    Timeout {
        router: String,
        route: String,
        after: Duration,
    },
    /// The answer is larger than the client reads.
    #[error("router {router}: {route}: answer larger than {limit} bytes")]
    TooLarge {
        router: String,
        route: String,
        limit: usize,
    },
    /// The router answered with an error status; `message` is its `error`
    /// field (or the body's text), `body` the whole answer.
    #[error("router {router}: {route} answered {status}: {message}")]
    Status {
        router: String,
        route: String,
        status: u16,
        message: String,
        body: String,
    },
    /// A success answer that is not the JSON this route returns.
    #[error("router {router}: {route}: unreadable answer: {message}")]
    Unreadable {
        router: String,
        route: String,
        message: String,
    },
}

impl AdminError {
    /// The router's HTTP status when it answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            AdminError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The router refused the request (4xx): asking again will not help.
    pub fn is_refused(&self) -> bool {
        self.status().is_some_and(|s| (400..500).contains(&s))
    }

    /// A 409: a site holds a newer epoch (or a server or certificate is in
    /// a state that forbids the change).
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    pub fn router(&self) -> &str {
        match self {
            AdminError::Transport { router, .. }
            | AdminError::Timeout { router, .. }
            | AdminError::TooLarge { router, .. }
            | AdminError::Status { router, .. }
            | AdminError::Unreadable { router, .. } => router,
        }
    }

    /// The message without the leading `router NAME: ` (for callers whose
    /// own error names the router).
    pub fn detail(&self) -> String {
        let full = self.to_string();
        let prefix = format!("router {}: ", self.router());
        full.strip_prefix(&prefix).unwrap_or(&full).to_string()
    }
}
