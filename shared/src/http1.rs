//! HTTP/1.1 message framing for the gateway's upstream client (RFC 9112), without I/O: the request
//! head as bytes, the response head parsed from bytes, how long each body is, and the chunked
//! transfer coding.
//!
//! Why the gateway frames its own upstream messages: a general-purpose client spends most of a
//! small proxied request on machinery a reverse proxy does not need (a task and channels per
//! connection, per-message state for every feature). What remains is this: write one head, read
//! one head, and know where each body ends, so that a connection is reused only when both
//! messages ended cleanly.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Version};

/// Longest response head accepted from an upstream.
pub const MAX_HEAD_BYTES: usize = 256 * 1024;
/// Most header fields accepted in a response head or a trailer section.
pub const MAX_HEADERS: usize = 128;
/// Fields the gateway may add to a response on its way back.
const RESPONSE_FIELDS_ADDED: usize = 16;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// What an upstream sent that is not HTTP/1.1 the gateway can relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Http1Error {
    #[error("invalid response head: {0}")]
    Head(String),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
}

/// How a request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body (and no framing header added).
    Empty,
    Length(u64),
    Chunked,
}

/// Decides the framing of a request body and the header that announces it, as hyper's client
/// does: a body that has already ended is sent as none; a `Content-Length` the request carries is
/// kept; a known size is announced; an unknown one is chunked, except for GET, HEAD and CONNECT,
/// which are sent without a body.
pub fn request_framing(
    method: &Method,
    headers: &HeaderMap,
    ended: bool,
    exact_size: Option<u64>,
) -> (RequestFraming, Option<(HeaderName, HeaderValue)>) {
    if ended {
        return (RequestFraming::Empty, None);
    }
    if let Some(len) = content_length(headers).ok().flatten() {
        return (RequestFraming::Length(len), None);
    }
    match exact_size {
        Some(len) => (
            RequestFraming::Length(len),
            Some((header::CONTENT_LENGTH, HeaderValue::from(len))),
        ),
        None if matches!(*method, Method::GET | Method::HEAD | Method::CONNECT) => {
            (RequestFraming::Empty, None)
        }
        None => (
            RequestFraming::Chunked,
            Some((
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            )),
        ),
    }
}

/// Appends the request head: request line in origin form, the fields, `extra` (the framing
/// header), the empty line. `headers` must not carry `Transfer-Encoding` (a hop-by-hop field the
/// proxy strips) so that the framing is the one announced here.
pub fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    extra: Option<&(HeaderName, HeaderValue)>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let fields = headers.iter().chain(extra.map(|(n, v)| (n, v)));
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: a HEAD request, or a 1xx, 204 or 304 status.
    Empty,
    Length(u64),
    Chunked,
    /// The body ends when the upstream closes the connection.
    UntilClose,
}

