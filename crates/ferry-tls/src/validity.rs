//! When a certificate stops being valid (X.509 `notAfter`), read straight
//! from the DER of the leaf: Certificate -> tbsCertificate -> (version,
//! serial, signature, issuer) -> validity -> notAfter. A few dozen bytes are
//! looked at per certificate, so a directory of millions costs nothing more
//! to index, and the router can warn before a site's certificate expires.

/// A DER element starting at `der[0]`: (tag, content, what follows it).
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: 1 to 4 length bytes (a certificate is never larger).
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `notAfter` of the certificate `der`, in Unix seconds; None if the DER is
/// not shaped like a certificate.
pub(crate) fn not_after(der: &[u8]) -> Option<u64> {
    const SEQUENCE: u8 = 0x30;
    let (tag, cert, _) = element(der)?;
    (tag == SEQUENCE).then_some(())?;
    let (tag, tbs, _) = element(cert)?;
    (tag == SEQUENCE).then_some(())?;
    let mut rest = tbs;
    // version [0] EXPLICIT is optional (absent means v1).
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2;
    }
    for _ in 0..3 {
        // serialNumber, signature, issuer
        rest = element(rest)?.2;
    }
    let (tag, validity, _) = element(rest)?;
    (tag == SEQUENCE).then_some(())?;
    let (_, _, after_not_before) = element(validity)?;
    let (tag, time, _) = element(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?;
    match tag {
        0x17 => utc_time(text),
        0x18 => generalized_time(text),
        _ => None,
    }
}

/// `YYMMDDHHMMSSZ` (RFC 5280: YY < 50 is 20YY).
fn utc_time(t: &str) -> Option<u64> {
    let yy: u64 = t.get(0..2)?.parse().ok()?;
    let year = if yy < 50 { 2000 + yy } else { 1900 + yy };
    seconds(year, t.get(2..)?)
}

/// `YYYYMMDDHHMMSSZ`.
fn generalized_time(t: &str) -> Option<u64> {
    seconds(t.get(0..4)?.parse().ok()?, t.get(4..)?)
}

/// Unix seconds of `year` and `MMDDHHMMSSZ`.
fn seconds(year: u64, rest: &str) -> Option<u64> {
    if rest.len() != 11 || !rest.ends_with('Z') {
        return None;
    }
    let n = |i: usize| -> Option<u64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, h, m, s) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year } as i64;
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_is_read_from_a_real_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 7, 9);
        let cert = params.self_signed(&key).unwrap();
        // 2031-07-09T00:00:00Z
        assert_eq!(not_after(cert.der()), Some(1_941_321_600));
        params.not_after = rcgen::date_time_ymd(2051, 1, 2);
        let cert = params.self_signed(&key).unwrap();
        // After 2049: GeneralizedTime. 2051-01-02T00:00:00Z
        assert_eq!(not_after(cert.der()), Some(2_556_230_400));
    }

    #[test]
    fn times_parse_and_nonsense_is_refused() {
        assert_eq!(utc_time("000101000000Z"), Some(946_684_800));
        assert_eq!(utc_time("991231235959Z"), Some(946_684_799));
        assert_eq!(generalized_time("20240229120000Z"), Some(1_709_208_000));
        for bad in [
            "",
            "0001010000Z",
            "001301000000Z",
            "000101000000",
            "00010100000xZ",
        ] {
            assert_eq!(utc_time(bad), None, "{bad}");
        }
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x85\x01\x02\x03\x04\x05",
            b"\x31\x00",
            b"\x30\x03\x30\x01",
        ] {
            assert_eq!(not_after(bad), None);
        }
    }
}
