//! How an etcd client reaches its cluster: the endpoints, the user and
//! password, the TLS files. Routers (`ferry proxy`'s `[store]`), the
//! orchestrator (`migrate.toml`'s `[store]`) and the `--control etcd`
//! flags of `ferry migrate` and `ferry update` name the same keys, so they are
//! checked here once, with one set of messages:
//!
//! - the key prefix starts with `/`, names something below it and holds no
//!   spaces or control characters (default `/ferry`, a trailing `/` dropped);
//! - endpoints are `http://HOST:PORT` or `https://HOST:PORT` (a trailing `/`
//!   is dropped); https needs `ca_file` and `ca_file` needs https, so one
//!   scheme holds for the whole cluster (a plain endpoint beside TLS ones
//!   would send the password in clear);
//! - `user` and `password_file` come together, as do `cert_file` and
//!   `key_file`, and a client certificate needs `ca_file`;
//! - the password and the key are read under ferry-secret's rule (a file
//!   others can read is refused: fail closed), the CA and the certificate
//!   as plain files; relative paths are relative to the config's directory.

use std::ops::Range;
use std::path::Path;

use ferry_secret::Secret;
/// The keys' values; flags are given as `Spanned::new(0..0, value)`.
pub use toml::Spanned;

use crate::{check_host_port, read_named_file, SpanError};

/// At most this many endpoints: a cluster has 3 to 7 members; a longer list
/// is a mistake (a list of routers pasted in).
pub const MAX_ENDPOINTS: usize = 64;

/// Where the keys were written, which decides how messages name them.
#[derive(Clone, Copy, Debug)]
pub enum Naming<'a> {
    /// Keys of a TOML table: `store: user without password_file ...`.
    Table(&'a str),
    /// Command-line flags `--etcd-<key>` (`_` as `-`), positions unknown.
    Flags,
}

impl Naming<'_> {
    /// How `key` is named in a message.
    fn key(&self, key: &str) -> String {
        match self {
            Naming::Table(_) => key.to_string(),
            Naming::Flags => format!("--etcd-{}", key.replace('_', "-")),
        }
    }

    /// `store: ` or nothing, to start a message.
    fn prefix(&self) -> String {
        match self {
            Naming::Table(t) => format!("{t}: "),
            Naming::Flags => String::new(),
        }
    }

    /// A file key as ferry-secret's and the file reader's errors name it:
    /// `store password_file`, `store: ca_file`, `--etcd-ca-file`.
    fn file(&self, key: &str, colon: bool) -> String {
        match self {
            Naming::Table(t) if colon => format!("{t}: {key}"),
            Naming::Table(t) => format!("{t} {key}"),
            Naming::Flags => self.key(key),
        }
    }
}

/// The connection keys as read (TOML values keep their spans; flags get
/// empty ones).
#[derive(Clone, Debug)]
pub struct EtcdKeys<'a> {
    pub naming: Naming<'a>,
    /// `None`: the key is missing, refused at `missing_at`.
    pub endpoints: Option<&'a Spanned<Vec<Spanned<String>>>>,
    pub prefix: Option<&'a Spanned<String>>,
    /// Where a missing `endpoints` is reported (the `backend` value).
    pub missing_at: Range<usize>,
    pub user: Option<&'a Spanned<String>>,
    pub password_file: Option<&'a Spanned<String>>,
    pub ca_file: Option<&'a Spanned<String>>,
    pub cert_file: Option<&'a Spanned<String>>,
    pub key_file: Option<&'a Spanned<String>>,
}

/// The checked keys: what the etcd client is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdAccess {
    /// `http://HOST:PORT` or `https://HOST:PORT`, one scheme for all.
    pub endpoints: Vec<String>,
    /// The key prefix `P`, without a trailing `/` (default `/ferry`).
    pub prefix: String,
    pub auth: Option<EtcdAuth>,
    pub tls: Option<EtcdTls>,
}

/// etcd authentication: the user and the content of `password_file`.
#[derive(Clone, Debug)]
pub struct EtcdAuth {
    pub user: String,
    pub password: Secret,
}

/// PEM of an etcd client's TLS settings.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// The CA that signs the members' certificates.
    pub ca: String,
    /// This client's certificate and private key (both or neither), for a
    /// cluster that asks for them.
    pub identity: Option<(String, Secret)>,
}

// By hand: `Secret` compares in constant time and has no `Eq` of its own.
impl PartialEq for EtcdAuth {
    fn eq(&self, o: &EtcdAuth) -> bool {
        self.user == o.user && self.password == o.password
    }
}

impl Eq for EtcdAuth {}

impl PartialEq for EtcdTls {
    fn eq(&self, o: &EtcdTls) -> bool {
        self.ca == o.ca && self.identity == o.identity
    }
}

impl Eq for EtcdTls {}

impl EtcdTls {
    /// The certificate and the key as the client sends them (PEM text).
    pub fn identity_pem(&self) -> Option<(String, String)> {
        let (cert, key) = self.identity.as_ref()?;
        Some((cert.clone(), key.expose().to_string()))
    }
}

