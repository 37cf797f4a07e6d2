//! `elbo eval`: the bound of a checkpoint on test images, the sample quality of its
//! samples (the Fréchet distance in the classifier's features), and the sweeps over
//! samplers and guidance scales.

use std::path::{Path, PathBuf};

use tch::Device;

use super::restore::{Restored, restore};
use crate::data::{self, DataSpec};
use crate::error::{Error, Result};
use crate::eval::frechet::{FrechetConfig, FrechetReport, GuidancePoint, SweepPoint};
use crate::eval::{self, EvalReport};
use crate::models::ElboModel;
use crate::sample::{ClipX0, Guidance, SamplerSpec, SamplingOptions};
use crate::train::checkpoint;

/// Evaluates the checkpoint at `path` on the test split of `data` (by default the data
/// the run was trained on), on its first `limit` examples when given, with `iw`
/// importance samples (`None`: 1,000, or none for a model whose bound is evaluated term
/// by term, where one sample costs T network calls; `Some(0)`: none). libtorch's
/// generator is seeded with `seed` once the model is built, so an evaluation repeats
/// exactly (and a twin that draws in the same order draws the same noise).
pub fn evaluate_checkpoint(
    path: &Path,
    data: Option<&DataSpec>,
    iw: Option<i64>,
    limit: Option<usize>,
    seed: u64,
    device: Device,
) -> Result<(Restored, EvalReport)> {
    let restored = restore(path, device, true)?;
    let spec = data.cloned().unwrap_or_else(|| restored.trained_on());
    let splits = spec.load()?;
    restored
        .config
        .check_images(image_shape(&splits.test), &format!("data {spec}"))?;
    let test = data::fixed_tensor(&splits.test, restored.model.likelihood(), limit, device)?;
    let iw = match iw {
        None if restored.model.capabilities().exact_bound.is_some() => None,
        None => Some(1000),
        Some(k) => (k > 0).then_some(k),
    };
    crate::sample::seed_draws(seed);
    let report = eval::evaluate(restored.model.as_ref(), &test, iw, 100)?;
    Ok((restored, report))
}

fn image_shape(dataset: &elbo_data::Dataset) -> [i64; 3] {
    dataset.image_shape().map(|d| d as i64)
}

/// The sampling a user asks for, against what `model` can do: `None` for the model's
/// own sampling; a sampler, another treatment of `x_0` or guidance need a model that
/// samples in steps, and must fit it ([`SteppedSampling::check`](crate::models::SteppedSampling::check)).
pub fn sampling_for(
    model: &dyn ElboModel,
    sampler: Option<SamplerSpec>,
    clip_x0: ClipX0,
    guidance: Option<Guidance>,
) -> Result<Option<SamplingOptions>> {
    if sampler.is_none() && clip_x0 == ClipX0::Static && guidance.is_none() {
        return Ok(None);
    }
    let Some(stepped) = model.capabilities().stepped else {
        return Err(Error::Config {
            detail: format!(
                "a {} model has a single sampler; --sampler, --no-clip, --dynamic-threshold, \
                 --class and --guidance apply to models that sample in steps (DDPMs)",
                model.config().family()
            ),
        });
    };
    let options = SamplingOptions {
        sampler: sampler.unwrap_or(stepped.default_sampling().sampler),
        clip_x0,
        guidance,
    };
    stepped.check(&options)?;
    Ok(Some(options))
}

/// The sample quality of the checkpoint at `path`: the Fréchet distance between
/// `config.samples` of its samples and the whole test split of `data` (by default the
/// data the run was trained on), in the features of the classifier at `classifier` (a
/// run folder or checkpoint of `elbo train classifier`), with the floor of as many
/// training images. Uses the EMA weights when the run kept them, and
/// `config.sampling` (`None`: the model's default).
pub fn frechet_of_checkpoint(
    path: &Path,
    classifier: &Path,
    data: Option<&DataSpec>,
    config: &FrechetConfig,
    device: Device,
) -> Result<(Restored, FrechetReport)> {
    let restored = restore_to_sample(path, device, config.sampling.as_ref())?;
    let features = crate::eval::classifier::restore(classifier, device)?;
    let spec = data.cloned().unwrap_or_else(|| restored.trained_on());
    let splits = spec.load()?;
    restored
        .config
        .check_images(image_shape(&splits.test), &format!("data {spec}"))?;
    let report = crate::eval::frechet::frechet_of_model(
        restored.model.as_ref(),
        &features.model,
        &splits,
        config,
        device,
    )?;
    Ok((restored, report))
}

