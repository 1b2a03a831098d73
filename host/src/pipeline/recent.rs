//! The ids settled last, found by fingerprint for retransmissions: a ring in settling order and
//! a table of 4-byte positions into it, both sized once for the most ids kept (~6 MiB at most).

use std::collections::VecDeque;
use std::time::Instant;

use hashbrown::HashTable;

use super::kept_id::KeptId;

/// Most settled ids kept for retransmissions; the oldest go first.
pub const MAX_RECENT: usize = 100_000;

/// One settled message.
struct Settled {
    fingerprint: u64,
    id: KeptId,
    at: Instant,
}

/// Settled ids, oldest first, at most `max`; a fingerprint settled again finds its latest id.
///
/// A map from fingerprint to (id, time) beside a queue of (fingerprint, time) held 48 bytes per
/// bucket and grew to twice the buckets its entries needed, since removals leave tombstones: 12
/// MiB for 100,000 ids, 19 MiB while it resized. Here the ring holds each id once and the table
/// only its position (the fingerprint is already a uniform hash, so it is the table's hash).
pub struct RecentIds {
    ring: VecDeque<Settled>,
    /// The position (wrapping) of the ring's front; later ones count up from it.
    first: u32,
    /// Per fingerprint, the position of its latest entry in `ring`.
    latest: HashTable<u32>,
    max: usize,
}

impl RecentIds {
    /// Room for `max` ids, allocated now, so that memory does not grow (or double while a
    /// table resizes) under load. The table has twice the slots: tombstones are then cleared
    /// in place rather than by growing.
    pub fn new(max: usize) -> RecentIds {
        RecentIds { ring: VecDeque::with_capacity(max + 1), first: 0, latest: HashTable::with_capacity(2 * max), max }
    }

    /// The latest id settled with `fingerprint`, and when.
    pub fn get(&self, fingerprint: u64) -> Option<(&KeptId, Instant)> {
        let position = *self.latest.find(fingerprint, |&p| self.at(p).fingerprint == fingerprint)?;
        let settled = self.at(position);
        Some((&settled.id, settled.at))
    }

    /// Keeps `id` as the latest of `fingerprint`, forgetting the oldest id past `max`.
    pub fn insert(&mut self, fingerprint: u64, id: KeptId, at: Instant) {
        let position = self.first.wrapping_add(u32::try_from(self.ring.len()).unwrap_or(u32::MAX));
        self.ring.push_back(Settled { fingerprint, id, at });
        let RecentIds { ring, first, latest, .. } = self;
        let index = |p: u32| p.wrapping_sub(*first) as usize;
        match latest.find_mut(fingerprint, |&p| ring[index(p)].fingerprint == fingerprint) {
            Some(latest) => *latest = position,
            None => {
                latest.insert_unique(fingerprint, position, |&p| ring[index(p)].fingerprint);
            }
        }
        while self.ring.len() > self.max {
            self.pop_oldest();
        }
    }

    /// When the oldest id kept was settled.
    pub fn oldest_at(&self) -> Option<Instant> {
        self.ring.front().map(|s| s.at)
    }

    /// Forgets the oldest id kept.
    pub fn pop_oldest(&mut self) {
        let Some(oldest) = self.ring.pop_front() else { return };
        let position = self.first;
        self.first = self.first.wrapping_add(1);
        // Its fingerprint's entry points here unless it was settled again since.
        if let Ok(entry) = self.latest.find_entry(oldest.fingerprint, |&p| p == position) {
            entry.remove();
        }
    }

    fn at(&self, position: u32) -> &Settled {
        &self.ring[position.wrapping_sub(self.first) as usize]
    }
}

impl Default for RecentIds {
    fn default() -> RecentIds {
        RecentIds::new(MAX_RECENT)
    }
}

impl std::fmt::Debug for RecentIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentIds").field("kept", &self.ring.len()).field("max", &self.max).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> KeptId {
        KeptId::new(&format!("m{n}"))
    }

    #[test]
    fn the_latest_id_of_a_fingerprint_is_found_until_it_is_the_oldest_past_the_limit() {
        let now = Instant::now();
        let mut recent = RecentIds::new(3);
        recent.insert(1, id(1), now);
        recent.insert(2, id(2), now);
        recent.insert(1, id(3), now);
        assert_eq!(recent.get(1).map(|(id, _)| id.text()), Some("m3".into()));
        assert_eq!(recent.get(2).map(|(id, _)| id.text()), Some("m2".into()));
        // The ring is full: the next two push out "m1" (fingerprint 1's older id: its latest
        // stays) and "m2".
        recent.insert(4, id(4), now);
        assert_eq!(recent.get(1).map(|(id, _)| id.text()), Some("m3".into()));
        recent.insert(5, id(5), now);
        assert!(recent.get(2).is_none());
        assert_eq!(recent.get(4).map(|(id, _)| id.text()), Some("m4".into()));
    }

    #[test]
    fn positions_wrap_around_and_the_table_never_outgrows_its_slots() {
        let now = Instant::now();
        let mut recent = RecentIds::new(1000);
        recent.first = u32::MAX - 500;
        let slots = recent.latest.capacity();
        for n in 0..20_000u64 {
            // Fingerprints spread over the table's bits, as sha256's are, some settled twice.
            let fingerprint = (n % 7000).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            recent.insert(fingerprint, id(n), now);
        }
        assert_eq!(recent.latest.capacity(), slots);
        assert_eq!(recent.ring.len(), 1000);
        for n in 19_000..20_000u64 {
            let fingerprint = (n % 7000).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert_eq!(recent.get(fingerprint).map(|(id, _)| id.text()), Some(format!("m{n}")));
        }
        assert!(recent.get(6500u64.wrapping_mul(0x9E37_79B9_7F4A_7C15)).is_none());
        assert_eq!(recent.latest.len(), 1000);
    }
}
