//! A deadline for connections to start speaking HTTP/2: an accepted connection that has not sent
//! the client preface and the frame header of the SETTINGS frame that must follow it within the
//! deadline is closed. Neither tonic nor hyper bounds this phase (keep-alive pings only start
//! once the handshake is done), so without it a peer can hold sockets and tasks forever by
//! connecting and saying nothing.
//!
//! It wraps the accepted streams handed to `serve_with_incoming`; once the preface is in, the
//! wrapper only forwards. It does not bound TLS handshakes (`picker::tls` does) or idle
//! connections after the handshake (HTTP/2 keep-alive does).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` (24 bytes) and a 9-byte frame header (RFC 9113 §3.4).
const PREFACE_BYTES: usize = 24 + 9;

/// Default for `--handshake-timeout`: a proxy sends its preface as soon as it connects.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Each connection of `incoming` must send its preface within `timeout` of being yielded.
pub fn deadline<S, IO, E>(incoming: S, timeout: Duration) -> impl Stream<Item = Result<PrefaceDeadline<IO>, E>>
where
    S: Stream<Item = Result<IO, E>>,
{
    incoming.map(move |r| r.map(|io| PrefaceDeadline::new(io, timeout)))
}

/// A connection that fails its reads and writes once the deadline passes without a preface.
#[derive(Debug)]
pub struct PrefaceDeadline<IO> {
    inner: IO,
    /// Armed until the preface is in.
    timer: Option<Pin<Box<Sleep>>>,
    /// Preface bytes still to come.
    remaining: usize,
}

impl<IO> PrefaceDeadline<IO> {
    pub fn new(inner: IO, timeout: Duration) -> Self {
        PrefaceDeadline { inner, timer: Some(Box::pin(tokio::time::sleep(timeout))), remaining: PREFACE_BYTES }
    }

    /// Registers for the deadline and fails once it has passed. The server polls the
    /// connection's reads while it waits for the preface, so the deadline wakes it.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let expired = self.timer.as_mut().is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if expired {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 preface before the handshake deadline"));
        }
        Ok(())
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for PrefaceDeadline<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check(cx)?;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.timer.is_some() {
            this.remaining = this.remaining.saturating_sub(buf.filled().len() - before);
            if this.remaining == 0 {
                this.timer = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PrefaceDeadline<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // A peer that never reads could otherwise keep the server's SETTINGS write pending.
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for PrefaceDeadline<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, duplex};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silent_peer_fails_at_the_deadline() {
        let (_client, server) = duplex(64);
        let mut guarded = PrefaceDeadline::new(server, Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        let err = guarded.read(&mut [0u8; 16]).await.expect_err("deadline");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_preface_is_not_enough() {
        let (mut client, server) = duplex(64);
        let mut guarded = PrefaceDeadline::new(server, Duration::from_secs(3));
        client.write_all(&[b'P'; PREFACE_BYTES - 1]).await.expect("write");
        let mut buf = [0u8; 64];
        assert_eq!(guarded.read(&mut buf).await.expect("read"), PREFACE_BYTES - 1);
        assert!(guarded.read(&mut buf).await.is_err(), "the deadline still holds");
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_preface_the_deadline_is_gone() {
        let (mut client, server) = duplex(64);
        let mut guarded = PrefaceDeadline::new(server, Duration::from_secs(3));
        client.write_all(&[b'P'; PREFACE_BYTES]).await.expect("write");
        let mut buf = [0u8; 64];
        assert_eq!(guarded.read(&mut buf).await.expect("read"), PREFACE_BYTES);
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"later").await.expect("write");
        assert_eq!(guarded.read(&mut buf).await.expect("read after the deadline"), 5);
        guarded.write_all(b"ok").await.expect("write after the deadline");
    }
}
