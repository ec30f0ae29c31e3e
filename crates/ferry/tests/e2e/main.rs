//! End-to-end tests of `ferry proxy`: the real binary, started with a config in
//! a temporary directory and `--ready-file`, in front of real servers (nginx,
//! `ferry backend`), driven by real clients (curl, hyper, raw TCP) and by its
//! admin API, SIGHUP and SIGTERM. Every process a test starts is stopped by a
//! guard when the test ends, passed or not.
//!
//! Each module proves one part of "What the tests must show" in issue 2.

mod support;

mod bad_input;
mod ctl;
mod failover;
mod hold;
mod keepalive;
mod load;
mod maintenance;
mod metrics;
mod passthrough;
mod prometheus;
mod remote;
mod restart;
mod routing;
mod scale;
mod tls;
mod tunnel;
mod websocket;
