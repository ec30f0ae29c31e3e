//! Helpers shared by the tests and the certificate generator example.

pub mod bulk;
