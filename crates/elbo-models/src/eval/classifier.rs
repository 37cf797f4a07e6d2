//! A small image classifier whose penultimate activations are the feature space of the
//! sample-quality metric ([`crate::eval::frechet`]): Inception weights cannot be fetched
//! here, so the project trains its own feature extractor (`elbo train classifier`).
//!
//! The network: two 3x3 convolutions (32 and 64 channels by default), each followed by
//! ReLU and 2x2 max-pooling, a fully connected layer to 128 ReLU units (the
//! *features*), dropout, and a linear head to the classes. It reads images scaled to
//! [0, 1], whatever the generative models' data scale.
//!
//! Its checkpoints use the same format and run-folder layout as the generative models,
//! under the family [`FAMILY`]; [`restore`] refuses any other family and
//! [`crate::session::restore`] refuses a classifier.
//!
//! (About 500 lines: the network, its training step and test hook, its job and its
//! restore are one concept.)

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use elbo_data::{Dataset, Transform};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, VarStore};
use tch::{Device, Kind, Tensor};

use crate::data::{self, DataSpec};
use crate::error::{Error, Result};
use crate::models::config::CLASSIFIER as FAMILY_NAME;
use crate::train::checkpoint::{self, CheckpointMeta};
use crate::train::{
    self, Batch, Cadence, Control, EpochEnd, Hook, Identity, Progress, Reported, RunDir, StepLoss,
    TrainConfig, TrainStep, Trainer,
};

/// The checkpoint family of classifiers.
pub const FAMILY: &str = FAMILY_NAME;

/// A classifier's configuration: everything that fixes the shapes of its weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// Image shape (channels, height, width); height and width at least 4.
    pub image: [i64; 3],
    /// Channels of the two convolutions.
    pub channels: [i64; 2],
    /// Units of the penultimate layer: the dimension of the feature space.
    pub features: i64,
    /// Number of classes.
    pub classes: i64,
    /// Dropout between the features and the head, while training.
    pub dropout: f64,
}

impl ClassifierConfig {
    /// The default network for images of shape `image` with `classes` classes: 32 and 64
    /// channels, 128 features, dropout 0.25.
    pub fn new(image: [i64; 3], classes: i64) -> ClassifierConfig {
        ClassifierConfig {
            image,
            channels: [32, 64],
            features: 128,
            classes,
            dropout: 0.25,
        }
    }

    fn validate(&self) -> Result<()> {
        let [c, h, w] = self.image;
        let sizes_ok = c >= 1 && h >= 4 && w >= 4;
        let widths_ok = self.channels.iter().all(|&k| k >= 1) && self.features >= 1;
        if !(sizes_ok && widths_ok && self.classes >= 2 && (0.0..1.0).contains(&self.dropout)) {
            return Err(Error::Config {
                detail: format!(
                    "classifier: expected images of at least 1x4x4, positive widths, at least \
                     2 classes and dropout in [0, 1); found {self:?}"
                ),
            });
        }
        Ok(())
    }
}

/// The classifier network.
#[derive(Debug)]
pub struct Classifier {
    config: ClassifierConfig,
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    hidden: nn::Linear,
    head: nn::Linear,
}

