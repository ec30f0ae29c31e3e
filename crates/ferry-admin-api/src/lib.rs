//! `ferry-admin-api`: the routers' admin API (`docs/admin-api.yaml`) in one
//! place, so the server (`ferry-proxy`), `ferry ctl`, the orchestrator and
//! the fleet cannot disagree about it.
//!
//! - [`sites`], [`pools`], [`certs`], [`tunnels`], [`router`]: the request
//!   and response bodies of every route, serialised in the JSON shapes the
//!   routers have always spoken (routers and their callers of different
//!   versions talk to each other: these shapes only grow).
//! - [`Route`]: every route, its method and path template, how a request
//!   resolves to one, and the paths of one call (names percent-encoded).
//! - [`AdminClient`]: the one client of the API (bearer token, connect and
//!   request timeouts, bounded answers, [`AdminError`]s that name the router
//!   and the route), built on [`Http`], the plain HTTP/1.1 client that
//!   callers also use for requests through a router's traffic listener.

#![forbid(unsafe_code)]

pub mod certs;
mod client;
mod error;
mod http;
pub mod pools;
pub mod router;
pub mod routes;
pub mod sites;
pub mod tunnels;

pub use client::AdminClient;
pub use error::AdminError;
pub use http::{Http, MAX_ANSWER};
pub use routes::Route;
