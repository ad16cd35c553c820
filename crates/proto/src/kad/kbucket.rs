//! The routing table: 256 k-buckets indexed by common-prefix length with the
//! local key, least-recently-seen first, with one pending replacement each.
//!
//! Kademlia's rule is that long-lived peers are preferred: when a bucket is
//! full, a newcomer does not evict anyone directly. It waits as the bucket's
//! *pending* entry while the glue checks the least-recently-seen peer
//! ([`InsertResult::Pending::probe`]); if that peer shows life (any
//! [`KBucketsTable::insert_or_update`] / [`KBucketsTable::mark_seen`]) before
//! the pending timeout, the newcomer is dropped, otherwise it replaces it. A
//! peer removed for failing (`remove`) frees its slot for the pending entry at
//! once.

use std::time::{Duration, Instant};

use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

use super::key::{Distance, Key};
use super::protocol::KadPeer;
use super::{K_VALUE, MAX_ADDRS_PER_PEER};

/// How long a pending entry waits for the least-recently-seen peer to show life
/// (rust-libp2p uses 60 s).
pub const DEFAULT_PENDING_TIMEOUT: Duration = Duration::from_secs(60);

/// A peer in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The peer.
    pub peer: PeerId,
    /// Its keyspace point.
    pub key: Key,
    /// Known addresses, most recent first, at most [`MAX_ADDRS_PER_PEER`].
    pub addrs: Vec<Multiaddr>,
    /// When it was last seen alive (inserted, updated or marked seen).
    pub last_seen: Instant,
}

impl Entry {
    /// As a wire peer.
    pub fn to_kad_peer(&self) -> KadPeer {
        KadPeer::new(self.peer, self.addrs.clone())
    }
}

#[derive(Debug, Clone)]
struct Pending {
    entry: Entry,
    /// When `probe` is replaced unless it shows life.
    deadline: Instant,
    /// The least-recently-seen peer when the entry arrived.
    probe: PeerId,
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    /// Least recently seen first.
    entries: Vec<Entry>,
    pending: Option<Pending>,
}

/// What [`KBucketsTable::insert_or_update`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertResult {
    /// The peer was known; moved to most-recently-seen, addresses merged.
    Updated,
    /// The peer was added to a bucket with room.
    Inserted,
    /// The bucket is full; the peer waits as pending until `deadline`. The glue
    /// should check `probe` (the least-recently-seen peer), e.g. with a
    /// FIND_NODE, and call `mark_seen` on success or `remove` on failure.
    Pending {
        /// The peer to check.
        probe: PeerId,
        /// When the pending peer replaces `probe` unless it showed life.
        deadline: Instant,
    },
    /// The bucket is full and already has a pending peer; the peer was dropped.
    Full,
    /// The local peer is never stored.
    SelfEntry,
}

/// A pending entry applied by [`KBucketsTable::handle_timeout`] or `remove`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The peer that entered the table.
    pub inserted: PeerId,
    /// The peer it replaced, if any (none when a slot was free).
    pub evicted: Option<PeerId>,
}

/// The Kademlia routing table.
#[derive(Debug, Clone)]
pub struct KBucketsTable {
    local: Key,
    local_peer: PeerId,
    buckets: Vec<Bucket>,
    k: usize,
    pending_timeout: Duration,
}

impl KBucketsTable {
    /// An empty table for `local` with k = [`K_VALUE`] and the default pending
    /// timeout.
    pub fn new(local: PeerId) -> KBucketsTable {
        KBucketsTable::with_config(local, K_VALUE, DEFAULT_PENDING_TIMEOUT)
    }

    /// An empty table with bucket size `k` (≥ 1) and a pending timeout.
    pub fn with_config(local: PeerId, k: usize, pending_timeout: Duration) -> KBucketsTable {
        KBucketsTable {
            local: Key::from_peer(&local),
            local_peer: local,
            buckets: vec![Bucket::default(); 256],
            k: k.max(1),
            pending_timeout,
        }
    }

    /// The local peer.
    pub fn local_peer(&self) -> &PeerId {
        &self.local_peer
    }

    /// The local keyspace point.
    pub fn local_key(&self) -> &Key {
        &self.local
    }

    /// Bucket index of a key (`None` for the local key).
    pub fn bucket_index(&self, key: &Key) -> Option<usize> {
        self.local.distance(key).bucket_index()
    }

    /// Adds `peer` or refreshes it (moves it to most-recently-seen and merges
    /// `addrs`, newest first). If it is the pending entry of its bucket, its
    /// addresses are refreshed there.
    pub fn insert_or_update(
        &mut self,
        peer: PeerId,
        addrs: &[Multiaddr],
        now: Instant,
    ) -> InsertResult {
        let key = Key::from_peer(&peer);
        let Some(idx) = self.bucket_index(&key) else {
            return InsertResult::SelfEntry;
        };
        let k = self.k;
        let pending_timeout = self.pending_timeout;
        let bucket = &mut self.buckets[idx];
        if let Some(pos) = bucket.entries.iter().position(|e| e.peer == peer) {
            let mut e = bucket.entries.remove(pos);
            merge_addrs(&mut e.addrs, addrs);
            e.last_seen = now;
            bucket.entries.push(e);
            return InsertResult::Updated;
        }
        if let Some(p) = bucket.pending.as_mut().filter(|p| p.entry.peer == peer) {
            merge_addrs(&mut p.entry.addrs, addrs);
            p.entry.last_seen = now;
            return InsertResult::Full;
        }
        let mut entry = Entry {
            peer,
            key,
            addrs: Vec::new(),
            last_seen: now,
        };
        merge_addrs(&mut entry.addrs, addrs);
        if bucket.entries.len() < k {
            bucket.entries.push(entry);
            return InsertResult::Inserted;
        }
        if bucket.pending.is_some() {
            return InsertResult::Full;
        }
        let deadline = now + pending_timeout;
        // `entries` is full (k ≥ 1), so the first entry exists.
        let probe = bucket.entries[0].peer;
        bucket.pending = Some(Pending {
            entry,
            deadline,
            probe,
        });
        InsertResult::Pending { probe, deadline }
    }

