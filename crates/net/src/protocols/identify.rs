//! Identify (`/ipfs/id/1.0.0`) and identify push (`/ipfs/id/push/1.0.0`).

use std::time::{SystemTime, UNIX_EPOCH};

use circuit_wire::pb::identify::Identify;
use circuit_wire::record::PeerRecord;
use libp2p_identity::PublicKey;
use multiaddr::Multiaddr;
use prost::Message;
use tokio::io::AsyncWriteExt;

use crate::connection::Connection;
use crate::framed;
use crate::node::{Node, PeerInfo};

/// Identify protocol id.
pub const PROTOCOL: &str = "/ipfs/id/1.0.0";
/// Identify push protocol id.
pub const PUSH_PROTOCOL: &str = "/ipfs/id/push/1.0.0";
/// Largest identify message we accept (go accepts 8 KiB).
pub const MAX_MESSAGE: usize = 8192;
/// Largest message we send: rust-libp2p refuses more than 4096 bytes.
pub const MAX_OUTGOING: usize = 4096;
/// Most messages one identify answer may be split into.
pub const MAX_PARTS: usize = 10;

/// Builds our identify message for a connection whose remote address is `observed`.
pub fn build_message(node: &Node, observed: &Multiaddr) -> Identify {
    let addrs = node.addresses();
    let seq = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let record = PeerRecord {
        peer_id: node.peer_id(),
        seq,
        addrs: addrs.clone(),
    }
    .sign(node.keypair())
    .ok();
    let mut msg = Identify {
        public_key: Some(node.keypair().public().encode_protobuf()),
        listen_addrs: addrs.iter().map(|a| a.to_vec()).collect(),
        protocols: node.protocols(),
        observed_addr: Some(observed.to_vec()),
        protocol_version: Some("ipfs/0.1.0".into()),
        agent_version: Some(node.config().agent_version),
        signed_peer_record: record,
    };
    // Stay under the 4 KiB that rust-libp2p accepts: drop the record, then addresses.
    if msg.encoded_len() + 4 > MAX_OUTGOING {
        msg.signed_peer_record = None;
    }
    while msg.encoded_len() + 4 > MAX_OUTGOING && !msg.listen_addrs.is_empty() {
        msg.listen_addrs.pop();
    }
    msg
}

/// Merges the parts of an answer into what we know of the peer; checks the key.
pub fn parse_messages(
    parts: Vec<Identify>,
    conn: &Connection,
    previous: Option<PeerInfo>,
) -> Result<PeerInfo, String> {
    let mut info = previous.unwrap_or_default();
    // Identify answers and pushes travel on separate streams and can overtake each
    // other: a message whose signed record is not newer than what we hold is stale.
    let newest = parts
        .iter()
        .filter_map(|m| m.signed_peer_record.as_ref())
        .filter_map(|rec| PeerRecord::verify(rec).ok())
        .filter(|r| r.peer_id == conn.peer())
        .map(|r| r.seq)
        .max();
    if let Some(seq) = newest {
        if info.record_seq > 0 && seq <= info.record_seq {
            return Ok(info);
        }
        info.record_seq = seq;
    }
    for m in parts {
        if let Some(pk) = m.public_key {
            let key =
                PublicKey::try_decode_protobuf(&pk).map_err(|e| format!("bad public key: {e}"))?;
            if key.to_peer_id() != conn.peer() {
                return Err("identify public key does not match the connection's peer id".into());
            }
        }
        if !m.listen_addrs.is_empty() {
            info.listen_addrs = m
                .listen_addrs
                .iter()
                .filter_map(|b| Multiaddr::try_from(b.clone()).ok())
                .collect();
        }
        if !m.protocols.is_empty() {
            info.protocols = m.protocols;
        }
        if let Some(o) = m.observed_addr {
            info.observed_addr = Multiaddr::try_from(o).ok();
        }
        if m.agent_version.is_some() {
            info.agent_version = m.agent_version;
        }
        if let Some(rec) = m.signed_peer_record {
            // A valid signed record is the best source of addresses.
            // A newer signed record is a full snapshot: even an empty one (the peer's
            // last relay address was withdrawn) replaces what we had.
            if let Ok(r) = PeerRecord::verify(&rec) {
                if r.peer_id == conn.peer() {
                    info.listen_addrs = r.addrs;
                }
            }
        }
    }
    Ok(info)
}

pub(crate) fn install(node: &Node) {
    let weak = node.downgrade();
    node.handle(PROTOCOL, move |mut inc| {
        let Some(n) = weak.upgrade() else { return };
        tokio::spawn(async move {
            let msg = build_message(&n, &inc.connection.info().remote_addr);
            if framed::write_message(&mut inc.stream, &msg).await.is_ok() {
                let _ = inc.stream.shutdown().await;
            }
        });
    });
    let weak = node.downgrade();
    node.handle(PUSH_PROTOCOL, move |mut inc| {
        let Some(n) = weak.upgrade() else { return };
        tokio::spawn(async move {
            let read = framed::read_messages_to_end::<Identify, _>(&mut inc.stream, MAX_MESSAGE, MAX_PARTS);
            match tokio::time::timeout(std::time::Duration::from_secs(30), read).await {
                Ok(Ok(parts)) => match parse_messages(parts, &inc.connection, n.peer_info(&inc.connection.peer())) {
                    Ok(info) => n.set_peer_info(inc.connection.peer(), info),
                    Err(e) => tracing::debug!(peer = %inc.connection.peer(), error = %e, "bad identify push"),
                },
                Ok(Err(e)) => tracing::debug!(peer = %inc.connection.peer(), error = %e, "identify push failed"),
                Err(_) => tracing::debug!(peer = %inc.connection.peer(), "identify push timed out"),
            }
        });
    });
}

/// Asks the peer of `conn` who it is (in the background); the answer lands in the node's peer info.
pub(crate) fn ask(node: &Node, conn: &Connection) {
    let node = node.clone();
    let conn = conn.clone();
    tokio::spawn(async move {
        if let Err(e) = ask_now(&node, &conn).await {
            tracing::debug!(peer = %conn.peer(), error = %e, "identify failed");
        }
    });
}

/// Runs identify on `conn` and returns what the peer said.
pub async fn ask_now(node: &Node, conn: &Connection) -> Result<PeerInfo, String> {
    let fut = async {
        let mut s = node
            .open_stream(conn, PROTOCOL)
            .await
            .map_err(|e| e.to_string())?;
        let parts = framed::read_messages_to_end::<Identify, _>(&mut s, MAX_MESSAGE, MAX_PARTS)
            .await
            .map_err(|e| e.to_string())?;
        parse_messages(parts, conn, node.peer_info(&conn.peer()))
    };
    let info = tokio::time::timeout(std::time::Duration::from_secs(30), fut)
        .await
        .map_err(|_| "timed out".to_string())??;
    node.set_peer_info(conn.peer(), info.clone());
    Ok(info)
}

/// Sends identify push to every connected peer (our addresses or protocols changed).
pub(crate) fn push_all(node: &Node) {
    for conn in node.connections() {
        let node = node.clone();
        tokio::spawn(async move {
            let Ok(mut s) = node.open_stream(&conn, PUSH_PROTOCOL).await else {
                return;
            };
            let msg = build_message(&node, &conn.info().remote_addr);
            if framed::write_message(&mut s, &msg).await.is_ok() {
                let _ = s.shutdown().await;
            }
        });
    }
}
