//! The TLS ClientHello, read far enough to learn the server name (SNI) a
//! client asks for, without decrypting or answering anything.
//!
//! [`HelloParser`] is fed the bytes read from a connection so far, again after
//! every read; it remembers how far it got, so bytes are looked at once even
//! when a ClientHello arrives one byte at a time or spread over several TLS
//! records. It answers [`Hello::NeedMore`] until the whole ClientHello message
//! is there, then the name, the absence of one, or why the bytes are not a
//! ClientHello. It never reads past `max` bytes: a larger ClientHello is
//! refused as soon as its declared length says so.
//!
//! Formats: RFC 8446 5.1 (record layer) and 4.1.2 (ClientHello), RFC 6066 3
//! (server_name). The passthrough listener (`passthrough.rs`) routes by the
//! answer and forwards the very bytes it parsed.

/// TLS record content type of handshake messages.
const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Largest plaintext record fragment (RFC 8446 5.1).
const MAX_FRAGMENT: usize = 1 << 14;
const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// RFC 6066: a host_name is at most 2^16-1 bytes, but a DNS name is at most 253.
const MAX_SERVER_NAME: usize = 253;

/// What the bytes read so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// The ClientHello is not complete yet: read more.
    NeedMore,
    /// A complete ClientHello naming this server (ASCII, as sent).
    Sni(String),
    /// A complete ClientHello without a server_name extension.
    NoSni,
    /// Not a ClientHello, or one that breaks the format or the size bound.
    Invalid(HelloError),
}

/// Why bytes were refused as a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("record type {0} at byte {1} is not a TLS handshake (22)")]
    NotHandshake(u8, usize),
    #[error("record at byte {offset} has version {major}.{minor}, not 3.x")]
    RecordVersion { offset: usize, major: u8, minor: u8 },
    #[error("record at byte {offset} has a fragment of {len} bytes (1..=16384 allowed)")]
    RecordLength { offset: usize, len: usize },
    #[error("handshake message type {0} is not a ClientHello (1)")]
    NotClientHello(u8),
    #[error("ClientHello needs {needed} bytes, above the limit of {limit}")]
    TooLarge { needed: usize, limit: usize },
    #[error("ClientHello field {0} runs past its end or has a bad length")]
    Malformed(&'static str),
    #[error("ClientHello has two server_name extensions")]
    DuplicateServerName,
    #[error("server_name is empty, too long or not printable ASCII")]
    BadServerName,
}

/// Incremental reader of one connection's ClientHello.
#[derive(Debug)]
pub struct HelloParser {
    limit: usize,
    /// Offset in the caller's buffer of the next record header not consumed yet.
    next_record: usize,
    /// Handshake bytes gathered from the records consumed so far.
    handshake: Vec<u8>,
    /// Set once an answer other than `NeedMore` was given: it never changes.
    done: Option<Hello>,
}

impl HelloParser {
    /// A parser that refuses a ClientHello needing more than `limit` bytes on
    /// the wire (record headers included).
    pub fn new(limit: usize) -> HelloParser {
        HelloParser {
            limit,
            next_record: 0,
            handshake: Vec::new(),
            done: None,
        }
    }

    /// Looks at `buf`, everything read from the connection so far (each call
    /// passes the same bytes, plus any new ones at the end).
    pub fn parse(&mut self, buf: &[u8]) -> Hello {
        if let Some(done) = &self.done {
            return done.clone();
        }
        let answer = self.advance(buf);
        if answer != Hello::NeedMore {
            self.done = Some(answer.clone());
        }
        answer
    }

    fn advance(&mut self, buf: &[u8]) -> Hello {
        loop {
            // Once the handshake header is in, the total size is known: refuse
            // a ClientHello over the limit before waiting for its bytes.
            if let Some(msg_len) = self.message_len() {
                if let Err(e) = self.check_type() {
                    return Hello::Invalid(e);
                }
                let total = HANDSHAKE_HEADER + msg_len;
                if self.handshake.len() >= total {
                    return parse_client_hello(&self.handshake[HANDSHAKE_HEADER..total]);
                }
                // At least one more record header for what is still missing.
                let needed = self.next_record + RECORD_HEADER + (total - self.handshake.len());
                if needed > self.limit {
                    return Hello::Invalid(HelloError::TooLarge {
                        needed,
                        limit: self.limit,
                    });
                }
            } else if !self.handshake.is_empty() {
                // A handshake header split over records: only its type is known.
                if let Err(e) = self.check_type() {
                    return Hello::Invalid(e);
                }
            }
            let at = self.next_record;
            let Some(header) = buf.get(at..at + RECORD_HEADER) else {
                if let Err(e) = check_partial_header(&buf[at.min(buf.len())..], at) {
                    return Hello::Invalid(e);
                }
                return self.need_more(buf.len());
            };
            if header[0] != CONTENT_HANDSHAKE {
                return Hello::Invalid(HelloError::NotHandshake(header[0], at));
            }
            if header[1] != 3 {
                return Hello::Invalid(HelloError::RecordVersion {
                    offset: at,
                    major: header[1],
                    minor: header[2],
                });
            }
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if len == 0 || len > MAX_FRAGMENT {
                return Hello::Invalid(HelloError::RecordLength { offset: at, len });
            }
            let end = at + RECORD_HEADER + len;
            if end > self.limit {
                return Hello::Invalid(HelloError::TooLarge {
                    needed: end,
                    limit: self.limit,
                });
            }
            let Some(fragment) = buf.get(at + RECORD_HEADER..end) else {
                return self.need_more(buf.len());
            };
            self.handshake.extend_from_slice(fragment);
            self.next_record = end;
        }
    }

