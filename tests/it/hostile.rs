//! Hostile /metrics servers: each misbehaves in one way, on its own loopback port.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// Accepts and reads, never answers.
    Silent,
    /// Answers 200 and streams an endless body.
    Endless,
    /// Answers 200 with random bytes that are not an exposition.
    Garbage,
    /// Answers 500.
    ServerError,
    /// Answers 200 with invalid UTF-8.
    NotUtf8,
    /// Closes the connection right after accepting.
    Hangup,
}

/// Starts the server; it runs until the test's runtime ends.
pub async fn spawn(kind: Hostile) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if kind == Hostile::Hangup {
                    return;
                }
                let _ = sock.read(&mut buf).await;
                match kind {
                    Hostile::Silent => tokio::time::sleep(std::time::Duration::from_secs(3600)).await,
                    Hostile::Endless => {
                        let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n").await;
                        let chunk = vec![b'#'; 64 * 1024];
                        while sock.write_all(&chunk).await.is_ok() {}
                    }
                    Hostile::Garbage => {
                        let body: Vec<u8> = (0..2048u32)
                            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 0x20)
                            .filter(|b| b.is_ascii())
                            .collect();
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(&body).await;
                    }
                    Hostile::ServerError => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\noops")
                            .await;
                    }
                    Hostile::NotUtf8 => {
                        let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n\xff\xfe\xfd\xfc").await;
                    }
                    Hostile::Hangup => {}
                }
            });
        }
    });
    addr
}
