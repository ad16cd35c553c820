//! Transports: TCP and WebSocket, listen and dial, over IPv4 and IPv6.
//!
//! A transport yields a raw byte channel ([`RawIo`]) plus the local and remote
//! multiaddrs; the upgrade (multistream → Noise → yamux) runs on top of it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream as _};
use multiaddr::{Multiaddr, Protocol};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A raw, not yet secured, byte channel: a TCP socket, a WebSocket, or a relayed stream.
pub trait RawIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> RawIo for T {}

/// A boxed [`RawIo`].
pub type BoxedIo = Box<dyn RawIo>;

/// Errors of the transports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The multiaddr names no transport we speak.
    #[error("unsupported address {0} (expected /ip4|/ip6|/dns|/dns4|/dns6 …/tcp/PORT[/ws])")]
    Unsupported(Multiaddr),
    /// DNS resolution gave nothing usable.
    #[error("could not resolve {0}")]
    Resolve(String),
    /// Socket error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// WebSocket handshake or framing error.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// TLS handshake or setup error.
    #[error("tls: {0}")]
    Tls(String),
    /// The connection was a plain HTTP request, answered from the web root.
    #[error("served a plain HTTP request")]
    ServedHttp,
}

/// The transport part of a multiaddr, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportAddr {
    /// Host to connect to (an IP or a DNS name).
    pub host: Host,
    /// TCP port.
    pub port: u16,
    /// WebSocket on top of TCP.
    pub ws: bool,
    /// TLS under the WebSocket (`/tls/ws`, `/wss`).
    pub tls: bool,
    /// Server name for TLS (`/tls/sni/NAME/ws`), else the DNS host.
    pub sni: Option<String>,
}

/// A host: an IP address or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IP address.
    Ip(IpAddr),
    /// A DNS name, with the address family it is restricted to (`/dns4`, `/dns6`) if any.
    Dns(String, Option<bool /* v6 */>),
}

impl TransportAddr {
    /// Parses `/ip4|ip6|dns|dns4|dns6/…/tcp/N[/ws]`, ignoring a trailing `/p2p/…`.
    pub fn parse(addr: &Multiaddr) -> Result<TransportAddr, TransportError> {
        let unsupported = || TransportError::Unsupported(addr.clone());
        let mut it = addr.iter();
        let host = match it.next() {
            Some(Protocol::Ip4(ip)) => Host::Ip(ip.into()),
            Some(Protocol::Ip6(ip)) => Host::Ip(ip.into()),
            Some(Protocol::Dns(name)) => Host::Dns(name.to_string(), None),
            Some(Protocol::Dns4(name)) => Host::Dns(name.to_string(), Some(false)),
            Some(Protocol::Dns6(name)) => Host::Dns(name.to_string(), Some(true)),
            _ => return Err(unsupported()),
        };
        let port = match it.next() {
            Some(Protocol::Tcp(port)) => port,
            _ => return Err(unsupported()),
        };
        let (mut ws, mut tls, mut sni) = (false, false, None);
        for p in it {
            match p {
                Protocol::Tls if !ws && !tls => tls = true,
                Protocol::Sni(name) if tls && !ws && sni.is_none() => sni = Some(name.to_string()),
                Protocol::Ws(path) if path == "/" && !ws => ws = true,
                Protocol::Wss(path) if path == "/" && !ws && !tls => {
                    ws = true;
                    tls = true;
                }
                Protocol::P2p(_) => {}
                _ => return Err(unsupported()),
            }
        }
        if tls && !ws {
            // TLS directly over TCP is libp2p's TLS security protocol, not a transport.
            return Err(unsupported());
        }
        Ok(TransportAddr {
            host,
            port,
            ws,
            tls,
            sni,
        })
    }

    /// Resolves the host to socket addresses (DNS names through the system resolver).
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, TransportError> {
        match &self.host {
            Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, self.port)]),
            Host::Dns(name, family) => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), self.port))
                    .await
                    .map_err(|e| TransportError::Resolve(format!("{name}: {e}")))?
                    .filter(|a| match family {
                        Some(true) => a.is_ipv6(),
                        Some(false) => a.is_ipv4(),
                        None => true,
                    })
                    .collect();
                if found.is_empty() {
                    return Err(TransportError::Resolve(name.clone()));
                }
                Ok(found)
            }
        }
    }
}

