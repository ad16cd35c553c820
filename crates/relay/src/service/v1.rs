//! Circuit relay v1 (`/libp2p/circuit/relay/0.1.0`) on the relay: CAN_HOP and HOP.
//! No reservations exist in v1, so any connected peer can be reached; the same
//! circuit limits as v2 apply (per-peer and total circuit counts, duration, data).

use std::sync::atomic::Ordering;
use std::time::Duration;

use circuit_net::framed;
use circuit_net::{IncomingStream, Stream};
use circuit_proto::relay_v1::{self as v1, Request};
use circuit_wire::pb::relay_v1::{CircuitRelay, Status};
use tokio::io::AsyncWriteExt;

use super::{CircuitGuard, Relay};

impl Relay {
    pub(super) async fn handle_v1(&self, inc: IncomingStream) {
        let IncomingStream {
            mut stream,
            connection,
            ..
        } = inc;
        let peer = connection.peer();
        let cfg = self.config();
        let msg = match tokio::time::timeout(
            cfg.stream_timeout,
            framed::read_message::<CircuitRelay>(&mut stream, v1::MAX_MESSAGE),
        )
        .await
        {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "relay v1: malformed message");
                answer(&mut stream, Status::MalformedMessage).await;
                return;
            }
            Err(_) => return,
        };
        let req = match v1::parse_request(&msg) {
            Ok(r) => r,
            Err(code) => {
                tracing::info!(%peer, ?code, "relay v1: bad request");
                answer(&mut stream, code).await;
                return;
            }
        };
        let (src, dst) = match req {
            Request::CanHop => {
                answer(&mut stream, Status::Success).await;
                return;
            }
            Request::Stop { .. } => {
                // A relay does not take relayed connections itself.
                answer(&mut stream, Status::StopRelayRefused).await;
                return;
            }
            Request::Hop { src, dst } => (src, dst),
        };
        let node = self.inner.node.clone();
        let refuse = |code: Status, why: &'static str| {
            tracing::info!(%src, %dst, ?code, why, "relay v1: circuit refused");
            self.inner
                .stats
                .circuits_refused
                .fetch_add(1, Ordering::Relaxed);
            code
        };
        let check = if connection.info().relayed {
            Err(refuse(
                Status::HopCantSpeakRelay,
                "request over a relayed connection",
            ))
        } else if src != peer {
            Err(refuse(
                Status::HopSrcMultiaddrInvalid,
                "srcPeer is not the sender",
            ))
        } else if dst == node.peer_id() {
            Err(refuse(
                Status::HopCantRelayToSelf,
                "destination is the relay",
            ))
        } else {
            let admitted = {
                let mut t = self.table();
                let r = t.open_circuit_unreserved(&cfg, src, dst);
                self.inner.metrics.sync_table(&t);
                r
            };
            admitted.map_err(|_| refuse(Status::HopBackoff, "circuit limits"))
        };
        if let Err(code) = check {
            answer(&mut stream, code).await;
            return;
        }
        let _guard = CircuitGuard {
            relay: self.clone(),
            src,
            dst,
        };
        // v1 has no reservations, but a peer that speaks v2 is reachable only with one:
        // otherwise v1 would be a way around the reservation gate.
        if speaks_v2(&node, &dst).await
            && !self
                .table()
                .has_reservation(&dst, std::time::Instant::now())
        {
            answer(
                &mut stream,
                refuse(
                    Status::HopNoConnToDst,
                    "destination speaks v2 and holds no reservation",
                ),
            )
            .await;
            return;
        }
        let Some(dst_conn) = node
            .connections_to(&dst)
            .into_iter()
            .find(|c| !c.info().relayed)
        else {
            answer(
                &mut stream,
                refuse(Status::HopNoConnToDst, "no connection to the destination"),
            )
            .await;
            return;
        };
        let stop = async {
            let mut s = node
                .open_stream(&dst_conn, v1::PROTOCOL)
                .await
                .map_err(|e| (Status::HopCantOpenDstStream as i32, e.to_string()))?;
            framed::write_message(&mut s, &v1::stop_from(&msg))
                .await
                .map_err(|e| (Status::HopCantOpenDstStream as i32, e.to_string()))?;
            let reply = framed::read_message::<CircuitRelay>(&mut s, v1::MAX_MESSAGE)
                .await
                .map_err(|e| (Status::HopCantOpenDstStream as i32, e.to_string()))?;
            // The destination's own refusal code goes back to the source unchanged.
            v1::parse_status(&reply).map_err(|c| (c, v1::code_name(c)))?;
            Ok::<Stream, (i32, String)>(s)
        };
        let dst_stream = match tokio::time::timeout(cfg.connect_timeout, stop).await {
            Ok(Ok(s)) => s,
            Ok(Err((code, e))) => {
                tracing::info!(%src, %dst, error = %e, "relay v1: destination refused or failed");
                self.inner
                    .stats
                    .circuits_refused
                    .fetch_add(1, Ordering::Relaxed);
                let m = CircuitRelay {
                    code: Some(code),
                    ..v1::status(Status::HopCantOpenDstStream)
                };
                let _ = framed::write_message(&mut stream, &m).await;
                let _ = stream.shutdown().await;
                return;
            }
            Err(_) => {
                answer(
                    &mut stream,
                    refuse(
                        Status::HopCantOpenDstStream,
                        "destination did not answer in time",
                    ),
                )
                .await;
                return;
            }
        };
        if framed::write_message(&mut stream, &v1::status(Status::Success))
            .await
            .is_err()
        {
            return;
        }
        tracing::info!(%src, %dst, "relay v1 circuit open");
        self.run_circuit(src, dst, stream, dst_stream, &cfg).await;
    }
}

/// Whether `peer` serves the v2 stop protocol (asks identify if we do not know yet).
async fn speaks_v2(node: &circuit_net::Node, peer: &libp2p_identity::PeerId) -> bool {
    let info = match node.peer_info(peer) {
        Some(i) => Some(i),
        None => match node
            .connections_to(peer)
            .into_iter()
            .find(|c| !c.info().relayed)
        {
            Some(conn) => tokio::time::timeout(
                Duration::from_secs(5),
                circuit_net::protocols::identify::ask_now(node, &conn),
            )
            .await
            .ok()
            .and_then(|r| r.ok()),
            None => None,
        },
    };
    info.map(|i| {
        i.protocols
            .iter()
            .any(|p| p == circuit_proto::relay::STOP_PROTOCOL)
    })
    .unwrap_or(false)
}

async fn answer(stream: &mut Stream, code: Status) {
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        framed::write_message(stream, &v1::status(code)),
    )
    .await;
    let _ = stream.shutdown().await;
}
