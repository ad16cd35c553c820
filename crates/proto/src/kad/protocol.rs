//! Kademlia messages: checked requests and responses over `pb::kad::Message`.
//!
//! Decoding is lenient where peers are sloppy and strict where it matters:
//! a peer entry with an unparsable id or address is skipped (as rust-libp2p
//! does), but a wrong message type, an oversized key or an ADD_PROVIDER without
//! a usable provider is an error. Every list is bounded before it is kept.

use circuit_wire::pb::kad::{ConnectionType as PbConnectionType, Message, MessageType, Peer};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use prost::Message as _;

use super::{
    Error, K_VALUE, MAX_ADDRS_PER_PEER, MAX_KEY_LEN, MAX_PEERS_PER_MESSAGE, MAX_SEND_SIZE,
};

/// How the sender is connected to a peer it tells us about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionType {
    /// No connection, no information.
    #[default]
    NotConnected,
    /// A live connection.
    Connected,
    /// Recently connected.
    CanConnect,
    /// Recently failed to connect.
    CannotConnect,
}

impl ConnectionType {
    fn from_i32(v: i32) -> ConnectionType {
        match PbConnectionType::try_from(v) {
            Ok(PbConnectionType::Connected) => ConnectionType::Connected,
            Ok(PbConnectionType::CanConnect) => ConnectionType::CanConnect,
            Ok(PbConnectionType::CannotConnect) => ConnectionType::CannotConnect,
            // Unknown values are treated as "no information" rather than failing.
            _ => ConnectionType::NotConnected,
        }
    }

    fn to_i32(self) -> i32 {
        (match self {
            ConnectionType::NotConnected => PbConnectionType::NotConnected,
            ConnectionType::Connected => PbConnectionType::Connected,
            ConnectionType::CanConnect => PbConnectionType::CanConnect,
            ConnectionType::CannotConnect => PbConnectionType::CannotConnect,
        }) as i32
    }
}

/// A peer with the addresses the sender knows for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KadPeer {
    /// The peer.
    pub id: PeerId,
    /// Its addresses (at most [`MAX_ADDRS_PER_PEER`] are kept from the wire).
    pub addrs: Vec<Multiaddr>,
    /// The sender's connection to it.
    pub connection: ConnectionType,
}

impl KadPeer {
    /// A peer with addresses and no connection information.
    pub fn new(id: PeerId, addrs: Vec<Multiaddr>) -> KadPeer {
        KadPeer {
            id,
            addrs,
            connection: ConnectionType::NotConnected,
        }
    }

    /// Reads a wire peer; `None` if its id does not parse. Bad addresses are
    /// skipped and at most [`MAX_ADDRS_PER_PEER`] are kept.
    pub fn from_pb(p: &Peer) -> Option<KadPeer> {
        let id = PeerId::from_bytes(&p.id).ok()?;
        let addrs = p
            .addrs
            .iter()
            .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
            .take(MAX_ADDRS_PER_PEER)
            .collect();
        Some(KadPeer {
            id,
            addrs,
            connection: ConnectionType::from_i32(p.connection),
        })
    }

    /// The wire form, with at most [`MAX_ADDRS_PER_PEER`] addresses so that a
    /// full response stays under rust-libp2p's 16 KiB message limit.
    pub fn to_pb(&self) -> Peer {
        Peer {
            id: self.id.to_bytes(),
            addrs: self
                .addrs
                .iter()
                .take(MAX_ADDRS_PER_PEER)
                .map(|a| a.to_vec())
                .collect(),
            connection: self.connection.to_i32(),
        }
    }
}

/// A request, as sent by a querying node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The k closest peers to `key` (usually a peer id's bytes).
    FindNode {
        /// Target key bytes.
        key: Vec<u8>,
    },
    /// Providers of `key`, plus closer peers.
    GetProviders {
        /// Provider key (a multihash).
        key: Vec<u8>,
    },
    /// The sender provides `key`; no response is sent.
    AddProvider {
        /// Provider key (a multihash).
        key: Vec<u8>,
        /// The provider entries as sent (the server keeps only the sender's).
        providers: Vec<KadPeer>,
    },
    /// GET_VALUE: circuit stores no values; answered with closer peers only.
    GetValue {
        /// Record key.
        key: Vec<u8>,
    },
    /// Deprecated liveness check; answered, never sent by us.
    Ping,
}

impl Request {
    /// The wire message type of this request.
    pub fn message_type(&self) -> MessageType {
        match self {
            Request::FindNode { .. } => MessageType::FindNode,
            Request::GetProviders { .. } => MessageType::GetProviders,
            Request::AddProvider { .. } => MessageType::AddProvider,
            Request::GetValue { .. } => MessageType::GetValue,
            Request::Ping => MessageType::Ping,
        }
    }

    /// Whether the remote answers this request (all but ADD_PROVIDER).
    pub fn expects_response(&self) -> bool {
        !matches!(self, Request::AddProvider { .. })
    }

    /// The wire message.
    pub fn to_pb(&self) -> Message {
        let mut m = Message {
            r#type: self.message_type() as i32,
            ..Default::default()
        };
        match self {
            Request::FindNode { key }
            | Request::GetProviders { key }
            | Request::GetValue { key } => {
                m.key = key.clone();
            }
            Request::AddProvider { key, providers } => {
                m.key = key.clone();
                m.provider_peers = providers.iter().map(KadPeer::to_pb).collect();
            }
            Request::Ping => {}
        }
        m
    }

