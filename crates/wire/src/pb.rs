//! Protobuf messages of the protocols circuit speaks, as `prost` derives.
//!
//! Every `optional` field keeps explicit presence, so a field that is set to its
//! default (relay `type = RESERVE = 0`, for example) is still put on the wire:
//! rust-libp2p decodes these schemas as proto2 with `required` fields and js-libp2p
//! rejects a message without `type`.

/// Keys (libp2p peer-id spec): `KeyType` enum values.
pub mod keys {
    /// A serialized libp2p public key (`PublicKey` message).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PublicKey {
        /// Key type: 0 RSA, 1 Ed25519, 2 Secp256k1, 3 ECDSA.
        #[prost(int32, required, tag = "1")]
        pub r#type: i32,
        /// Key bytes, encoding depends on the type.
        #[prost(bytes = "vec", required, tag = "2")]
        pub data: Vec<u8>,
    }

    /// A serialized libp2p private key (`PrivateKey` message), as in key files.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PrivateKey {
        /// Key type: 0 RSA, 1 Ed25519, 2 Secp256k1, 3 ECDSA.
        #[prost(int32, required, tag = "1")]
        pub r#type: i32,
        /// Key bytes, encoding depends on the type.
        #[prost(bytes = "vec", required, tag = "2")]
        pub data: Vec<u8>,
    }
}

/// Circuit relay v2 (`/libp2p/circuit/relay/0.2.0/{hop,stop}`).
pub mod relay {
    /// A message on the hop protocol.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HopMessage {
        /// Always set (see module docs).
        #[prost(enumeration = "hop_message::Type", optional, tag = "1")]
        pub r#type: Option<i32>,
        /// CONNECT: the target peer.
        #[prost(message, optional, tag = "2")]
        pub peer: Option<Peer>,
        /// STATUS reply to RESERVE.
        #[prost(message, optional, tag = "3")]
        pub reservation: Option<Reservation>,
        /// Limits of the relayed connection; absent means unlimited.
        #[prost(message, optional, tag = "4")]
        pub limit: Option<Limit>,
        /// STATUS: the outcome.
        #[prost(enumeration = "Status", optional, tag = "5")]
        pub status: Option<i32>,
    }

    /// Nested types of [`HopMessage`].
    pub mod hop_message {
        /// Hop message type.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
        #[repr(i32)]
        pub enum Type {
            /// Ask for a reservation.
            Reserve = 0,
            /// Ask for a circuit to a peer.
            Connect = 1,
            /// Answer.
            Status = 2,
        }
    }

    /// A message on the stop protocol.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StopMessage {
        /// Always set.
        #[prost(enumeration = "stop_message::Type", optional, tag = "1")]
        pub r#type: Option<i32>,
        /// CONNECT: the initiator of the circuit.
        #[prost(message, optional, tag = "2")]
        pub peer: Option<Peer>,
        /// Limits of the relayed connection; absent means unlimited.
        #[prost(message, optional, tag = "3")]
        pub limit: Option<Limit>,
        /// STATUS: the outcome.
        #[prost(enumeration = "Status", optional, tag = "4")]
        pub status: Option<i32>,
    }

    /// Nested types of [`StopMessage`].
    pub mod stop_message {
        /// Stop message type.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
        #[repr(i32)]
        pub enum Type {
            /// A circuit is being opened to us.
            Connect = 0,
            /// Answer.
            Status = 1,
        }
    }

    /// A peer: its id (multihash bytes) and optionally addresses.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Peer {
        /// Peer id bytes; always set.
        #[prost(bytes = "vec", optional, tag = "1")]
        pub id: Option<Vec<u8>>,
        /// Binary multiaddrs.
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub addrs: Vec<Vec<u8>>,
    }

    /// A reservation granted by a relay.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Reservation {
        /// Expiry, UNIX seconds; always set.
        #[prost(uint64, optional, tag = "1")]
        pub expire: Option<u64>,
        /// The relay's addresses (binary, with `/p2p/<relay>`).
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub addrs: Vec<Vec<u8>>,
        /// A marshalled signed envelope holding a [`Voucher`].
        #[prost(bytes = "vec", optional, tag = "3")]
        pub voucher: Option<Vec<u8>>,
    }

    /// Limits of a relayed connection.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Limit {
        /// Seconds; 0 or absent = no limit.
        #[prost(uint32, optional, tag = "1")]
        pub duration: Option<u32>,
        /// Bytes per direction; 0 or absent = no limit.
        #[prost(uint64, optional, tag = "2")]
        pub data: Option<u64>,
    }

    /// The payload of a reservation voucher envelope.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Voucher {
        /// Relay peer id bytes.
        #[prost(bytes = "vec", optional, tag = "1")]
        pub relay: Option<Vec<u8>>,
        /// Reserving peer id bytes.
        #[prost(bytes = "vec", optional, tag = "2")]
        pub peer: Option<Vec<u8>>,
        /// UNIX seconds.
        #[prost(uint64, optional, tag = "3")]
        pub expiration: Option<u64>,
    }

    /// Status codes of hop and stop answers.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum Status {
        /// Never sent.
        Unused = 0,
        /// Success.
        Ok = 100,
        /// The relay refuses the reservation.
        ReservationRefused = 200,
        /// A limit of the relay was reached.
        ResourceLimitExceeded = 201,
        /// Not allowed by the relay's policy.
        PermissionDenied = 202,
        /// The relay could not reach the target.
        ConnectionFailed = 203,
        /// The target has no reservation.
        NoReservation = 204,
        /// The message could not be parsed.
        MalformedMessage = 400,
        /// The message was not expected here.
        UnexpectedMessage = 401,
    }
}

