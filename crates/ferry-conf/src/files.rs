//! Values that name something outside the config: an address to connect
//! to, a file to read.

use std::path::Path;

use toml::Spanned;

use crate::SpanError;

/// Checks a `host:port` to connect to (an IP, `[v6]` or a host name, and a
/// port above 0); the answer says what is wrong. Shared by the routers'
/// tunnels, their admin API (a re-pointed tunnel obeys the same rule as a
/// configured one) and etcd endpoints.
pub fn check_host_port(s: &str) -> Result<(), &'static str> {
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        // Port 0 means "any free port" when listening, nothing when connecting.
        return if a.port() == 0 {
            Err("has no valid port (1..=65535)")
        } else {
            Ok(())
        };
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("is not HOST:PORT (e.g. \"10.0.0.5:3306\")");
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err("has no valid port (1..=65535)"),
    }
    let plain = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !plain {
        return Err("has no valid host (an IP address, \"[v6]\" or a host name)");
    }
    Ok(())
}

/// Reads a file the config names (key `what`; relative to `base`, the
/// config's directory), refused at the key if it cannot be read: a missing
/// file must stop the start, not show up later as an empty page or a
/// failed handshake.
pub fn read_named_file(
    base: &Path,
    what: &str,
    name: &Spanned<String>,
) -> Result<String, SpanError> {
    if name.get_ref().is_empty() {
        return Err(SpanError::new(
            name.span(),
            format!("{what} is an empty path"),
        ));
    }
    // `join` keeps an absolute path as it is.
    let path = base.join(name.get_ref());
    std::fs::read_to_string(&path).map_err(|e| {
        SpanError::new(
            name.span(),
            format!(
                "{what} {:?}: cannot read {}: {e}",
                name.get_ref(),
                path.display()
            ),
        )
    })
}