    /// Records that `peer` answered: moves it to most-recently-seen. Returns
    /// whether it is in the table.
    pub fn mark_seen(&mut self, peer: &PeerId, now: Instant) -> bool {
        let key = Key::from_peer(peer);
        let Some(idx) = self.bucket_index(&key) else {
            return false;
        };
        let bucket = &mut self.buckets[idx];
        match bucket.entries.iter().position(|e| e.peer == *peer) {
            Some(pos) => {
                let mut e = bucket.entries.remove(pos);
                e.last_seen = now;
                bucket.entries.push(e);
                true
            }
            None => false,
        }
    }

    /// Removes `peer` (it failed or left). A pending entry of its bucket takes
    /// the free slot, reported as [`Applied`].
    pub fn remove(&mut self, peer: &PeerId) -> Option<(Entry, Option<Applied>)> {
        let key = Key::from_peer(peer);
        let idx = self.bucket_index(&key)?;
        let bucket = &mut self.buckets[idx];
        if bucket
            .pending
            .as_ref()
            .is_some_and(|p| p.entry.peer == *peer)
        {
            return bucket.pending.take().map(|p| (p.entry, None));
        }
        let pos = bucket.entries.iter().position(|e| e.peer == *peer)?;
        let removed = bucket.entries.remove(pos);
        let applied = bucket.pending.take().map(|p| {
            let inserted = p.entry.peer;
            bucket.entries.push(p.entry);
            Applied {
                inserted,
                evicted: None,
            }
        });
        Some((removed, applied))
    }

    /// Applies pending entries whose deadline passed: the probed peer is
    /// replaced if it is still there and has not been seen since the pending
    /// entry arrived (deadline − timeout); otherwise the pending entry is
    /// dropped.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Applied> {
        let timeout = self.pending_timeout;
        let mut applied = Vec::new();
        for bucket in &mut self.buckets {
            let due = bucket.pending.as_ref().is_some_and(|p| p.deadline <= now);
            if !due {
                continue;
            }
            let Some(p) = bucket.pending.take() else {
                continue;
            };
            let since = p.deadline.checked_sub(timeout).unwrap_or(p.deadline);
            let stale = bucket
                .entries
                .iter()
                .position(|e| e.peer == p.probe && e.last_seen <= since);
            // If the probed peer answered in time (or left, and its slot went
            // to the pending entry already), the pending entry is dropped.
            if let Some(pos) = stale {
                let evicted = bucket.entries.remove(pos).peer;
                let inserted = p.entry.peer;
                let mut entry = p.entry;
                entry.last_seen = now;
                bucket.entries.push(entry);
                applied.push(Applied {
                    inserted,
                    evicted: Some(evicted),
                });
            }
        }
        applied
    }

    /// The earliest pending deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.buckets
            .iter()
            .filter_map(|b| b.pending.as_ref().map(|p| p.deadline))
            .min()
    }

    /// The entry for `peer`, if present.
    pub fn get(&self, peer: &PeerId) -> Option<&Entry> {
        let idx = self.bucket_index(&Key::from_peer(peer))?;
        self.buckets[idx].entries.iter().find(|e| e.peer == *peer)
    }

    /// Whether `peer` is in a bucket (not counting pending entries).
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.get(peer).is_some()
    }

    /// The `n` entries closest to `target`, nearest first.
    pub fn closest(&self, target: &Key, n: usize) -> Vec<&Entry> {
        let mut all: Vec<(Distance, &Entry)> =
            self.iter().map(|e| (e.key.distance(target), e)).collect();
        all.sort_by_key(|(d, _)| *d);
        all.into_iter().take(n).map(|(_, e)| e).collect()
    }

    /// All entries, bucket by bucket (nearest bucket first), least recently
    /// seen first within a bucket.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.entries.iter())
    }

    /// Entries of bucket `index` (0..256), least recently seen first.
    pub fn bucket(&self, index: usize) -> &[Entry] {
        self.buckets.get(index).map_or(&[], |b| &b.entries)
    }

    /// The pending entry of bucket `index`, if any.
    pub fn pending(&self, index: usize) -> Option<&Entry> {
        self.buckets
            .get(index)
            .and_then(|b| b.pending.as_ref())
            .map(|p| &p.entry)
    }

    /// Number of peers in the table (pending entries not counted).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.entries.len()).sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Puts `new` addresses first (newest wins), keeps the old ones after them,
/// deduplicated, at most [`MAX_ADDRS_PER_PEER`].
fn merge_addrs(addrs: &mut Vec<Multiaddr>, new: &[Multiaddr]) {
    if new.is_empty() {
        return;
    }
    let mut merged: Vec<Multiaddr> = Vec::with_capacity(MAX_ADDRS_PER_PEER);
    for a in new.iter().chain(addrs.iter()) {
        if merged.len() >= MAX_ADDRS_PER_PEER {
            break;
        }
        if !merged.contains(a) {
            merged.push(a.clone());
        }
    }
    *addrs = merged;
}
