//! Go-style durations (`10s`, `1h30m`, `500ms`, `1.5h`).
//!
//! oCIS configuration files and environment variables spell durations the way Go's
//! `time.ParseDuration` reads them; operators copy these values between an oCIS deployment and
//! Gatehouse, so the same syntax has to be accepted here, and rejected where Go rejects it
//! (a bare number such as `10` is not a duration).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration read and written in Go syntax.
///
/// Printing omits zero components (`12h`, `1h30m`, `1.5s`, `500ms`, `0s`); every printed form is
/// accepted by Go's `time.ParseDuration` and by [`GoDuration::from_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub Duration);

/// Why a string is not a Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// Go durations are `int64` nanoseconds; larger values overflow there, so they are refused here too.
const MAX_NANOS: u128 = i64::MAX as u128;

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        // U+00B5 MICRO SIGN and U+03BC GREEK SMALL LETTER MU, as Go accepts both.
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        _ => return None,
    })
}

impl GoDuration {
    pub const fn secs(s: u64) -> Self {
        GoDuration(Duration::from_secs(s))
    }

    pub const fn millis(ms: u64) -> Self {
        GoDuration(Duration::from_millis(ms))
    }

    pub const fn as_duration(self) -> Duration {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// Parses Go duration syntax. Negative durations are refused (nothing in the configuration
    /// can use one), except `-0`.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let err = |reason| DurationError {
            input: input.to_owned(),
            reason,
        };
        let mut s = input;
        let mut negative = false;
        if let Some(rest) = s.strip_prefix('-') {
            negative = true;
            s = rest;
        } else if let Some(rest) = s.strip_prefix('+') {
            s = rest;
        }
        if s == "0" {
            return Ok(GoDuration(Duration::ZERO));
        }
        if s.is_empty() {
            return Err(err("empty (write e.g. \"10s\" or \"0\")"));
        }
        let mut total: u128 = 0;
        while !s.is_empty() {
            let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
            let (int_part, rest) = s.split_at(int_len);
            s = rest;
            let mut frac_part = "";
            if let Some(rest) = s.strip_prefix('.') {
                let frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
                (frac_part, s) = rest.split_at(frac_len);
            }
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(err("expected a number"));
            }
            let unit_len = s
                .char_indices()
                .find(|(_, c)| *c == '.' || c.is_ascii_digit())
                .map_or(s.len(), |(i, _)| i);
            let (unit, rest) = s.split_at(unit_len);
            s = rest;
            if unit.is_empty() {
                return Err(err(
                    "missing unit (one of ns, us, µs, ms, s, m, h; a bare number is not a duration)",
                ));
            }
            let unit = unit_nanos(unit)
                .ok_or_else(|| err("unknown unit (use ns, us, µs, ms, s, m or h)"))?;
            let whole: u128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| err("number too large"))?
            };
            let mut component = whole.checked_mul(unit).ok_or_else(|| err("overflow"))?;
            if !frac_part.is_empty() {
                // Digits beyond nanosecond precision cannot change the result.
                let digits = &frac_part[..frac_part.len().min(24)];
                let numerator: u128 = digits.parse().map_err(|_| err("bad fraction"))?;
                let scale = 10u128.pow(digits.len() as u32);
                component += numerator * unit / scale;
            }
            total = total
                .checked_add(component)
                .ok_or_else(|| err("overflow"))?;
            if total > MAX_NANOS {
                return Err(err("overflow (the largest duration is about 292 years)"));
            }
        }
        if negative && total != 0 {
            return Err(err("negative durations are not allowed"));
        }
        let secs = (total / NANOS_PER_SEC) as u64;
        let nanos = (total % NANOS_PER_SEC) as u32;
        Ok(GoDuration(Duration::new(secs, nanos)))
    }
}

impl From<Duration> for GoDuration {
    fn from(d: Duration) -> Self {
        GoDuration(d)
    }
}

impl From<GoDuration> for Duration {
    fn from(d: GoDuration) -> Self {
        d.0
    }
}

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GoDuration::parse(s)
    }
}