    fn need_more(&self, have: usize) -> Hello {
        if have >= self.limit {
            Hello::Invalid(HelloError::TooLarge {
                needed: have + 1,
                limit: self.limit,
            })
        } else {
            Hello::NeedMore
        }
    }

    fn message_len(&self) -> Option<usize> {
        let h = self.handshake.get(..HANDSHAKE_HEADER)?;
        Some(usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]))
    }

    fn check_type(&self) -> Result<(), HelloError> {
        match self.handshake.first() {
            Some(&HANDSHAKE_CLIENT_HELLO) | None => Ok(()),
            Some(&t) => Err(HelloError::NotClientHello(t)),
        }
    }
}

/// Refuses a record header as soon as its first bytes are wrong, so garbage is
/// turned away at once instead of after the timeout.
fn check_partial_header(head: &[u8], offset: usize) -> Result<(), HelloError> {
    if let Some(&t) = head.first() {
        if t != CONTENT_HANDSHAKE {
            return Err(HelloError::NotHandshake(t, offset));
        }
    }
    if let Some(&major) = head.get(1) {
        if major != 3 {
            return Err(HelloError::RecordVersion {
                offset,
                major,
                minor: head.get(2).copied().unwrap_or(0),
            });
        }
    }
    Ok(())
}

/// A cursor over a length-delimited field; every read is bounds-checked and
/// names the field it was reading when it runs out.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], HelloError> {
        if n > self.bytes.len() {
            return Err(HelloError::Malformed(field));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, field: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u8(field)?;
        self.take(usize::from(n), field)
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, field: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u16(field)?;
        self.take(usize::from(n), field)
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Parses a complete ClientHello body (after the handshake header).
fn parse_client_hello(body: &[u8]) -> Hello {
    match server_name(body) {
        Ok(Some(name)) => Hello::Sni(name),
        Ok(None) => Hello::NoSni,
        Err(e) => Hello::Invalid(e),
    }
}

fn server_name(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader { bytes: body };
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    if r.vec8("legacy_session_id")?.len() > 32 {
        return Err(HelloError::Malformed("legacy_session_id"));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher_suites"));
    }
    if r.vec8("legacy_compression_methods")?.is_empty() {
        return Err(HelloError::Malformed("legacy_compression_methods"));
    }
    // Before TLS 1.2 a ClientHello may end here, with no extensions at all.
    if r.is_empty() {
        return Ok(None);
    }
    let mut exts = Reader {
        bytes: r.vec16("extensions")?,
    };
    if !r.is_empty() {
        return Err(HelloError::Malformed("extensions"));
    }
    let mut found = None;
    while !exts.is_empty() {
        let kind = exts.u16("extension type")?;
        let data = exts.vec16("extension data")?;
        if kind != EXT_SERVER_NAME {
            continue;
        }
        if found.is_some() {
            return Err(HelloError::DuplicateServerName);
        }
        found = Some(host_name(data)?);
    }
    Ok(found.flatten())
}

/// The host_name entry of a server_name extension's ServerNameList, if any.
fn host_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut ext = Reader { bytes: data };
    let mut list = Reader {
        bytes: ext.vec16("server_name_list")?,
    };
    if !ext.is_empty() || list.is_empty() {
        return Err(HelloError::Malformed("server_name_list"));
    }
    while !list.is_empty() {
        let kind = list.u8("server_name name_type")?;
        let name = list.vec16("server_name host_name")?;
        if kind != NAME_TYPE_HOST_NAME {
            continue;
        }
        let printable = name.iter().all(|b| b.is_ascii_graphic());
        if name.is_empty() || name.len() > MAX_SERVER_NAME || !printable {
            return Err(HelloError::BadServerName);
        }
        // Printable ASCII was just checked, so this is valid UTF-8.
        return Ok(Some(String::from_utf8_lossy(name).into_owned()));
    }
    Ok(None)
}

