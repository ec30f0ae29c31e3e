//! Durations written the way operators write them: `250ms`, `10s`, `2m`, `1h`, `1m30s`.

use std::time::Duration;

/// Parses a duration made of one or more `<whole number><unit>` groups, units
/// `ms`, `s`, `m` and `h`. A bare number is refused: `timeout = "10"` is too easy
/// to read as milliseconds by one person and seconds by another.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err("empty duration (write e.g. \"10s\" or \"250ms\")".to_string());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits_len == 0 {
            return Err(format!(
                "invalid duration {s:?}: expected a number at {rest:?} (write e.g. \"1m30s\")"
            ));
        }
        let (digits, after) = rest.split_at(digits_len);
        let unit_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let (unit, after) = after.split_at(unit_len);
        let overflow = || format!("duration {s:?} is too large");
        let n: u64 = digits.parse().map_err(|_| overflow())?;
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(overflow)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(overflow)?),
            "" if after.starts_with('.') => {
                return Err(format!(
                    "invalid duration {s:?}: fractions are not supported, combine units instead (e.g. \"1s500ms\")"
                ))
            }
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: {digits:?} has no unit (ms, s, m or h)"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (expected ms, s, m or h)"
                ))
            }
        };
        total = total.checked_add(part).ok_or_else(overflow)?;
        rest = after;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_unit_and_combinations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("1h2m3s4ms").unwrap(),
            Duration::from_millis(3_723_004)
        );
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn refuses_malformed_input() {
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("5x")
            .unwrap_err()
            .contains("unknown unit \"x\""));
        assert!(parse_duration("s")
            .unwrap_err()
            .contains("expected a number"));
        assert!(parse_duration("1.5s").unwrap_err().contains("fractions"));
        assert!(parse_duration(" 1s").is_err());
        assert!(parse_duration("1s ").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1S").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn refuses_overflow() {
        assert!(parse_duration("99999999999999999999s")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration("6000000000000000000h")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration("18446744073709551615s1s")
            .unwrap_err()
            .contains("too large"));
    }
}
