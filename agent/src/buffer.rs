//! The bounded queue of reports a collector has not acknowledged yet.
//!
//! Reports are kept encoded (prost bytes, shared between the buffers of all collectors),
//! so an hour of them costs a few hundred KiB. When the buffer is full, the oldest report
//! is dropped and counted; the count rides on the next report the collector will see
//! (the new oldest), so it survives a replay. An `Ack(seq)` forgets everything up to
//! `seq`; what remains is replayed in order after a reconnect.

use std::collections::VecDeque;

use prost::bytes::Bytes;

/// One buffered report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The report's sequence number.
    pub seq: u64,
    /// Reports dropped from the buffer just before this one: the `dropped` field to
    /// send with it.
    pub dropped_before: u64,
    /// The encoded `rally.v1.Report`, without `dropped`.
    pub report: Bytes,
}

/// A bounded, ordered queue of un-acknowledged reports.
#[derive(Debug)]
pub struct Buffer {
    entries: VecDeque<Entry>,
    capacity: usize,
    dropped_total: u64,
    /// Drops not yet attached to an entry (only when the buffer emptied itself, i.e.
    /// `capacity` is 1).
    dropped_pending: u64,
}

impl Buffer {
    /// An empty buffer holding at most `capacity` reports (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            dropped_total: 0,
            dropped_pending: 0,
        }
    }

    /// Appends a report; `seq` must be greater than every buffered one. Returns whether
    /// the oldest report was dropped to make room.
    pub fn push(&mut self, seq: u64, report: Bytes) -> bool {
        debug_assert!(self.entries.back().is_none_or(|e| e.seq < seq));
        let mut dropped = false;
        if self.entries.len() >= self.capacity
            && let Some(oldest) = self.entries.pop_front()
        {
            dropped = true;
            self.dropped_total += 1;
            let carried = oldest.dropped_before + 1;
            match self.entries.front_mut() {
                Some(next) => next.dropped_before += carried,
                None => self.dropped_pending += carried,
            }
        }
        self.entries.push_back(Entry {
            seq,
            dropped_before: std::mem::take(&mut self.dropped_pending),
            report,
        });
        dropped
    }

    /// Forgets every report with a sequence number up to and including `seq`; returns
    /// how many were removed.
    pub fn ack(&mut self, seq: u64) -> usize {
        let n = self.entries.partition_point(|e| e.seq <= seq);
        self.entries.drain(..n);
        n
    }

    /// The first buffered report after `seq` (the next one to send on a stream that has
    /// sent everything up to `seq`; 0 = from the start).
    pub fn next_after(&self, seq: u64) -> Option<&Entry> {
        let i = self.entries.partition_point(|e| e.seq <= seq);
        self.entries.get(i)
    }

    /// Changes the capacity (a reloaded `buffer_reports`); a smaller buffer drops its
    /// oldest reports at once, counted as any drop is. Returns how many were dropped.
    pub fn set_capacity(&mut self, capacity: usize) -> usize {
        self.capacity = capacity.max(1);
        let mut dropped = 0;
        while self.entries.len() > self.capacity
            && let Some(oldest) = self.entries.pop_front()
        {
            dropped += 1;
            self.dropped_total += 1;
            let carried = oldest.dropped_before + 1;
            // The front is never empty here: more than `capacity` (≥ 1) entries remain.
            if let Some(next) = self.entries.front_mut() {
                next.dropped_before += carried;
            }
        }
        dropped
    }

    /// How many reports are buffered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many reports were dropped since the buffer was created.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(seq: u64) -> Bytes {
        Bytes::from(seq.to_le_bytes().to_vec())
    }

    fn filled(capacity: usize, seqs: std::ops::RangeInclusive<u64>) -> Buffer {
        let mut b = Buffer::new(capacity);
        for s in seqs {
            b.push(s, bytes(s));
        }
        b
    }

    /// Walks the buffer the way a fresh stream replays it.
    fn replay(b: &Buffer) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut cursor = 0;
        while let Some(e) = b.next_after(cursor) {
            out.push((e.seq, e.dropped_before));
            cursor = e.seq;
        }
        out
    }

    #[test]
    fn replays_in_order_without_gaps() {
        let b = filled(10, 1..=5);
        assert_eq!(replay(&b), vec![(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]);
        assert_eq!(b.next_after(3).map(|e| e.seq), Some(4));
        assert_eq!(b.next_after(5), None);
        assert_eq!(b.next_after(3).map(|e| e.report.clone()), Some(bytes(4)));
    }

    #[test]
    fn full_buffer_drops_the_oldest_and_counts_it() {
        let mut b = filled(3, 1..=3);
        assert!(!b.is_empty());
        assert!(b.push(4, bytes(4)));
        assert!(b.push(5, bytes(5)));
        assert_eq!(b.len(), 3);
        assert_eq!(b.dropped_total(), 2);
        // 1 and 2 are gone; 3, the next the collector will see, says so.
        assert_eq!(replay(&b), vec![(3, 2), (4, 0), (5, 0)]);
    }

    #[test]
    fn drop_count_moves_forward_when_the_carrier_is_dropped_too() {
        let mut b = filled(2, 1..=2);
        b.push(3, bytes(3)); // drops 1 → 2 carries 1
        b.push(4, bytes(4)); // drops 2 (carrying 1) → 3 carries 2
        assert_eq!(replay(&b), vec![(3, 2), (4, 0)]);
        assert_eq!(b.dropped_total(), 2);
    }

    #[test]
    fn shrinking_drops_the_oldest_and_carries_the_count() {
        let mut b = filled(10, 1..=5);
        assert_eq!(b.set_capacity(20), 0, "growing drops nothing");
        assert_eq!(b.set_capacity(2), 3);
        assert_eq!(b.len(), 2);
        assert_eq!(b.dropped_total(), 3);
        let first = b.next_after(0).unwrap();
        assert_eq!((first.seq, first.dropped_before), (4, 3));
        // The new capacity holds for later pushes.
        assert!(b.push(6, bytes(6)));
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn capacity_one_still_reports_its_drops() {
        let mut b = Buffer::new(0); // clamped to 1
        b.push(1, bytes(1));
        assert!(b.push(2, bytes(2)));
        assert!(b.push(3, bytes(3)));
        assert_eq!(replay(&b), vec![(3, 2)]);
    }

    #[test]
    fn ack_removes_everything_up_to_seq() {
        let mut b = filled(10, 1..=6);
        assert_eq!(b.ack(4), 4);
        assert_eq!(replay(&b), vec![(5, 0), (6, 0)]);
        assert_eq!(b.ack(4), 0, "a repeated ack changes nothing");
        assert_eq!(b.ack(100), 2, "an ack past the end empties the buffer");
        assert!(b.is_empty());
        b.push(7, bytes(7));
        assert_eq!(replay(&b), vec![(7, 0)]);
    }

    #[test]
    fn ack_of_a_dropped_carrier_keeps_later_reports() {
        let mut b = filled(3, 1..=5); // holds 3 (dropped_before 2), 4, 5
        b.ack(3);
        assert_eq!(replay(&b), vec![(4, 0), (5, 0)]);
        assert_eq!(b.dropped_total(), 2);
    }
}

/// Properties of the buffer under any sequence of pushes, acknowledgements and capacity
/// changes, checked against a plain list of what was pushed and not acknowledged.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Push the next report, `gap` sequence numbers after the previous one.
        Push { gap: u64 },
        /// Acknowledge up to `back` before the last pushed sequence number.
        Ack { back: u64 },
        /// A reloaded `buffer_reports`.
        SetCapacity(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1..4u64).prop_map(|gap| Op::Push { gap }),
            2 => (0..12u64).prop_map(|back| Op::Ack { back }),
            1 => (0..10usize).prop_map(Op::SetCapacity),
        ]
    }

    /// The buffer as a fresh stream replays it: (seq, dropped_before, report).
    fn replay(b: &Buffer) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut cursor = 0;
        while let Some(e) = b.next_after(cursor) {
            out.push(e.clone());
            cursor = e.seq;
        }
        out
    }

    proptest! {
        #[test]
        fn the_buffer_keeps_the_newest_unacknowledged_reports_in_order(
            capacity in 0..8usize,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let mut b = Buffer::new(capacity);
            let mut capacity = capacity.max(1);
            // What was pushed and neither acknowledged nor dropped, oldest first.
            let mut model: Vec<u64> = Vec::new();
            let mut last_seq = 0;
            let mut pushed = 0u64;
            let mut acked = 0u64;
            // Drops carried by reports the collector acknowledged: it has seen them.
            let mut drops_delivered = 0u64;
            for op in ops {
                match op {
                    Op::Push { gap } => {
                        last_seq += gap;
                        let full = model.len() >= capacity;
                        let dropped = b.push(last_seq, Bytes::from(last_seq.to_le_bytes().to_vec()));
                        prop_assert_eq!(dropped, full, "a push drops exactly when full");
                        if full {
                            model.remove(0);
                        }
                        model.push(last_seq);
                        pushed += 1;
                    }
                    Op::Ack { back } => {
                        let seq = last_seq.saturating_sub(back);
                        let before = replay(&b);
                        let gone: Vec<&Entry> = before.iter().filter(|e| e.seq <= seq).collect();
                        drops_delivered += gone.iter().map(|e| e.dropped_before).sum::<u64>();
                        let n = b.ack(seq);
                        prop_assert_eq!(n, gone.len(), "ack removes every report up to its seq");
                        model.retain(|s| *s > seq);
                        acked += n as u64;
                    }
                    Op::SetCapacity(c) => {
                        capacity = c.max(1);
                        let excess = model.len().saturating_sub(capacity);
                        prop_assert_eq!(b.set_capacity(c), excess);
                        model.drain(..excess);
                    }
                }
                let now = replay(&b);
                prop_assert!(b.len() <= capacity, "{} reports in a buffer of {}", b.len(), capacity);
                prop_assert_eq!(b.len(), now.len());
                prop_assert_eq!(b.is_empty(), now.is_empty());
                let seqs: Vec<u64> = now.iter().map(|e| e.seq).collect();
                prop_assert_eq!(&seqs, &model, "the newest unacknowledged reports, in order");
                prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence numbers rise");
                for e in &now {
                    prop_assert_eq!(&e.report[..], &e.seq.to_le_bytes()[..], "each report stays with its seq");
                }
                // Every report pushed is buffered, acknowledged or counted as dropped...
                prop_assert_eq!(pushed, b.len() as u64 + acked + b.dropped_total());
                // ...and every drop rides on a report the collector saw or will see.
                let carried: u64 = now.iter().map(|e| e.dropped_before).sum();
                prop_assert_eq!(drops_delivered + carried, b.dropped_total());
            }
        }
    }
}
