//! Test certificates: a throw-away CA per call, and a leaf for given names.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;

pub(crate) struct Issued {
    pub chain: String,
    pub key: String,
    der: Vec<u8>,
}

impl Issued {
    pub fn bundle(&self) -> String {
        format!("{}{}", self.chain, self.key)
    }

    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.der.clone())
    }
}

pub(crate) fn ring() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// An ECDSA P-256 leaf for `names`, signed by a fresh CA.
pub(crate) fn issue(names: &[&str]) -> Issued {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let _ = ca_cert;
    Issued {
        chain: leaf.pem(),
        key: key.serialize_pem(),
        der: leaf.der().to_vec(),
    }
}
