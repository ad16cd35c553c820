//! The iterative lookup: a state machine over the candidate peers of one key.
//!
//! It keeps every candidate sorted by XOR distance to `sha256(key)`, asks up to
//! α of the closest not-yet-contacted ones at a time, merges the `closerPeers`
//! they return, and finishes when the k closest candidates that did not fail
//! have all answered (or, for GET_PROVIDERS, once enough providers are known).
//! A peer that does not answer by its deadline stops counting against α and
//! towards the k closest; a late answer is still used.

use std::time::{Duration, Instant};

use libp2p_identity::PeerId;

use super::key::{Distance, Key};
use super::protocol::{KadPeer, Request, Response};
use super::{ALPHA_VALUE, K_VALUE};

/// Per-request timeout (rust-libp2p: 10 s per query request).
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// Knobs of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryConfig {
    /// Requests in flight at once (α). The spec and go use 10, rust 3; any
    /// value interoperates.
    pub alpha: usize,
    /// How many closest peers must answer before the walk ends (k).
    pub num_results: usize,
    /// How long one peer has to answer.
    pub peer_timeout: Duration,
    /// GET_PROVIDERS: stop once this many distinct providers are known.
    pub max_providers: Option<usize>,
    /// Most candidates tracked; the farthest uncontacted ones are dropped
    /// beyond it, so hostile responses cannot grow the walk without bound.
    pub max_candidates: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            alpha: ALPHA_VALUE,
            num_results: K_VALUE,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            max_providers: None,
            max_candidates: 10 * K_VALUE,
        }
    }
}

/// What a lookup asks each peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    /// FIND_NODE: the closest peers (bootstrap, provide, finding a peer).
    FindNode,
    /// GET_PROVIDERS: providers of a key, walking towards it.
    GetProviders,
}

/// Where a candidate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Known, not asked yet.
    NotContacted,
    /// Asked; must answer by the deadline.
    Waiting(Instant),
    /// Did not answer in time (a late answer is still taken).
    Unresponsive,
    /// Answered.
    Succeeded,
    /// The request failed (dial error, reset, bad response).
    Failed,
}

#[derive(Debug, Clone)]
struct Candidate {
    peer: KadPeer,
    distance: Distance,
    state: PeerState,
}

/// One iterative lookup.
#[derive(Debug, Clone)]
pub struct Query {
    kind: QueryKind,
    key: Vec<u8>,
    target: Key,
    local: PeerId,
    config: QueryConfig,
    /// Sorted by distance, nearest first; ids unique.
    candidates: Vec<Candidate>,
    providers: Vec<KadPeer>,
    finished: bool,
}

impl Query {
    /// A lookup of `key` starting from `seeds` (typically the table's k
    /// closest to the key). `local` is never contacted.
    pub fn new(
        kind: QueryKind,
        key: Vec<u8>,
        local: PeerId,
        seeds: impl IntoIterator<Item = KadPeer>,
        config: QueryConfig,
    ) -> Query {
        let target = Key::from_bytes(&key);
        let mut q = Query {
            kind,
            key,
            target,
            local,
            config: QueryConfig {
                alpha: config.alpha.max(1),
                num_results: config.num_results.max(1),
                max_candidates: config.max_candidates.max(config.num_results.max(1)),
                ..config
            },
            candidates: Vec::new(),
            providers: Vec::new(),
            finished: false,
        };
        for s in seeds {
            q.add_candidate(s);
        }
        q
    }

    /// The key looked up.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The kind of lookup.
    pub fn kind(&self) -> QueryKind {
        self.kind
    }

    /// The request this lookup sends to each peer.
    pub fn request(&self) -> Request {
        match self.kind {
            QueryKind::FindNode => Request::FindNode {
                key: self.key.clone(),
            },
            QueryKind::GetProviders => Request::GetProviders {
                key: self.key.clone(),
            },
        }
    }

    fn add_candidate(&mut self, peer: KadPeer) {
        if peer.id == self.local {
            return;
        }
        if let Some(c) = self.candidates.iter_mut().find(|c| c.peer.id == peer.id) {
            // Learn addresses for a peer we could not reach yet.
            for a in peer.addrs {
                if c.peer.addrs.len() < super::MAX_ADDRS_PER_PEER && !c.peer.addrs.contains(&a) {
                    c.peer.addrs.push(a);
                }
            }
            return;
        }
        let distance = Key::from_peer(&peer.id).distance(&self.target);
        let pos = self.candidates.partition_point(|c| c.distance < distance);
        self.candidates.insert(
            pos,
            Candidate {
                peer,
                distance,
                state: PeerState::NotContacted,
            },
        );
        if self.candidates.len() > self.config.max_candidates {
            // Drop the farthest peer nobody is waiting for.
            if let Some(i) = self
                .candidates
                .iter()
                .rposition(|c| c.state == PeerState::NotContacted)
            {
                self.candidates.remove(i);
            }
        }
    }

