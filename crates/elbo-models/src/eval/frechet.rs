//! Sample quality: the Fréchet distance between generated and test images in the
//! feature space of the project's own classifier ([`crate::eval::classifier`]), FID's
//! statistic with a small MNIST network in place of Inception.
//!
//! Generated images are mapped to [0, 1] whatever the model's data scale (Bernoulli
//! means are already there; discretized-Gaussian images in [-1, 1] become `(x + 1) / 2`),
//! the scale the classifier was trained on. The number only means something beside its
//! floor: the same distance between as many *training* images and the test images,
//! which is what a model that reproduced the data distribution would get with that
//! many samples. [`FrechetReport`] carries both.

use elbo_data::{EpochOrder, EpochSeed, Splits};
use elbo_math::frechet::{GaussianFit, frechet_distance};
use tch::{Device, Tensor};

use crate::data;
use crate::error::{Error, Result};
use crate::eval::classifier::{self, Classifier};
use crate::models::{ElboModel, draw_samples};
use crate::sample::{Classes, Guidance, SamplerSpec, SamplingOptions};

/// How the distance is measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrechetConfig {
    /// N: generated images (and training images for the floor).
    pub samples: usize,
    /// Images generated (and classified) per batch.
    pub batch: i64,
    /// The seed of the generator's draws and of the choice of training images.
    pub seed: u64,
    /// The sampler of a model that samples in steps (`None`: its default).
    pub sampling: Option<SamplingOptions>,
}

impl Default for FrechetConfig {
    /// 1,000 samples in batches of 250, seed 0.
    fn default() -> Self {
        FrechetConfig {
            samples: 1000,
            batch: 250,
            seed: 0,
            sampling: None,
        }
    }
}

/// The distances, with the sizes they were measured at.
#[derive(Clone, Debug, PartialEq)]
pub struct FrechetReport {
    /// N: generated images.
    pub samples: usize,
    /// M: test images (the whole test split).
    pub test_images: usize,
    /// The dimension of the feature space.
    pub features: usize,
    /// The squared Fréchet distance between the generated and the test images' features.
    pub distance: f64,
    /// The same between N training images (a seeded random choice) and the test images:
    /// the floor for N samples.
    pub train_floor: f64,
}

/// `n` samples of `model` (with `sampling`'s sampler when given), drawn in batches of
/// `batch` after seeding libtorch's generator with `seed`, mapped to [0, 1] (and clamped
/// there).
pub fn unit_samples(
    model: &dyn ElboModel,
    n: usize,
    batch: i64,
    seed: u64,
    sampling: Option<&SamplingOptions>,
) -> Result<Tensor> {
    crate::sample::seed_draws(seed);
    let mut parts = Vec::new();
    let mut left = n as i64;
    // Drawing as many of each class orders the whole draw: one call.
    let batch = if sampling.is_none_or(SamplingOptions::splits) {
        batch.max(1)
    } else {
        left
    };
    while left > 0 {
        let size = left.min(batch);
        let images = tch::no_grad(|| draw_samples(model, size, sampling))?;
        parts.push(data::to_unit_range(model.likelihood(), &images).clamp(0.0, 1.0));
        left -= size;
    }
    Ok(Tensor::cat(&parts, 0))
}

/// The Gaussian fitted to the classifier features of `images` (in [0, 1]).
pub fn feature_fit(classifier: &Classifier, images: &Tensor, batch: i64) -> Result<GaussianFit> {
    let expected = classifier.config().image;
    let found = &images.size()[1..];
    if found != expected {
        return Err(Error::Config {
            detail: format!(
                "the classifier reads images of shape {expected:?}, these have shape {found:?}"
            ),
        });
    }
    let features = classifier::feature_array(classifier, images, batch)?;
    Ok(GaussianFit::from_samples(&features)?)
}

/// The Fréchet distance between `images` (in [0, 1]) and the test split of `splits`, and
/// the floor of as many training images, in the features of `classifier`.
pub fn frechet_of_images(
    classifier: &Classifier,
    images: &Tensor,
    splits: &Splits,
    config: &FrechetConfig,
    device: Device,
) -> Result<FrechetReport> {
    let n = images.size()[0] as usize;
    if n > splits.train.len() {
        return Err(Error::Config {
            detail: format!(
                "the floor needs as many training images as samples: expected at most {} \
                 samples, found {n}",
                splits.train.len()
            ),
        });
    }
    let batch = config.batch.max(1);
    let all_test: Vec<usize> = (0..splits.test.len()).collect();
    let test = feature_fit(
        classifier,
        &classifier::unit_images(&splits.test, &all_test, device)?,
        batch,
    )?;
    let generated = feature_fit(classifier, &images.to_device(device), batch)?;
    let order = EpochOrder::shuffled(
        splits.train.len(),
        EpochSeed {
            seed: config.seed,
            epoch: 0,
        },
    );
    let chosen = &order.indices()[..n];
    let train = feature_fit(
        classifier,
        &classifier::unit_images(&splits.train, chosen, device)?,
        batch,
    )?;
    Ok(FrechetReport {
        samples: n,
        test_images: splits.test.len(),
        features: test.dims(),
        distance: frechet_distance(&generated, &test)?,
        train_floor: frechet_distance(&train, &test)?,
    })
}

