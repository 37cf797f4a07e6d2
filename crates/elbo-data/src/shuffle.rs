//! The order of an epoch's examples, and its division into minibatches.
//!
//! The shuffle is a Fisher-Yates written here (not `rand`'s `shuffle`, whose
//! algorithm may change between versions): start from `0, 1, ..., n - 1`; for `i`
//! from `n - 1` down to 1, draw `j` uniform in `0..=i` and swap positions `i` and `j`.
//! The draws come from the stream of [`crate::EpochSeed`] for the purpose "shuffle"
//! (see the `rng` module's documentation), so one (seed, epoch) gives one order on
//! every machine.

use std::num::NonZeroUsize;

use crate::rng::{EpochSeed, Purpose, below, stream};

/// How an epoch is cut into minibatches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Examples per batch.
    pub batch_size: NonZeroUsize,
    /// Whether to leave out the last batch when it is smaller than `batch_size`.
    pub drop_last: bool,
}

impl Batching {
    /// The number of batches for `len` examples.
    pub fn batches(&self, len: usize) -> usize {
        let size = self.batch_size.get();
        if self.drop_last {
            len / size
        } else {
            len.div_ceil(size)
        }
    }
}

/// A permutation of a data set's indices: the order of one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochOrder {
    indices: Vec<usize>,
}

impl EpochOrder {
    /// `0, 1, ..., len - 1` in the shuffled order of epoch `key`.
    pub fn shuffled(len: usize, key: EpochSeed) -> Self {
        let mut indices: Vec<usize> = (0..len).collect();
        let mut rng = stream(key, Purpose::Shuffle, 0);
        for i in (1..len).rev() {
            // `j <= i < len`, so the conversions are lossless.
            let j = below(&mut rng, i as u64 + 1) as usize;
            indices.swap(i, j);
        }
        EpochOrder { indices }
    }

    /// `0, 1, ..., len - 1` in order.
    pub fn sequential(len: usize) -> Self {
        EpochOrder {
            indices: (0..len).collect(),
        }
    }

    /// The indices, in the epoch's order.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// The batches of the epoch: consecutive slices of the order.
    pub fn batches(&self, batching: Batching) -> std::slice::Chunks<'_, usize> {
        let size = batching.batch_size.get();
        let used = batching.batches(self.indices.len()) * size;
        self.indices[..used.min(self.indices.len())].chunks(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batching(size: usize, drop_last: bool) -> Batching {
        Batching {
            batch_size: NonZeroUsize::new(size).unwrap(),
            drop_last,
        }
    }

    #[test]
    fn golden_order_for_seed_42_epoch_0() {
        // Pinned, and checked against an independent implementation (ChaCha8 block
        // function written from its specification, then the Fisher-Yates and the
        // bounded draw described above); must hold on every machine, every release.
        let order = EpochOrder::shuffled(10, EpochSeed { seed: 42, epoch: 0 });
        assert_eq!(order.indices(), GOLDEN);
    }

    const GOLDEN: [usize; 10] = [5, 6, 9, 4, 7, 3, 2, 1, 0, 8];

    #[test]
    fn orders_are_permutations_that_change_with_the_epoch() {
        let key = |epoch| EpochSeed { seed: 5, epoch };
        let a = EpochOrder::shuffled(1000, key(0));
        let mut sorted = a.indices().to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, EpochOrder::sequential(1000).indices());
        assert_eq!(a, EpochOrder::shuffled(1000, key(0)));
        assert_ne!(a, EpochOrder::shuffled(1000, key(1)));
        assert!(EpochOrder::shuffled(0, key(0)).indices().is_empty());
        assert_eq!(EpochOrder::shuffled(1, key(0)).indices(), [0]);
    }

    #[test]
    fn every_position_is_equally_likely() {
        // Where index 0 lands over 6,000 epochs of a 6-element shuffle: each position
        // is a Binomial(6000, 1/6) count, mean 1000 and sd sqrt(6000/6 * 5/6) = 28.9;
        // 5 sd = 145 bounds each count.
        let mut counts = [0usize; 6];
        for epoch in 0..6000 {
            let order = EpochOrder::shuffled(6, EpochSeed { seed: 1, epoch });
            let pos = order.indices().iter().position(|&i| i == 0).unwrap();
            counts[pos] += 1;
        }
        for c in counts {
            assert!(c.abs_diff(1000) < 145, "{counts:?}");
        }
    }

    #[test]
    fn batches_keep_or_drop_the_partial_last_one() {
        let order = EpochOrder::sequential(10);
        let sizes = |b| order.batches(b).map(<[usize]>::len).collect::<Vec<_>>();
        assert_eq!(sizes(batching(4, false)), vec![4, 4, 2]);
        assert_eq!(sizes(batching(4, true)), vec![4, 4]);
        assert_eq!(sizes(batching(5, true)), vec![5, 5]);
        assert_eq!(sizes(batching(20, true)), Vec::<usize>::new());
        assert_eq!(batching(4, false).batches(10), 3);
        let all: Vec<usize> = order
            .batches(batching(3, false))
            .flatten()
            .copied()
            .collect();
        assert_eq!(all, order.indices());
    }
}
