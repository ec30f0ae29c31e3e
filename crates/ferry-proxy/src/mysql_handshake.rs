//! Reads who logs in on a MySQL/MariaDB connection from a copy of its first
//! packets, without taking part in the conversation.
//!
//! The server speaks first (initial handshake, sequence 0); the client answers
//! with either an SSL request (after which everything is encrypted: nothing
//! more can be read) or a protocol-41 Handshake Response carrying the user name
//! and, with `CLIENT_CONNECT_WITH_DB`, the initial database. The server then
//! ends the authentication with an OK (0x00) or ERR (0xFF) packet, possibly
//! after auth-switch round trips. Only a login the server accepted counts as a
//! use, so a mistyped password does not invent a dependency.
//!
//! Everything here is a pure function of the bytes seen so far: anything that
//! does not look like that exchange gives [`Verdict::Unobserved`], never a panic.

/// `CLIENT_CONNECT_WITH_DB`: the response names an initial database.
const CONNECT_WITH_DB: u32 = 0x0000_0008;
/// `CLIENT_PROTOCOL_41`: the only response layout parsed here.
const PROTOCOL_41: u32 = 0x0000_0200;
/// `CLIENT_SSL`: the client switches to TLS after this packet.
const SSL: u32 = 0x0000_0800;
/// `CLIENT_SECURE_CONNECTION`: auth response prefixed by a 1-byte length.
const SECURE_CONNECTION: u32 = 0x0000_8000;
/// `CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA`: auth response prefixed by a
/// length-encoded integer.
const LENENC_AUTH: u32 = 0x0020_0000;

/// Largest first client packet read. Real ones are a few hundred bytes (with
/// connection attributes); a bigger one is not a login we want to buffer.
pub(crate) const MAX_PACKET: usize = 16 * 1024;
/// User and database names are at most 80 and 64 characters in MariaDB (up to
/// 4 bytes each in UTF-8); anything longer is not a real name.
const MAX_NAME: usize = 320;
/// Auth round trips after the response before giving up (auth switch, more
/// data for caching_sha2, ...).
const MAX_SERVER_PACKETS: u32 = 8;

/// What a first client packet says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClientPacket {
    /// Not all of it has arrived yet.
    Incomplete,
    /// A request to switch to TLS.
    SslRequest,
    /// A Handshake Response.
    Login(Login),
    /// Not a protocol-41 Handshake Response (or too big to read).
    Invalid,
}

/// The identity in a Handshake Response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Login {
    pub user: String,
    /// `None` when the client connected without choosing a database.
    pub database: Option<String>,
}

/// Parses the first packet a client sends, from the start of its byte stream.
pub(crate) fn parse_client_packet(bytes: &[u8]) -> ClientPacket {
    let Some(header) = bytes.get(..4) else {
        return ClientPacket::Incomplete;
    };
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    // The response answers the server's packet 0.
    if header[3] != 1 || !(4..=MAX_PACKET).contains(&len) {
        return ClientPacket::Invalid;
    }
    let Some(payload) = bytes.get(4..4 + len) else {
        return ClientPacket::Incomplete;
    };
    let caps = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
    if caps & PROTOCOL_41 == 0 {
        return ClientPacket::Invalid;
    }
    if caps & SSL != 0 {
        return ClientPacket::SslRequest;
    }
    parse_response(caps, payload).map_or(ClientPacket::Invalid, ClientPacket::Login)
}

fn parse_response(caps: u32, payload: &[u8]) -> Option<Login> {
    // capabilities (4), max packet (4), charset (1), filler (23).
    let mut r = Reader {
        rest: payload.get(32..)?,
    };
    let user = name(r.nul_terminated()?)?;
    if user.is_empty() {
        return None;
    }
    if caps & LENENC_AUTH != 0 {
        let n = r.lenenc()?;
        r.skip(usize::try_from(n).ok()?)?;
    } else if caps & SECURE_CONNECTION != 0 {
        let n = r.byte()?;
        r.skip(usize::from(n))?;
    } else {
        r.nul_terminated()?;
    }
    let database = if caps & CONNECT_WITH_DB != 0 {
        // Some clients set the flag and end the packet before the name.
        match r.nul_terminated() {
            Some(d) if !d.is_empty() => Some(name(d)?),
            _ => None,
        }
    } else {
        None
    };
    Some(Login { user, database })
}