/// Identify (`/ipfs/id/1.0.0`, `/ipfs/id/push/1.0.0`).
pub mod identify {
    /// The identify message.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Identify {
        /// Serialized libp2p public key.
        #[prost(bytes = "vec", optional, tag = "1")]
        pub public_key: Option<Vec<u8>>,
        /// Binary multiaddrs we listen on.
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub listen_addrs: Vec<Vec<u8>>,
        /// Protocols we accept inbound.
        #[prost(string, repeated, tag = "3")]
        pub protocols: Vec<String>,
        /// The remote's address as we see it.
        #[prost(bytes = "vec", optional, tag = "4")]
        pub observed_addr: Option<Vec<u8>>,
        /// e.g. `ipfs/0.1.0`.
        #[prost(string, optional, tag = "5")]
        pub protocol_version: Option<String>,
        /// `name/version`.
        #[prost(string, optional, tag = "6")]
        pub agent_version: Option<String>,
        /// Marshalled signed envelope holding a [`crate::pb::record::PeerRecord`].
        #[prost(bytes = "vec", optional, tag = "8")]
        pub signed_peer_record: Option<Vec<u8>>,
    }
}

/// Signed envelopes and peer records (libp2p RFC 0002/0003).
pub mod record {
    use super::keys::PublicKey;

    /// A signed envelope.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Envelope {
        /// The signer's public key.
        #[prost(message, optional, tag = "1")]
        pub public_key: Option<PublicKey>,
        /// Payload type (multicodec as raw bytes).
        #[prost(bytes = "vec", tag = "2")]
        pub payload_type: Vec<u8>,
        /// Payload.
        #[prost(bytes = "vec", tag = "3")]
        pub payload: Vec<u8>,
        /// Signature over domain, type and payload.
        #[prost(bytes = "vec", tag = "5")]
        pub signature: Vec<u8>,
    }

    /// A peer record.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PeerRecord {
        /// Peer id bytes.
        #[prost(bytes = "vec", tag = "1")]
        pub peer_id: Vec<u8>,
        /// Increasing sequence number.
        #[prost(uint64, tag = "2")]
        pub seq: u64,
        /// Addresses.
        #[prost(message, repeated, tag = "3")]
        pub addresses: Vec<peer_record::AddressInfo>,
    }

    /// Nested types of [`PeerRecord`].
    pub mod peer_record {
        /// One address.
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct AddressInfo {
            /// Binary multiaddr.
            #[prost(bytes = "vec", tag = "1")]
            pub multiaddr: Vec<u8>,
        }
    }
}

