//! Fuzz target over what a metrics endpoint answers: the plain-HTTP/1.1 response reader of the
//! scrapers' own connections.

use switchyard::scraper::http1::Reader;

use super::harness::{Rng, Target};

const HTTP_TOKENS: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.0 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 307 Temporary Redirect\r\n",
    b"content-length: ",
    b"Content-Length: 0\r\n",
    b"transfer-encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"connection: close\r\n",
    b"content-encoding: gzip\r\n",
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"0\r\n\r\n",
    b";ext=\"x\"",
    b"ffffffffffffffff\r\n",
    b"7\r\n",
    b"x-trailer: 1\r\n",
    b"vllm:num_requests_waiting 3\n",
    b" ",
    b":",
];

/// Responses, read in one piece and in pieces: never panics; whatever way reads split the bytes,
/// the reader decides the same (finished at the same byte, the same status and body, or an error
/// both ways), and a body never exceeds the cap.
pub const RESPONSE: Target = Target {
    name: "http-response",
    extra_seeds: &[],
    dictionary: HTTP_TOKENS,
    generate: generate_response,
    check: check_response,
};

const MAX: usize = 4096;

/// What reading `bytes` gave: where the response ended, its status and body; or the error.
type Outcome = Result<Option<(usize, Option<u16>, Vec<u8>)>, String>;

/// Feeds `input` in the pieces `cuts` gives (end offsets), the peer closing after the last one
/// when `close`.
fn read(input: &[u8], cuts: &[usize], close: bool) -> Outcome {
    let mut reader = Reader::new(MAX);
    let mut decoded = Vec::new();
    for (i, &end) in cuts.iter().enumerate() {
        let eof = close && i + 1 == cuts.len();
        let raw = &input[..end];
        if reader.advance(raw, &mut decoded, eof).map_err(|e| format!("{e:?}"))? {
            let body = reader.body(raw, &decoded);
            if body.len() > MAX {
                return Err(format!("a body of {} bytes passed the cap of {MAX}", body.len()));
            }
            return Ok(Some((end, reader.status(), body.to_vec())));
        }
    }
    Ok(None)
}

fn check_response(input: &[u8]) -> Result<(), String> {
    let whole = read(input, &[input.len()], true);
    if let Err(e) = &whole
        && e.contains("cap of")
    {
        return Err(e.clone());
    }
    // Every byte its own read, then pieces of a size taken from the input.
    let step = 1 + input.first().map_or(0, |b| *b as usize % 13);
    let one_by_one: Vec<usize> = (1..input.len()).chain([input.len()]).collect();
    let stepped: Vec<usize> = (step..input.len()).step_by(step).chain([input.len()]).collect();
    for cuts in [one_by_one, stepped] {
        let pieces = read(input, &cuts, true);
        let agrees = match &pieces {
            // Finished before the last byte: reading just those bytes finishes the same.
            Ok(Some((end, ..))) if *end < input.len() => read(&input[..*end], &[*end], false) == pieces,
            Ok(_) => pieces == whole,
            Err(_) => whole.is_err(),
        };
        if !agrees {
            let first = &cuts[..cuts.len().min(3)];
            return Err(format!("in pieces ending at {first:?}…: {pieces:?}; in one piece: {whole:?}"));
        }
    }
    Ok(())
}

fn generate_response(rng: &mut Rng) -> Vec<u8> {
    let body: Vec<u8> = (0..rng.small(300)).map(|_| b' ' + rng.below(95) as u8).collect();
    let mut out = Vec::new();
    if rng.chance(10) {
        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    out.extend_from_slice(rng.pick(&[&b"HTTP/1.1 200 OK\r\n"[..], b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 500 Oops\r\n"]));
    if rng.chance(30) {
        out.extend_from_slice(b"content-type: text/plain; version=0.0.4\r\n");
    }
    match rng.below(3) {
        0 => {
            out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
        }
        1 => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            let mut rest = &body[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len());
                out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        _ => {
            out.extend_from_slice(b"connection: close\r\n\r\n");
            out.extend_from_slice(&body);
        }
    }
    out
}