fn name(bytes: &[u8]) -> Option<String> {
    if bytes.len() > MAX_NAME || bytes.iter().any(|b| b.is_ascii_control()) {
        return None;
    }
    String::from_utf8(bytes.to_vec()).ok()
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(*b)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.rest = self.rest.get(n..)?;
        Some(())
    }

    fn nul_terminated(&mut self) -> Option<&'a [u8]> {
        let end = self.rest.iter().position(|&b| b == 0)?;
        let (s, rest) = self.rest.split_at(end);
        self.rest = &rest[1..];
        Some(s)
    }

    fn lenenc(&mut self) -> Option<u64> {
        let width = match self.byte()? {
            n @ 0..=0xfa => return Some(u64::from(n)),
            0xfc => 2,
            0xfd => 3,
            0xfe => 8,
            _ => return None,
        };
        let bytes = self.rest.get(..width)?;
        self.rest = &self.rest[width..];
        Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, &b| acc << 8 | u64::from(b)),
        )
    }
}

/// How an observed connection's login ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Still reading.
    Pending,
    /// The server accepted this login.
    Accepted(Login),
    /// The server refused this login (wrong password, unknown database...).
    Refused(Login),
    /// The client switched to TLS: the rest cannot be read, by design.
    Tls,
    /// The bytes were not a MySQL login, or too big to read.
    Unobserved,
}

/// Follows both directions of one connection until the login is decided.
/// Fed with copies of the bytes as they pass; keeps at most one client packet.
pub(crate) struct Observer {
    client: Vec<u8>,
    login: Option<Login>,
    /// Server bytes still to skip in the current packet.
    server_skip: usize,
    /// Header bytes of the next server packet gathered so far.
    server_header: Vec<u8>,
    /// Server packets seen (the greeting is the first).
    server_packets: u32,
    verdict: Verdict,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            client: Vec::new(),
            login: None,
            server_skip: 0,
            server_header: Vec::with_capacity(5),
            server_packets: 0,
            verdict: Verdict::Pending,
        }
    }
}

impl Observer {
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    pub fn is_done(&self) -> bool {
        self.verdict != Verdict::Pending
    }

    /// Bytes the client sent.
    pub fn client_bytes(&mut self, bytes: &[u8]) {
        if self.is_done() || self.login.is_some() {
            return;
        }
        let room = (MAX_PACKET + 4).saturating_sub(self.client.len());
        self.client
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        match parse_client_packet(&self.client) {
            ClientPacket::Incomplete if room > bytes.len() => {}
            ClientPacket::Incomplete | ClientPacket::Invalid => self.verdict = Verdict::Unobserved,
            ClientPacket::SslRequest => self.verdict = Verdict::Tls,
            ClientPacket::Login(l) => {
                self.login = Some(l);
                self.client = Vec::new();
            }
        }
    }

    /// Bytes the server sent.
    pub fn server_bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.is_done() {
            if self.server_skip > 0 {
                let n = self.server_skip.min(bytes.len());
                self.server_skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            // Gather the 4-byte header and the first payload byte.
            let need = 5 - self.server_header.len();
            let n = need.min(bytes.len());
            self.server_header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.server_header.len() < 5 {
                return;
            }
            let h = std::mem::take(&mut self.server_header);
            let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
            if len == 0 {
                self.verdict = Verdict::Unobserved;
                return;
            }
            self.server_skip = len - 1;
            self.server_packets += 1;
            if self.server_packets == 1 {
                // The greeting: protocol version 10, or an ERR (too many
                // connections, host blocked) that ends the connection.
                if h[4] != 10 {
                    self.verdict = Verdict::Unobserved;
                }
                continue;
            }
            // The server only answers after the response, so a login is known.
            let Some(login) = self.login.clone() else {
                self.verdict = Verdict::Unobserved;
                return;
            };
            match h[4] {
                0x00 => self.verdict = Verdict::Accepted(login),
                0xff => self.verdict = Verdict::Refused(login),
                _ if self.server_packets > MAX_SERVER_PACKETS => self.verdict = Verdict::Unobserved,
                // Auth switch or more auth data: the exchange goes on.
                _ => {}
            }
        }
    }
}