/// Restores the checkpoint at `path` (its EMA weights when kept) and checks that its
/// model can sample with `sampling` (when given) before any work is done.
fn restore_to_sample(
    path: &Path,
    device: Device,
    sampling: Option<&SamplingOptions>,
) -> Result<Restored> {
    let restored = restore(path, device, true)?;
    if let Some(options) = sampling {
        sampling_for(
            restored.model.as_ref(),
            Some(options.sampler),
            options.clip_x0,
            options.guidance,
        )?;
    }
    Ok(restored)
}

/// Where `elbo eval --fid` finds the Inception weights and caches the reference
/// statistics, and what it compares against.
#[derive(Clone, Debug, PartialEq)]
pub struct FidRequest {
    /// Generated images.
    pub samples: usize,
    /// Also KID.
    pub kid: bool,
    /// The converted weights (default: `<data folder>/inception/`, where `cargo xtask
    /// data inception` puts them).
    pub weights: Option<PathBuf>,
    /// Compare with the training split (pytorch-fid's and the papers' choice for
    /// CIFAR-10) or, when false, the test split.
    pub train_split: bool,
    /// The seed of the draws.
    pub seed: u64,
    /// The sampler and its options (`None`: the model's default).
    pub sampling: Option<SamplingOptions>,
    /// Images per batch (sampling and Inception).
    pub batch: i64,
}

/// Inception FID (and KID) of the checkpoint at `path` against its data (or `data`),
/// with the reference statistics cached in `<data folder>/fid-stats/`.
pub fn fid_of_checkpoint(
    path: &Path,
    data: Option<&DataSpec>,
    request: &FidRequest,
    device: Device,
) -> Result<(Restored, crate::eval::fid::InceptionReport)> {
    let data_dir = elbo_data::default_data_dir().map_err(|e| Error::Data {
        detail: e.to_string(),
    })?;
    let weights = request
        .weights
        .clone()
        .unwrap_or_else(|| elbo_data::inception_weights_path(&data_dir));
    let inception = crate::eval::inception::FidInception::load(&weights, device)?;
    let restored = restore_to_sample(path, device, request.sampling.as_ref())?;
    let spec = data.cloned().unwrap_or_else(|| restored.trained_on());
    let splits = spec.load()?;
    let reference = if request.train_split {
        &splits.train
    } else {
        &splits.test
    };
    restored
        .config
        .check_images(image_shape(reference), &format!("data {spec}"))?;
    let config = crate::eval::fid::InceptionConfig {
        samples: request.samples,
        batch: request.batch,
        seed: request.seed,
        sampling: request.sampling,
        kid: request.kid,
        cache: data_dir.join("fid-stats"),
    };
    let report = crate::eval::fid::inception_scores(
        restored.model.as_ref(),
        &inception,
        &weights,
        reference,
        &config,
        device,
    )?;
    Ok((restored, report))
}

/// What a sweep (over samplers, or over guidance scales) measured, and where it wrote
/// it.
#[derive(Clone, Debug)]
pub struct SweepReport<P = SweepPoint> {
    /// One point per sampler or scale, in the order run.
    pub points: Vec<P>,
    /// The floor of N training images.
    pub floor: f64,
    /// N.
    pub samples: usize,
    /// The chart.
    pub plot: PathBuf,
    /// The points as JSON, beside the chart.
    pub json: PathBuf,
}

/// A sweep's measurement on the restored model, the classifier and the data: its
/// points and the floor.
type Measure<'a, P> = dyn FnMut(
        &dyn ElboModel,
        &crate::eval::classifier::Classifier,
        &elbo_data::Splits,
    ) -> Result<(Vec<P>, f64)>
    + 'a;

/// What a sweep measures and draws: `measure` runs it on the restored model, the
/// classifier and the data; `figure` draws its points; `point` writes one as JSON.
struct Sweep<'a, P> {
    /// The chart's file name in the run folder when none is given.
    default_name: &'a str,
    measure: &'a mut Measure<'a, P>,
    figure: fn(&[P], f64, &str) -> elbo_plot::Figure,
    point: fn(&P) -> serde_json::Value,
}