/// The multiaddr of a socket address (`/ip4/…/tcp/N` or `/ip6/…/tcp/N`), with `/ws` if asked.
pub fn socket_multiaddr(addr: SocketAddr, ws: bool) -> Multiaddr {
    socket_multiaddr_tls(addr, ws, false)
}

/// Like [`socket_multiaddr`], with `/tls/ws` for secure WebSocket.
pub fn socket_multiaddr_tls(addr: SocketAddr, ws: bool, tls: bool) -> Multiaddr {
    let mut m = Multiaddr::empty();
    match addr.ip() {
        IpAddr::V4(ip) => m.push(Protocol::Ip4(ip)),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => m.push(Protocol::Ip4(v4)),
            None => m.push(Protocol::Ip6(ip)),
        },
    }
    m.push(Protocol::Tcp(addr.port()));
    if ws && tls {
        m.push(Protocol::Tls);
    }
    if ws {
        m.push(Protocol::Ws("/".into()));
    }
    m
}

/// A raw connection produced by a transport, before the upgrade.
pub struct RawConnection {
    /// The byte channel.
    pub io: BoxedIo,
    /// Our side's address.
    pub local_addr: Multiaddr,
    /// The remote side's address.
    pub remote_addr: Multiaddr,
}

/// Dials `addr` (TCP, WebSocket or secure WebSocket), trying each resolved address in turn.
/// `tls` is the client configuration used for `/tls/ws` and `/wss`.
pub async fn dial(
    addr: &Multiaddr,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<RawConnection, TransportError> {
    let target = TransportAddr::parse(addr)?;
    let mut last_err = None;
    for sa in target.resolve().await? {
        match TcpStream::connect(sa).await {
            Ok(tcp) => return finish_dial(tcp, &target, tls).await,
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err
        .map(TransportError::Io)
        .unwrap_or_else(|| TransportError::Resolve(addr.to_string())))
}

async fn finish_dial(
    tcp: TcpStream,
    target: &TransportAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<RawConnection, TransportError> {
    tcp.set_nodelay(true)?;
    let local_addr = socket_multiaddr_tls(tcp.local_addr()?, target.ws, target.tls);
    let remote_addr = socket_multiaddr_tls(tcp.peer_addr()?, target.ws, target.tls);
    let host = match &target.host {
        Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
        Host::Ip(ip) => ip.to_string(),
        Host::Dns(name, _) => name.clone(),
    };
    let io: BoxedIo = match (target.ws, target.tls) {
        (false, _) => Box::new(tcp),
        (true, false) => {
            let url = format!("ws://{host}:{}/", target.port);
            let (ws, _resp) = tokio_tungstenite::client_async(url, tcp)
                .await
                .map_err(|e| TransportError::WebSocket(e.to_string()))?;
            Box::new(WsIo::new(ws))
        }
        (true, true) => {
            let name = match (&target.sni, &target.host) {
                (Some(sni), _) => ServerName::try_from(sni.clone()),
                (None, Host::Dns(name, _)) => ServerName::try_from(name.clone()),
                (None, Host::Ip(ip)) => Ok(ServerName::IpAddress((*ip).into())),
            }
            .map_err(|e| TransportError::Tls(format!("bad server name: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| TransportError::Tls(tls_hint(&e.to_string())))?;
            let url = format!("wss://{host}:{}/", target.port);
            let (ws, _resp) = tokio_tungstenite::client_async(url, stream)
                .await
                .map_err(|e| TransportError::WebSocket(e.to_string()))?;
            Box::new(WsIo::new(ws))
        }
    };
    Ok(RawConnection {
        io,
        local_addr,
        remote_addr,
    })
}

/// A bound listener.
pub struct Listener {
    tcp: TcpListener,
    upgrader: AcceptUpgrader,
    local: Multiaddr,
}

/// What an accepted TCP connection needs before it is a raw channel.
#[derive(Clone)]
pub struct AcceptUpgrader {
    ws: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
    web: Option<Arc<crate::web::WebRoot>>,
}

impl Listener {
    /// Binds `addr` (`/ip4|ip6/…/tcp/N[/ws|/tls/ws|/wss]`; port 0 picks a free port).
    /// Secure WebSocket needs a server configuration (`tls`).
    pub async fn bind(
        addr: &Multiaddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Listener, TransportError> {
        let t = TransportAddr::parse(addr)?;
        let ip = match t.host {
            Host::Ip(ip) => ip,
            Host::Dns(..) => return Err(TransportError::Unsupported(addr.clone())),
        };
        let tls = match (t.tls, tls) {
            (false, _) => None,
            (true, Some(cfg)) => Some(tokio_rustls::TlsAcceptor::from(cfg)),
            (true, None) => {
                return Err(TransportError::Tls(format!(
                    "listening on {addr} needs a certificate and key (--tls-cert, --tls-key)"
                )))
            }
        };
        let sa = SocketAddr::new(ip, t.port);
        let socket = if ip.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if ip.is_ipv6() {
            // Keep `::` to IPv6 only so that `0.0.0.0` with the same port can be bound beside it.
            socket2_set_only_v6(&socket)?;
        }
        socket.bind(sa)?;
        let tcp = socket.listen(1024)?;
        let local = socket_multiaddr_tls(tcp.local_addr()?, t.ws, t.tls);
        Ok(Listener {
            tcp,
            upgrader: AcceptUpgrader {
                ws: t.ws,
                tls,
                web: None,
            },
            local,
        })
    }

    /// The bound address, with the real port.
    pub fn local_addr(&self) -> &Multiaddr {
        &self.local
    }

    /// Whether this listener speaks WebSocket.
    pub fn is_ws(&self) -> bool {
        self.upgrader.ws
    }

    /// Serves plain HTTP `GET`s of these files on this WebSocket listener.
    pub fn set_web(&mut self, web: Option<Arc<crate::web::WebRoot>>) {
        if self.upgrader.ws {
            self.upgrader.web = web;
        }
    }

    /// What to run on each accepted connection (see [`accept_upgrade`]).
    pub fn upgrader(&self) -> AcceptUpgrader {
        self.upgrader.clone()
    }

    /// Accepts the next TCP connection. The TLS and WebSocket handshakes (if any) are
    /// left to [`accept_upgrade`], so that a slow client cannot stall the accept loop.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        self.tcp.accept().await
    }
}

/// Finishes accepting: TLS and WebSocket server handshakes, as the listener needs.
pub async fn accept_upgrade(
    tcp: TcpStream,
    up: AcceptUpgrader,
) -> Result<RawConnection, TransportError> {
    tcp.set_nodelay(true)?;
    let tls = up.tls.is_some();
    let local_addr = socket_multiaddr_tls(tcp.local_addr()?, up.ws, tls);
    let remote_addr = socket_multiaddr_tls(tcp.peer_addr()?, up.ws, tls);
    let io: BoxedIo = match (up.ws, up.tls) {
        (false, _) => Box::new(tcp),
        (true, None) => Box::new(ws_accept(tcp, up.web.as_deref()).await?),
        (true, Some(acceptor)) => {
            let stream = acceptor
                .accept(tcp)
                .await
                .map_err(|e| TransportError::Tls(e.to_string()))?;
            Box::new(ws_accept(stream, up.web.as_deref()).await?)
        }
    };
    Ok(RawConnection {
        io,
        local_addr,
        remote_addr,
    })
}

/// The server side of the WebSocket handshake; with a web root, plain HTTP `GET`s on
/// the same port are answered with its files instead.
async fn ws_accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    web: Option<&crate::web::WebRoot>,
) -> Result<WsIo<crate::web::Prefixed<S>>, TransportError> {
    let head = match web {
        None => Vec::new(),
        Some(root) => match crate::web::peek_and_serve(&mut stream, root).await? {
            crate::web::Peeked::WebSocket(head) => head,
            crate::web::Peeked::Served => return Err(TransportError::ServedHttp),
        },
    };
    let ws = tokio_tungstenite::accept_async(crate::web::Prefixed::new(head, stream))
        .await
        .map_err(|e| TransportError::WebSocket(e.to_string()))?;
    Ok(WsIo::new(ws))
}

/// Adds what to do to the TLS errors people meet when testing with their own certificates.
fn tls_hint(err: &str) -> String {
    if err.contains("UnknownIssuer") {
        format!("{err} (certificate not signed by a trusted root: for a self-signed relay, pass its certificate with --tls-trust)")
    } else if err.contains("CaUsedAsEndEntity") {
        format!("{err} (the server certificate is a CA certificate: create it with basicConstraints=critical,CA:FALSE)")
    } else if err.contains("NotValidForName") {
        format!("{err} (the certificate does not name this host: use /dns4/<name>/…/tls/ws or /tls/sni/<name>/ws)")
    } else {
        err.to_string()
    }
}

fn socket2_set_only_v6(socket: &tokio::net::TcpSocket) -> io::Result<()> {
    // tokio's TcpSocket has no IPV6_V6ONLY setter; go through socket2 on the same fd.
    let sock = socket2::SockRef::from(socket);
    sock.set_only_v6(true)
}

/// Binary WebSocket messages seen as a byte stream.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    read_buf: Bytes,
    closed: bool,
}

impl<S> WsIo<S> {
    fn new(ws: WebSocketStream<S>) -> Self {
        WsIo {
            ws,
            read_buf: Bytes::new(),
            closed: false,
        }
    }
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.read_buf.is_empty() {
                let n = self.read_buf.len().min(buf.remaining());
                buf.put_slice(&self.read_buf[..n]);
                self.read_buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.closed = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(ws_err(e))),
                Poll::Ready(Some(Ok(msg))) => match msg {
                    Message::Binary(data) => self.read_buf = data,
                    Message::Close(_) => self.closed = true,
                    // Pings are answered by tungstenite; text frames are not part of libp2p-over-ws.
                    _ => {}
                },
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ws = Pin::new(&mut self.ws);
        match ws.poll_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(ws_err(e))),
            Poll::Ready(Ok(())) => {}
        }
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(data)))
            .map_err(ws_err)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(ws_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn parses_transport_addrs() {
        let a: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        assert_eq!(TransportAddr::parse(&a).unwrap().port, 4001);
        let a: Multiaddr = "/ip6/::1/tcp/4002/ws".parse().unwrap();
        assert!(TransportAddr::parse(&a).unwrap().ws);
        let a: Multiaddr = "/dns4/example.com/tcp/443/ws".parse().unwrap();
        assert_eq!(
            TransportAddr::parse(&a).unwrap().host,
            Host::Dns("example.com".into(), Some(false))
        );
        let a: Multiaddr = "/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap();
        assert!(matches!(
            TransportAddr::parse(&a),
            Err(TransportError::Unsupported(_))
        ));
    }

    #[test]
    fn parses_secure_websocket_forms() {
        for a in [
            "/ip4/1.2.3.4/tcp/443/tls/ws",
            "/ip4/1.2.3.4/tcp/443/wss",
            "/dns4/relay.example/tcp/443/tls/sni/relay.example/ws",
        ] {
            let t = TransportAddr::parse(&a.parse().unwrap()).unwrap();
            assert!(t.ws && t.tls, "{a}");
        }
        let t = TransportAddr::parse(&"/ip4/1.2.3.4/tcp/443/tls/sni/x.example/ws".parse().unwrap())
            .unwrap();
        assert_eq!(t.sni.as_deref(), Some("x.example"));
        // TLS straight over TCP is a security protocol, not a transport we dial.
        assert!(TransportAddr::parse(&"/ip4/1.2.3.4/tcp/443/tls".parse().unwrap()).is_err());
        let sa: SocketAddr = "127.0.0.1:443".parse().unwrap();
        assert_eq!(
            socket_multiaddr_tls(sa, true, true).to_string(),
            "/ip4/127.0.0.1/tcp/443/tls/ws"
        );
    }

    /// A self-signed certificate for 127.0.0.1, ::1 and localhost: (server config, client config trusting it).
    fn self_signed() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
        ])
        .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "circuit-tls-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let server = crate::tls::server_config(&cert, &key).unwrap();
        let client = crate::tls::client_config(&crate::tls::load_certs(&cert).unwrap()).unwrap();
        (server, client)
    }

    async fn roundtrip_with(
        listen: &str,
        server_tls: Option<Arc<rustls::ServerConfig>>,
        client_tls: Arc<rustls::ClientConfig>,
        dial_as: Option<&str>,
    ) {
        let l = Listener::bind(&listen.parse().unwrap(), server_tls)
            .await
            .unwrap();
        let addr = match dial_as {
            Some(a) => a
                .replace(
                    "PORT",
                    &l.local_addr()
                        .iter()
                        .find_map(|p| match p {
                            Protocol::Tcp(p) => Some(p),
                            _ => None,
                        })
                        .unwrap()
                        .to_string(),
                )
                .parse()
                .unwrap(),
            None => l.local_addr().clone(),
        };
        let up = l.upgrader();
        let server = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut c = accept_upgrade(tcp, up).await.unwrap();
            let mut buf = vec![0u8; 5];
            c.io.read_exact(&mut buf).await.unwrap();
            c.io.write_all(&buf).await.unwrap();
            c.io.flush().await.unwrap();
            buf
        });
        let mut c = dial(&addr, &client_tls).await.unwrap();
        c.io.write_all(b"hello").await.unwrap();
        c.io.flush().await.unwrap();
        let mut buf = [0u8; 5];
        c.io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(server.await.unwrap(), b"hello");
    }

    async fn roundtrip(listen: &str) {
        roundtrip_with(listen, None, crate::tls::default_client_config(), None).await;
    }

    #[tokio::test]
    async fn secure_websocket_roundtrip_and_untrusted_certificate() {
        let (server, client) = self_signed();
        roundtrip_with(
            "/ip4/127.0.0.1/tcp/0/tls/ws",
            Some(server.clone()),
            client.clone(),
            None,
        )
        .await;
        roundtrip_with(
            "/ip4/127.0.0.1/tcp/0/wss",
            Some(server.clone()),
            client.clone(),
            None,
        )
        .await;
        roundtrip_with(
            "/ip6/::1/tcp/0/tls/ws",
            Some(server.clone()),
            client.clone(),
            None,
        )
        .await;
        roundtrip_with(
            "/ip4/127.0.0.1/tcp/0/tls/ws",
            Some(server.clone()),
            client,
            Some("/dns4/localhost/tcp/PORT/tls/ws"),
        )
        .await;
        // Without the certificate among the roots, the dial fails with a TLS error.
        let l = Listener::bind(
            &"/ip4/127.0.0.1/tcp/0/tls/ws".parse().unwrap(),
            Some(server),
        )
        .await
        .unwrap();
        let addr = l.local_addr().clone();
        let up = l.upgrader();
        tokio::spawn(async move {
            if let Ok((tcp, _)) = l.accept().await {
                let _ = accept_upgrade(tcp, up).await;
            }
        });
        let err = dial(&addr, &crate::tls::default_client_config())
            .await
            .err()
            .expect("untrusted certificate must fail");
        assert!(matches!(err, TransportError::Tls(_)), "{err}");
        // And a TLS listener without a certificate is refused with a hint.
        let err = Listener::bind(&"/ip4/127.0.0.1/tcp/0/wss".parse().unwrap(), None)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("--tls-cert"), "{err}");
    }

    #[tokio::test]
    async fn tcp_and_ws_roundtrip_v4_and_v6() {
        roundtrip("/ip4/127.0.0.1/tcp/0").await;
        roundtrip("/ip4/127.0.0.1/tcp/0/ws").await;
        roundtrip("/ip6/::1/tcp/0").await;
        roundtrip("/ip6/::1/tcp/0/ws").await;
    }
}