/// What an observer concludes from a whole exchange fed in reads of at
/// most `chunk` bytes (client's first packet, then the server's answers):
/// the verdict's shape and the recorded user. Public (hidden) for the fuzz
/// target `fuzz/fuzz_targets/mysql_handshake.rs` and the property tests: the
/// answer must not depend on how the network cut the bytes.
#[doc(hidden)]
pub fn observe_in_chunks(client: &[u8], server: &[u8], chunk: usize) -> String {
    let chunk = chunk.max(1);
    let mut o = Observer::default();
    for c in client.chunks(chunk) {
        o.client_bytes(c);
    }
    for c in server.chunks(chunk) {
        o.server_bytes(c);
    }
    format!("{:?} {:?}", o.verdict, o.login)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut p = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
        p.extend_from_slice(payload);
        p
    }

    fn response(caps: u32, user: &str, auth: &[u8], db: Option<&str>) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&caps.to_le_bytes());
        p.extend_from_slice(&(16u32 << 20).to_le_bytes());
        p.push(45);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(user.as_bytes());
        p.push(0);
        if caps & LENENC_AUTH != 0 || caps & SECURE_CONNECTION != 0 {
            p.push(auth.len() as u8);
            p.extend_from_slice(auth);
        } else {
            p.extend_from_slice(auth);
            p.push(0);
        }
        if let Some(db) = db {
            p.extend_from_slice(db.as_bytes());
            p.push(0);
        }
        p.extend_from_slice(b"mysql_native_password\0");
        packet(1, &p)
    }

    const BASE: u32 = PROTOCOL_41 | SECURE_CONNECTION;

    #[test]
    fn reads_user_and_database() {
        let r = response(BASE | CONNECT_WITH_DB, "app", &[7; 20], Some("shopdb"));
        assert_eq!(
            parse_client_packet(&r),
            ClientPacket::Login(Login {
                user: "app".into(),
                database: Some("shopdb".into())
            })
        );
        let r = response(PROTOCOL_41 | LENENC_AUTH, "app", &[7; 20], None);
        assert_eq!(
            parse_client_packet(&r),
            ClientPacket::Login(Login {
                user: "app".into(),
                database: None
            })
        );
        let r = response(PROTOCOL_41 | CONNECT_WITH_DB, "old", b"x", Some("d"));
        assert!(matches!(parse_client_packet(&r), ClientPacket::Login(l) if l.user == "old"));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let r = response(BASE | CONNECT_WITH_DB, "app", &[7; 20], Some("shopdb"));
        for n in 0..r.len() {
            assert_eq!(
                parse_client_packet(&r[..n]),
                ClientPacket::Incomplete,
                "{n}"
            );
        }
    }

    #[test]
    fn ssl_request_stops_reading() {
        let mut p = (BASE | SSL).to_le_bytes().to_vec();
        p.extend_from_slice(&[0; 28]);
        assert_eq!(
            parse_client_packet(&packet(1, &p)),
            ClientPacket::SslRequest
        );
    }

    #[test]
    fn oversized_and_foreign_packets_are_invalid() {
        assert_eq!(
            parse_client_packet(b"\xff\xff\xff\x01"),
            ClientPacket::Invalid
        );
        assert_eq!(
            parse_client_packet(b"GET / HTTP/1.1\r\n\r\n"),
            ClientPacket::Invalid
        );
        // Protocol 320 (no PROTOCOL_41) is not read.
        let r = response(SECURE_CONNECTION, "app", &[1], None);
        assert_eq!(parse_client_packet(&r), ClientPacket::Invalid);
    }

    fn greeting() -> Vec<u8> {
        let mut g = vec![10];
        g.extend_from_slice(b"10.11.6-MariaDB\0");
        g.extend_from_slice(&[0; 40]);
        packet(0, &g)
    }

    #[test]
    fn only_accepted_logins_count() {
        let login = Login {
            user: "app".into(),
            database: Some("shopdb".into()),
        };
        let r = response(BASE | CONNECT_WITH_DB, "app", &[7; 20], Some("shopdb"));
        for (reply, want) in [
            (
                packet(2, &[0, 0, 0, 2, 0, 0, 0]),
                Verdict::Accepted(login.clone()),
            ),
            (
                packet(2, b"\xff\x15\x04#28000denied"),
                Verdict::Refused(login.clone()),
            ),
        ] {
            let mut o = Observer::default();
            // One byte at a time: the framing must not depend on read sizes.
            for b in greeting() {
                o.server_bytes(&[b]);
            }
            for b in &r {
                o.client_bytes(&[*b]);
            }
            assert_eq!(o.verdict(), &Verdict::Pending);
            // An auth switch first, then the answer.
            o.server_bytes(&packet(2, b"\xfemysql_native_password\0abc"));
            assert_eq!(o.verdict(), &Verdict::Pending);
            o.server_bytes(&reply);
            assert_eq!(o.verdict(), &want);
        }
    }

    #[test]
    fn garbage_from_a_client_is_unobserved() {
        let mut o = Observer::default();
        o.server_bytes(&greeting());
        o.client_bytes(b"SSH-2.0-OpenSSH_9.2\r\n");
        assert_eq!(o.verdict(), &Verdict::Unobserved);
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_client_packet(&bytes);
            let mut o = Observer::default();
            o.server_bytes(&bytes);
            o.client_bytes(&bytes);
            o.server_bytes(&bytes);
        }

        #[test]
        fn valid_responses_round_trip(
            user in "[a-z_][a-z0-9_]{0,15}",
            db in proptest::option::of("[a-z][a-z0-9_$]{0,30}"),
            auth in proptest::collection::vec(any::<u8>(), 0..40),
            lenenc in any::<bool>(),
        ) {
            let mut caps = BASE | if lenenc { LENENC_AUTH } else { 0 };
            if db.is_some() {
                caps |= CONNECT_WITH_DB;
            }
            let r = response(caps, &user, &auth, db.as_deref());
            prop_assert_eq!(
                parse_client_packet(&r),
                ClientPacket::Login(Login { user, database: db })
            );
        }

        #[test]
        fn the_verdict_does_not_depend_on_how_reads_are_cut(
            user in "[a-z_][a-z0-9_]{0,15}",
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
            server in proptest::collection::vec(any::<u8>(), 0..64),
            chunk in 1usize..40,
        ) {
            let mut r = packet(1, &response(BASE | CONNECT_WITH_DB, &user, &[7; 20], Some("shopdb")));
            for (i, b) in flips {
                let n = r.len();
                r[i % n] = b;
            }
            // A server greeting-shaped start, then arbitrary bytes.
            let mut s = packet(0, &[10, b'5', 0]);
            s.extend_from_slice(&server);
            prop_assert_eq!(
                observe_in_chunks(&r, &s, usize::MAX),
                observe_in_chunks(&r, &s, chunk)
            );
        }

        #[test]
        fn mutated_responses_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut r = response(BASE | CONNECT_WITH_DB, "app", &[7; 20], Some("shopdb"));
            for (i, b) in flips {
                let n = r.len();
                r[i % n] = b;
            }
            let _ = parse_client_packet(&r);
        }
    }
}
