//! Integration tests of ferry-sync: real trees in temporary directories, an
//! agent on loopback, and independent checks (Debian's rsync, diff -r).

mod support;

mod block;
mod converge;
mod limits;
mod metrics;
mod proto_props;
mod remote;
mod roundtrip;
mod safety;
mod space;
mod wan;
mod watch;