impl Classifier {
    /// A classifier with fresh weights under `path`.
    pub fn new(path: &nn::Path<'_>, config: ClassifierConfig) -> Result<Classifier> {
        config.validate()?;
        let [c, h, w] = config.image;
        let [c1, c2] = config.channels;
        let conv = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let flat = c2 * (h / 4) * (w / 4);
        Ok(Classifier {
            conv1: nn::conv2d(path / "conv1", c, c1, 3, conv),
            conv2: nn::conv2d(path / "conv2", c1, c2, 3, conv),
            hidden: nn::linear(path / "hidden", flat, config.features, Default::default()),
            head: nn::linear(
                path / "head",
                config.features,
                config.classes,
                Default::default(),
            ),
            config,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    /// The penultimate activations (after ReLU), shape (batch, features), of images in
    /// [0, 1] of shape (batch, C, H, W). Deterministic: dropout comes after them.
    pub fn features(&self, x: &Tensor) -> Tensor {
        let x = self.conv1.forward(x).relu().max_pool2d_default(2);
        let x = self.conv2.forward(&x).relu().max_pool2d_default(2);
        self.hidden.forward(&x.flatten(1, -1)).relu()
    }

    /// Class logits, shape (batch, classes); `train` turns dropout on.
    pub fn logits(&self, x: &Tensor, train: bool) -> Tensor {
        let features = self.features(x).dropout(self.config.dropout, train);
        self.head.forward(&features)
    }
}

/// How `elbo train classifier` trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierTrainConfig {
    /// Passes over the training split.
    pub epochs: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// Adam's learning rate (constant).
    pub lr: f64,
    /// The run's seed: initial weights, data order, dropout.
    pub seed: u64,
    /// The data set, as recorded in the checkpoint.
    pub data: DataSpec,
}

impl Default for ClassifierTrainConfig {
    /// 5 epochs of batches of 128, Adam 1e-3, seed 0, the bundled MNIST sample.
    fn default() -> Self {
        ClassifierTrainConfig {
            epochs: 5,
            batch_size: 128,
            lr: 1e-3,
            seed: 0,
            data: DataSpec::Bundled,
        }
    }
}

impl ClassifierTrainConfig {
    /// The training loop's configuration for `train_examples` training images: constant
    /// Adam, one checkpoint at the end, no ELBO evaluation.
    pub fn train_config(&self, train_examples: usize) -> Result<TrainConfig> {
        if self.epochs == 0 || self.batch_size == 0 || !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::Config {
                detail: format!(
                    "classifier training: expected at least 1 epoch, a batch size of at least 1 \
                     and a positive learning rate; found {self:?}"
                ),
            });
        }
        let per_epoch = train_examples.div_ceil(self.batch_size).max(1) as u64;
        let steps = self
            .epochs
            .checked_mul(per_epoch)
            .ok_or_else(|| Error::Config {
                detail: format!(
                    "{} epochs of {per_epoch} steps overflow the step count",
                    self.epochs
                ),
            })?;
        Ok(TrainConfig {
            steps,
            batch_size: self.batch_size,
            lr: self.lr,
            seed: self.seed,
            cadence: Cadence {
                checkpoint_every: steps,
                keep_checkpoints: 1,
                eval_examples: 0,
                ..Cadence::default()
            },
            data: self.data.clone(),
            ..TrainConfig::default()
        })
    }
}

/// One finished epoch, as a training observer sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    /// The epoch, counted from 1.
    pub epoch: u64,
    /// Optimiser steps so far.
    pub step: u64,
    /// The cross-entropy of the epoch's last batch, in nats.
    pub cross_entropy: f64,
    /// The fraction of the test split classified correctly.
    pub test_accuracy: f64,
}

/// What a finished training reports.
#[derive(Clone, Debug)]
pub struct ClassifierReport {
    /// The last epoch's report.
    pub last: EpochReport,
    /// Test examples the accuracy is measured on.
    pub test_examples: usize,
    /// Wall-clock seconds of the training (evaluations included).
    pub seconds: f64,
    /// The checkpoint written at the end.
    pub checkpoint: PathBuf,
}

/// The classifier's training step: the cross-entropy of its logits, dropout on, on
/// images in [0, 1].
struct ClassifierStep<'a>(&'a Classifier);

impl TrainStep for ClassifierStep<'_> {
    fn transform(&self, _horizontal_flip: bool) -> Transform {
        Transform::default()
    }

    fn loss(&self, batch: &Batch, _step: u64) -> StepLoss {
        let loss = self
            .0
            .logits(&batch.x, true)
            .cross_entropy_for_logits(&batch.labels);
        StepLoss {
            reported: Reported::Scalars(vec![("cross_entropy".into(), loss.detach())]),
            loss,
            extra: Vec::new(),
        }
    }
}

/// The test accuracy at each epoch's end (`test_accuracy`).
struct TestAccuracy<'a> {
    model: &'a Classifier,
    images: Tensor,
    labels: Tensor,
}

impl Hook for TestAccuracy<'_> {
    fn epoch_end(&mut self, _at: &EpochEnd<'_>) -> Result<Vec<(String, serde_json::Value)>> {
        let value = accuracy(self.model, &self.images, &self.labels, 500);
        Ok(vec![("test_accuracy".into(), value.into())])
    }
}

