//! Query strings read exactly as Go's `net/url` reads them, because the oCIS schemes built on
//! them (signed URLs, public-share tokens) must see the same parameters the Go proxy saw.

/// A query decoded like Go's `url.ParseQuery`: pairs split on `&`, pairs containing `;` or an
/// invalid escape dropped, `+` decoded as space. Values may be arbitrary bytes.
pub struct Query {
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Query {
    pub fn parse(raw: &str) -> Self {
        let pairs = raw
            .split('&')
            .filter(|pair| !pair.is_empty() && !pair.contains(';'))
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                Some((unescape(k, true)?, unescape(v, true)?))
            })
            .collect();
        Self { pairs }
    }

    /// The first value of `name`, as Go's `Values.Get`.
    pub fn first(&self, name: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// The still encoded value of the pair [`Query::first`] would find for `name` in `raw`,
    /// found without decoding (or allocating) anything: for the request path, where most
    /// queries only need to be looked at. Each escape decodes to one byte, so the value is empty
    /// exactly when the decoded one is.
    pub fn first_raw<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
        raw.split('&')
            .filter(|pair| !pair.is_empty() && !pair.contains(';'))
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (decodes_to(k, name.as_bytes()) && escapes_valid(v)).then_some(v)
            })
            .next()
    }
}

/// Whether `raw` decodes as a query component (`+` is a space) to exactly `expected`; false
/// for an invalid escape, as [`unescape`] refuses it.
fn decodes_to(raw: &str, expected: &[u8]) -> bool {
    let bytes = raw.as_bytes();
    let (mut i, mut at) = (0, 0);
    while i < bytes.len() {
        let (b, width) = match bytes[i] {
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) {
                (Some(hi), Some(lo)) => (hi << 4 | lo, 3),
                _ => return false,
            },
            b'+' => (b' ', 1),
            b => (b, 1),
        };
        if expected.get(at) != Some(&b) {
            return false;
        }
        at += 1;
        i += width;
    }
    at == expected.len()
}

fn escapes_valid(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |j: usize| bytes.get(j).copied().and_then(hex_value).is_some();
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decoding as Go's `url.QueryUnescape` (`plus_is_space`) or `url.PathUnescape`;
/// `None` for an invalid escape.
pub fn unescape(s: &str, plus_is_space: bool) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex_value(*bytes.get(i + 1)?)?;
                let lo = hex_value(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `first_raw` finds what decoding everything and asking `first` finds.
    #[test]
    fn first_raw_agrees_with_the_decoded_query() {
        let names = ["OC-Signature", "signature", "a b", "x"];
        let queries = [
            "",
            "OC-Signature=abc",
            "OC-Signature=",
            "OC-Signature",
            "OC-Signature=a&OC-Signature=b",
            "OC-Signature=%zz&OC-Signature=ok",
            "OC-Signature=a;b&OC-Signature=c",
            "OC%2DSignature=encoded",
            "oc-signature=case",
            "OC-Signature%=bad-name&OC-Signature=good",
            "OC-Signatur=short&OC-Signaturee=long",
            "sign%61ture=x",
            "sign%6=x&signature=y",
            "a+b=plus&a%20b=space",
            "a+b",
            "x=%41%42&x=2",
            "x=%4",
            "x=%41%",
            "&&x=1&&",
            "x=1=2",
            "=x&x=",
        ];
        for q in queries {
            for name in names {
                let expected = Query::parse(q).first(name).map(<[u8]>::to_vec);
                let found = Query::first_raw(q, name).map(|v| unescape(v, true).unwrap());
                assert_eq!(found, expected, "{name} in {q:?}");
            }
        }
    }
}
