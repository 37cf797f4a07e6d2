//! The front door: what the `elbo` commands do, as library calls. Each command of the
//! CLI is one call here: [`jobs::train`] (and [`eval::classifier::run_job`]) for
//! `train`, [`evaluate_checkpoint`] and [`frechet_of_checkpoint`] for `eval`,
//! [`write_samples`] for `sample`, [`plot_run`] for `plot`.
//!
//! [`eval::classifier::run_job`]: crate::eval::classifier::run_job

pub mod jobs;
pub mod options;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::nn::VarStore;

pub use jobs::{
    DdpmJob, ElboTraining, FinalEval, HvaeJob, Job, JobReport, Plan, VaeJob, VdmJob, run_folder,
    train, train_parallel, utc_stamp,
};
pub use options::{Length, TrainDefaults, TrainOptions};

// What the front door's callers name: the options of the jobs and what comes back.
pub use crate::data::DataSpec;
pub use crate::dist::{
    AVAILABLE as DATA_PARALLEL, DEFAULT_TIMEOUT, ENV_VARS, Parallel,
    UNAVAILABLE as NO_DATA_PARALLEL, World,
};
pub use crate::eval::classifier::{
    ClassifierJob, ClassifierReport, ClassifierTrainConfig, run_job as train_classifier,
};
pub use crate::eval::frechet::{FrechetConfig, FrechetReport, GuidancePoint, SweepPoint};
pub use crate::eval::{ACTIVE_UNIT_THRESHOLD, ActiveUnits, EvalReport};
pub use crate::models::ddpm::{
    DdpmPreset, LossKind, Objective, Recipe, RecipeName, ScheduleKind, TimestepSampling,
    VarianceKind,
};
pub use crate::models::hvae::{HvaeArch, HvaeVariant};
pub use crate::models::vae::VaePreset;
pub use crate::models::vdm::{GammaKind, VdmPreset};
/// Kingma et al.'s endpoints of gamma, where a VDM's schedule starts by default.
pub const KINGMA_GAMMA: (f64, f64) = elbo_math::vdm::LinearGamma::KINGMA;
pub use crate::nn::likelihood::Likelihood;
pub use crate::sample::{Classes, ClipX0, Guidance, SamplerSpec, SamplingOptions};
pub use crate::sys::ffi::exit_now;
pub use crate::sys::{DeviceSpec, RuntimeInfo, retain_freed_memory};
pub use crate::train::aids::TrainingAids;
pub use crate::train::{Control, Finished, Observer, Progress, RunStart};
pub use tch::Device;

use crate::data;
use crate::error::{Error, Result};
use crate::eval;
use crate::models::{ElboModel, ModelConfig, draw_samples, trajectory};
use crate::train::checkpoint::{self, CheckpointMeta, resolve_checkpoint};
use crate::train::{self, RunDir};

/// A trained model brought back from a checkpoint.
pub struct Restored {
    /// Its variables.
    pub vs: VarStore,
    /// The model.
    pub model: Box<dyn ElboModel>,
    /// Its configuration.
    pub config: ModelConfig,
    /// What the checkpoint says about itself.
    pub meta: CheckpointMeta,
    /// The checkpoint's JSON file.
    pub path: PathBuf,
}

impl Restored {
    /// The data the run was trained on, as its configuration records it (the bundled
    /// sample for a record without one).
    pub fn trained_on(&self) -> DataSpec {
        #[derive(Deserialize)]
        struct Recorded {
            #[serde(default)]
            data: DataSpec,
        }
        serde_json::from_value::<Recorded>(self.meta.train_config.clone())
            .map(|r| r.data)
            .unwrap_or_default()
    }
}

/// Rebuilds the model of the checkpoint at `path` (a checkpoint's JSON file, a run
/// folder, or its `checkpoints/` folder) on `device`, with its weights, or its EMA
/// weights when `use_ema` and present.
pub fn restore(path: &Path, device: Device, use_ema: bool) -> Result<Restored> {
    let json = resolve_checkpoint(path)?;
    let loaded = checkpoint::load(&json)?;
    let config = ModelConfig::from_record(&loaded.meta.model, &loaded.meta.model_config).map_err(
        |e| match e {
            Error::Checkpoint { detail } => Error::Checkpoint {
                detail: format!("{}: {detail}", json.display()),
            },
            other => other,
        },
    )?;
    let mut vs = train::var_store(loaded.meta.seed, device);
    let model = config.build(&vs.root())?;
    train::load_weights(&mut vs, &loaded.tensors, use_ema)?;
    Ok(Restored {
        vs,
        model,
        config,
        meta: loaded.meta,
        path: json,
    })
}

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
    tch::manual_seed(seed as i64);
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
    let restored = restore(path, device, true)?;
    if let Some(options) = &config.sampling {
        sampling_for(
            restored.model.as_ref(),
            Some(options.sampler),
            options.clip_x0,
            options.guidance,
        )?;
    }
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
    elbo_plot::write(&plot, &(sweep.figure)(&points, floor, &title)).map_err(|e| {
        Error::Config {
            detail: format!("writing {}: {e}", plot.display()),
        }
    })?;
    let json = plot.with_extension("json");
    let value = serde_json::json!({
        "checkpoint": restored.path, "step": restored.meta.step, "samples": config.samples,
        "seed": config.seed, "floor": floor,
        "sampling": config.sampling.map(|s| format!("{s:?}")),
        "points": points.iter().map(sweep.point).collect::<Vec<_>>(),
    });
    checkpoint::write_json_atomically(&json, &value)?;
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