    /// Encodes the message body (without the length prefix).
    pub fn encode(&self) -> Vec<u8> {
        self.to_pb().encode_to_vec()
    }

    /// Decodes and checks a request body received by a server.
    pub fn decode(body: &[u8]) -> Result<Request, Error> {
        let m = Message::decode(body)?;
        Request::from_pb(&m)
    }

    /// Checks a decoded request message.
    pub fn from_pb(m: &Message) -> Result<Request, Error> {
        let ty = MessageType::try_from(m.r#type).map_err(|_| Error::UnknownType(m.r#type))?;
        let key = || -> Result<Vec<u8>, Error> {
            if m.key.len() > MAX_KEY_LEN {
                return Err(Error::KeyTooLong(m.key.len()));
            }
            Ok(m.key.clone())
        };
        match ty {
            MessageType::FindNode => Ok(Request::FindNode { key: key()? }),
            MessageType::GetProviders => Ok(Request::GetProviders { key: key()? }),
            MessageType::GetValue => Ok(Request::GetValue { key: key()? }),
            MessageType::Ping => Ok(Request::Ping),
            MessageType::AddProvider => {
                let providers: Vec<KadPeer> = m
                    .provider_peers
                    .iter()
                    .take(MAX_PEERS_PER_MESSAGE)
                    .filter_map(KadPeer::from_pb)
                    .collect();
                if providers.is_empty() {
                    return Err(Error::NoProvider);
                }
                Ok(Request::AddProvider {
                    key: key()?,
                    providers,
                })
            }
            MessageType::PutValue => Err(Error::Unsupported(MessageType::PutValue)),
        }
    }
}

/// A response to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Answer to FIND_NODE.
    FindNode {
        /// Closest peers the server knows.
        closer_peers: Vec<KadPeer>,
    },
    /// Answer to GET_PROVIDERS.
    GetProviders {
        /// Closest peers the server knows.
        closer_peers: Vec<KadPeer>,
        /// Providers it stores for the key.
        provider_peers: Vec<KadPeer>,
    },
    /// Answer to GET_VALUE (never with a record from us).
    GetValue {
        /// Closest peers the server knows.
        closer_peers: Vec<KadPeer>,
    },
    /// Answer to PING.
    Pong,
}

impl Response {
    /// Closer peers carried by this response (empty for PING).
    pub fn closer_peers(&self) -> &[KadPeer] {
        match self {
            Response::FindNode { closer_peers }
            | Response::GetProviders { closer_peers, .. }
            | Response::GetValue { closer_peers } => closer_peers,
            Response::Pong => &[],
        }
    }

    /// The wire message.
    pub fn to_pb(&self) -> Message {
        let peers = |v: &[KadPeer]| v.iter().map(KadPeer::to_pb).collect::<Vec<_>>();
        match self {
            Response::FindNode { closer_peers } => Message {
                r#type: MessageType::FindNode as i32,
                closer_peers: peers(closer_peers),
                ..Default::default()
            },
            Response::GetProviders {
                closer_peers,
                provider_peers,
            } => Message {
                r#type: MessageType::GetProviders as i32,
                closer_peers: peers(closer_peers),
                provider_peers: peers(provider_peers),
                ..Default::default()
            },
            Response::GetValue { closer_peers } => Message {
                r#type: MessageType::GetValue as i32,
                closer_peers: peers(closer_peers),
                ..Default::default()
            },
            Response::Pong => Message {
                r#type: MessageType::Ping as i32,
                ..Default::default()
            },
        }
    }

    /// Encodes the body, dropping the farthest closer peers (the lists are
    /// sorted nearest first) and then providers until it fits
    /// [`MAX_SEND_SIZE`], the smallest limit among the implementations.
    pub fn encode(&self) -> Vec<u8> {
        let mut m = self.to_pb();
        while m.encoded_len() > MAX_SEND_SIZE {
            if m.closer_peers.pop().is_none() && m.provider_peers.pop().is_none() {
                break;
            }
        }
        m.encode_to_vec()
    }

    /// Decodes a response to a request of type `expected`.
    pub fn decode(body: &[u8], expected: MessageType) -> Result<Response, Error> {
        let m = Message::decode(body)?;
        Response::from_pb(&m, expected)
    }

    /// Checks a decoded response to a request of type `expected`.
    pub fn from_pb(m: &Message, expected: MessageType) -> Result<Response, Error> {
        let ty = MessageType::try_from(m.r#type).map_err(|_| Error::UnknownType(m.r#type))?;
        if ty != expected {
            return Err(Error::UnexpectedType { expected, got: ty });
        }
        let peers = |v: &[Peer], n: usize| -> Vec<KadPeer> {
            v.iter().take(n).filter_map(KadPeer::from_pb).collect()
        };
        match ty {
            MessageType::FindNode => Ok(Response::FindNode {
                closer_peers: peers(&m.closer_peers, K_VALUE),
            }),
            MessageType::GetProviders => Ok(Response::GetProviders {
                closer_peers: peers(&m.closer_peers, K_VALUE),
                provider_peers: peers(&m.provider_peers, MAX_PEERS_PER_MESSAGE),
            }),
            MessageType::GetValue => Ok(Response::GetValue {
                closer_peers: peers(&m.closer_peers, K_VALUE),
            }),
            MessageType::Ping => Ok(Response::Pong),
            other => Err(Error::Unsupported(other)),
        }
    }
}