/// Building ClientHellos, for the tests here and in `passthrough.rs`.
#[cfg(test)]
pub(crate) mod build {
    /// A ClientHello handshake message (header included) with `extensions`
    /// given as (type, data), in order.
    pub fn handshake(session_id: &[u8], extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(session_id.len() as u8);
        body.extend_from_slice(session_id);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        let mut ext = Vec::new();
        for (t, d) in extensions {
            ext.extend_from_slice(&t.to_be_bytes());
            ext.extend_from_slice(&(d.len() as u16).to_be_bytes());
            ext.extend_from_slice(d);
        }
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// A server_name extension's data naming `name`.
    pub fn sni(name: &str) -> Vec<u8> {
        let mut entry = vec![0];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name.as_bytes());
        let mut d = (entry.len() as u16).to_be_bytes().to_vec();
        d.extend_from_slice(&entry);
        d
    }

    /// `handshake` cut into records of at most `fragment` bytes.
    pub fn records(handshake: &[u8], fragment: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in handshake.chunks(fragment.max(1)) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::{handshake, records, sni};
    use super::*;
    use proptest::prelude::*;

    const LIMIT: usize = 16 * 1024;

    fn parse_whole(bytes: &[u8]) -> Hello {
        HelloParser::new(LIMIT).parse(bytes)
    }

    /// Feeds `bytes` growing by the given cut points, checking every answer
    /// before the last is `NeedMore`; returns the last.
    fn parse_in_steps(bytes: &[u8], cuts: &[usize]) -> Hello {
        let mut p = HelloParser::new(LIMIT);
        for &c in cuts {
            let a = p.parse(&bytes[..c.min(bytes.len())]);
            if a != Hello::NeedMore {
                return a;
            }
        }
        p.parse(bytes)
    }

    #[test]
    fn finds_the_server_name_among_other_extensions() {
        let hs = handshake(
            &[1; 32],
            &[
                (10, vec![0, 2, 0, 29]),
                (0, sni("Shop.Example")),
                (16, vec![0, 3, 2, b'h', b'2']),
            ],
        );
        assert_eq!(
            parse_whole(&records(&hs, 16384)),
            Hello::Sni("Shop.Example".into())
        );
    }

    #[test]
    fn no_server_name_and_no_extensions_are_no_sni() {
        let hs = handshake(&[], &[(10, vec![0, 2, 0, 29])]);
        assert_eq!(parse_whole(&records(&hs, 16384)), Hello::NoSni);
        // An old ClientHello that stops after the compression methods.
        let mut hs = handshake(&[], &[]);
        hs.truncate(hs.len() - 2);
        let body_len = (hs.len() - 4) as u32;
        hs[1..4].copy_from_slice(&body_len.to_be_bytes()[1..]);
        assert_eq!(parse_whole(&records(&hs, 16384)), Hello::NoSni);
    }

    #[test]
    fn one_byte_records_and_one_byte_reads_work() {
        let hs = handshake(&[], &[(0, sni("a.test"))]);
        let wire = records(&hs, 1);
        let cuts: Vec<usize> = (0..wire.len()).collect();
        assert_eq!(parse_in_steps(&wire, &cuts), Hello::Sni("a.test".into()));
    }

    #[test]
    fn garbage_is_refused_at_its_first_byte() {
        assert!(matches!(
            parse_whole(b"G"),
            Hello::Invalid(HelloError::NotHandshake(b'G', 0))
        ));
        assert!(matches!(
            parse_whole(b"GET / HTTP/1.1\r\n"),
            Hello::Invalid(HelloError::NotHandshake(..))
        ));
        assert!(matches!(
            parse_whole(&[22, 9]),
            Hello::Invalid(HelloError::RecordVersion { .. })
        ));
        assert!(matches!(
            parse_whole(&[22, 3, 1, 0, 0]),
            Hello::Invalid(HelloError::RecordLength { len: 0, .. })
        ));
        // A ServerHello (type 2) is not a ClientHello.
        assert!(matches!(
            parse_whole(&[22, 3, 3, 0, 4, 2, 0, 0, 0]),
            Hello::Invalid(HelloError::NotClientHello(2))
        ));
    }

    #[test]
    fn a_declared_size_over_the_limit_is_refused_before_it_arrives() {
        // Only the headers: a ClientHello of 1 MiB is announced.
        let wire = [22, 3, 1, 0x40, 0, 1, 0x10, 0, 0];
        assert!(matches!(
            HelloParser::new(LIMIT).parse(&wire),
            Hello::Invalid(HelloError::TooLarge { .. })
        ));
        // A real ClientHello just over a small limit.
        let hs = handshake(&[], &[(0, sni("a.test")), (21, vec![0; 600])]);
        let wire = records(&hs, 16384);
        let mut p = HelloParser::new(wire.len() - 1);
        assert!(matches!(
            p.parse(&wire[..9]),
            Hello::Invalid(HelloError::TooLarge { .. })
        ));
        assert_eq!(
            HelloParser::new(wire.len()).parse(&wire),
            Hello::Sni("a.test".into())
        );
    }

    #[test]
    fn bad_names_and_duplicates_are_refused() {
        let hs = handshake(&[], &[(0, sni("a.test")), (0, sni("b.test"))]);
        assert_eq!(
            parse_whole(&records(&hs, 16384)),
            Hello::Invalid(HelloError::DuplicateServerName)
        );
        let hs = handshake(&[], &[(0, sni("a b"))]);
        assert_eq!(
            parse_whole(&records(&hs, 16384)),
            Hello::Invalid(HelloError::BadServerName)
        );
        let hs = handshake(&[], &[(0, vec![0, 0])]);
        assert!(matches!(
            parse_whole(&records(&hs, 16384)),
            Hello::Invalid(HelloError::Malformed(_))
        ));
    }

    #[test]
    fn the_answer_stays_once_given() {
        let hs = handshake(&[], &[(0, sni("a.test"))]);
        let mut wire = records(&hs, 16384);
        let mut p = HelloParser::new(LIMIT);
        assert_eq!(p.parse(&wire), Hello::Sni("a.test".into()));
        // Application data after the ClientHello is not looked at.
        wire.extend_from_slice(b"garbage");
        assert_eq!(p.parse(&wire), Hello::Sni("a.test".into()));
    }

    fn hostname() -> impl Strategy<Value = String> {
        proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..5)
            .prop_map(|labels| labels.join("."))
    }

