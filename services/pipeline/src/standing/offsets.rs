//! Committed offsets as contiguous low watermarks: per partition, the next offset to
//! read is the first one whose record is not yet finished. Records finish out of order
//! (a retry, a slow consumer branch), and a finished record past an unfinished one is
//! remembered, never committed: a restart replays from the first unfinished record.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One partition's watermark.
#[derive(Debug, Default)]
struct Partition {
    /// Every record below this offset is finished.
    next: u64,
    /// Finished records at or above `next`.
    finished: BTreeSet<u64>,
    /// The next offset the source is expected to send.
    expected: u64,
}

/// Watermarks of every partition of one run.
#[derive(Debug, Default)]
pub struct Watermarks {
    partitions: HashMap<u32, Partition>,
    /// How far the watermarks moved in all, over every partition.
    advanced: u64,
}

/// A record the source sent out of turn.
#[derive(Debug, PartialEq, Eq)]
pub struct OutOfOrder {
    pub partition: u32,
    pub expected: u64,
    pub got: u64,
}

impl Watermarks {
    /// Watermarks starting at the committed `offsets` (next offset per partition).
    pub fn new(offsets: &HashMap<u32, u64>) -> Self {
        let partitions = offsets
            .iter()
            .map(|(&p, &next)| {
                (
                    p,
                    Partition {
                        next,
                        finished: BTreeSet::new(),
                        expected: next,
                    },
                )
            })
            .collect();
        Self {
            partitions,
            advanced: 0,
        }
    }

    /// Notes a record read from the source: offsets of a partition come in turn, from
    /// where the run started (a partition never committed starts at 0).
    pub fn read(&mut self, partition: u32, offset: u64) -> Result<(), OutOfOrder> {
        let p = self.partitions.entry(partition).or_default();
        if offset != p.expected {
            return Err(OutOfOrder {
                partition,
                expected: p.expected,
                got: offset,
            });
        }
        p.expected += 1;
        Ok(())
    }

    /// Notes a record finished: every result of it acknowledged or dead-lettered.
    pub fn finish(&mut self, partition: u32, offset: u64) {
        let p = self.partitions.entry(partition).or_default();
        if offset < p.next {
            return;
        }
        p.finished.insert(offset);
        while p.finished.remove(&p.next) {
            p.next += 1;
            self.advanced += 1;
        }
    }

    /// How many records the watermarks passed since the run started, over every partition.
    pub fn advanced(&self) -> u64 {
        self.advanced
    }

    /// The next offset to read of every partition.
    pub fn committed(&self) -> BTreeMap<u32, u64> {
        self.partitions.iter().map(|(&p, w)| (p, w.next)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_completion_never_moves_past_unfinished_work() {
        let mut w = Watermarks::new(&HashMap::from([(0, 10)]));
        for offset in 10..15 {
            w.read(0, offset).unwrap();
        }
        w.finish(0, 12);
        w.finish(0, 13);
        assert_eq!(w.committed()[&0], 10, "10 and 11 are unfinished");
        w.finish(0, 10);
        assert_eq!(w.committed()[&0], 11);
        w.finish(0, 11);
        assert_eq!(w.committed()[&0], 14, "12 and 13 were already finished");
        w.finish(0, 14);
        assert_eq!(w.committed()[&0], 15);
        assert_eq!(w.advanced(), 5);
    }

    #[test]
    fn partitions_are_independent_and_new_ones_start_at_zero() {
        let mut w = Watermarks::new(&HashMap::from([(0, 5)]));
        w.read(0, 5).unwrap();
        w.read(1, 0).unwrap();
        w.read(1, 1).unwrap();
        w.finish(1, 1);
        w.finish(1, 0);
        assert_eq!(w.committed(), BTreeMap::from([(0, 5), (1, 2)]));
    }

    #[test]
    fn a_record_out_of_turn_is_refused() {
        let mut w = Watermarks::new(&HashMap::from([(3, 7)]));
        assert_eq!(
            w.read(3, 8),
            Err(OutOfOrder {
                partition: 3,
                expected: 7,
                got: 8
            })
        );
        assert_eq!(
            w.read(4, 1),
            Err(OutOfOrder {
                partition: 4,
                expected: 0,
                got: 1
            })
        );
    }

    #[test]
    fn finishing_below_the_watermark_or_twice_changes_nothing() {
        let mut w = Watermarks::new(&HashMap::from([(0, 3)]));
        w.read(0, 3).unwrap();
        w.finish(0, 1);
        w.finish(0, 3);
        w.finish(0, 3);
        assert_eq!(w.committed()[&0], 4);
    }
}
