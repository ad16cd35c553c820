//! Transports: TCP and WebSocket, listen and dial, over IPv4 and IPv6.
//!
//! A transport yields a raw byte channel ([`RawIo`]) plus the local and remote
//! multiaddrs; the upgrade (multistream → Noise → yamux) runs on top of it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream as _};
use multiaddr::{Multiaddr, Protocol};
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
        let mut ws = false;
        for p in it {
            match p {
                Protocol::Ws(path) if path == "/" && !ws => ws = true,
                Protocol::P2p(_) => {}
                _ => return Err(unsupported()),
            }
        }
        Ok(TransportAddr { host, port, ws })
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
    let mut m = Multiaddr::empty();
    match addr.ip() {
        IpAddr::V4(ip) => m.push(Protocol::Ip4(ip)),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => m.push(Protocol::Ip4(v4)),
            None => m.push(Protocol::Ip6(ip)),
        },
    }
    m.push(Protocol::Tcp(addr.port()));
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

/// Dials `addr` (TCP or WebSocket), trying each resolved address in turn.
pub async fn dial(addr: &Multiaddr) -> Result<RawConnection, TransportError> {
    let target = TransportAddr::parse(addr)?;
    let mut last_err = None;
    for sa in target.resolve().await? {
        match TcpStream::connect(sa).await {
            Ok(tcp) => return finish_dial(tcp, &target).await,
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
) -> Result<RawConnection, TransportError> {
    tcp.set_nodelay(true)?;
    let local_addr = socket_multiaddr(tcp.local_addr()?, target.ws);
    let remote_addr = socket_multiaddr(tcp.peer_addr()?, target.ws);
    let io: BoxedIo = if target.ws {
        let host = match &target.host {
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            Host::Ip(ip) => ip.to_string(),
            Host::Dns(name, _) => name.clone(),
        };
        let url = format!("ws://{host}:{}/", target.port);
        let (ws, _resp) = tokio_tungstenite::client_async(url, tcp)
            .await
            .map_err(|e| TransportError::WebSocket(e.to_string()))?;
        Box::new(WsIo::new(ws))
    } else {
        Box::new(tcp)
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
    ws: bool,
    local: Multiaddr,
}

impl Listener {
    /// Binds `addr` (`/ip4|ip6/…/tcp/N[/ws]`; port 0 picks a free port).
    pub async fn bind(addr: &Multiaddr) -> Result<Listener, TransportError> {
        let t = TransportAddr::parse(addr)?;
        let ip = match t.host {
            Host::Ip(ip) => ip,
            Host::Dns(..) => return Err(TransportError::Unsupported(addr.clone())),
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
        let local = socket_multiaddr(tcp.local_addr()?, t.ws);
        Ok(Listener {
            tcp,
            ws: t.ws,
            local,
        })
    }

    /// The bound address, with the real port.
    pub fn local_addr(&self) -> &Multiaddr {
        &self.local
    }

    /// Whether this listener speaks WebSocket.
    pub fn is_ws(&self) -> bool {
        self.ws
    }

    /// Accepts the next TCP connection. The WebSocket handshake (if any) is left to
    /// [`accept_upgrade`], so that a slow client cannot stall the accept loop.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        self.tcp.accept().await
    }
}

/// Finishes accepting: WebSocket server handshake if this is a WebSocket listener.
pub async fn accept_upgrade(tcp: TcpStream, ws: bool) -> Result<RawConnection, TransportError> {
    tcp.set_nodelay(true)?;
    let local_addr = socket_multiaddr(tcp.local_addr()?, ws);
    let remote_addr = socket_multiaddr(tcp.peer_addr()?, ws);
    let io: BoxedIo = if ws {
        let ws = tokio_tungstenite::accept_async(tcp)
            .await
            .map_err(|e| TransportError::WebSocket(e.to_string()))?;
        Box::new(WsIo::new(ws))
    } else {
        Box::new(tcp)
    };
    Ok(RawConnection {
        io,
        local_addr,
        remote_addr,
    })
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

    async fn roundtrip(listen: &str) {
        let l = Listener::bind(&listen.parse().unwrap()).await.unwrap();
        let addr = l.local_addr().clone();
        let ws = l.is_ws();
        let server = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut c = accept_upgrade(tcp, ws).await.unwrap();
            let mut buf = vec![0u8; 5];
            c.io.read_exact(&mut buf).await.unwrap();
            c.io.write_all(&buf).await.unwrap();
            c.io.flush().await.unwrap();
            buf
        });
        let mut c = dial(&addr).await.unwrap();
        c.io.write_all(b"hello").await.unwrap();
        c.io.flush().await.unwrap();
        let mut buf = [0u8; 5];
        c.io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(server.await.unwrap(), b"hello");
    }

    #[tokio::test]
    async fn tcp_and_ws_roundtrip_v4_and_v6() {
        roundtrip("/ip4/127.0.0.1/tcp/0").await;
        roundtrip("/ip4/127.0.0.1/tcp/0/ws").await;
        roundtrip("/ip6/::1/tcp/0").await;
        roundtrip("/ip6/::1/tcp/0/ws").await;
    }
}
