//! Drops events whose id was already stored recently: SDKs retry a request when they miss
//! the answer, and the retry must not count twice (Segment `messageId`, PostHog `uuid`).
//!
//! The writer keeps a 64-bit fingerprint of every stored event id, in one set per hour of
//! arrival, for `window_hours`. A fingerprint costs 8 bytes plus hash-table overhead:
//! 10 to 20 bytes per id, so the default cap of 5 million ids is at most about 100 MB.
//! When the cap is reached the oldest hour is dropped early (the effective window is
//! exported as `tally_dedup_window_seconds`). Two different ids share a fingerprint with
//! probability about n / 2^64 per lookup — one in a million million for 5 million ids.
//!
//! The sets are rebuilt from the store at start, so a restart does not open a gap; they
//! are filled only from batches the writer inserts, so they always match the store.

use std::collections::{HashSet, VecDeque};

use uuid::Uuid;

const HOUR_MICROS: i64 = 3_600 * 1_000_000;

pub(crate) struct Dedup {
    window_hours: i64,
    max_ids: usize,
    /// (hour index since the epoch, fingerprints of ids that arrived in that hour)
    hours: VecDeque<(i64, HashSet<u64>)>,
    len: usize,
}

impl Dedup {
    pub(crate) fn new(window_hours: u32, max_ids: usize) -> Self {
        Self {
            window_hours: i64::from(window_hours),
            max_ids,
            hours: VecDeque::new(),
            len: 0,
        }
    }

    /// Whether this id was seen within the window; records it if not.
    pub(crate) fn is_duplicate(&mut self, id: &Uuid, received_at: i64) -> bool {
        if self.window_hours == 0 || self.max_ids == 0 {
            return false;
        }
        let fp = fingerprint(id);
        if self.hours.iter().any(|(_, set)| set.contains(&fp)) {
            return true;
        }
        let hour = received_at.div_euclid(HOUR_MICROS);
        self.evict(hour);
        match self.hours.back_mut() {
            Some((h, set)) if *h >= hour => {
                set.insert(fp);
            }
            _ => self.hours.push_back((hour, HashSet::from([fp]))),
        }
        self.len += 1;
        while self.len > self.max_ids && self.hours.len() > 1 {
            self.drop_oldest();
        }
        false
    }

    /// The ids currently remembered.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// How far back ids are remembered, in seconds, as of `now`.
    pub(crate) fn window_secs(&self, now: i64) -> i64 {
        self.hours
            .front()
            .map(|(h, _)| (now - h * HOUR_MICROS) / 1_000_000)
            .unwrap_or(0)
    }

    fn evict(&mut self, hour: i64) {
        while self
            .hours
            .front()
            .is_some_and(|(h, _)| *h <= hour - self.window_hours)
        {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some((_, set)) = self.hours.pop_front() {
            self.len -= set.len();
        }
    }
}

fn fingerprint(id: &Uuid) -> u64 {
    let (hi, lo) = id.as_u64_pair();
    // v7 ids put a timestamp in the high bits; mixing both halves keeps the random ones.
    hi.rotate_left(29) ^ lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_id_is_a_duplicate_within_the_window_only() {
        let mut d = Dedup::new(24, 1000);
        let id = Uuid::now_v7();
        let t0 = 100 * HOUR_MICROS;
        assert!(!d.is_duplicate(&id, t0));
        assert!(d.is_duplicate(&id, t0 + 1));
        assert!(d.is_duplicate(&id, t0 + 23 * HOUR_MICROS));
        // An unrelated event a day later moves the window past the first hour.
        assert!(!d.is_duplicate(&Uuid::new_v4(), t0 + 24 * HOUR_MICROS));
        assert!(!d.is_duplicate(&id, t0 + 24 * HOUR_MICROS));
    }

    #[test]
    fn the_cap_drops_whole_old_hours_first() {
        let mut d = Dedup::new(24, 3);
        let old = Uuid::new_v4();
        assert!(!d.is_duplicate(&old, 0));
        for i in 1..=3 {
            assert!(!d.is_duplicate(&Uuid::new_v4(), HOUR_MICROS + i));
        }
        assert_eq!(d.len(), 3);
        assert!(
            !d.is_duplicate(&old, HOUR_MICROS + 10),
            "the oldest hour was dropped"
        );
        assert_eq!(d.window_secs(2 * HOUR_MICROS), 3_600);
    }

    #[test]
    fn a_zero_window_disables_deduplication() {
        let mut d = Dedup::new(0, 1000);
        let id = Uuid::new_v4();
        assert!(!d.is_duplicate(&id, 0));
        assert!(!d.is_duplicate(&id, 0));
    }
}