/// Writes `n` samples of a restored model as a PNG grid at `out` (8 columns; with
/// guidance of every class, one row per class), drawn with `sampling` (see
/// [`sampling_for`]; `None`: the model's own), and, with
/// `interpolation_steps`, latent interpolation strips beside it
/// (`<out>-interpolations.png`). For a hierarchical model it also writes, for each `k`
/// from 1 to the number of layers minus 1, `<out>-fixed-top-<k>.png`: rows of 8 that
/// share a draw of the top `k` layers and redraw the layers below (as many rows as `n`
/// fills, at least one). For a model that samples in steps (a DDPM) it writes
/// `<out>-trajectory.png`: up to 8 rows (one per class with every class) of up to 10
/// states from `x_T` (left) to `x_0` (right). Returns the files written.
pub fn write_samples(
    restored: &Restored,
    n: i64,
    out: &Path,
    interpolation_steps: Option<i64>,
    sampling: Option<&SamplingOptions>,
) -> Result<Vec<PathBuf>> {
    let model = restored.model.as_ref();
    let capabilities = model.capabilities();
    let likelihood = model.likelihood();
    let grid = |images: &tch::Tensor, columns: i64, path: &Path| {
        crate::eval::image::save_grid(&data::to_unit_range(likelihood, images), columns, path)
    };
    let samples = tch::no_grad(|| draw_samples(model, n, sampling))?;
    // Every class: one row per class.
    let classes = match (sampling.and_then(|s| s.guidance), capabilities.stepped) {
        (
            Some(Guidance {
                classes: Classes::All,
                ..
            }),
            Some(stepped),
        ) => stepped.classes(),
        _ => None,
    };
    grid(&samples, classes.map_or(8, |c| (n / c).max(1)), out)?;
    let mut written = vec![out.to_path_buf()];
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let (Some(latents), Some(hierarchy)) = (capabilities.latents, capabilities.hierarchy) {
        for fixed in 1..latents.latent_layers() {
            let images = tch::no_grad(|| hierarchy.fixed_top_samples(fixed, (n / 8).max(1), 8))?;
            let path = out.with_file_name(format!("{stem}-fixed-top-{fixed}.png"));
            grid(&images, 8, &path)?;
            written.push(path);
        }
    }
    if let Some(stepped) = capabilities.stepped {
        let options = sampling
            .copied()
            .unwrap_or_else(|| stepped.default_sampling());
        let rows = classes.unwrap_or(n.clamp(1, 8));
        let strip = tch::no_grad(|| trajectory(stepped, &options, rows, 10))?;
        let path = out.with_file_name(format!("{stem}-trajectory.png"));
        // A sampler of fewer than 10 steps keeps one state per step.
        grid(&strip, (strip.size()[0] / rows).max(1), &path)?;
        written.push(path);
    }
    if let Some(steps) = interpolation_steps {
        let interpolating = capabilities.interpolation.ok_or_else(|| Error::Config {
            detail: format!(
                "a {} model has no single latent space to interpolate in",
                restored.meta.model
            ),
        })?;
        let strips = tch::no_grad(|| interpolating.interpolations(8, steps));
        let path = out.with_file_name(format!("{stem}-interpolations.png"));
        grid(&strips, steps, &path)?;
        written.push(path);
    }
    Ok(written)
}

/// How many CPU threads libtorch may use (a process-wide setting, for executables).
pub fn set_threads(threads: i32) -> Result<()> {
    if !(1..=1024).contains(&threads) {
        return Err(Error::Config {
            detail: format!("--threads must be between 1 and 1024, found {threads}"),
        });
    }
    tch::set_num_threads(threads);
    Ok(())
}

/// Seeds libtorch's (process-wide) generator before drawing samples.
pub fn seed_draws(seed: i64) {
    tch::manual_seed(seed);
}

/// The sampler `sampler` with each step's `x_0` clipped (the default), unguided.
pub fn clipped(sampler: SamplerSpec) -> SamplingOptions {
    SamplingOptions::clipped(sampler)
}