/// Draws `config.samples` images from `model` and measures them with
/// [`frechet_of_images`].
pub fn frechet_of_model(
    model: &dyn ElboModel,
    classifier: &Classifier,
    splits: &Splits,
    config: &FrechetConfig,
    device: Device,
) -> Result<FrechetReport> {
    if config.samples < 2 {
        return Err(Error::Config {
            detail: format!(
                "a Fréchet distance needs at least 2 samples, found {}",
                config.samples
            ),
        });
    }
    let images = unit_samples(
        model,
        config.samples,
        config.batch,
        config.seed,
        config.sampling.as_ref(),
    )?;
    frechet_of_images(classifier, &images, splits, config, device)
}
/// One point of a quality-versus-cost sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepPoint {
    /// The sampler.
    pub sampler: SamplerSpec,
    /// Its network calls per image.
    pub network_calls: usize,
    /// The Fréchet distance of its samples.
    pub distance: f64,
}

/// The Fréchet distance of `model`'s samples with each of `samplers` (x_0 clipped), all
/// with `config`'s N, seed and batch (`config.sampling` is ignored); `on_point` sees each
/// result as it comes. Returns the points and the floor of N training images.
pub fn sweep(
    model: &dyn ElboModel,
    classifier: &Classifier,
    splits: &Splits,
    config: &FrechetConfig,
    samplers: &[SamplerSpec],
    device: Device,
    on_point: &mut dyn FnMut(&SweepPoint),
) -> Result<(Vec<SweepPoint>, f64)> {
    let Some(stepped) = model.capabilities().stepped else {
        return Err(Error::Config {
            detail: format!(
                "a sweep over samplers needs a model that samples in steps (a DDPM), not a {} \
                 model",
                model.config().family()
            ),
        });
    };
    let big_t = stepped.process().timesteps();
    // The whole grid is checked before minutes go into its first points.
    for sampler in samplers {
        sampler
            .validate(stepped.process())
            .map_err(|e| Error::Config {
                detail: format!("the sweep's sampler {sampler}: {e}; no point was computed"),
            })?;
    }
    let mut points = Vec::with_capacity(samplers.len());
    let mut floor = f64::NAN;
    for sampler in samplers {
        let config = FrechetConfig {
            sampling: Some(SamplingOptions::clipped(*sampler)),
            ..*config
        };
        let report = frechet_of_model(model, classifier, splits, &config, device)?;
        floor = report.train_floor;
        let point = SweepPoint {
            sampler: *sampler,
            network_calls: sampler.build().network_calls(big_t),
            distance: report.distance,
        };
        on_point(&point);
        points.push(point);
    }
    Ok((points, floor))
}

/// The floor of N training images as a flat line across the range of `xs` (none when
/// either is missing).
fn floor_series(xs: impl Iterator<Item = f64>, floor: f64) -> Option<elbo_plot::Series> {
    let (low, high) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| {
        (l.min(x), h.max(x))
    });
    (floor.is_finite() && low.is_finite()).then(|| elbo_plot::Series {
        name: "floor (training images)".to_string(),
        points: vec![(low, floor), (high, floor)],
        style: elbo_plot::Style::Line,
    })
}

