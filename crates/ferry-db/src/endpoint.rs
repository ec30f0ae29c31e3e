//! Where a server is and how we log in: parsed from `mysql://user:pass@host:port`.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

use crate::error::{Error, Result, Side, SqlContext};

/// One server and the account the mover uses there. The password is never
/// printed (`Display` shows `user@host:port`).
#[derive(Clone)]
pub struct Endpoint {
    side: Side,
    opts: Opts,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.user(), self.addr())
    }
}

/// How a connection will be used; decides its session settings.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Session {
    /// Statements and metadata in UTF-8.
    Control,
    /// Row data: `SET NAMES binary` so values travel as the bytes stored in
    /// their columns (no charset conversion on the way, as `mysqldump
    /// --default-character-set=binary`), and, at the destination, a fixed
    /// sql_mode (backslash escapes on, `NO_AUTO_VALUE_ON_ZERO` so a row with id
    /// 0 keeps it) and no foreign key checks (tables load in any order).
    Data,
}

impl Endpoint {
    pub fn parse(side: Side, url: &str) -> Result<Endpoint> {
        let opts = Opts::from_url(url).map_err(|e| Error::InvalidUrl {
            side,
            message: e.to_string(),
        })?;
        if opts.db_name().is_some() {
            return Err(Error::InvalidUrl {
                side,
                message: "give databases with --db, not in the URL".into(),
            });
        }
        // Stay on TCP: the address given is the one the destination's
        // replication connection will use too.
        let opts = Opts::from(OptsBuilder::from_opts(opts).prefer_socket(false));
        Ok(Endpoint { side, opts })
    }

    pub fn side(&self) -> Side {
        self.side
    }
    pub fn host(&self) -> &str {
        self.opts.ip_or_hostname()
    }
    pub fn port(&self) -> u16 {
        self.opts.tcp_port()
    }
    pub fn user(&self) -> &str {
        self.opts.user().unwrap_or("")
    }
    pub(crate) fn password(&self) -> &str {
        self.opts.pass().unwrap_or("")
    }
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host(), self.port())
    }

    pub(crate) async fn connect(&self, session: Session) -> Result<Conn> {
        let mut conn = Conn::new(self.opts.clone()).await.map_err(|e| match e {
            // 1045: access denied; 1698: access denied without password;
            // 4151: account locked.
            mysql_async::Error::Server(ref s) if matches!(s.code, 1045 | 1698 | 4151) => {
                Error::AccessDenied {
                    side: self.side,
                    addr: self.addr(),
                    user: self.user().to_string(),
                    message: s.message.clone(),
                }
            }
            error => Error::Connect {
                side: self.side,
                addr: self.addr(),
                error,
            },
        })?;
        let setup = match (session, self.side) {
            (Session::Control, _) => "SET NAMES utf8mb4",
            (Session::Data, Side::Source) => "SET NAMES binary",
            (Session::Data, Side::Destination) => {
                "SET NAMES binary, SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION', \
                 SESSION foreign_key_checks = 0, SESSION unique_checks = 0"
            }
        };
        conn.query_drop(setup)
            .await
            .ctx(self.side, || "session setup".into())?;
        Ok(conn)
    }
}

/// `name` as a quoted identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `text` as a quoted string literal (backslash escapes are on in every
/// session we open).
pub(crate) fn quote(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len() + 2);
    out.push(b'\'');
    escape_into(text.as_bytes(), &mut out);
    out.push(b'\'');
    // Escaping only adds ASCII bytes around ASCII bytes: still valid UTF-8.
    String::from_utf8_lossy(&out).into_owned()
}

/// An account as `'user'@'host'`.
pub(crate) fn account(user: &str, host: &str) -> String {
    format!("{}@{}", quote(user), quote(host))
}

/// Appends `bytes` escaped for a quoted literal to `out`.
pub(crate) fn escape_into(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        match b {
            0 => out.extend_from_slice(b"\\0"),
            b'\'' => out.extend_from_slice(b"\\'"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0x1a => out.extend_from_slice(b"\\Z"),
            _ => out.push(b),
        }
    }
}