#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: ResponseFraming,
    /// The connection may carry another request after this exchange.
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf` and removes it from there. `Ok(None)`: the head
/// is not complete yet. Interim (1xx) responses are returned like any other; the caller skips
/// them.
pub fn parse_response_head(
    buf: &mut BytesMut,
    request_method: &Method,
) -> Result<Option<ResponseHead>, Http1Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(Http1Error::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Http1Error::Head(e.to_string())),
    };
    let code = parsed
        .code
        .ok_or_else(|| Http1Error::Head("no status".into()))?;
    let status =
        StatusCode::from_u16(code).map_err(|_| Http1Error::Head(format!("status {code}")))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Offsets into `buf`, so that the values can share the head's bytes once it is split off.
    let base = buf.as_ptr() as usize;
    let mut spans = Vec::with_capacity(parsed.headers.len());
    // Which framing fields are there, noted here so that absent ones are never looked up.
    let mut present = Present::default();
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Http1Error::Head(format!("field name {:?}", field.name)))?;
        present.note(&name);
        let start = field.value.as_ptr() as usize - base;
        spans.push((name, start, start + field.value.len()));
    }
    let head: Bytes = buf.split_to(len).freeze();
    // Room for the fields the gateway adds to every response (security headers, request id),
    // so that adding them does not grow the map.
    let mut headers = HeaderMap::with_capacity(spans.len() + RESPONSE_FIELDS_ADDED);
    for (name, start, end) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| Http1Error::Head(format!("value of {name}")))?;
        headers.append(name, value);
    }
    let framing = response_framing(request_method, status, &headers, present)?;
    let keep_alive = framing != ResponseFraming::UntilClose
        && !(present.transfer_encoding && present.content_length)
        && match version {
            Version::HTTP_10 => present.connection && connection_has(&headers, "keep-alive"),
            _ => !(present.connection && connection_has(&headers, "close")),
        };
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// The framing fields a response head carries.
#[derive(Debug, Default, Clone, Copy)]
struct Present {
    transfer_encoding: bool,
    content_length: bool,
    connection: bool,
}

impl Present {
    fn note(&mut self, name: &HeaderName) {
        if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == header::CONTENT_LENGTH {
            self.content_length = true;
        } else if name == header::CONNECTION {
            self.connection = true;
        }
    }
}

fn response_framing(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
    present: Present,
) -> Result<ResponseFraming, Http1Error> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(ResponseFraming::Empty);
    }
    if present.transfer_encoding {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|c| !c.is_empty());
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case("chunked") => ResponseFraming::Chunked,
            _ => ResponseFraming::UntilClose,
        });
    }
    if !present.content_length {
        return Ok(ResponseFraming::UntilClose);
    }
    Ok(match content_length(headers)? {
        Some(len) => ResponseFraming::Length(len),
        None => ResponseFraming::UntilClose,
    })
}

/// The message's `Content-Length`: every value (also in comma-separated lists) must be the same
/// decimal number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Http1Error> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = trim_ows(part);
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(Http1Error::ContentLength);
            }
            let len = part.iter().try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            let len = len.ok_or(Http1Error::ContentLength)?;
            if found.is_some_and(|f| f != len) {
                return Err(Http1Error::ContentLength);
            }
            found = Some(len);
        }
    }
    Ok(found)
}

/// Whether a `Connection` value lists `token`. Compared byte-wise (cheaper than `str` splitting,
/// this runs on every response): a value with non-ASCII bytes elsewhere still counts.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| list_items(v.as_bytes()))
        .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The items of a comma-separated field value (RFC 9110 §5.6.1), each without the whitespace
/// around it; empty items are kept.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

/// `part` without the optional whitespace (spaces and tabs, RFC 9110 §5.6.3) around it.
fn trim_ows(part: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = part.iter().position(|b| !ows(b)).unwrap_or(part.len());
    let end = part.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &part[start..end]
}

/// Appends the framing of one chunk of a chunked body before its data.
pub fn chunk_header(out: &mut Vec<u8>, len: usize) {
    use std::io::Write as _;
    let _ = write!(out, "{len:X}\r\n");
}

/// What ends a chunked body: the last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Decodes a chunked body as its bytes arrive.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    /// Nothing can be decoded from what has arrived so far.
    NeedMore,
    /// The body has ended, with the trailer fields if it had any.
    Done(Option<HeaderMap>),
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Takes what it can from the start of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Http1Error> {
        loop {
            match self.state {
                ChunkState::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        let _ = buf.split_to(used);
                        self.state = ChunkState::Trailers;
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        let _ = buf.split_to(used);
                        self.state = ChunkState::Data(size);
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err(Http1Error::Chunked("chunk-size line too long"));
                    }
                    Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                    Err(_) => return Err(Http1Error::Chunked("invalid chunk size")),
                },
                ChunkState::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|b| *b != b'\r') {
                            return Err(Http1Error::Chunked("chunk not followed by CRLF"));
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Http1Error::Chunked("chunk not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => return self.trailers(buf),
                ChunkState::Done => return Ok(Decoded::Done(None)),
            }
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, Http1Error> {
        if buf.starts_with(b"\r\n") {
            let _ = buf.split_to(2);
            self.state = ChunkState::Done;
            return Ok(Decoded::Done(None));
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((used, fields))) => {
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for f in fields.iter() {
                    let name = HeaderName::from_bytes(f.name.as_bytes())
                        .map_err(|_| Http1Error::Chunked("invalid trailer name"))?;
                    let value = HeaderValue::from_bytes(f.value)
                        .map_err(|_| Http1Error::Chunked("invalid trailer value"))?;
                    trailers.append(name, value);
                }
                let _ = buf.split_to(used);
                self.state = ChunkState::Done;
                Ok(Decoded::Done(Some(trailers)))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                Err(Http1Error::Chunked("trailer section too large"))
            }
            Ok(httparse::Status::Partial) => Ok(Decoded::NeedMore),
            Err(_) => Err(Http1Error::Chunked("invalid trailer section")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, method: &Method) -> Result<Option<ResponseHead>, Http1Error> {
        parse_response_head(&mut BytesMut::from(text), method)
    }

    fn head(text: &str) -> ResponseHead {
        parse(text, &Method::GET).unwrap().unwrap()
    }

    #[test]
    fn the_request_head_is_origin_form_with_the_framing_header_last() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("files.example"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let (framing, extra) = request_framing(&Method::PUT, &headers, false, None);
        assert_eq!(framing, RequestFraming::Chunked);
        let mut out = Vec::new();
        encode_request_head(&mut out, &Method::PUT, "/a?b=c", &headers, extra.as_ref());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "PUT /a?b=c HTTP/1.1\r\nhost: files.example\r\nx-a: 1\r\nx-a: 2\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn request_framing_follows_the_body_and_the_declared_length() {
        let none = HeaderMap::new();
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        let f = |m: &Method, h: &HeaderMap, ended, size| request_framing(m, h, ended, size);
        assert_eq!(
            f(&Method::POST, &none, true, Some(0)),
            (RequestFraming::Empty, None)
        );
        assert_eq!(
            f(&Method::PUT, &declared, false, Some(12)),
            (RequestFraming::Length(12), None)
        );
        let (framing, extra) = f(&Method::POST, &none, false, Some(5));
        assert_eq!(framing, RequestFraming::Length(5));
        assert_eq!(extra.unwrap().1, "5");
        assert_eq!(
            f(&Method::GET, &none, false, None),
            (RequestFraming::Empty, None)
        );
        assert_eq!(
            f(
                &Method::from_bytes(b"PROPFIND").unwrap(),
                &none,
                false,
                None
            )
            .0,
            RequestFraming::Chunked
        );
    }

    #[test]
    fn a_head_arriving_in_pieces_is_parsed_once_complete_and_split_off() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Multi: a\r\nx-multi: b\r\n\r\nhello";
        for cut in 1..text.len() - 5 {
            assert!(
                parse(&text[..cut], &Method::GET).unwrap().is_none(),
                "cut at {cut}"
            );
        }
        let mut buf = BytesMut::from(text);
        let h = parse_response_head(&mut buf, &Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.framing, ResponseFraming::Length(5));
        assert!(h.keep_alive);
        let multi: Vec<_> = h.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn bodies_are_delimited_as_rfc_9112_says() {
        let cases = [
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
                ResponseFraming::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\n\r\n",
                ResponseFraming::Empty,
                true,
            ),
            (
                "HTTP/1.1 100 Continue\r\n\r\n",
                ResponseFraming::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                ResponseFraming::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
                ResponseFraming::Chunked,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                ResponseFraming::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                ResponseFraming::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
                ResponseFraming::Length(3),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
                ResponseFraming::Length(3),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length:  3 ,\t3\r\nConnection: foo,\tCLOSE \r\n\r\n",
                ResponseFraming::Length(3),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
                ResponseFraming::Length(3),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: Keep-Alive\r\n\r\n",
                ResponseFraming::Length(3),
                true,
            ),
        ];
        for (text, framing, keep_alive) in cases {
            let h = head(text);
            assert_eq!((h.framing, h.keep_alive), (framing, keep_alive), "{text}");
        }
        let h = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            &Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, ResponseFraming::Empty);
    }

    #[test]
    fn malformed_heads_and_lengths_are_errors() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3,,3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            assert_eq!(
                parse(text, &Method::GET).unwrap_err(),
                Http1Error::ContentLength,
                "{text}"
            );
        }
        for text in [
            "HTTX/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
        ] {
            assert!(
                matches!(parse(text, &Method::GET), Err(Http1Error::Head(_))),
                "{text}"
            );
        }
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            parse(&huge, &Method::GET).unwrap_err(),
            Http1Error::HeadTooLarge
        );
    }

    fn decode_all(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), Http1Error> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Done(trailers) => {
                    assert!(decoder.is_done());
                    return Ok((body, trailers));
                }
                Decoded::NeedMore => {
                    assert!(fed < wire.len(), "ran out of input");
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5;ext=1\r\nhello\r\nA\r\n 012345678\r\n0\r\nx-sum: 42\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (body, trailers) = decode_all(wire, step).unwrap();
            assert_eq!(body, b"hello 012345678");
            assert_eq!(trailers.unwrap()["x-sum"], "42");
        }
        let (body, trailers) = decode_all(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!((body.as_slice(), trailers), (&b"abc"[..], None));
    }

    #[test]
    fn broken_chunked_bodies_are_errors() {
        for wire in [
            &b"zz\r\n"[..],
            b"3\r\nabcX\r\n",
            b"3\r\nabc\rX",
            b"0\r\nbad name: 1\r\n\r\n",
        ] {
            assert!(
                decode_all(wire, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long = format!("1{}", ";".repeat(MAX_CHUNK_LINE + 1));
        assert!(decode_all(long.as_bytes(), 64).is_err());
    }

    #[test]
    fn chunk_headers_are_hexadecimal() {
        let mut out = Vec::new();
        chunk_header(&mut out, 0x1f40);
        assert_eq!(out, b"1F40\r\n");
    }
}
