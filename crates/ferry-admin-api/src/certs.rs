//! `/v1/certs...`: the TLS certificates a router answers with.

use serde::{Deserialize, Serialize};

/// A certificate (`GET /v1/certs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub name: String,
    /// The leaf's DNS names (`*.example.com` for a wildcard).
    pub hosts: Vec<String>,
    /// It answers clients whose SNI matches no certificate, or that send none.
    pub default: bool,
    /// Its private key is parsed and cached.
    pub key_cached: bool,
}

/// The answer of `GET /v1/certs`, sorted by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertList {
    pub total: u64,
    pub certificates: Vec<Certificate>,
}

/// `PUT /v1/certs/{name}` as JSON (the route also takes PEM text holding
/// both).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    /// PEM certificates, leaf first.
    pub chain: String,
    /// PEM private key.
    pub key: String,
}

/// The answer of `PUT /v1/certs/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStored {
    pub name: String,
    pub hosts: Vec<String>,
    /// A certificate of that name existed and was replaced.
    pub replaced: bool,
}

/// The answer of `DELETE /v1/certs/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRemoved {
    pub removed: String,
}