impl EtcdKeys<'_> {
    /// Checks every key and reads the files; `base` anchors relative paths.
    pub fn check(&self, base: &Path) -> Result<EtcdAccess, SpanError> {
        let endpoints = self.endpoints()?;
        let prefix = self.prefix()?;
        let auth = self.auth(base)?;
        let tls = self.tls(base)?;
        Ok(EtcdAccess {
            endpoints,
            prefix,
            auth,
            tls,
        })
    }

    fn error(&self, span: Range<usize>, message: impl std::fmt::Display) -> SpanError {
        SpanError::new(span, format!("{}{message}", self.naming.prefix()))
    }

    fn endpoints(&self) -> Result<Vec<String>, SpanError> {
        let n = self.naming;
        let list = match self.endpoints {
            None => {
                let message = match n {
                    Naming::Table(_) => {
                        "backend = \"etcd\" needs endpoints (e.g. [\"http://10.0.0.1:2379\"])"
                    }
                    Naming::Flags => "--control etcd needs --etcd-endpoints",
                };
                return Err(self.error(self.missing_at.clone(), message));
            }
            Some(list) if list.get_ref().is_empty() => {
                return Err(self.error(list.span(), format!("{} is empty", n.key("endpoints"))))
            }
            Some(list) if list.get_ref().len() > MAX_ENDPOINTS => {
                return Err(self.error(list.span(), format!("more than {MAX_ENDPOINTS} endpoints")))
            }
            Some(list) => list.get_ref(),
        };
        let tls = self.ca_file.is_some();
        list.iter().map(|e| self.endpoint(e, tls)).collect()
    }

    /// One endpoint, without a trailing `/`; its scheme must agree with
    /// whether `ca_file` is set.
    fn endpoint(&self, e: &Spanned<String>, tls: bool) -> Result<String, SpanError> {
        let v = e.get_ref();
        let (scheme, rest) = match v.split_once("://") {
            Some((s @ ("http" | "https"), rest)) => (s, rest.strip_suffix('/').unwrap_or(rest)),
            _ => {
                return Err(self.error(
                    e.span(),
                    format!("endpoint {v:?} is not http://HOST:PORT or https://HOST:PORT"),
                ))
            }
        };
        if let Err(why) = check_host_port(rest) {
            return Err(self.error(e.span(), format!("endpoint {v:?} {why}")));
        }
        let ca = self.naming.key("ca_file");
        match (scheme, tls) {
            ("https", false) => Err(self.error(
                e.span(),
                format!("endpoint {v:?} is https: set {ca} (the members' CA)"),
            )),
            ("http", true) => Err(self.error(
                e.span(),
                format!("endpoint {v:?} is plain http while {ca} is set: use https://"),
            )),
            _ => Ok(format!("{scheme}://{rest}")),
        }
    }

    fn prefix(&self) -> Result<String, SpanError> {
        let Some(p) = self.prefix else {
            return Ok("/ferry".to_string());
        };
        let v = p.get_ref();
        let plain = v.bytes().all(|b| b.is_ascii_graphic());
        if !v.starts_with('/') || v.trim_end_matches('/').is_empty() || !plain {
            return Err(self.error(
                p.span(),
                format!(
                    "{} {v:?} must start with '/', name something below it \
                     and hold no spaces or control characters (e.g. \"/ferry\")",
                    self.naming.key("prefix")
                ),
            ));
        }
        Ok(v.trim_end_matches('/').to_string())
    }

    fn auth(&self, base: &Path) -> Result<Option<EtcdAuth>, SpanError> {
        let n = self.naming;
        let (user, pw) = (n.key("user"), n.key("password_file"));
        match (self.user, self.password_file) {
            (None, None) => Ok(None),
            (Some(u), Some(p)) if !u.get_ref().is_empty() => Ok(Some(EtcdAuth {
                user: u.get_ref().clone(),
                password: self.secret(base, "password_file", p)?,
            })),
            (Some(u), Some(_)) => Err(self.error(u.span(), format!("{user} is empty"))),
            (Some(u), None) => Err(self.error(
                u.span(),
                format!("{user} without {pw} (a file readable by its owner only)"),
            )),
            (None, Some(p)) => Err(self.error(p.span(), format!("{pw} without {user}"))),
        }
    }

    fn tls(&self, base: &Path) -> Result<Option<EtcdTls>, SpanError> {
        let n = self.naming;
        let (cert, key) = (n.key("cert_file"), n.key("key_file"));
        // Pairs first, so a missing half is named before any file is read.
        let pair = match (self.cert_file, self.key_file) {
            (None, None) => None,
            (Some(c), None) => {
                return Err(self.error(c.span(), format!("{cert} without {key}")));
            }
            (None, Some(k)) => {
                return Err(self.error(k.span(), format!("{key} without {cert}")));
            }
            (Some(c), Some(k)) => Some((c, k)),
        };
        let Some(ca) = self.ca_file else {
            return match pair {
                Some((c, _)) => Err(self.error(
                    c.span(),
                    format!(
                        "{cert} and {key} need {} (the members' CA)",
                        n.key("ca_file")
                    ),
                )),
                None => Ok(None),
            };
        };
        let identity = match pair {
            Some((c, k)) => {
                let key = self.secret(base, "key_file", k)?;
                Some((self.read(base, "cert_file", c)?, key))
            }
            None => None,
        };
        Ok(Some(EtcdTls {
            ca: self.read(base, "ca_file", ca)?,
            identity,
        }))
    }

    /// A secret file under ferry-secret's rule (owner-only, not empty).
    fn secret(&self, base: &Path, key: &str, f: &Spanned<String>) -> Result<Secret, SpanError> {
        let what = self.naming.file(key, false);
        if f.get_ref().is_empty() {
            return Err(SpanError::new(f.span(), format!("{what} is an empty path")));
        }
        ferry_secret::read_file(&what, &base.join(f.get_ref()))
            .map_err(|e| SpanError::new(f.span(), e.to_string()))
    }

    /// A file anyone may read (a certificate).
    fn read(&self, base: &Path, key: &str, f: &Spanned<String>) -> Result<String, SpanError> {
        read_named_file(base, &self.naming.file(key, true), f)
    }
}

#[cfg(test)]
#[path = "etcd_tests.rs"]
mod tests;
