//! Provider records: the server side of ADD_PROVIDER / GET_PROVIDERS, and the
//! client-side schedule of our own (re)provides.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

use super::key::{Distance, Key};
use super::protocol::KadPeer;
use super::{Error, K_VALUE, MAX_ADDRS_PER_PEER, MAX_KEY_LEN};

/// How long a received provider record lives (go, rust and the IPFS spec: 48 h).
pub const PROVIDER_RECORD_TTL: Duration = Duration::from_secs(48 * 3600);
/// How often we re-provide our own keys (go: 22 h, well within the 48 h TTL).
pub const REPUBLISH_INTERVAL: Duration = Duration::from_secs(22 * 3600);

/// Bounds of a [`ProviderStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// Lifetime of a record from its last ADD_PROVIDER.
    pub ttl: Duration,
    /// Most providers kept per key (rust-libp2p: k = 20).
    pub max_per_key: usize,
    /// Most records kept in total (rust-libp2p: 1024).
    pub max_records: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            ttl: PROVIDER_RECORD_TTL,
            max_per_key: K_VALUE,
            max_records: 1024,
        }
    }
}

/// One provider of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRecord {
    /// The provider.
    pub provider: PeerId,
    /// Addresses it announced (at most [`MAX_ADDRS_PER_PEER`]).
    pub addrs: Vec<Multiaddr>,
    /// When the record lapses unless renewed.
    pub expires: Instant,
}

/// What [`ProviderStore::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// A new record.
    Added,
    /// An existing record of the same provider was renewed.
    Renewed,
    /// The key was full; this provider replaced the one farthest from the key.
    Replaced,
}

/// Received provider records, bounded per key and in total.
#[derive(Debug, Clone, Default)]
pub struct ProviderStore {
    config: StoreConfig,
    records: HashMap<Vec<u8>, Vec<ProviderRecord>>,
    total: usize,
}

impl ProviderStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> ProviderStore {
        ProviderStore {
            config,
            records: HashMap::new(),
            total: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Stores (or renews) `provider` for `key` until `now + ttl`.
    ///
    /// When the key already has `max_per_key` providers, the new one replaces
    /// the provider whose id is farthest from the key (rust-libp2p's rule: a
    /// flood of fresh ids cannot push out close, long-lived providers
    /// cheaply), or is refused if it is the farthest itself.
    pub fn add(
        &mut self,
        key: &[u8],
        provider: PeerId,
        addrs: &[Multiaddr],
        now: Instant,
    ) -> Result<AddOutcome, Error> {
        if key.len() > MAX_KEY_LEN {
            return Err(Error::KeyTooLong(key.len()));
        }
        self.purge_key(key, now);
        let expires = now + self.config.ttl;
        let addrs: Vec<Multiaddr> = addrs.iter().take(MAX_ADDRS_PER_PEER).cloned().collect();
        if let Some(list) = self.records.get_mut(key) {
            if let Some(r) = list.iter_mut().find(|r| r.provider == provider) {
                r.expires = expires;
                if !addrs.is_empty() {
                    r.addrs = addrs;
                }
                return Ok(AddOutcome::Renewed);
            }
        }
        let record = ProviderRecord {
            provider,
            addrs,
            expires,
        };
        let target = Key::from_bytes(key);
        let max_per_key = self.config.max_per_key;
        let len = self.records.get(key).map_or(0, Vec::len);
        if len >= max_per_key {
            let Some(list) = self.records.get_mut(key) else {
                return Err(Error::StoreFull);
            };
            let dist = |p: &PeerId| -> Distance { Key::from_peer(p).distance(&target) };
            let (far, far_d) = list
                .iter()
                .enumerate()
                .map(|(i, r)| (i, dist(&r.provider)))
                .max_by(|a, b| a.1.cmp(&b.1))
                .ok_or(Error::StoreFull)?;
            if dist(&provider) >= far_d {
                return Err(Error::StoreFull);
            }
            list[far] = record;
            return Ok(AddOutcome::Replaced);
        }
        if self.total >= self.config.max_records {
            self.purge_expired(now);
            if self.total >= self.config.max_records {
                return Err(Error::StoreFull);
            }
        }
        self.records.entry(key.to_vec()).or_default().push(record);
        self.total += 1;
        Ok(AddOutcome::Added)
    }

    /// Live providers of `key` (not expired at `now`).
    pub fn providers(&self, key: &[u8], now: Instant) -> Vec<&ProviderRecord> {
        self.records
            .get(key)
            .map(|l| l.iter().filter(|r| r.expires > now).collect())
            .unwrap_or_default()
    }

    /// Live providers of `key` as wire peers.
    pub fn provider_peers(&self, key: &[u8], now: Instant) -> Vec<KadPeer> {
        self.providers(key, now)
            .into_iter()
            .map(|r| KadPeer::new(r.provider, r.addrs.clone()))
            .collect()
    }

    /// Removes `provider`'s record for `key`.
    pub fn remove(&mut self, key: &[u8], provider: &PeerId) -> bool {
        let Some(list) = self.records.get_mut(key) else {
            return false;
        };
        let before = list.len();
        list.retain(|r| r.provider != *provider);
        let removed = before - list.len();
        self.total -= removed;
        if list.is_empty() {
            self.records.remove(key);
        }
        removed > 0
    }

    fn purge_key(&mut self, key: &[u8], now: Instant) {
        if let Some(list) = self.records.get_mut(key) {
            let before = list.len();
            list.retain(|r| r.expires > now);
            self.total -= before - list.len();
            if list.is_empty() {
                self.records.remove(key);
            }
        }
    }

    /// Drops every record expired at `now`; returns how many.
    pub fn purge_expired(&mut self, now: Instant) -> usize {
        let before = self.total;
        self.records.retain(|_, list| {
            list.retain(|r| r.expires > now);
            !list.is_empty()
        });
        self.total = self.records.values().map(Vec::len).sum();
        before - self.total
    }

    /// Same as [`ProviderStore::purge_expired`], under the sans-IO name.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.purge_expired(now);
    }