/// The sweep as a chart: the Fréchet distance against network calls per image, one
/// curve per sampler family, and the floor of N training images.
pub fn sweep_figure(points: &[SweepPoint], floor: f64, title: &str) -> elbo_plot::Figure {
    let mut series: Vec<elbo_plot::Series> = Vec::new();
    for point in points {
        let family = point.sampler.family();
        let xy = (point.network_calls as f64, point.distance);
        match series.iter_mut().find(|s| s.name == family) {
            Some(s) => s.points.push(xy),
            None => series.push(elbo_plot::Series {
                name: family,
                points: vec![xy],
                style: elbo_plot::Style::LineAndDots,
            }),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let calls = points.iter().map(|p| p.network_calls as f64);
    series.extend(floor_series(calls, floor));
    elbo_plot::Figure {
        title: title.to_string(),
        panels: vec![elbo_plot::Panel {
            title: "Frechet distance (classifier features)".to_string(),
            x_label: "network calls per image".to_string(),
            series,
        }],
    }
}

/// One point of a guidance sweep: a class-conditional model's samples at one guidance
/// scale, as many of each class.
#[derive(Clone, Debug, PartialEq)]
pub struct GuidancePoint {
    /// w.
    pub scale: f64,
    /// The Fréchet distance of all the samples (every class alike) to the test images.
    pub distance: f64,
    /// The fraction of samples the classifier assigns to the class they were drawn for.
    pub accuracy: f64,
    /// The same for each class.
    pub class_accuracy: Vec<f64>,
}

/// For each guidance scale of `scales`: `config.samples` samples of the class-conditional
/// `model`, as many of each class (N must be a multiple of the classes), with
/// `config.sampling`'s sampler and treatment of `x_0` (default DDIM-50, clipped; its
/// guidance is replaced), the same seed for every scale; their Fréchet distance and
/// the classifier's accuracy on them, overall and per class. `on_point` sees each
/// result as it comes. Returns the points and the floor of N training images.
pub fn guidance_sweep(
    model: &dyn ElboModel,
    classifier: &Classifier,
    splits: &Splits,
    config: &FrechetConfig,
    scales: &[f64],
    device: Device,
    on_point: &mut dyn FnMut(&GuidancePoint),
) -> Result<(Vec<GuidancePoint>, f64)> {
    let classes = model
        .capabilities()
        .stepped
        .and_then(|s| s.classes())
        .ok_or_else(|| Error::Config {
            detail: format!(
                "a guidance sweep needs a class-conditional DDPM (trained with --cond-drop), \
                 found {}",
                model.config().family()
            ),
        })?;
    let n = config.samples as i64;
    if n < 2 * classes || n % classes != 0 {
        return Err(Error::Config {
            detail: format!(
                "a guidance sweep draws as many samples of each of the {classes} classes: \
                 expected a multiple of {classes} of at least {}, found {n}",
                2 * classes
            ),
        });
    }
    let base = config.sampling.unwrap_or_default();
    let per_class = n / classes;
    let labels = Tensor::arange(classes, (tch::Kind::Int64, device))
        .repeat_interleave_self_int(per_class, None, None);
    let sampling_at = |scale: f64| SamplingOptions {
        guidance: Some(Guidance {
            classes: Classes::All,
            scale,
        }),
        ..base
    };
    // The whole grid is checked before minutes go into its first points.
    for &scale in scales {
        if let Some(stepped) = model.capabilities().stepped {
            stepped
                .check(&sampling_at(scale))
                .map_err(|e| Error::Config {
                    detail: format!(
                        "the sweep's guidance scale {scale}: {e}; no point was computed"
                    ),
                })?;
        }
    }
    let mut points = Vec::with_capacity(scales.len());
    let mut floor = f64::NAN;
    for &scale in scales {
        let sampling = sampling_at(scale);
        let config = FrechetConfig {
            sampling: Some(sampling),
            ..*config
        };
        let images = unit_samples(
            model,
            config.samples,
            config.batch,
            config.seed,
            Some(&sampling),
        )?
        .to_device(device);
        let report = frechet_of_images(classifier, &images, splits, &config, device)?;
        floor = report.train_floor;
        let class_accuracy = (0..classes)
            .map(|k| {
                let range = |t: &Tensor| t.narrow(0, k * per_class, per_class);
                classifier::accuracy(classifier, &range(&images), &range(&labels), config.batch)
            })
            .collect();
        let point = GuidancePoint {
            scale,
            distance: report.distance,
            accuracy: classifier::accuracy(classifier, &images, &labels, config.batch),
            class_accuracy,
        };
        on_point(&point);
        points.push(point);
    }
    Ok((points, floor))
}

/// The guidance sweep as a chart: the Fréchet distance and the classifier's accuracy
/// (overall, and of the worst class) against the guidance scale.
pub fn guidance_figure(points: &[GuidancePoint], floor: f64, title: &str) -> elbo_plot::Figure {
    let series = |name: &str, y: &dyn Fn(&GuidancePoint) -> f64| elbo_plot::Series {
        name: name.to_string(),
        points: points.iter().map(|p| (p.scale, y(p))).collect(),
        style: elbo_plot::Style::LineAndDots,
    };
    let mut distance = vec![series("samples", &|p| p.distance)];
    distance.extend(floor_series(points.iter().map(|p| p.scale), floor));
    let worst = |p: &GuidancePoint| {
        p.class_accuracy
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
    };
    elbo_plot::Figure {
        title: title.to_string(),
        panels: vec![
            elbo_plot::Panel {
                title: "Frechet distance (classifier features)".to_string(),
                x_label: "guidance scale w".to_string(),
                series: distance,
            },
            elbo_plot::Panel {
                title: "classifier accuracy on the samples".to_string(),
                x_label: "guidance scale w".to_string(),
                series: vec![
                    series("all classes", &|p| p.accuracy),
                    series("worst class", &worst),
                ],
            },
        ],
    }
}