/// What `elbo sample` asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleRequest {
    /// How many samples.
    pub n: i64,
    /// The PNG grid to write (and the stem of the others).
    pub out: PathBuf,
    /// Also latent interpolation strips of this many steps.
    pub interpolation_steps: Option<i64>,
    /// A stepped model's sampler (`None`: its default).
    pub sampler: Option<SamplerSpec>,
    /// What each step does with its prediction of `x_0`.
    pub clip_x0: ClipX0,
    /// A class-conditional model's classes and guidance.
    pub guidance: Option<Guidance>,
    /// The seed of the draws.
    pub seed: i64,
}

/// Restores the checkpoint at `path` (EMA weights when kept) and writes the samples
/// `request` asks for ([`write_samples`]); returns the files written.
pub fn sample_checkpoint(
    path: &Path,
    request: &SampleRequest,
    device: Device,
) -> Result<Vec<PathBuf>> {
    if !(1..=100_000).contains(&request.n) {
        return Err(Error::Config {
            detail: format!("--n must be between 1 and 100000, found {}", request.n),
        });
    }
    let restored = restore(path, device, true)?;
    let sampling = sampling_for(
        restored.model.as_ref(),
        request.sampler,
        request.clip_x0,
        request.guidance,
    )?;
    seed_draws(request.seed);
    write_samples(
        &restored,
        request.n,
        &request.out,
        request.interpolation_steps,
        sampling.as_ref(),
    )
}

/// Draws the training curves of the run folder `run` (its `metrics.jsonl`) into `out`
/// (default: the run's `curves.png`); returns the file written.
pub fn plot_run(run: &Path, out: Option<&Path>) -> Result<PathBuf> {
    let folder = RunDir::new(run);
    let metrics = folder.metrics();
    if !metrics.is_file() {
        return Err(Error::Config {
            detail: format!(
                "{} has no metrics.jsonl: expected a run folder of `elbo train`",
                run.display()
            ),
        });
    }
    let out = out.map_or_else(|| folder.curves(), Path::to_path_buf);
    let title = run
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run.display().to_string());
    train::metrics::write_curves(&metrics, &out, &title)?;
    Ok(out)
}

/// A VDM run's learned noise schedule: `gamma(t)` of its newest checkpoint (the EMA
/// weights, which evaluation and sampling use) beside the schedule it started from (the
/// model built again from the run's seed, as training built it), as a PNG at `out`
/// (default: the run's `gamma.png`). `None` for a folder whose `config.json` does not
/// name a VDM.
pub fn plot_schedule(run: &Path, out: Option<&Path>) -> Result<Option<PathBuf>> {
    // A run folder names its family in config.json; only a VDM's is read further.
    let family = std::fs::read_to_string(run.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v["model"].as_str().map(str::to_string));
    if family.as_deref() != Some(crate::models::vdm::FAMILY) {
        return Ok(None);
    }
    let restored = restore(run, Device::Cpu, true)?;
    let ModelConfig::Vdm(config) = &restored.config else {
        return Ok(None);
    };
    const POINTS: usize = 100;
    let curve = |vs: &VarStore| -> Result<Vec<f64>> {
        crate::models::vdm::Vdm::new(&vs.root(), config.clone())?.gamma_curve(POINTS)
    };
    // The start: a model built as training built it, from the run's seed.
    let initial = train::var_store(restored.meta.seed, Device::Cpu);
    let start = curve(&initial)?;
    // The end: the same model with the checkpoint's (EMA) weights copied in.
    let mut vs = VarStore::new(Device::Cpu);
    let end_model = crate::models::vdm::Vdm::new(&vs.root(), config.clone())?;
    vs.copy(&restored.vs)?;
    let end = end_model.gamma_curve(POINTS)?;
    let series = |name: &str, gamma: &[f64]| elbo_plot::Series {
        name: name.to_string(),
        points: gamma
            .iter()
            .enumerate()
            .map(|(i, &g)| (i as f64 / POINTS as f64, g))
            .collect(),
        style: elbo_plot::Style::Line,
    };
    let figure = elbo_plot::Figure {
        title: format!("VDM noise schedule ({})", config.gamma),
        panels: vec![elbo_plot::Panel {
            title: "gamma(t) = -log SNR(t)".to_string(),
            x_label: "t".to_string(),
            series: vec![
                series("start", &start),
                series(&format!("step {}", restored.meta.step), &end),
            ],
        }],
    };
    let out = out.map_or_else(|| run.join("gamma.png"), Path::to_path_buf);
    elbo_plot::write(&out, &figure).map_err(|e| Error::Config {
        detail: format!("writing {}: {e}", out.display()),
    })?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_checkpoints_is_a_clear_error() {
        let _generator = crate::testing::generator_lock();
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_checkpoint(dir.path()).unwrap_err().to_string();
        assert!(err.contains("holds no checkpoint"), "{err}");
        let err = restore(dir.path(), Device::Cpu, false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("holds no checkpoint"), "{err}");
        let err = plot_run(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("has no metrics.jsonl"), "{err}");
    }
}
