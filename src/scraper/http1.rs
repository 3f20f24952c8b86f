//! A plain-HTTP/1.1 client for one metrics endpoint. A scraper actor with an `http://` URL uses it
//! instead of the shared `reqwest` pool: one keep-alive connection per endpoint, the request
//! written from bytes prepared once, the response read into a buffer taken from its thread's
//! spares and given back when the page has been read (a 47 KB page arrives in a few reads and is
//! not copied again; a lane holds about as many buffers as it runs scrapes at once, not one per
//! endpoint). No pool, no header maps, no per-request task or channel. HTTPS, and an endpoint that
//! answers with a redirect, go through `reqwest` ([`super::fetch`]).
//!
//! Accepted: HTTP/1.0 and 1.1 responses with `Content-Length`, `Transfer-Encoding: chunked`
//! (extensions and trailers ignored) or a body ended by the connection's close; 1xx interim
//! responses (skipped); `Connection: close` and `keep-alive`. Refused with an error naming the
//! reason: a head over 64 KiB or with more than 100 headers, conflicting lengths, a transfer
//! coding other than chunked, a content coding (none is asked for), a body over the page cap,
//! bytes after the body. A connection kept from an earlier scrape that turns out closed before
//! answering is replaced once, as `reqwest` does with a pooled connection.

use std::cell::RefCell;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::protocol::ScrapeError;

/// The longest response head read.
const MAX_HEAD: usize = 64 * 1024;
/// The most headers in a head.
const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (size, extensions).
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// At least this much room is made before each read.
const READ_ROOM: usize = 16 * 1024;
/// Spare buffers kept per thread (about the scrapes a lane runs at once), and the largest kept.
const SPARES: usize = 64;
const SPARE_MAX_BYTES: usize = 1024 * 1024;

thread_local! {
    /// Buffers of this thread's finished scrapes, for its next ones.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// One response's buffers: read bytes and a decoded chunked body. Back to the thread's spares
/// when dropped.
#[derive(Debug)]
struct Buffers {
    raw: Vec<u8>,
    decoded: Vec<u8>,
}

impl Buffers {
    fn take() -> Buffers {
        let raw = SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default();
        Buffers { raw, decoded: Vec::new() }
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        for mut b in [std::mem::take(&mut self.raw), std::mem::take(&mut self.decoded)] {
            if b.capacity() == 0 || b.capacity() > SPARE_MAX_BYTES {
                continue;
            }
            b.clear();
            SPARE.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < SPARES {
                    s.push(b);
                }
            });
        }
    }
}

/// A page read: its body, in buffers that go back to the thread's spares when it is dropped.
#[derive(Debug)]
pub struct Page {
    buffers: Buffers,
    reader: Reader,
}

impl Page {
    pub fn bytes(&self) -> &[u8] {
        self.reader.body(&self.buffers.raw, &self.buffers.decoded)
    }
}

/// One endpoint's connection and the request it sends (its buffers are the thread's spares).
#[derive(Debug)]
pub struct Conn {
    /// The host to connect to (an IPv6 literal without brackets), at `port`.
    host: String,
    port: u16,
    request: Vec<u8>,
    stream: Option<TcpStream>,
    /// Bytes of the last response: room made before the first read, so a page like the last one
    /// is read without growing the buffer (and copying what it holds).
    expect: usize,
    /// The endpoint answered with a redirect: it is scraped through the shared client since.
    pub(super) redirected: bool,
}

/// What a GET returned.
#[derive(Debug)]
pub enum Got {
    /// 200 and its body.
    Page(Page),
    /// A redirect: the caller asks a client that follows it.
    Redirect,
}

/// How the body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// The parts of a response head that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    /// Bytes of the head, final blank line included.
    len: usize,
    status: u16,
    framing: Framing,
    keep_alive: bool,
}

impl Conn {
    /// `None` unless `url` is plain `http://` with a host.
    pub fn for_url(url: &reqwest::Url, user_agent: &str) -> Option<Conn> {
        if url.scheme() != "http" || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let mut target = url.path().to_string();
        if let Some(q) = url.query() {
            target.push('?');
            target.push_str(q);
        }
        let request =
            format!("GET {target} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: {user_agent}\r\naccept: */*\r\n\r\n");
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        Some(Conn { host, port, request: request.into_bytes(), stream: None, expect: READ_ROOM, redirected: false })
    }