/// Writes `value / 10^digits` with the fraction's trailing zeros removed, followed by `unit`.
fn write_fraction(f: &mut fmt::Formatter<'_>, value: u128, digits: u32, unit: &str) -> fmt::Result {
    let scale = 10u128.pow(digits);
    let (whole, frac) = (value / scale, value % scale);
    if frac == 0 {
        return write!(f, "{whole}{unit}");
    }
    let frac = format!("{frac:0width$}", width = digits as usize);
    write!(f, "{whole}.{}{unit}", frac.trim_end_matches('0'))
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000 {
            return write!(f, "{nanos}ns");
        }
        if nanos < 1_000_000 {
            return write_fraction(f, nanos, 3, "\u{b5}s");
        }
        if nanos < NANOS_PER_SEC {
            return write_fraction(f, nanos, 6, "ms");
        }
        let total_secs = nanos / NANOS_PER_SEC;
        let (hours, minutes, secs) = (total_secs / 3600, total_secs / 60 % 60, total_secs % 60);
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        let sub = nanos % NANOS_PER_SEC;
        if secs > 0 || sub > 0 {
            write_fraction(f, u128::from(secs as u64) * NANOS_PER_SEC + sub, 9, "s")?;
        }
        Ok(())
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

struct DurationVisitor;

impl DurationVisitor {
    fn bare_number<E: de::Error>(n: impl fmt::Display) -> E {
        E::custom(format_args!(
            "a bare number ({n}) is not a duration, as in Go/oCIS: add a unit, e.g. \"{n}s\""
        ))
    }
}

impl Visitor<'_> for DurationVisitor {
    type Value = GoDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Go duration string such as \"10s\", \"1h30m\" or \"500ms\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
        GoDuration::parse(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoDuration, E> {
        Err(Self::bare_number(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoDuration, E> {
        Err(Self::bare_number(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<GoDuration, E> {
        Err(Self::bare_number(v))
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Duration {
        GoDuration::parse(s).unwrap().0
    }

    #[test]
    fn parses_go_syntax() {
        assert_eq!(d("10s"), Duration::from_secs(10));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("-0"), Duration::ZERO);
        assert_eq!(d("+5s"), Duration::from_secs(5));
        assert_eq!(d("300us"), Duration::from_micros(300));
        assert_eq!(d("300\u{b5}s"), Duration::from_micros(300));
        assert_eq!(d("300\u{3bc}s"), Duration::from_micros(300));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d(".5s"), Duration::from_millis(500));
        assert_eq!(d("1.s"), Duration::from_secs(1));
        assert_eq!(d("2h45m30.25s"), Duration::new(9930, 250_000_000));
        assert_eq!(d("1.0000000019s"), Duration::new(1, 1));
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in ["", "10", "s", "1x", "1.5", ".s", "-", "1h-5m", "1 s", "10S"] {
            assert!(
                GoDuration::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        let e = GoDuration::parse("10").unwrap_err();
        assert!(e.to_string().contains("missing unit"), "{e}");
    }

    #[test]
    fn rejects_negative_and_overflow() {
        assert!(GoDuration::parse("-1s").is_err());
        assert!(GoDuration::parse("2562048h").is_err());
        assert!(GoDuration::parse("2562047h").is_ok());
    }

    #[test]
    fn prints_compact_go_syntax_that_round_trips() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::from_nanos(1500), "1.5\u{b5}s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(200_500), "200.5ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_secs(12 * 3600), "12h"),
            (Duration::new(3601, 1), "1h1.000000001s"),
        ];
        for (dur, text) in cases {
            assert_eq!(GoDuration(dur).to_string(), text);
            assert_eq!(d(text), dur, "{text} must parse back");
        }
    }

    #[test]
    fn serde_uses_strings_and_refuses_bare_numbers() {
        let v: GoDuration = serde_yaml_ng::from_str("1h30m").unwrap();
        assert_eq!(v, GoDuration::secs(5400));
        assert_eq!(serde_yaml_ng::to_string(&v).unwrap().trim(), "1h30m");
        let e = serde_yaml_ng::from_str::<GoDuration>("10").unwrap_err();
        assert!(e.to_string().contains("bare number (10)"), "{e}");
        assert!(e.to_string().contains("\"10s\""), "{e}");
        let e = serde_yaml_ng::from_str::<GoDuration>("1.5").unwrap_err();
        assert!(e.to_string().contains("bare number"), "{e}");
        let e = serde_yaml_ng::from_str::<GoDuration>("ten").unwrap_err();
        assert!(e.to_string().contains("invalid duration"), "{e}");
    }
}