    /// Marks waiting peers whose deadline passed as unresponsive.
    pub fn handle_timeout(&mut self, now: Instant) {
        for c in &mut self.candidates {
            if let PeerState::Waiting(d) = c.state {
                if d <= now {
                    c.state = PeerState::Unresponsive;
                }
            }
        }
        self.update_finished();
    }

    /// The next peer to ask, with its request, if α allows one more and the
    /// walk is not over. The peer is then waited for until `now +
    /// peer_timeout`. Call until `None`.
    pub fn poll_request(&mut self, now: Instant) -> Option<(KadPeer, Request)> {
        self.handle_timeout(now);
        if self.finished {
            return None;
        }
        let in_flight = self
            .candidates
            .iter()
            .filter(|c| matches!(c.state, PeerState::Waiting(_)))
            .count();
        if in_flight >= self.config.alpha {
            return None;
        }
        let deadline = now + self.config.peer_timeout;
        let k = self.config.num_results;
        // Only the k closest viable candidates are worth asking.
        let mut viable = 0;
        for c in &mut self.candidates {
            if matches!(c.state, PeerState::Failed | PeerState::Unresponsive) {
                continue;
            }
            viable += 1;
            if viable > k {
                break;
            }
            if c.state == PeerState::NotContacted {
                c.state = PeerState::Waiting(deadline);
                let peer = c.peer.clone();
                return Some((peer, self.request()));
            }
        }
        None
    }

    /// Feeds `peer`'s answer. Returns `false` (and changes nothing) if `peer`
    /// was not asked by this lookup. Closer peers are merged; for
    /// GET_PROVIDERS, providers are collected.
    pub fn handle_response(&mut self, peer: &PeerId, response: &Response, _now: Instant) -> bool {
        let Some(c) = self.candidates.iter_mut().find(|c| c.peer.id == *peer) else {
            return false;
        };
        if !matches!(c.state, PeerState::Waiting(_) | PeerState::Unresponsive) {
            return false;
        }
        c.state = PeerState::Succeeded;
        if let Response::GetProviders { provider_peers, .. } = response {
            for p in provider_peers {
                match self.providers.iter_mut().find(|x| x.id == p.id) {
                    Some(x) => {
                        for a in &p.addrs {
                            if x.addrs.len() < super::MAX_ADDRS_PER_PEER && !x.addrs.contains(a) {
                                x.addrs.push(a.clone());
                            }
                        }
                    }
                    None => self.providers.push(p.clone()),
                }
            }
        }
        for p in response.closer_peers().iter().take(K_VALUE) {
            self.add_candidate(p.clone());
        }
        self.update_finished();
        true
    }

    /// Records that asking `peer` failed.
    pub fn handle_failure(&mut self, peer: &PeerId) {
        if let Some(c) = self.candidates.iter_mut().find(|c| c.peer.id == *peer) {
            if matches!(c.state, PeerState::Waiting(_) | PeerState::Unresponsive) {
                c.state = PeerState::Failed;
            }
        }
        self.update_finished();
    }

    /// Ends the walk now (e.g. the caller has what it needs).
    pub fn finish(&mut self) {
        self.finished = true;
    }

    fn update_finished(&mut self) {
        if self.finished {
            return;
        }
        if let Some(max) = self.config.max_providers {
            if self.providers.len() >= max {
                self.finished = true;
                return;
            }
        }
        // Finished when the k closest viable candidates have all answered;
        // with fewer than k viable ones, when all of them have (no candidate
        // at all: nothing to ask, so finished too).
        let all_answered = self
            .candidates
            .iter()
            .filter(|c| !matches!(c.state, PeerState::Failed | PeerState::Unresponsive))
            .take(self.config.num_results)
            .all(|c| c.state == PeerState::Succeeded);
        // Waiting or unresponsive peers beyond the k closest may still answer,
        // but nothing they say is needed any more.
        if all_answered {
            self.finished = true;
        }
    }

    /// Whether the walk is over.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The earliest deadline of a peer being waited for.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        self.candidates
            .iter()
            .filter_map(|c| match c.state {
                PeerState::Waiting(d) => Some(d),
                _ => None,
            })
            .min()
    }

    /// Peers that answered, nearest first, at most k: the result of a
    /// FIND_NODE walk and the targets of ADD_PROVIDER.
    pub fn closest_peers(&self) -> Vec<KadPeer> {
        self.candidates
            .iter()
            .filter(|c| c.state == PeerState::Succeeded)
            .take(self.config.num_results)
            .map(|c| c.peer.clone())
            .collect()
    }

    /// Providers found so far (GET_PROVIDERS), in arrival order.
    pub fn providers(&self) -> &[KadPeer] {
        &self.providers
    }

    /// The state of `peer` in this walk.
    pub fn peer_state(&self, peer: &PeerId) -> Option<PeerState> {
        self.candidates
            .iter()
            .find(|c| c.peer.id == *peer)
            .map(|c| c.state)
    }

    /// Number of candidates tracked.
    pub fn num_candidates(&self) -> usize {
        self.candidates.len()
    }
}