    /// Extensions other than server_name, with random types and contents.
    fn other_extensions() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
        proptest::collection::vec(
            (1u16..=65535, proptest::collection::vec(any::<u8>(), 0..300)),
            0..8,
        )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), limit in 0usize..4096) {
            let mut p = HelloParser::new(limit);
            for cut in [bytes.len() / 3, bytes.len() / 2, bytes.len()] {
                let _ = p.parse(&bytes[..cut]);
            }
        }

        #[test]
        fn the_verdict_does_not_depend_on_how_bytes_are_read(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            cut in any::<proptest::sample::Index>(),
            limit in 16usize..600,
        ) {
            let whole = HelloParser::new(limit).parse(&bytes);
            let cut = cut.index(bytes.len() + 1);
            let mut p = HelloParser::new(limit);
            let first = p.parse(&bytes[..cut]);
            let split = if first == Hello::NeedMore { p.parse(&bytes) } else { first };
            // Which refusal fires first may depend on the cut; the verdict may not.
            let class = |h: &Hello| match h {
                Hello::Invalid(_) => None,
                other => Some(other.clone()),
            };
            prop_assert_eq!(class(&whole), class(&split));
        }

        #[test]
        fn handshake_like_bytes_never_panic(
            fragment in 1usize..64,
            body in proptest::collection::vec(any::<u8>(), 0..1024),
        ) {
            // Valid record and handshake headers around random content reach
            // the ClientHello body parser, where arbitrary bytes rarely get.
            let mut msg = vec![1];
            msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            msg.extend_from_slice(&body);
            let _ = parse_whole(&records(&msg, fragment));
        }

        #[test]
        fn a_valid_client_hello_cut_anywhere_parses_the_same(
            name in proptest::option::of(hostname()),
            others in other_extensions(),
            at in 0usize..8,
            session in proptest::collection::vec(any::<u8>(), 0..=32),
            fragment in 1usize..600,
        ) {
            let mut exts = others;
            if let Some(n) = &name {
                exts.retain(|(t, _)| *t != 0);
                exts.insert(at.min(exts.len()), (0, sni(n)));
            } else {
                exts.retain(|(t, _)| *t != 0);
            }
            let wire = records(&handshake(&session, &exts), fragment);
            let expected = match &name {
                Some(n) => Hello::Sni(n.clone()),
                None => Hello::NoSni,
            };
            prop_assert_eq!(parse_whole(&wire), expected.clone());
            // Every single split point, then reads of every size up to 64.
            for split in 0..=wire.len() {
                prop_assert_eq!(parse_in_steps(&wire, &[split]), expected.clone());
            }
            let step = 1 + fragment % 64;
            let cuts: Vec<usize> = (0..wire.len()).step_by(step).collect();
            prop_assert_eq!(parse_in_steps(&wire, &cuts), expected);
        }
    }
}