/// Images of `dataset` at `indices`, scaled to [0, 1], as a (n, C, H, W) tensor: the
/// input a classifier expects.
pub fn unit_images(dataset: &Dataset, indices: &[usize], device: Device) -> Result<Tensor> {
    let key = elbo_data::EpochSeed { seed: 0, epoch: 0 };
    let images = Transform::default()
        .apply(dataset, indices, key)
        .map_err(|e| Error::Data {
            detail: e.to_string(),
        })?;
    Ok(data::to_tensor(&images, device))
}

/// The labels of `dataset` as an int64 tensor.
fn label_tensor(labels: impl IntoIterator<Item = u8>, device: Device) -> Tensor {
    let labels: Vec<i64> = labels.into_iter().map(i64::from).collect();
    Tensor::from_slice(&labels).to_device(device)
}

/// The fraction of `images` (in [0, 1]) whose most likely class is their label.
pub fn accuracy(model: &Classifier, images: &Tensor, labels: &Tensor, batch: i64) -> f64 {
    let n = images.size()[0];
    let correct: i64 = tch::no_grad(|| {
        (0..n)
            .step_by(batch.max(1) as usize)
            .map(|start| {
                let len = batch.min(n - start);
                let logits = model.logits(&images.narrow(0, start, len), false);
                logits
                    .argmax(1, false)
                    .eq_tensor(&labels.narrow(0, start, len))
                    .sum(Kind::Int64)
                    .int64_value(&[])
            })
            .sum()
    });
    correct as f64 / n.max(1) as f64
}

/// The features of `images` (in [0, 1]), computed in batches, as an f64 array of shape
/// (n, features).
pub fn feature_array(
    model: &Classifier,
    images: &Tensor,
    batch: i64,
) -> Result<ndarray::Array2<f64>> {
    let n = images.size()[0];
    let dims = model.config.features;
    let mut rows: Vec<f64> = Vec::with_capacity((n * dims) as usize);
    for start in (0..n).step_by(batch.max(1) as usize) {
        let len = batch.min(n - start);
        let features = tch::no_grad(|| model.features(&images.narrow(0, start, len)));
        let flat = features
            .to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .flatten(0, -1);
        rows.extend(Vec::<f64>::try_from(&flat)?);
    }
    ndarray::Array2::from_shape_vec((n as usize, dims as usize), rows).map_err(|e| Error::Config {
        detail: format!("features: {e}"),
    })
}

/// Trains `model` (whose variables live in `vs`) on `train` through the shared loop
/// ([`Trainer`]), reporting the accuracy on `test` after every epoch to `observer`, and
/// writes the run folder `run`: `config.json`, `metrics.jsonl` and a checkpoint at the
/// end. Refuses a run folder that already holds a checkpoint.
pub fn train_classifier(
    model: &Classifier,
    vs: &mut VarStore,
    train: &Dataset,
    test: &Dataset,
    config: &ClassifierTrainConfig,
    run: &RunDir,
    observer: &mut dyn FnMut(&EpochReport),
) -> Result<ClassifierReport> {
    let started = Instant::now();
    let train_config = config.train_config(train.len())?;
    let device = vs.device();
    let all_test: Vec<usize> = (0..test.len()).collect();
    let hook = TestAccuracy {
        model,
        images: unit_images(test, &all_test, device)?,
        labels: label_tensor(test.labels().iter().copied(), device),
    };
    let identity = Identity {
        family: FAMILY.to_string(),
        config: serde_json::to_value(&model.config).unwrap_or_default(),
    };
    let mut last = None;
    let mut epochs = |p: &Progress| {
        let accuracy = p
            .evaluation
            .iter()
            .find(|(name, _)| name == "test_accuracy");
        let cross_entropy = p.terms.iter().find(|(name, _)| name == "cross_entropy");
        if let (Some((_, test_accuracy)), Some((_, cross_entropy))) = (accuracy, cross_entropy) {
            let report = EpochReport {
                epoch: p.epoch + 1,
                step: p.step,
                cross_entropy: *cross_entropy,
                test_accuracy: *test_accuracy,
            };
            observer(&report);
            last = Some(report);
        }
    };
    let report = Trainer::new(train_config, run.clone(), identity, FAMILY)
        .hook(hook)
        .fit(
            &ClassifierStep(model),
            vs,
            train,
            Control {
                resume: false,
                stop: &AtomicBool::new(false),
                allow_changes: false,
            },
            &mut epochs,
        )?;
    Ok(ClassifierReport {
        last: last.ok_or_else(|| Error::Config {
            detail: "classifier training ran no epoch".to_string(),
        })?,
        test_examples: test.len(),
        seconds: started.elapsed().as_secs_f64(),
        checkpoint: report.checkpoint,
    })
}

