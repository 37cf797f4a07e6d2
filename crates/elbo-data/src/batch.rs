//! Minibatches of an epoch, transformed and ready to become tensors.

use std::num::NonZeroUsize;

use ndarray::{Array1, Array4};

use crate::dataset::Dataset;
use crate::rng::EpochSeed;
use crate::shuffle::{Batching, EpochOrder};
use crate::transform::Transform;

/// How a [`Loader`] batches and transforms a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Batch size and whether to drop a final partial batch.
    pub batching: Batching,
    /// Whether each epoch visits the examples in a seeded random order (else in order).
    pub shuffle: bool,
    /// The run's seed (for the order and the transforms).
    pub seed: u64,
    /// What the images become.
    pub transform: Transform,
}

impl Default for LoaderConfig {
    /// Batches of 128 (the last one partial), shuffled with seed 0, scaled to [0, 1].
    fn default() -> Self {
        LoaderConfig {
            batching: Batching {
                batch_size: NonZeroUsize::new(128).unwrap_or(NonZeroUsize::MIN),
                drop_last: false,
            },
            shuffle: true,
            seed: 0,
            transform: Transform::default(),
        }
    }
}

/// Hands out a data set's epochs as transformed minibatches. It borrows the data set:
/// an epoch allocates its order (one index per example) and each batch, never a copy
/// of the data set.
#[derive(Debug, Clone, Copy)]
pub struct Loader<'a> {
    dataset: &'a Dataset,
    config: LoaderConfig,
}

/// One minibatch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The transformed images, (B, C, H, W).
    pub images: Array4<f32>,
    /// Their labels, (B).
    pub labels: Array1<u8>,
    /// Their indices in the data set.
    pub indices: Vec<usize>,
}

impl<'a> Loader<'a> {
    /// A loader over `dataset`.
    pub fn new(dataset: &'a Dataset, config: LoaderConfig) -> Self {
        Loader { dataset, config }
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The number of batches in each epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.config.batching.batches(self.dataset.len())
    }

    /// The order of epoch `epoch`.
    pub fn order(&self, epoch: u64) -> EpochOrder {
        let len = self.dataset.len();
        if self.config.shuffle {
            EpochOrder::shuffled(len, self.key(epoch))
        } else {
            EpochOrder::sequential(len)
        }
    }

    /// The batches of epoch `epoch` (counted from 0).
    pub fn epoch(&self, epoch: u64) -> EpochBatches<'a> {
        EpochBatches {
            dataset: self.dataset,
            config: self.config,
            key: self.key(epoch),
            order: self.order(epoch),
            next: 0,
            count: self.batches_per_epoch(),
        }
    }

    fn key(&self, epoch: u64) -> EpochSeed {
        EpochSeed {
            seed: self.config.seed,
            epoch,
        }
    }
}

/// The batches of one epoch, from [`Loader::epoch`].
#[derive(Debug, Clone)]
pub struct EpochBatches<'a> {
    dataset: &'a Dataset,
    config: LoaderConfig,
    key: EpochSeed,
    order: EpochOrder,
    next: usize,
    count: usize,
}

impl Iterator for EpochBatches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let indices = self.order.batches(self.config.batching).nth(self.next)?;
        self.next += 1;
        let images = self
            .config
            .transform
            .apply_valid(self.dataset, indices, self.key);
        let all_labels = self.dataset.labels();
        let labels = indices.iter().map(|&i| all_labels[i]).collect();
        Some(Batch {
            images,
            labels,
            indices: indices.to_vec(),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.count - self.next.min(self.count);
        (left, Some(left))
    }
}

impl ExactSizeIterator for EpochBatches<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::bundled;
    use crate::transform::{Pixels, Scale};

    fn config(size: usize, drop_last: bool) -> LoaderConfig {
        LoaderConfig {
            batching: Batching {
                batch_size: NonZeroUsize::new(size).unwrap(),
                drop_last,
            },
            ..LoaderConfig::default()
        }
    }

    #[test]
    fn an_epoch_visits_every_example_once() {
        let train = &bundled().train;
        let loader = Loader::new(train, config(1000, false));
        let batches: Vec<Batch> = loader.epoch(0).collect();
        assert_eq!(batches.len(), 9);
        assert_eq!(loader.batches_per_epoch(), 9);
        let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(seen, loader.order(0).indices());
        seen.sort_unstable();
        assert_eq!(seen, (0..9000).collect::<Vec<_>>());
        let b = &batches[3];
        assert_eq!(b.images.shape(), &[1000, 1, 28, 28]);
        for (k, &i) in b.indices.iter().enumerate().step_by(97) {
            assert_eq!(b.labels[k], train.labels()[i]);
            assert_eq!(
                b.images[[k, 0, 14, 14]],
                f32::from(train.images()[[i, 0, 14, 14]]) / 255.0
            );
        }
    }

    #[test]
    fn partial_batches_are_kept_or_dropped() {
        let test = &bundled().test;
        let sizes = |c| {
            Loader::new(test, c)
                .epoch(2)
                .map(|b| b.labels.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(config(300, false)), vec![300, 300, 300, 100]);
        assert_eq!(sizes(config(300, true)), vec![300, 300, 300]);
        let mut iter = Loader::new(test, config(300, true)).epoch(0);
        assert_eq!(iter.len(), 3);
        iter.next();
        assert_eq!(iter.len(), 2);
    }

    #[test]
    fn unshuffled_epochs_are_in_order_and_transforms_follow_the_config() {
        let test = &bundled().test;
        let c = LoaderConfig {
            shuffle: false,
            transform: Transform {
                pixels: Pixels::Scaled(Scale::Symmetric),
                horizontal_flip: false,
            },
            ..config(10, false)
        };
        let first = Loader::new(test, c).epoch(5).next().unwrap();
        assert_eq!(first.indices, (0..10).collect::<Vec<_>>());
        assert!(first.images.iter().all(|x| (-1.0..=1.0).contains(x)));
        assert!(first.images.iter().any(|&x| x == -1.0));
    }
}
