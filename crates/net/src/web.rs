//! Plain HTTP on a WebSocket port: `GET` requests that are not WebSocket upgrades
//! get static files (the relay's demo page), so one port serves both browsers'
//! page loads and their libp2p connections.
//!
//! Hand-written on purpose: it answers only `GET`/`HEAD` of a few in-memory files
//! with a bounded request head; an HTTP server crate would be far more than that.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::RwLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Longest request head we read before deciding (browsers send ~1 KiB).
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Files served over plain HTTP, by path (`/` is `/index.html`).
#[derive(Debug, Default)]
pub struct WebRoot {
    files: RwLock<HashMap<String, (&'static str, Vec<u8>)>>,
}

/// The content type of a file name.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

impl WebRoot {
    /// An empty root.
    pub fn new() -> WebRoot {
        WebRoot::default()
    }

    /// Adds or replaces the file at `path` (e.g. `/app.js`).
    pub fn set(&self, path: &str, body: Vec<u8>) {
        let ct = content_type(path);
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_string(), (ct, body));
    }

    fn get(&self, path: &str) -> Option<(&'static str, Vec<u8>)> {
        let path = path.split(['?', '#']).next().unwrap_or("/");
        let path = if path == "/" { "/index.html" } else { path };
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .cloned()
    }
}

/// What the first bytes of a connection on a WebSocket port were.
pub enum Peeked {
    /// A WebSocket upgrade: go on with the handshake (the head is replayed).
    WebSocket(Vec<u8>),
    /// A plain HTTP request, answered and closed.
    Served,
}

/// Reads the request head; answers plain `GET`/`HEAD` from `root` and returns
/// `Served`, or returns the head of a WebSocket upgrade for replaying.
pub async fn peek_and_serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    root: &WebRoot,
) -> io::Result<Peeked> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP request head too large",
            ));
        }
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let upgrade = lines.any(|l| {
        let mut kv = l.splitn(2, ':');
        let (k, v) = (
            kv.next().unwrap_or("").trim(),
            kv.next().unwrap_or("").trim(),
        );
        k.eq_ignore_ascii_case("upgrade") && v.eq_ignore_ascii_case("websocket")
    });
    if upgrade {
        return Ok(Peeked::WebSocket(head));
    }
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let response = match (method, root.get(path)) {
        ("GET" | "HEAD", Some((ct, body))) => {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            if method == "GET" {
                r.extend_from_slice(&body);
            }
            r
        }
        ("GET" | "HEAD", None) => {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n"
                .to_vec()
        }
        _ => b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .to_vec(),
    };
    io.write_all(&response).await?;
    io.flush().await?;
    let _ = io.shutdown().await;
    Ok(Peeked::Served)
}

/// A stream with bytes put back in front (the request head already read).
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `prefix` is read first, then `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_files_and_passes_upgrades_through() {
        let root = WebRoot::new();
        root.set("/index.html", b"<h1>hi</h1>".to_vec());
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(matches!(
            peek_and_serve(&mut server, &root).await.unwrap(),
            Peeked::Served
        ));
        drop(server);
        let mut resp = String::new();
        client.read_to_string(&mut resp).await.unwrap();
        assert!(
            resp.starts_with("HTTP/1.1 200 OK")
                && resp.contains("text/html")
                && resp.ends_with("<h1>hi</h1>"),
            "{resp}"
        );

        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(b"GET /missing.js HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        peek_and_serve(&mut server, &root).await.unwrap();
        drop(server);
        let mut resp = String::new();
        client.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");

        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let req = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        client.write_all(req).await.unwrap();
        match peek_and_serve(&mut server, &root).await.unwrap() {
            Peeked::WebSocket(head) => {
                let mut p = Prefixed::new(head, server);
                let mut replay = vec![0u8; req.len()];
                p.read_exact(&mut replay).await.unwrap();
                assert_eq!(&replay[..], &req[..]);
            }
            Peeked::Served => panic!("upgrade served as a file"),
        }
    }

    #[tokio::test]
    async fn oversized_heads_are_refused() {
        let root = WebRoot::new();
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let junk = vec![b'a'; MAX_REQUEST_HEAD + 2048];
            let _ = client.write_all(&junk).await;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        });
        assert!(peek_and_serve(&mut server, &root).await.is_err());
    }
}