    /// GETs the page, reading at most `max` body bytes. A cancelled call (a timeout) leaves no
    /// connection behind: the next call connects afresh.
    pub async fn get(&mut self, max: usize) -> Result<Got, ScrapeError> {
        let reused = self.stream.is_some();
        let (stream, reader, buffers) = match self.exchange(max).await {
            Err(Exchange::ClosedEarly(_)) if reused => self.exchange(max).await,
            other => other,
        }
        .map_err(Exchange::into_error)?;
        let Some(head) = reader.head else {
            return Err(ScrapeError::Request("invalid response: finished without a head".into()));
        };
        if (300..400).contains(&head.status) {
            return Ok(Got::Redirect);
        }
        if head.status != 200 {
            return Err(ScrapeError::Status(head.status));
        }
        // Only a complete, well-framed response leaves its connection for the next scrape.
        if head.keep_alive && head.framing != Framing::Close {
            self.stream = Some(stream);
        }
        Ok(Got::Page(Page { buffers, reader }))
    }

    /// Sends the request and reads one whole response, on the kept connection or a new one. The
    /// connection is held here, so a cancelled call drops it.
    async fn exchange(&mut self, max: usize) -> Result<(TcpStream, Reader, Buffers), Exchange> {
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => {
                let s = TcpStream::connect((self.host.as_str(), self.port)).await.map_err(Exchange::Connect)?;
                let _ = s.set_nodelay(true);
                s
            }
        };
        stream.write_all(&self.request).await.map_err(Exchange::ClosedEarly)?;
        let mut reader = Reader::new(max);
        let mut b = Buffers::take();
        b.raw.reserve(self.expect);
        loop {
            b.raw.reserve(reader.room(b.raw.len()));
            let eof = match stream.read_buf(&mut b.raw).await {
                Ok(n) => n == 0,
                Err(e) if b.raw.is_empty() => return Err(Exchange::ClosedEarly(e)),
                Err(e) => return Err(Exchange::Io(e)),
            };
            if reader.advance(&b.raw, &mut b.decoded, eof)? {
                self.expect = (b.raw.len() + b.raw.len() / 8).clamp(READ_ROOM, SPARE_MAX_BYTES);
                return Ok((stream, reader, b));
            }
        }
    }
}

/// Reads one response from the bytes received so far, as they grow: the I/O-free half of
/// [`Conn::get`]. Whatever way reads split a response, it decides the same (the fuzz target
/// `http-response` holds it to that).
#[derive(Debug, Clone)]
pub struct Reader {
    max: usize,
    /// Where the final (non-1xx) response starts.
    start: usize,
    head: Option<Head>,
    chunks: Chunks,
}

impl Reader {
    /// A reader of a response whose body may hold at most `max` bytes.
    pub fn new(max: usize) -> Reader {
        Reader { max, start: 0, head: None, chunks: Chunks { at: 0, state: ChunkState::Size } }
    }

    /// How many more bytes to make room for before the next read: what a length-framed body still
    /// lacks (read in as few calls as the socket allows), else [`READ_ROOM`].
    fn room(&self, have: usize) -> usize {
        match self.head {
            Some(Head { len, framing: Framing::Length(n), .. }) => (self.start + len + n).saturating_sub(have).max(1),
            _ => READ_ROOM,
        }
    }

