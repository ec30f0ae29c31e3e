//! Many certificates, quickly: one CA and one leaf key shared by every
//! certificate (each certificate still has its own names and serial), so
//! generating 100,000 costs one signature each, not one key generation.

use std::path::Path;

/// Writes `count` files `site-N.pem` to `dir`, certificate `N` for
/// `site-N.bench.test` (and `*.site-N.bench.test` for every tenth), plus
/// `default.pem` for `default.bench.test`. Returns the CA certificate (PEM).
pub fn write_certs(dir: &Path, count: usize) -> std::io::Result<String> {
    let ca_key = rcgen::KeyPair::generate().map_err(std::io::Error::other)?;
    let mut ca =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(std::io::Error::other)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Ferry bulk test CA");
    let ca_pem = ca
        .self_signed(&ca_key)
        .map_err(std::io::Error::other)?
        .pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf_key = rcgen::KeyPair::generate().map_err(std::io::Error::other)?;
    let key_pem = leaf_key.serialize_pem();
    let write = |file: String, names: Vec<String>| -> std::io::Result<()> {
        let params = rcgen::CertificateParams::new(names).map_err(std::io::Error::other)?;
        let cert = params
            .signed_by(&leaf_key, &issuer)
            .map_err(std::io::Error::other)?;
        std::fs::write(dir.join(file), format!("{}{key_pem}", cert.pem()))
    };
    write("default.pem".into(), vec!["default.bench.test".into()])?;
    for n in 0..count {
        let mut names = vec![format!("site-{n}.bench.test")];
        if n % 10 == 0 {
            names.push(format!("*.site-{n}.bench.test"));
        }
        write(format!("site-{n}.pem"), names)?;
    }
    Ok(ca_pem)
}
