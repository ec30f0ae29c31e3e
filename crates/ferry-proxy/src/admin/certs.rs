//! `/v1/certs...`: the TLS certificates, added, replaced and removed at run
//! time (ferry-tls checks each pair before anything changes).

use std::sync::Arc;

use ferry_admin_api::certs::{CertList, CertPair, CertRemoved, CertStored, Certificate};
use ferry_admin_api::routes;
use http::StatusCode;

use super::{error, ok, Resp};
use crate::Proxy;

/// The certificate store, or the answer for a router without `[tls]`.
fn cert_store(proxy: &Proxy) -> Result<Arc<ferry_tls::CertStore>, Resp> {
    match proxy.tls.load().as_deref() {
        Some(t) => Ok(Arc::clone(&t.store)),
        None => Err(error(
            StatusCode::NOT_FOUND,
            "TLS is not configured on this router (no [tls] section)",
        )),
    }
}

pub(super) fn list(proxy: &Proxy) -> Resp {
    let store = match cert_store(proxy) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let certificates: Vec<Certificate> = store
        .list()
        .into_iter()
        .map(|c| Certificate {
            name: c.name,
            hosts: c.hosts,
            default: c.default,
            key_cached: c.key_cached,
        })
        .collect();
    ok(&CertList {
        total: certificates.len() as u64,
        certificates,
    })
}

/// `PUT /v1/certs/{name}`: a JSON [`CertPair`], or PEM text holding the
/// chain and the key.
pub(super) fn put(proxy: &Proxy, raw_name: &str, body: &[u8]) -> Resp {
    let store = match cert_store(proxy) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let name = routes::decode(raw_name);
    let json_body = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    let (chain, key) = if json_body {
        match serde_json::from_slice::<CertPair>(body) {
            Ok(b) => (b.chain.into_bytes(), b.key.into_bytes()),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "certificate {name}: body is not {{\"chain\": PEM, \"key\": PEM}}: {e}"
                    ),
                )
            }
        }
    } else {
        (body.to_vec(), body.to_vec())
    };
    match store.put(&name, &chain, &key) {
        Ok((hosts, replaced)) => {
            tracing::info!(cert = %name, ?hosts, replaced, "certificate stored");
            ok(&CertStored {
                name,
                hosts,
                replaced,
            })
        }
        Err(e) => error(cert_error_status(&e), e),
    }
}

pub(super) fn delete(proxy: &Proxy, raw_name: &str) -> Resp {
    let store = match cert_store(proxy) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let name = routes::decode(raw_name);
    match store.remove(&name) {
        Ok(()) => {
            tracing::info!(cert = %name, "certificate removed");
            ok(&CertRemoved { removed: name })
        }
        Err(e) => error(cert_error_status(&e), e),
    }
}

fn cert_error_status(e: &ferry_tls::TlsError) -> StatusCode {
    use ferry_tls::TlsError as E;
    match e {
        E::Invalid { .. } | E::BadName { .. } => StatusCode::BAD_REQUEST,
        E::NotFound { .. } => StatusCode::NOT_FOUND,
        E::IsDefault { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