    /// The earliest expiry of a stored record.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.records.values().flatten().map(|r| r.expires).min()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// The schedule of keys we provide ourselves: each is (re)published when
/// added and then every `interval`, well before remote records expire.
#[derive(Debug, Clone)]
pub struct Republisher {
    interval: Duration,
    next: HashMap<Vec<u8>, Instant>,
}

impl Default for Republisher {
    fn default() -> Self {
        Republisher::new(REPUBLISH_INTERVAL)
    }
}

impl Republisher {
    /// A schedule with the given interval (e.g. [`REPUBLISH_INTERVAL`], or go
    /// discovery's 3 h advertise TTL).
    pub fn new(interval: Duration) -> Republisher {
        Republisher {
            interval,
            next: HashMap::new(),
        }
    }

    /// Starts providing `key`: it is due at once.
    pub fn provide(&mut self, key: Vec<u8>, now: Instant) {
        self.next.insert(key, now);
    }

    /// Stops providing `key`.
    pub fn stop_providing(&mut self, key: &[u8]) -> bool {
        self.next.remove(key).is_some()
    }

    /// A key due for (re)publishing at `now`, rescheduled `interval` later.
    /// Call until `None`; the glue then runs the provide walk for each key.
    pub fn poll_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        let key = self
            .next
            .iter()
            .filter(|(_, t)| **t <= now)
            .min_by_key(|(_, t)| **t)
            .map(|(k, _)| k.clone())?;
        self.next.insert(key.clone(), now + self.interval);
        Some(key)
    }

    /// Asks for `key` to be published again at `at` (e.g. soon, after a
    /// provide walk that reached no peer).
    pub fn reschedule(&mut self, key: &[u8], at: Instant) {
        if let Some(t) = self.next.get_mut(key) {
            *t = at;
        }
    }

    /// When the next key is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next.values().min().copied()
    }

    /// Keys we provide.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.next.keys().map(Vec::as_slice)
    }
}
