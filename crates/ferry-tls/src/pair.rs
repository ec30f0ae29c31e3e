//! Reading PEM: the names of a certificate (cheap, at indexing) and a checked
//! chain + key pair (at first use, or when the admin API hands one in).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::names::HostKey;
use crate::TlsError;

fn invalid(name: &str, problem: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        name: name.to_string(),
        problem: problem.into(),
    }
}

fn chain(name: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut chain = Vec::new();
    for c in CertificateDer::pem_slice_iter(pem) {
        chain.push(c.map_err(|e| invalid(name, format!("bad PEM certificate: {e}")))?);
    }
    if chain.is_empty() {
        return Err(invalid(name, "no CERTIFICATE block in the PEM"));
    }
    Ok(chain)
}

/// The DNS names of the first (leaf) certificate in `pem`, as index keys,
/// and when it expires (None if its validity cannot be read).
pub(crate) fn leaf_names(name: &str, pem: &[u8]) -> Result<(Vec<HostKey>, Option<u64>), TlsError> {
    let leaf = CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or_else(|| invalid(name, "no CERTIFICATE block in the PEM"))?
        .map_err(|e| invalid(name, format!("bad PEM certificate: {e}")))?;
    Ok((names_of(name, &leaf)?, crate::validity::not_after(&leaf)))
}

fn names_of(name: &str, leaf: &CertificateDer<'_>) -> Result<Vec<HostKey>, TlsError> {
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| invalid(name, format!("leaf certificate is not valid X.509: {e}")))?;
    let mut hosts: Vec<HostKey> = cert
        .valid_dns_names()
        .filter_map(HostKey::from_san)
        .collect();
    hosts.dedup();
    if hosts.is_empty() {
        return Err(invalid(
            name,
            "the leaf certificate names no DNS name (subjectAltName) that a client could ask for",
        ));
    }
    Ok(hosts)
}

/// Whether `pem` holds a private key block (checked at indexing without
/// parsing the key).
pub(crate) fn has_key_block(pem: &[u8]) -> bool {
    pem.windows(16).any(|w| w == b"PRIVATE KEY-----")
}

/// A certificate chain with its private key, parsed and checked: the key is
/// one rustls can sign with, and its public half is the leaf's public key.
pub struct CertPair {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) hosts: Vec<HostKey>,
    /// The leaf's notAfter (Unix seconds), when it can be read.
    pub(crate) not_after: Option<u64>,
}

impl std::fmt::Debug for CertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair")
            .field("hosts", &self.names())
            .finish()
    }
}

impl CertPair {
    /// Parses `chain_pem` (leaf first, then intermediates) and `key_pem`
    /// (PKCS#8, PKCS#1 or SEC1; may be the same text as the chain). `name`
    /// only labels errors.
    pub fn parse(
        name: &str,
        chain_pem: &[u8],
        key_pem: &[u8],
        provider: &CryptoProvider,
    ) -> Result<CertPair, TlsError> {
        let chain = chain(name, chain_pem)?;
        let hosts = names_of(name, &chain[0])?;
        let not_after = crate::validity::not_after(&chain[0]);
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                invalid(name, "no PRIVATE KEY block in the PEM")
            }
            e => invalid(name, format!("bad PEM private key: {e}")),
        })?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| invalid(name, format!("unusable private key: {e}")))?;
        let key = CertifiedKey::new(chain, signing);
        key.keys_match().map_err(|e| {
            invalid(
                name,
                format!("the private key does not belong to the leaf certificate ({e})"),
            )
        })?;
        Ok(CertPair {
            key: Arc::new(key),
            hosts,
            not_after,
        })
    }

    /// The DNS names the certificate answers (`*.example.com` for wildcards).
    pub fn names(&self) -> Vec<String> {
        self.hosts.iter().map(HostKey::display).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{issue, ring};

    #[test]
    fn a_matching_pair_is_accepted() {
        let c = issue(&["www.example.com", "*.example.com"]);
        let p = CertPair::parse("x", c.chain.as_bytes(), c.key.as_bytes(), &ring()).unwrap();
        assert_eq!(p.names(), ["www.example.com", "*.example.com"]);
        let both = format!("{}{}", c.chain, c.key);
        assert!(CertPair::parse("x", both.as_bytes(), both.as_bytes(), &ring()).is_ok());
        assert!(has_key_block(both.as_bytes()));
        assert!(!has_key_block(c.chain.as_bytes()));
    }

    #[test]
    fn bad_pairs_are_refused_with_the_reason() {
        let a = issue(&["a.test"]);
        let b = issue(&["b.test"]);
        let err = |chain: &str, key: &str| {
            CertPair::parse("site", chain.as_bytes(), key.as_bytes(), &ring())
                .unwrap_err()
                .to_string()
        };
        let m = err(&a.chain, &b.key);
        assert!(
            m.contains("certificate site: the private key does not belong"),
            "{m}"
        );
        let m = err(&a.chain, "");
        assert!(m.contains("no PRIVATE KEY block"), "{m}");
        let m = err("", &a.key);
        assert!(m.contains("no CERTIFICATE block"), "{m}");
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let m = err(garbage, &a.key);
        assert!(m.contains("certificate site:"), "{m}");
    }
}
