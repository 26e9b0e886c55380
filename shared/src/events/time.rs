//! RFC 3339 timestamps the way Go's `time.Time` writes them in JSON (`RFC3339Nano`: up to nine
//! fractional digits, trailing zeros dropped), without pulling a date crate into the shared crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2024-05-01T10:00:00.5Z` for a time half a second past the minute. Times before 1970 are
/// written as the epoch (no event is that old).
pub fn format_rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `None` if malformed or before 1970.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let padded = format!("{:0<9}", &frac[..digits]);
        nanos = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || rb[3] != b':' {
                return None;
            }
            let sign = match rb[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(i64::try_from(year).ok()?, month, day);
    let local = days * 86_400 + i64::try_from(hour * 3600 + min * 60 + sec).ok()?;
    let utc = u64::try_from(local - offset).ok()?;
    Some(UNIX_EPOCH + Duration::new(utc, nanos))
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn formats_like_go_rfc3339nano() {
        assert_eq!(format_rfc3339_nano(at(0, 0)), "1970-01-01T00:00:00Z");
        // date -u -d @1714557600 → 2024-05-01 10:00:00
        assert_eq!(
            format_rfc3339_nano(at(1_714_557_600, 500_000_000)),
            "2024-05-01T10:00:00.5Z"
        );
        assert_eq!(
            format_rfc3339_nano(at(1_709_164_799, 123_456_789)),
            "2024-02-28T23:59:59.123456789Z"
        );
        // Leap day and the day after.
        assert_eq!(
            format_rfc3339_nano(at(1_709_208_000, 1_000)),
            "2024-02-29T12:00:00.000001Z"
        );
        assert_eq!(
            format_rfc3339_nano(at(951_868_800, 0)),
            "2000-03-01T00:00:00Z"
        );
    }

    #[test]
    fn parses_what_it_writes_and_offsets() {
        for (s, n) in [
            (0u64, 0u32),
            (1_714_557_600, 500_000_000),
            (1_709_208_000, 1_000),
            (4_102_444_799, 999_999_999),
        ] {
            assert_eq!(
                parse_rfc3339(&format_rfc3339_nano(at(s, n))),
                Some(at(s, n))
            );
        }
        assert_eq!(
            parse_rfc3339("2024-05-01T12:00:00.5+02:00"),
            Some(at(1_714_557_600, 500_000_000))
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T05:30:00-04:30"),
            Some(at(1_714_557_600, 0))
        );
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "2024-05-01",
            "2024-05-01 10:00:00Z",
            "2024-13-01T10:00:00Z",
            "2024-05-01T10:00:00",
            "2024-05-01T10:00:00.Z",
            "2024-05-01T10:00:00.1234567890Z",
            "2024-05-01T10:00:00+0200",
            "1969-12-31T23:59:59Z",
            "2O24-05-01T10:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s:?}");
        }
    }
}
