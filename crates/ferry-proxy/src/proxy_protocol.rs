//! PROXY protocol version 2: the binary header a router puts in front of a
//! forwarded connection so the next hop learns the client's address.
//! Only TCP over IPv4/IPv6 and LOCAL are understood; anything else is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

pub(crate) const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Largest address block accepted; TLVs beyond the addresses are skipped but bounded.
const MAX_BLOCK: usize = 512;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("connection does not start with a PROXY v2 signature")]
    BadSignature,
    #[error("unsupported PROXY version/command byte {0:#04x}")]
    BadVersion(u8),
    #[error("unsupported PROXY address family/protocol byte {0:#04x}")]
    BadFamily(u8),
    #[error("PROXY address block of {0} bytes is too short or too long")]
    BadLength(usize),
    #[error("connection closed inside the PROXY header")]
    Truncated,
}

/// The header's meaning: the original source, or `None` for a LOCAL command
/// (health checks from the peer itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxyHeader {
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

/// Encodes a PROXY v2 header for a TCP connection from `src` to `dst`.
pub(crate) fn encode(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, PROXY command
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// Decodes a complete header (signature, fixed part and address block).
pub(crate) fn decode(fixed: &[u8; 16], block: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    if fixed[..12] != SIGNATURE {
        return Err(ProxyHeaderError::BadSignature);
    }
    let local = match fixed[12] {
        0x20 => true,
        0x21 => false,
        other => return Err(ProxyHeaderError::BadVersion(other)),
    };
    if local {
        return Ok(ProxyHeader {
            source: None,
            destination: None,
        });
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match fixed[13] {
        0x11 => {
            if block.len() < 12 {
                return Err(ProxyHeaderError::BadLength(block.len()));
            }
            let s = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            let d = Ipv4Addr::new(block[4], block[5], block[6], block[7]);
            Ok(ProxyHeader {
                source: Some(SocketAddr::new(s.into(), port(&block[8..]))),
                destination: Some(SocketAddr::new(d.into(), port(&block[10..]))),
            })
        }
        0x21 => {
            if block.len() < 36 {
                return Err(ProxyHeaderError::BadLength(block.len()));
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&block[..16]);
            d.copy_from_slice(&block[16..32]);
            let unmap = |a: [u8; 16]| {
                let v6 = Ipv6Addr::from(a);
                match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(v6),
                }
            };
            Ok(ProxyHeader {
                source: Some(SocketAddr::new(unmap(s), port(&block[32..]))),
                destination: Some(SocketAddr::new(unmap(d), port(&block[34..]))),
            })
        }
        other => Err(ProxyHeaderError::BadFamily(other)),
    }
}

/// Reads exactly one header from the start of a stream, consuming nothing after it.
pub(crate) async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<ProxyHeader, ProxyHeaderError> {
    let mut fixed = [0u8; 16];
    stream
        .read_exact(&mut fixed)
        .await
        .map_err(|_| ProxyHeaderError::Truncated)?;
    if fixed[..12] != SIGNATURE {
        return Err(ProxyHeaderError::BadSignature);
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_BLOCK {
        return Err(ProxyHeaderError::BadLength(len));
    }
    let mut block = vec![0u8; len];
    stream
        .read_exact(&mut block)
        .await
        .map_err(|_| ProxyHeaderError::Truncated)?;
    decode(&fixed, &block)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(bytes: &[u8]) -> ([u8; 16], Vec<u8>) {
        let mut fixed = [0u8; 16];
        fixed.copy_from_slice(&bytes[..16]);
        (fixed, bytes[16..].to_vec())
    }

    #[test]
    fn roundtrip_v4_and_v6() {
        for (s, d) in [
            ("192.0.2.1:5000", "127.0.0.1:80"),
            ("[2001:db8::1]:443", "[::1]:8443"),
            ("192.0.2.9:1", "[::1]:2"),
        ] {
            let (s, d): (SocketAddr, SocketAddr) = (s.parse().unwrap(), d.parse().unwrap());
            let (fixed, block) = split(&encode(s, d));
            let h = decode(&fixed, &block).unwrap();
            assert_eq!(h.source, Some(s));
        }
    }

    #[test]
    fn refuses_garbage() {
        let mut bytes = encode("1.2.3.4:5".parse().unwrap(), "5.6.7.8:9".parse().unwrap());
        bytes[0] = b'G';
        let (f, b) = split(&bytes);
        assert_eq!(decode(&f, &b), Err(ProxyHeaderError::BadSignature));
        let mut bytes = encode("1.2.3.4:5".parse().unwrap(), "5.6.7.8:9".parse().unwrap());
        bytes[12] = 0x31;
        let (f, b) = split(&bytes);
        assert_eq!(decode(&f, &b), Err(ProxyHeaderError::BadVersion(0x31)));
        let (f, _) = split(&encode(
            "1.2.3.4:5".parse().unwrap(),
            "5.6.7.8:9".parse().unwrap(),
        ));
        assert_eq!(decode(&f, &[1, 2]), Err(ProxyHeaderError::BadLength(2)));
    }

    #[tokio::test]
    async fn reads_only_the_header_and_bounds_length() {
        let mut bytes = encode(
            "10.1.2.3:4444".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut cursor = std::io::Cursor::new(bytes);
        let h = read(&mut cursor).await.unwrap();
        assert_eq!(h.source, Some("10.1.2.3:4444".parse().unwrap()));
        let mut rest = String::new();
        cursor.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "GET / HTTP/1.1\r\n");

        let mut huge = SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let mut cursor = std::io::Cursor::new(huge);
        assert_eq!(
            read(&mut cursor).await,
            Err(ProxyHeaderError::BadLength(65535))
        );
        let mut cursor = std::io::Cursor::new(SIGNATURE[..5].to_vec());
        assert_eq!(read(&mut cursor).await, Err(ProxyHeaderError::Truncated));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic sweep standing in for a fuzzer: every prefix length
        // and every byte value at each position of the fixed part.
        let base = encode("1.2.3.4:5".parse().unwrap(), "[::1]:9".parse().unwrap());
        for pos in 12..16 {
            for v in 0..=255u8 {
                let mut b = base.clone();
                b[pos] = v;
                let (f, blk) = split(&b);
                for cut in 0..=blk.len() {
                    let _ = decode(&f, &blk[..cut]);
                }
            }
        }
    }
}
