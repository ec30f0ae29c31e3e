//! Numbers for people: `1.2 TB`, `4m05s`, `12,345`.

/// Decimal units, three significant digits: `950 B`, `1.2 GB`, `3.40 PB`.
pub fn bytes(b: f64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = b.max(0.0);
    let mut i = 0;
    while v >= 999.5 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else if v < 9.995 {
        format!("{v:.2} {}", UNITS[i])
    } else if v < 99.95 {
        format!("{v:.1} {}", UNITS[i])
    } else {
        format!("{v:.0} {}", UNITS[i])
    }
}

/// `45s`, `4m05s`, `2h03m`, `3d04h`.
pub fn duration(s: f64) -> String {
    if !s.is_finite() {
        return "∞".to_string();
    }
    let t = s.max(0.0).round() as u64;
    match t {
        0..=59 => format!("{t}s"),
        60..=3599 => format!("{}m{:02}s", t / 60, t % 60),
        3600..=86_399 => format!("{}h{:02}m", t / 3600, (t % 3600) / 60),
        _ => format!("{}d{:02}h", t / 86_400, (t % 86_400) / 3600),
    }
}

/// `3,000,000`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    // The first group has 1-3 digits, the others 3.
    let lead = match s.len() % 3 {
        0 => 3,
        r => r,
    };
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    out.push_str(&s[..lead]);
    let mut rest = &s[lead..];
    while !rest.is_empty() {
        out.push(',');
        out.push_str(&rest[..3]);
        rest = &rest[3..];
    }
    out
}

/// `10 Gbit/s` for a rate in bytes per second.
pub fn bit_rate(bytes_per_s: f64) -> String {
    let bits = bytes_per_s * 8.0;
    let (v, unit) = if bits >= 1e12 {
        (bits / 1e12, "Tbit/s")
    } else if bits >= 1e9 {
        (bits / 1e9, "Gbit/s")
    } else if bits >= 1e6 {
        (bits / 1e6, "Mbit/s")
    } else {
        (bits / 1e3, "kbit/s")
    };
    let v = format!("{v:.2}");
    let v = v.trim_end_matches('0').trim_end_matches('.');
    format!("{v} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(950.0), "950 B");
        assert_eq!(bytes(1_234_000.0), "1.23 MB");
        assert_eq!(bytes(12_340_000_000.0), "12.3 GB");
        assert_eq!(bytes(999_999.0), "1.00 MB");
        assert_eq!(duration(45.0), "45s");
        assert_eq!(duration(245.0), "4m05s");
        assert_eq!(duration(7380.0), "2h03m");
        assert_eq!(duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3d04h");
        assert_eq!(count(3_000_000), "3,000,000");
        assert_eq!(count(999), "999");
        assert_eq!(bit_rate(1.25e9), "10 Gbit/s");
        assert_eq!(bit_rate(1e8), "800 Mbit/s");
    }
}