/// An `elbo train classifier` job.
#[derive(Clone, Debug)]
pub struct ClassifierJob {
    /// The data set (its training split trains, its test split scores).
    pub data: DataSpec,
    /// The run folder.
    pub run: PathBuf,
    /// How to train (its `data` field is filled in from `data`).
    pub config: ClassifierTrainConfig,
    /// Where to train.
    pub device: Device,
}

/// Runs a classifier job: loads the data, builds the default network for its image shape
/// (10 classes), trains and checkpoints it.
pub fn run_job(
    job: &ClassifierJob,
    observer: &mut dyn FnMut(&EpochReport),
) -> Result<ClassifierReport> {
    let splits = job.data.load()?;
    let [c, h, w] = splits.train.image_shape().map(|d| d as i64);
    let mut vs = train::var_store(job.config.seed, job.device);
    let model = Classifier::new(&vs.root(), ClassifierConfig::new([c, h, w], 10))?;
    let config = ClassifierTrainConfig {
        data: job.data.clone(),
        ..job.config.clone()
    };
    train_classifier(
        &model,
        &mut vs,
        &splits.train,
        &splits.test,
        &config,
        &RunDir::new(&job.run),
        observer,
    )
}

/// A classifier brought back from a checkpoint.
pub struct RestoredClassifier {
    /// Its variables.
    pub vs: VarStore,
    /// The network.
    pub model: Classifier,
    /// What the checkpoint says about itself.
    pub meta: CheckpointMeta,
    /// The checkpoint's JSON file.
    pub path: PathBuf,
}

/// Rebuilds the classifier of the checkpoint at `path` (a run folder, its
/// `checkpoints/` folder or a `step-*.json` file) on `device`. A checkpoint of a
/// generative model is refused.
pub fn restore(path: &Path, device: Device) -> Result<RestoredClassifier> {
    let json = checkpoint::resolve_checkpoint(path)?;
    let loaded = checkpoint::load(&json)?;
    if loaded.meta.model != FAMILY {
        return Err(Error::Checkpoint {
            detail: format!(
                "{} holds a {} model, expected a {FAMILY} (trained by `elbo train classifier`)",
                json.display(),
                loaded.meta.model
            ),
        });
    }
    let config: ClassifierConfig = serde_json::from_value(loaded.meta.model_config.clone())
        .map_err(|e| Error::Checkpoint {
            detail: format!(
                "{}: its classifier configuration does not parse: {e}",
                json.display()
            ),
        })?;
    let mut vs = train::var_store(loaded.meta.seed, device);
    let model = Classifier::new(&vs.root(), config)?;
    train::load_weights(&mut vs, &loaded.tensors, false)?;
    Ok(RestoredClassifier {
        vs,
        model,
        meta: loaded.meta,
        path: json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_the_configuration_and_bad_ones_are_refused() {
        let _generator = crate::testing::generator_lock();
        let vs = VarStore::new(Device::Cpu);
        let config = ClassifierConfig::new([1, 28, 28], 10);
        let model = Classifier::new(&vs.root(), config).unwrap();
        let x = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        assert_eq!(model.features(&x).size(), [3, 128]);
        assert_eq!(model.logits(&x, true).size(), [3, 10]);
        let features = model.features(&x);
        assert!(
            features.min().double_value(&[]) >= 0.0,
            "features follow a ReLU"
        );
        let params: i64 = vs
            .trainable_variables()
            .iter()
            .map(Tensor::numel)
            .map(|n| n as i64)
            .sum();
        // conv1 1*32*9+32, conv2 32*64*9+64, hidden 64*7*7*128+128, head 128*10+10.
        assert_eq!(params, 320 + 18_496 + 401_536 + 1_290);
        let cifar = Classifier::new(&(vs.root() / "c"), ClassifierConfig::new([3, 32, 32], 10));
        assert!(cifar.is_ok());
        let err = Classifier::new(&(vs.root() / "bad"), ClassifierConfig::new([1, 2, 2], 10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 1x4x4"), "{err}");
    }
}