/// Restores the model, the classifier and the data once, runs `sweep`, and writes its
/// chart to `out` (default: `sweep.default_name` in the run folder) and its points to
/// the same name with `.json`.
fn run_sweep<P>(
    path: &Path,
    classifier: &Path,
    data: Option<&DataSpec>,
    config: &FrechetConfig,
    device: Device,
    out: Option<&Path>,
    sweep: Sweep<'_, P>,
) -> Result<(Restored, SweepReport<P>)> {
    let restored = restore(path, device, true)?;
    let features = crate::eval::classifier::restore(classifier, device)?;
    let spec = data.cloned().unwrap_or_else(|| restored.trained_on());
    let splits = spec.load()?;
    restored
        .config
        .check_images(image_shape(&splits.test), &format!("data {spec}"))?;
    let (points, floor) = (sweep.measure)(restored.model.as_ref(), &features.model, &splits)?;
    let plot = match out {
        Some(out) => out.to_path_buf(),
        None => restored
            .path
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
            .join(sweep.default_name),
    };
    let title = format!(
        "{} step {}: {} samples vs {} test images",
        restored.meta.model,
        restored.meta.step,
        config.samples,
        splits.test.len()
    );
    elbo_plot::write(&plot, &(sweep.figure)(&points, floor, &title))
        .map_err(|e| Error::plot(plot.clone(), e))?;
    let json = plot.with_extension("json");
    let value = serde_json::json!({
        "checkpoint": restored.path, "step": restored.meta.step, "samples": config.samples,
        "seed": config.seed, "floor": floor,
        "sampling": config.sampling.map(|s| format!("{s:?}")),
        "points": points.iter().map(sweep.point).collect::<Vec<_>>(),
    });
    checkpoint::write_json_atomically(&json, &value)?;
    // Into the run's TensorBoard too, unless the run was trained without it.
    let keeps_board = restored.meta.train_config["tensorboard"]
        .as_bool()
        .unwrap_or(true);
    if let (Some(run), true) = (checkpoint::run_of(&restored.path), keeps_board) {
        let png = std::fs::read(&plot).map_err(|e| Error::file("read", &plot, e))?;
        let name = sweep.default_name.trim_end_matches(".png");
        crate::train::board::sweep(&run, restored.meta.step, name, &png, &value)?;
    }
    let report = SweepReport {
        points,
        floor,
        samples: config.samples,
        plot,
        json,
    };
    Ok((restored, report))
}

/// [`frechet_of_checkpoint`] for each of `samplers` (see
/// [`SamplerSpec::sweep`](crate::sample::SamplerSpec::sweep)) with the same N and seed,
/// restoring the model, the classifier and the data once; `on_point` sees each point as
/// it is measured. Writes the chart to `out` (default: `frechet-sweep.png` in the run
/// folder) and the points to the same name with `.json`.
#[allow(clippy::too_many_arguments)]
pub fn frechet_sweep(
    path: &Path,
    classifier: &Path,
    data: Option<&DataSpec>,
    config: &FrechetConfig,
    samplers: &[SamplerSpec],
    device: Device,
    out: Option<&Path>,
    on_point: &mut dyn FnMut(&SweepPoint),
) -> Result<(Restored, SweepReport)> {
    let mut measure = |model: &dyn ElboModel, features: &_, splits: &_| {
        crate::eval::frechet::sweep(model, features, splits, config, samplers, device, on_point)
    };
    let sweep = Sweep {
        default_name: "frechet-sweep.png",
        measure: &mut measure,
        figure: crate::eval::frechet::sweep_figure,
        point: |p: &SweepPoint| {
            serde_json::json!({
                "sampler": p.sampler.to_string(), "network_calls": p.network_calls,
                "distance": p.distance,
            })
        },
    };
    run_sweep(path, classifier, data, config, device, out, sweep)
}

/// The guidance sweep of a class-conditional DDPM (see
/// [`guidance_sweep`](crate::eval::frechet::guidance_sweep)): at each of `scales`,
/// `config.samples` samples, as many of each class, with `config.sampling`'s sampler;
/// their Fréchet distance and the classifier's accuracy on them, overall and per class.
/// Writes the chart to `out` (default: `guidance-sweep.png` in the run folder) and the
/// points to the same name with `.json`.
#[allow(clippy::too_many_arguments)]
pub fn guidance_sweep(
    path: &Path,
    classifier: &Path,
    data: Option<&DataSpec>,
    config: &FrechetConfig,
    scales: &[f64],
    device: Device,
    out: Option<&Path>,
    on_point: &mut dyn FnMut(&GuidancePoint),
) -> Result<(Restored, SweepReport<GuidancePoint>)> {
    let mut measure = |model: &dyn ElboModel, features: &_, splits: &_| {
        crate::eval::frechet::guidance_sweep(
            model, features, splits, config, scales, device, on_point,
        )
    };
    let sweep = Sweep {
        default_name: "guidance-sweep.png",
        measure: &mut measure,
        figure: crate::eval::frechet::guidance_figure,
        point: |p: &GuidancePoint| {
            serde_json::json!({
                "guidance": p.scale, "distance": p.distance, "accuracy": p.accuracy,
                "class_accuracy": p.class_accuracy,
            })
        },
    };
    run_sweep(path, classifier, data, config, device, out, sweep)
}