/// The Noise handshake payload of libp2p.
pub mod noise {
    /// Extensions carried in the handshake.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NoiseExtensions {
        /// WebTransport certificate hashes.
        #[prost(bytes = "vec", repeated, tag = "1")]
        pub webtransport_certhashes: Vec<Vec<u8>>,
        /// Stream muxers in preference order.
        #[prost(string, repeated, tag = "2")]
        pub stream_muxers: Vec<String>,
    }

    /// The payload of Noise handshake messages 2 and 3.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NoiseHandshakePayload {
        /// Serialized libp2p public key of the sender.
        #[prost(bytes = "vec", optional, tag = "1")]
        pub identity_key: Option<Vec<u8>>,
        /// Signature of `"noise-libp2p-static-key:" || static key`.
        #[prost(bytes = "vec", optional, tag = "2")]
        pub identity_sig: Option<Vec<u8>>,
        /// Extensions.
        #[prost(message, optional, tag = "4")]
        pub extensions: Option<NoiseExtensions>,
    }
}

/// Kademlia DHT (`/ipfs/kad/1.0.0`), the `dht.proto` of go-libp2p-kad-dht and
/// rust-libp2p.
///
/// That schema is **proto3**: fields have no presence, so a field equal to its
/// default (`type = PUT_VALUE = 0`, empty `key`) is simply not sent, exactly as
/// go, rust and js encode it. Nested types of `Message` are flattened into this
/// module; the wire form does not depend on nesting.
pub mod kad {
    /// A DHT value record (only used by PUT_VALUE/GET_VALUE, which circuit does
    /// not store; kept so such messages decode).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Record {
        /// The key of the record.
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        /// The value.
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
        /// Time the record was received, set by the receiver.
        #[prost(string, tag = "5")]
        pub time_received: String,
    }

    /// The one message of the protocol, used for requests and responses.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Message {
        /// What kind of message this is ([`MessageType`]).
        #[prost(enumeration = "MessageType", tag = "1")]
        pub r#type: i32,
        /// Unused (coral cluster level); rust-libp2p sends 10/9, go sends 0.
        #[prost(int32, tag = "10")]
        pub cluster_level_raw: i32,
        /// The key of FIND_NODE (a peer id), GET_PROVIDERS and ADD_PROVIDER
        /// (a multihash), GET_VALUE and PUT_VALUE.
        #[prost(bytes = "vec", tag = "2")]
        pub key: Vec<u8>,
        /// PUT_VALUE / GET_VALUE record.
        #[prost(message, optional, tag = "3")]
        pub record: Option<Record>,
        /// Peers closer to the key (responses).
        #[prost(message, repeated, tag = "8")]
        pub closer_peers: Vec<Peer>,
        /// Providers of the key (GET_PROVIDERS response, ADD_PROVIDER request).
        #[prost(message, repeated, tag = "9")]
        pub provider_peers: Vec<Peer>,
    }

    /// A peer as known by the sender.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Peer {
        /// Peer id bytes.
        #[prost(bytes = "vec", tag = "1")]
        pub id: Vec<u8>,
        /// Binary multiaddrs.
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub addrs: Vec<Vec<u8>>,
        /// The sender's connection to that peer ([`ConnectionType`]).
        #[prost(enumeration = "ConnectionType", tag = "3")]
        pub connection: i32,
    }

    /// `Message.type`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum MessageType {
        /// Store a value record.
        PutValue = 0,
        /// Fetch a value record.
        GetValue = 1,
        /// Announce that the sender provides a key.
        AddProvider = 2,
        /// Ask for providers of a key.
        GetProviders = 3,
        /// Ask for the peers closest to a key.
        FindNode = 4,
        /// Deprecated liveness check.
        Ping = 5,
    }

    /// `Peer.connection`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum ConnectionType {
        /// No connection, no extra information (default).
        NotConnected = 0,
        /// A live connection.
        Connected = 1,
        /// Recently connected.
        CanConnect = 2,
        /// Recently failed to connect.
        CannotConnect = 3,
    }
}