    /// Takes in `raw`, every byte received so far (`eof`: and the peer closed after them); a
    /// chunked body is decoded into `decoded`. `Ok(true)`: the response is complete (a status
    /// other than 200 is complete at its head: its body is not read).
    pub fn advance(&mut self, raw: &[u8], decoded: &mut Vec<u8>, eof: bool) -> Result<bool, Exchange> {
        let head = match self.head {
            Some(h) => h,
            None => loop {
                match parse_head(&raw[self.start..])? {
                    // 1xx: an interim response; the real one follows it.
                    Some(h) if (100..200).contains(&h.status) => {
                        self.start += h.len;
                        if self.start > MAX_HEAD {
                            return Err(head_too_long());
                        }
                    }
                    Some(h) if h.len > MAX_HEAD => return Err(head_too_long()),
                    Some(h) => {
                        self.head = Some(h);
                        if h.status != 200 {
                            return Ok(true);
                        }
                        if matches!(h.framing, Framing::Length(n) if n > self.max) {
                            return Err(Exchange::TooLarge(self.max));
                        }
                        self.chunks.at = self.start + h.len;
                        break h;
                    }
                    None if raw.len() - self.start > MAX_HEAD => return Err(head_too_long()),
                    None if eof && raw.is_empty() => {
                        return Err(Exchange::ClosedEarly(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    None if eof => return Err(Exchange::Invalid("connection closed inside the response head".into())),
                    None => return Ok(false),
                }
            },
        };
        let body_at = self.start + head.len;
        let have = raw.len() - body_at;
        match head.framing {
            Framing::Length(n) if have > n => Err(after_body()),
            Framing::Length(n) if have == n => Ok(true),
            Framing::Length(n) if eof => {
                Err(Exchange::Invalid(format!("connection closed after {have} of {n} body bytes")))
            }
            Framing::Length(_) => Ok(false),
            Framing::Chunked => {
                // Framing and trailers cannot grow a response without bound either.
                let cap = 2 * self.max + MAX_HEAD;
                let done = self.chunks.decode(raw, decoded, self.max)?;
                if self.chunks.at - body_at > cap || (!done && have > cap) {
                    return Err(Exchange::TooLarge(self.max));
                }
                match (done, eof) {
                    (true, _) if self.chunks.at < raw.len() => Err(after_body()),
                    (true, _) => Ok(true),
                    (false, true) => Err(Exchange::Invalid("connection closed inside a chunked body".into())),
                    (false, false) => Ok(false),
                }
            }
            Framing::Close if have > self.max => Err(Exchange::TooLarge(self.max)),
            Framing::Close => Ok(eof),
        }
    }

    /// The status of the response read (`None` before its head).
    pub fn status(&self) -> Option<u16> {
        self.head.map(|h| h.status)
    }

    /// The body of a complete 200 response.
    pub fn body<'b>(&self, raw: &'b [u8], decoded: &'b [u8]) -> &'b [u8] {
        let Some(head) = self.head.filter(|h| h.status == 200) else { return &[] };
        let body_at = self.start + head.len;
        match head.framing {
            Framing::Chunked => decoded,
            Framing::Length(n) => &raw[body_at..body_at + n],
            Framing::Close => &raw[body_at..],
        }
    }
}

fn head_too_long() -> Exchange {
    Exchange::Invalid(format!("response head longer than {MAX_HEAD} bytes"))
}

fn after_body() -> Exchange {
    Exchange::Invalid("bytes after the response body".into())
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum Exchange {
    Connect(std::io::Error),
    /// Closed (or reset) before any byte of an answer: on a kept connection, worth one retry.
    ClosedEarly(std::io::Error),
    Io(std::io::Error),
    Invalid(String),
    TooLarge(usize),
}

impl Exchange {
    pub fn into_error(self) -> ScrapeError {
        match self {
            Exchange::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => ScrapeError::Refused,
            Exchange::Connect(e) => ScrapeError::Request(format!("connect: {e}")),
            Exchange::ClosedEarly(e) => ScrapeError::Request(format!("connection closed before a response: {e}")),
            Exchange::Io(e) => ScrapeError::Request(format!("reading the response: {e}")),
            Exchange::Invalid(why) => ScrapeError::Request(format!("invalid response: {why}")),
            Exchange::TooLarge(max) => ScrapeError::TooLarge(max),
        }
    }
}

/// Parses a complete head at the start of `buf` (`None`: not complete yet).
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Exchange> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Exchange::Invalid(format!("more than {MAX_HEADERS} headers")));
        }
        Err(e) => return Err(Exchange::Invalid(format!("response head: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let (mut length, mut chunked, mut keep_alive) = (None::<usize>, false, http11);
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .map_err(|_| Exchange::Invalid(format!("content-length {value:?} is not a length")))?;
            if length.is_some_and(|l| l != n) {
                return Err(Exchange::Invalid("conflicting content-length headers".into()));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if chunked || !coding.eq_ignore_ascii_case("chunked") {
                    return Err(Exchange::Invalid(format!("transfer-encoding {value:?} is not supported")));
                }
                chunked = true;
            }
        } else if h.name.eq_ignore_ascii_case("content-encoding") {
            if !value.eq_ignore_ascii_case("identity") {
                return Err(Exchange::Invalid(format!("content-encoding {value:?} was not asked for")));
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = match (chunked, length) {
        // No body for these, whatever the headers say.
        _ if status == 204 || status == 304 || (100..200).contains(&status) => Framing::Length(0),
        (true, Some(_)) => return Err(Exchange::Invalid("both content-length and chunked".into())),
        (true, None) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Close,
    };
    Ok(Some(Head { len, status, framing, keep_alive }))
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(usize),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// Incremental decoder of a chunked body held in a growing buffer.
#[derive(Debug, Clone)]
struct Chunks {
    /// The next undecoded byte of the buffer.
    at: usize,
    state: ChunkState,
}

impl Chunks {
    /// Decodes what `raw` holds from `at`, appending data to `out`. `Ok(true)`: the body is
    /// complete; `Ok(false)`: more bytes are needed.
    fn decode(&mut self, raw: &[u8], out: &mut Vec<u8>, max: usize) -> Result<bool, Exchange> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = self.line(raw)? else { return Ok(false) };
                    let size = line.split(|&b| b == b';').next().unwrap_or(&[]);
                    let size = std::str::from_utf8(size).unwrap_or("").trim_matches([' ', '\t']);
                    let size = (!size.is_empty() && size.len() <= 16)
                        .then(|| usize::from_str_radix(size, 16).ok())
                        .flatten()
                        .ok_or_else(|| {
                            Exchange::Invalid(format!("bad chunk size {:?}", String::from_utf8_lossy(line)))
                        })?;
                    if out.len().saturating_add(size) > max {
                        return Err(Exchange::TooLarge(max));
                    }
                    self.state = if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) };
                }
                ChunkState::Data(left) => {
                    let take = left.min(raw.len() - self.at);
                    if take == 0 {
                        return Ok(false);
                    }
                    out.extend_from_slice(&raw[self.at..self.at + take]);
                    self.at += take;
                    self.state = if take == left { ChunkState::DataEnd } else { ChunkState::Data(left - take) };
                }
                ChunkState::DataEnd => {
                    if raw.len() - self.at < 2 {
                        return Ok(false);
                    }
                    if &raw[self.at..self.at + 2] != b"\r\n" {
                        return Err(Exchange::Invalid("chunk data not followed by CRLF".into()));
                    }
                    self.at += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = self.line(raw)? else { return Ok(false) };
                    if line.is_empty() {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// The next CRLF-ended line from `at` (without its CRLF), consumed; `None` until complete.
    fn line<'r>(&mut self, raw: &'r [u8]) -> Result<Option<&'r [u8]>, Exchange> {
        let rest = &raw[self.at..];
        match memchr::memchr(b'\n', rest) {
            Some(i) if i > 0 && rest[i - 1] == b'\r' && i <= MAX_CHUNK_LINE => {
                self.at += i + 1;
                Ok(Some(&rest[..i - 1]))
            }
            Some(_) => Err(Exchange::Invalid("chunk line not ended by CRLF, or too long".into())),
            None if rest.len() > MAX_CHUNK_LINE => Err(Exchange::Invalid("chunk line too long".into())),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng as _, SeedableRng as _};

    use super::*;

    fn head(s: &str) -> Head {
        parse_head(s.as_bytes()).ok().flatten().expect("a complete head")
    }

    fn invalid(s: &str) -> String {
        match parse_head(s.as_bytes()) {
            Err(Exchange::Invalid(why)) => why,
            other => panic!("{s:?} must be refused, got {other:?}"),
        }
    }

    #[test]
    fn heads_give_status_framing_and_keep_alive() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nbody");
        assert_eq!(h, Head { len: 39, status: 200, framing: Framing::Length(12), keep_alive: true });
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\nconnection: close\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        let h = head("HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(0), true));
        assert_eq!(head("HTTP/1.1 204 No Content\r\n\r\n").framing, Framing::Length(0));
        assert_eq!(head("HTTP/1.1 307 Temporary Redirect\r\nlocation: /metrics/\r\n\r\n").status, 307);
        assert!(matches!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1"), Ok(None)), "partial");
    }

    #[test]
    fn heads_that_cannot_be_framed_safely_are_refused() {
        assert!(invalid("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n").contains("conflicting"));
        assert!(invalid("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").contains("not a length"));
        assert!(invalid("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n").contains("both"));
        assert!(invalid("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n").contains("not supported"));
        assert!(invalid("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n").contains("not supported"));
        assert!(invalid("HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n\r\n").contains("not asked for"));
        assert!(invalid("SMTP ready\r\n\r\n").contains("response head"));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: y\r\n")).collect();
        assert!(invalid(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).contains("more than"));
    }

    fn dechunk(raw: &[u8], max: usize) -> Result<(bool, Vec<u8>, usize), String> {
        let mut c = Chunks { at: 0, state: ChunkState::Size };
        let mut out = Vec::new();
        match c.decode(raw, &mut out, max) {
            Ok(done) => Ok((done, out, c.at)),
            Err(Exchange::Invalid(why)) => Err(why),
            Err(Exchange::TooLarge(_)) => Err("too large".into()),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    #[test]
    fn chunked_bodies_decode_whole_or_in_pieces() {
        let body = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\ntrailer: x\r\n\r\n";
        assert_eq!(dechunk(body, 1 << 20), Ok((true, b"hello, world".to_vec(), body.len())));
        // Fed one more byte at a time, as reads may split it anywhere.
        let mut c = Chunks { at: 0, state: ChunkState::Size };
        let mut out = Vec::new();
        let done: Vec<bool> =
            (1..=body.len()).map(|n| c.decode(&body[..n], &mut out, 1 << 20).expect("valid")).collect();
        assert_eq!(out, b"hello, world");
        assert_eq!(done.iter().position(|&d| d), Some(body.len() - 1), "complete only at the last byte");
    }

    #[test]
    fn bad_or_oversized_chunks_are_refused() {
        assert_eq!(dechunk(b"6\r\nhello\r\n", 100).map(|r| r.0), Ok(false), "waits for the data's last byte");
        assert!(dechunk(b"5\r\nhelloXY0\r\n\r\n", 100).unwrap_err().contains("CRLF"));
        assert!(dechunk(b"zz\r\n", 100).unwrap_err().contains("bad chunk size"));
        assert!(dechunk(b"\r\n", 100).unwrap_err().contains("bad chunk size"));
        assert!(dechunk(b"11111111111111111\r\n", usize::MAX).unwrap_err().contains("bad chunk size"));
        assert!(dechunk(b"5\nhello", 100).unwrap_err().contains("CRLF"));
        assert_eq!(dechunk(b"65\r\n", 100).unwrap_err(), "too large", "the declared size counts at once");
        assert!(dechunk(&vec![b'1'; MAX_CHUNK_LINE + 1], 100).unwrap_err().contains("too long"));
    }

    /// Feeds `response` to a reader in pieces of 1..=`piece` bytes, the peer closing after the
    /// last one when `close`; the body read, or the error.
    fn read_in_pieces(response: &[u8], piece: usize, close: bool, rng: &mut SmallRng) -> Result<Vec<u8>, String> {
        let mut reader = Reader::new(1 << 20);
        let (mut raw, mut decoded) = (Vec::new(), Vec::new());
        while raw.len() < response.len() {
            let n = rng.random_range(1..=piece).min(response.len() - raw.len());
            raw.extend_from_slice(&response[raw.len()..raw.len() + n]);
            let last = raw.len() == response.len();
            let done = reader.advance(&raw, &mut decoded, last && close).map_err(|e| format!("{e:?}"))?;
            if done != last {
                return Err(format!("done {done} at {} of {} bytes", raw.len(), response.len()));
            }
        }
        Ok(reader.body(&raw, &decoded).to_vec())
    }

    #[test]
    fn any_split_of_a_response_reads_the_same_body() {
        let mut rng = SmallRng::seed_from_u64(7);
        for case in 0..300 {
            let len = rng.random_range(0..3000);
            let body: Vec<u8> = (0..len).map(|_| rng.random_range(b' '..=b'~')).collect();
            let mut response = Vec::new();
            if rng.random_bool(0.2) {
                response.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            let close = case % 3 == 2;
            match case % 3 {
                0 => {
                    response.extend_from_slice(format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").as_bytes());
                    response.extend_from_slice(&body);
                }
                1 => {
                    response.extend_from_slice(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
                    let mut rest = &body[..];
                    while !rest.is_empty() {
                        let n = rng.random_range(1..=rest.len().min(500));
                        response.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                        response.extend_from_slice(&rest[..n]);
                        response.extend_from_slice(b"\r\n");
                        rest = &rest[n..];
                    }
                    response.extend_from_slice(b"0\r\n\r\n");
                }
                _ => {
                    response.extend_from_slice(b"HTTP/1.0 200 OK\r\n\r\n");
                    response.extend_from_slice(&body);
                }
            }
            for piece in [1, 7, 64, 100_000] {
                let got = read_in_pieces(&response, piece, close, &mut rng);
                assert_eq!(got.as_deref(), Ok(&body[..]), "case {case}, pieces of up to {piece}");
            }
        }
    }

    #[test]
    fn responses_that_never_end_are_cut_off() {
        let mut reader = Reader::new(1000);
        let mut raw = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        assert!(!reader.advance(&raw, &mut Vec::new(), false).expect("reading"));
        raw.resize(raw.len() + 1001, b'#');
        assert!(matches!(reader.advance(&raw, &mut Vec::new(), false), Err(Exchange::TooLarge(1000))));
        let interim = b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n".repeat(MAX_HEAD / 30);
        let err = Reader::new(1000).advance(&interim, &mut Vec::new(), false).expect_err("endless interim responses");
        assert!(matches!(&err, Exchange::Invalid(why) if why.contains("head longer")), "{err:?}");
        let trailers =
            [&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n"[..], &b"x: y\r\n".repeat(12_000)].concat();
        let err = Reader::new(1000).advance(&trailers, &mut Vec::new(), false).expect_err("endless trailers");
        assert!(matches!(err, Exchange::TooLarge(1000)), "{err:?}");
        let err = Reader::new(1000).advance(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", &mut Vec::new(), true);
        assert!(matches!(&err, Err(Exchange::Invalid(why)) if why.contains("2 of 5")), "{err:?}");
        let err = Reader::new(1000).advance(b"", &mut Vec::new(), true);
        assert!(matches!(err, Err(Exchange::ClosedEarly(_))), "nothing at all: worth a retry on a kept connection");
        let status = {
            let mut r = Reader::new(1000);
            assert!(
                r.advance(b"HTTP/1.1 503 Unavailable\r\ncontent-length: 99\r\n\r\n", &mut Vec::new(), false)
                    .expect("head")
            );
            r.status()
        };
        assert_eq!(status, Some(503), "a status other than 200 is complete at its head");
    }

    #[test]
    fn buffers_go_back_to_the_threads_spares() {
        SPARE.with(|s| s.borrow_mut().clear());
        let mut b = Buffers::take();
        b.raw.extend_from_slice(&[1; 50_000]);
        let capacity = b.raw.capacity();
        drop(b);
        let again = Buffers::take();
        assert!(again.raw.is_empty() && again.raw.capacity() == capacity, "the same buffer, emptied");
        drop(again);
        let mut huge = Buffers::take();
        huge.raw.reserve(SPARE_MAX_BYTES + 1);
        drop(huge);
        assert_eq!(SPARE.with(|s| s.borrow().len()), 0, "a buffer over the size cap is freed");
        let many: Vec<Buffers> = (0..SPARES + 5)
            .map(|_| {
                let mut b = Buffers::take();
                b.raw.push(1);
                b
            })
            .collect();
        drop(many);
        assert_eq!(SPARE.with(|s| s.borrow().len()), SPARES, "at most SPARES are kept");
    }

    #[test]
    fn only_plain_http_urls_get_a_connection() {
        let url = |s: &str| reqwest::Url::parse(s).expect("url");
        let c = Conn::for_url(&url("http://10.0.0.1:8000/metrics?x=1"), "ua").expect("http");
        assert_eq!((c.host.as_str(), c.port), ("10.0.0.1", 8000));
        let request = String::from_utf8(c.request).expect("ascii");
        assert!(request.starts_with("GET /metrics?x=1 HTTP/1.1\r\nhost: 10.0.0.1:8000\r\n"), "{request}");
        let c = Conn::for_url(&url("http://[fd00::1]/m"), "ua").expect("ipv6");
        assert_eq!((c.host.as_str(), c.port), ("fd00::1", 80));
        assert!(String::from_utf8(c.request).expect("ascii").contains("host: [fd00::1]\r\n"));
        assert!(Conn::for_url(&url("https://10.0.0.1/metrics"), "ua").is_none());
        assert!(Conn::for_url(&url("http://user:pw@10.0.0.1/metrics"), "ua").is_none(), "credentials: reqwest");
    }
}
