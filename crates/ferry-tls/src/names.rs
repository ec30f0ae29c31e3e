//! Names: what a certificate may be called (it becomes a file name and an API
//! path segment) and how DNS names from certificates and SNI are compared.

use std::borrow::Cow;

use crate::TlsError;

const MAX_CERT_NAME: usize = 200;

/// Checks a certificate's name: 1 to 200 characters among `A-Z a-z 0-9 . _ -`,
/// not starting with a dot. The name is the file stem in the certificate
/// directory, so it must not be able to reach outside it.
pub fn check_cert_name(name: &str) -> Result<(), TlsError> {
    let bad = |problem| {
        Err(TlsError::BadName {
            name: name.to_string(),
            problem,
        })
    };
    if name.is_empty() || name.len() > MAX_CERT_NAME {
        return bad("must be 1 to 200 characters");
    }
    if name.starts_with('.') {
        return bad("must not start with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("may hold only A-Z, a-z, 0-9, '.', '_' and '-'");
    }
    Ok(())
}

/// A DNS name a certificate is valid for, as the index keys it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostKey {
    /// `www.example.com`
    Exact(Box<str>),
    /// `*.example.com`, keyed by `example.com`.
    Wildcard(Box<str>),
}

impl HostKey {
    /// Reads a SAN DNS name. Wildcards other than a whole leftmost label
    /// (`w*.example.com`, `*.*.com`) and a bare `*.tld` are not indexed:
    /// clients refuse them anyway.
    pub fn from_san(name: &str) -> Option<HostKey> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return None;
        }
        match name.strip_prefix("*.") {
            Some(rest) if !rest.contains('*') && rest.contains('.') => {
                Some(HostKey::Wildcard(rest.into()))
            }
            Some(_) => None,
            None if name.contains('*') => None,
            None => Some(HostKey::Exact(name.into())),
        }
    }

    pub fn display(&self) -> String {
        match self {
            HostKey::Exact(h) => h.to_string(),
            HostKey::Wildcard(d) => format!("*.{d}"),
        }
    }
}

/// The SNI name as the index compares it: lower case, no trailing dot.
pub(crate) fn normalize_sni(sni: &str) -> Cow<'_, str> {
    let sni = sni.strip_suffix('.').unwrap_or(sni);
    if sni.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(sni.to_ascii_lowercase())
    } else {
        Cow::Borrowed(sni)
    }
}

/// The domain a wildcard certificate for `host` would be keyed by: `host`
/// without its first label. A TLS wildcard covers exactly one label (RFC 6125
/// 6.4.3), unlike the site table's `*.` patterns that match any depth.
pub(crate) fn parent_domain(host: &str) -> Option<&str> {
    host.split_once('.')
        .map(|(_, rest)| rest)
        .filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_names_stay_inside_the_directory() {
        assert!(check_cert_name("example.com").is_ok());
        assert!(check_cert_name("_.example.com").is_ok());
        assert!(check_cert_name("Shop-2_fr").is_ok());
        for bad in ["", ".hidden", "../etc", "a/b", "a b", "*.example.com", "é"] {
            assert!(check_cert_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_cert_name(&"a".repeat(201)).is_err());
    }

    #[test]
    fn san_names_become_keys() {
        assert_eq!(
            HostKey::from_san("WWW.Example.com."),
            Some(HostKey::Exact("www.example.com".into()))
        );
        assert_eq!(
            HostKey::from_san("*.example.com"),
            Some(HostKey::Wildcard("example.com".into()))
        );
        assert_eq!(HostKey::from_san("*.com"), None);
        assert_eq!(HostKey::from_san("w*.example.com"), None);
        assert_eq!(HostKey::from_san("*.*.example.com"), None);
        assert_eq!(HostKey::from_san(""), None);
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert_eq!(parent_domain("a.example.com"), Some("example.com"));
        assert_eq!(parent_domain("localhost"), None);
        assert_eq!(normalize_sni("A.Example.COM."), "a.example.com");
    }
}