/// AutoNAT v1 (`/libp2p/autonat/1.0.0`).
///
/// The schema is **proto2** with `optional` fields: every field we set is put on
/// the wire even when it equals its default (`type = DIAL = 0`, `status = OK = 0`),
/// because rust-libp2p checks `type_pb == Some(DIAL)` and `status == Some(OK)`.
/// Nested types of `Message` are flattened into this module.
pub mod autonat {
    /// The one message of the protocol.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Message {
        /// [`MessageType`]; always set.
        #[prost(enumeration = "MessageType", optional, tag = "1")]
        pub r#type: Option<i32>,
        /// The request (type DIAL).
        #[prost(message, optional, tag = "2")]
        pub dial: Option<Dial>,
        /// The answer (type DIAL_RESPONSE).
        #[prost(message, optional, tag = "3")]
        pub dial_response: Option<DialResponse>,
    }

    /// `Message.type`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum MessageType {
        /// Dial me back.
        Dial = 0,
        /// The outcome.
        DialResponse = 1,
    }

    /// `DialResponse.status`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum ResponseStatus {
        /// A dial-back succeeded.
        Ok = 0,
        /// Every dial-back failed.
        EDialError = 100,
        /// The server would not dial.
        EDialRefused = 101,
        /// The request was malformed.
        EBadRequest = 200,
        /// The server failed.
        EInternalError = 300,
    }

    /// The requester and the addresses to dial.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PeerInfo {
        /// Peer id bytes.
        #[prost(bytes = "vec", optional, tag = "1")]
        pub id: Option<Vec<u8>>,
        /// Binary multiaddrs.
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub addrs: Vec<Vec<u8>>,
    }

    /// A dial-back request.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dial {
        /// Who to dial, where.
        #[prost(message, optional, tag = "1")]
        pub peer: Option<PeerInfo>,
    }

    /// A dial-back answer.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DialResponse {
        /// [`ResponseStatus`]; always set.
        #[prost(enumeration = "ResponseStatus", optional, tag = "1")]
        pub status: Option<i32>,
        /// Human-readable reason.
        #[prost(string, optional, tag = "2")]
        pub status_text: Option<String>,
        /// OK: the address that worked (binary multiaddr); absent otherwise
        /// (rust-libp2p rejects an error response that carries an address).
        #[prost(bytes = "vec", optional, tag = "3")]
        pub addr: Option<Vec<u8>>,
    }
}

/// Circuit relay v1 (`/libp2p/circuit/relay/0.1.0`), proto2.
pub mod relay_v1 {
    /// The single message of relay v1.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CircuitRelay {
        /// HOP, STOP, STATUS or CAN_HOP.
        #[prost(enumeration = "Type", optional, tag = "1")]
        pub r#type: Option<i32>,
        /// The initiator (HOP and STOP).
        #[prost(message, optional, tag = "2")]
        pub src_peer: Option<Peer>,
        /// The destination (HOP and STOP).
        #[prost(message, optional, tag = "3")]
        pub dst_peer: Option<Peer>,
        /// STATUS only.
        #[prost(enumeration = "Status", optional, tag = "4")]
        pub code: Option<i32>,
    }

    /// A peer: id (required) and addresses.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Peer {
        /// Peer id bytes.
        #[prost(bytes = "vec", required, tag = "1")]
        pub id: Vec<u8>,
        /// Binary multiaddrs.
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub addrs: Vec<Vec<u8>>,
    }

    /// Message type.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum Type {
        /// Relay me to dstPeer.
        Hop = 1,
        /// A relayed connection from srcPeer.
        Stop = 2,
        /// An answer.
        Status = 3,
        /// Are you a relay?
        CanHop = 4,
    }

    /// Status codes: 1xx success, 2xx from the relay, 3xx from the destination.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum Status {
        /// Success.
        Success = 100,
        /// Source address too long.
        HopSrcAddrTooLong = 220,
        /// Destination address too long.
        HopDstAddrTooLong = 221,
        /// Source peer invalid (or not the sender).
        HopSrcMultiaddrInvalid = 250,
        /// Destination peer invalid.
        HopDstMultiaddrInvalid = 251,
        /// The relay has no connection to the destination.
        HopNoConnToDst = 260,
        /// The relay could not dial the destination.
        HopCantDialDst = 261,
        /// The relay could not open a stream to the destination.
        HopCantOpenDstStream = 262,
        /// Not a relay.
        HopCantSpeakRelay = 270,
        /// Destination is the relay itself.
        HopCantRelayToSelf = 280,
        /// Relay busy (limits).
        HopBackoff = 290,
        /// Source address too long (destination side).
        StopSrcAddrTooLong = 320,
        /// Destination address too long (destination side).
        StopDstAddrTooLong = 321,
        /// Source invalid (destination side).
        StopSrcMultiaddrInvalid = 350,
        /// Destination invalid (destination side).
        StopDstMultiaddrInvalid = 351,
        /// The destination refuses relayed connections.
        StopRelayRefused = 390,
        /// Unparsable message.
        MalformedMessage = 400,
    }
}
