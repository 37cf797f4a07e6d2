//! What the `elbo` commands do, as library calls: naming data, and bringing a trained
//! model back from a run folder or checkpoint.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use elbo_data::{DatasetKind, Splits};
use tch::{
    Device,
    nn::{self, VarStore},
};

use crate::data;
use crate::error::{Error, Result};
use crate::eval::{self, EvalReport};
use crate::models::ElboModel;
use crate::models::ddpm::{Ddpm, DdpmConfig};
use crate::models::hvae::{self, HvaeConfig, HvaeVariant};
use crate::models::vae::{Vae, VaeConfig};
use crate::nn::likelihood::Likelihood;
use crate::train::checkpoint::{self, CheckpointMeta};
use crate::train::{self, Control, Progress, RunDir, TrainConfig, TrainData, TrainReport};

/// A data set as a user names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSpec {
    /// The MNIST sample bundled with elbo (the default).
    Bundled,
    /// A data set fetched with `cargo xtask data`, in the default data folder.
    Named(DatasetKind),
    /// A folder of MNIST-layout IDX files, or a CIFAR-10 folder or archive.
    Path(PathBuf),
}

impl FromStr for DataSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        if text == "mnist-sample" {
            return Ok(DataSpec::Bundled);
        }
        if let Ok(kind) = text.parse::<DatasetKind>() {
            return Ok(DataSpec::Named(kind));
        }
        let path = PathBuf::from(text);
        if path.exists() {
            Ok(DataSpec::Path(path))
        } else {
            Err(Error::Config {
                detail: format!(
                    "data {text:?} is neither mnist-sample, mnist, fashion-mnist, cifar10 nor \
                     an existing folder or file"
                ),
            })
        }
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSpec::Bundled => f.write_str("mnist-sample"),
            DataSpec::Named(kind) => f.write_str(kind.name()),
            DataSpec::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

impl DataSpec {
    /// Loads the training and test splits.
    pub fn load(&self) -> Result<Splits> {
        let data_error = |e: elbo_data::DataError| Error::Data {
            detail: e.to_string(),
        };
        match self {
            DataSpec::Bundled => elbo_data::load_bundled().map_err(data_error),
            DataSpec::Named(kind) => {
                let dir = elbo_data::dataset_dir(*kind).map_err(data_error)?;
                elbo_data::load(*kind, &dir).map_err(data_error)
            }
            DataSpec::Path(path) => {
                let looks_like_cifar = path.extension().is_some_and(|e| e == "gz")
                    || path.join(elbo_data::CIFAR10_FOLDER).exists()
                    || path.join("data_batch_1.bin").exists();
                if looks_like_cifar {
                    elbo_data::load_cifar10(path).map_err(data_error)
                } else {
                    elbo_data::load_idx_dir(path, 10).map_err(data_error)
                }
            }
        }
    }
}

/// A trained model brought back from a checkpoint.
pub struct Restored {
    /// Its variables.
    pub vs: VarStore,
    /// The model.
    pub model: Box<dyn ElboModel>,
    /// What the checkpoint says about itself.
    pub meta: CheckpointMeta,
    /// The checkpoint's JSON file.
    pub path: PathBuf,
}

/// Finds the checkpoint meant by `path`: a checkpoint's JSON file, a run folder (its
/// newest checkpoint), or a run's `checkpoints/` folder.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let folder = if path.join("checkpoints").is_dir() {
        path.join("checkpoints")
    } else {
        path.to_path_buf()
    };
    checkpoint::list(&folder)?
        .pop()
        .ok_or_else(|| Error::Checkpoint {
            detail: format!(
                "{} holds no checkpoint: expected a run folder, its checkpoints/ folder, or a \
             step-*.json file",
                path.display()
            ),
        })
}

/// The model configuration recorded in a checkpoint's metadata, as `T`.
fn parse_config<T: serde::de::DeserializeOwned>(
    meta: &CheckpointMeta,
    json: &Path,
    what: &str,
) -> Result<T> {
    serde_json::from_value(meta.model_config.clone()).map_err(|e| Error::Checkpoint {
        detail: format!(
            "{}: its {what} configuration does not parse: {e}",
            json.display()
        ),
    })
}

/// Rebuilds the model of the checkpoint at `path` (see [`resolve_checkpoint`]) on
/// `device`, with its weights, or its EMA weights when `use_ema` and present.
pub fn restore(path: &Path, device: Device, use_ema: bool) -> Result<Restored> {
    let json = resolve_checkpoint(path)?;
    let loaded = checkpoint::load(&json)?;
    let mut vs = train::var_store(loaded.meta.seed, device);
    let model: Box<dyn ElboModel> = match loaded.meta.model.as_str() {
        "vae" => {
            let config: VaeConfig = parse_config(&loaded.meta, &json, "VAE")?;
            Box::new(Vae::new(&vs.root(), config)?)
        }
        hvae::FAMILY => {
            let config: HvaeConfig = parse_config(&loaded.meta, &json, "HVAE")?;
            config.build(&vs.root())?
        }
        crate::models::ddpm::FAMILY => {
            let config: DdpmConfig = parse_config(&loaded.meta, &json, "DDPM")?;
            Box::new(Ddpm::new(&vs.root(), config)?)
        }
        crate::eval::classifier::FAMILY => {
            return Err(Error::Checkpoint {
                detail: format!(
                    "{} holds a classifier (from `elbo train classifier`), expected a \
                     generative model; a classifier is passed to `elbo eval` as --classifier",
                    json.display()
                ),
            });
        }
        other => {
            return Err(Error::Checkpoint {
                detail: format!(
                    "{} holds a {other:?} model, which this elbo does not know",
                    json.display()
                ),
            });
        }
    };
    train::load_weights(&mut vs, &loaded.tensors, use_ema)?;
    Ok(Restored {
        vs,
        model,
        meta: loaded.meta,
        path: json,
    })
}

/// A VAE training job as `elbo train vae` describes it.
#[derive(Clone, Debug)]
pub struct VaeJob {
    /// `vae-mlp` or `vae-conv`.
    pub preset: String,
    /// Data, run folder, training and evaluation settings.
    pub spec: JobSpec,
}

/// What every training job has besides its model.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// The decoder likelihood.
    pub likelihood: Likelihood,
    /// The data.
    pub data: DataSpec,
    /// The run folder.
    pub run: PathBuf,
    /// Everything about the training but the model.
    pub config: TrainConfig,
    /// Where to train.
    pub device: Device,
    /// After training, evaluate the whole test split with the IWAE bound of this many
    /// samples.
    pub final_iw: Option<i64>,
    /// Train this many epochs of the training split (overrides `config.steps`).
    pub epochs: Option<u64>,
    /// Evaluate only the first this many test examples after training (`None`: all).
    pub final_examples: Option<usize>,
}

/// What a finished (or interrupted) job reports.
pub struct JobReport {
    /// The training loop's report.
    pub train: TrainReport,
    /// The final evaluation on the whole test split, when the run completed.
    pub eval: Option<EvalReport>,
    /// The newest sample grid.
    pub samples: Option<PathBuf>,
}

/// Runs a VAE job: loads the data, builds (or, with `control.resume`, restores) the
/// model, trains, and evaluates on the test split.
pub fn train_vae(
    job: &VaeJob,
    control: Control<'_>,
    observer: &mut dyn FnMut(&Progress),
) -> Result<JobReport> {
    run_job(
        &job.spec,
        &|path, image| {
            let config = VaeConfig::preset(&job.preset, image, job.spec.likelihood)?;
            Ok(Box::new(Vae::new(path, config)?))
        },
        control,
        observer,
    )
}

/// A hierarchical VAE training job as `elbo train hvae` describes it.
#[derive(Clone, Debug)]
pub struct HvaeJob {
    /// Markov or ladder.
    pub variant: HvaeVariant,
    /// Latent layers.
    pub layers: usize,
    /// Latent sizes, bottom first (default [`hvae::default_latent_dims`]).
    pub latent_dims: Option<Vec<i64>>,
    /// `mlp` or `conv` (default: `mlp` for the Markov HVAE, `conv` for the ladder).
    pub arch: Option<String>,
    /// Width of the deterministic networks (default: the variant's).
    pub width: Option<i64>,
    /// Data, run folder, training (aids in `spec.config.aids`) and evaluation settings.
    pub spec: JobSpec,
}

/// Runs an HVAE job, as [`train_vae`] runs a VAE job.
pub fn train_hvae(
    job: &HvaeJob,
    control: Control<'_>,
    observer: &mut dyn FnMut(&Progress),
) -> Result<JobReport> {
    run_job(
        &job.spec,
        &|path, image| {
            HvaeConfig::new(
                job.variant,
                image,
                job.layers,
                job.latent_dims.clone(),
                job.arch.as_deref(),
                job.width,
                job.spec.likelihood,
            )?
            .build(path)
        },
        control,
        observer,
    )
}

/// A DDPM training job as `elbo train ddpm` describes it.
#[derive(Clone, Debug)]
pub struct DdpmJob {
    /// `ddpm-mnist` or `ddpm-cifar10`.
    pub preset: String,
    /// Changes to the preset: schedule, T, objective, loss, variance, dropout.
    pub overrides: DdpmOverrides,
    /// Data, run folder, training and evaluation settings (`spec.likelihood` must be the
    /// discretized Gaussian, the DDPM's decoder).
    pub spec: JobSpec,
}

/// What `elbo train ddpm` may change in a preset.
#[derive(Clone, Debug, Default)]
pub struct DdpmOverrides {
    /// The noise schedule.
    pub schedule: Option<crate::models::ddpm::ScheduleKind>,
    /// T.
    pub timesteps: Option<usize>,
    /// What the network predicts.
    pub objective: Option<crate::models::ddpm::Objective>,
    /// What training minimises.
    pub loss: Option<crate::models::ddpm::LossKind>,
    /// The reverse variance.
    pub variance: Option<crate::models::ddpm::VarianceKind>,
    /// Dropout in the residual blocks.
    pub dropout: Option<f64>,
}

impl DdpmOverrides {
    /// The preset `name` for `image` with these changes.
    pub fn apply(&self, name: &str, image: [i64; 3]) -> Result<DdpmConfig> {
        let mut config = DdpmConfig::preset(name, image)?;
        if let Some(v) = self.schedule {
            config.schedule = v;
        }
        if let Some(v) = self.timesteps {
            if v == 0 {
                return Err(Error::Config {
                    detail: "a diffusion needs at least 1 timestep, found 0".into(),
                });
            }
            config.timesteps = v;
        }
        if let Some(v) = self.objective {
            config.objective = v;
        }
        if let Some(v) = self.loss {
            config.loss = v;
        }
        if let Some(v) = self.variance {
            config.variance = v;
        }
        if let Some(v) = self.dropout {
            config.unet.dropout = v;
        }
        config.unet.validate()?;
        Ok(config)
    }
}

/// Runs a DDPM job, as [`train_vae`] runs a VAE job. Training aids (KL warm-up, free
/// bits) belong to the VAEs and are refused here.
pub fn train_ddpm(
    job: &DdpmJob,
    control: Control<'_>,
    observer: &mut dyn FnMut(&Progress),
) -> Result<JobReport> {
    let aids = &job.spec.config.aids;
    if aids.kl_warmup_steps > 0 || aids.free_bits > 0.0 {
        return Err(Error::Config {
            detail: format!(
                "KL warm-up and free bits shape a VAE's KL terms; a DDPM has no such term                  to weigh (found kl_warmup {}, free_bits {})",
                aids.kl_warmup_steps, aids.free_bits
            ),
        });
    }
    if job.spec.likelihood != Likelihood::DiscretizedGaussian {
        return Err(Error::Config {
            detail: format!(
                "a DDPM's decoder is the discretized Gaussian on [-1, 1], found likelihood {}",
                job.spec.likelihood
            ),
        });
    }
    run_job(
        &job.spec,
        &|path, image| {
            let config = job.overrides.apply(&job.preset, image)?;
            Ok(Box::new(Ddpm::new(path, config)?))
        },
        control,
        observer,
    )
}

/// Builds a model under a path for images of a shape.
type Build<'a> = dyn Fn(&nn::Path<'_>, [i64; 3]) -> Result<Box<dyn ElboModel>> + 'a;

/// The body of every job: loads the data, builds the model with `build` (or, with
/// `control.resume`, restores it), trains, and evaluates on the test split.
fn run_job(
    job: &JobSpec,
    build: &Build<'_>,
    control: Control<'_>,
    observer: &mut dyn FnMut(&Progress),
) -> Result<JobReport> {
    let splits = job.data.load()?;
    let [c, h, w] = splits.train.image_shape().map(|d| d as i64);
    let mut vs = train::var_store(job.config.seed, job.device);
    let model = build(&vs.root(), [c, h, w])?;
    let mut config = job.config.clone();
    config.data = job.data.to_string();
    if let Some(epochs) = job.epochs {
        let per_epoch = splits.train.len().div_ceil(config.batch_size.max(1)) as u64;
        config.steps = epochs * per_epoch;
    }
    let data = TrainData {
        train: &splits.train,
        test: &splits.test,
    };
    let run = RunDir::new(&job.run);
    let report = train::train(
        model.as_ref(),
        &mut vs,
        &data,
        &config,
        &run,
        control,
        observer,
    )?;
    let eval = match (&report.finished, job.final_iw) {
        (train::Finished::Completed, iw) => {
            let test = data::fixed_tensor(
                &splits.test,
                model.likelihood(),
                job.final_examples,
                job.device,
            )?;
            Some(eval::evaluate(model.as_ref(), &test, iw, 100))
        }
        _ => None,
    };
    let samples = std::fs::read_dir(run.samples()).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("epoch-"))
            })
            .max()
    });
    Ok(JobReport {
        train: report,
        eval,
        samples,
    })
}

/// Evaluates the checkpoint at `path` on the test split of `data` (by default the data
/// the run was trained on), on its first `limit` examples when given, with `iw`
/// importance samples (`None`: the model's default, [`ElboModel::default_iw_samples`];
/// `Some(0)`: no IWAE bound).
pub fn evaluate_checkpoint(
    path: &Path,
    data: Option<&DataSpec>,
    iw: Option<i64>,
    limit: Option<usize>,
    device: Device,
) -> Result<(Restored, EvalReport)> {
    let restored = restore(path, device, true)?;
    let recorded = restored.meta.train_config["data"]
        .as_str()
        .unwrap_or("mnist-sample")
        .parse::<DataSpec>();
    let spec = match data {
        Some(spec) => spec.clone(),
        None => recorded?,
    };
    let splits = spec.load()?;
    let test = data::fixed_tensor(&splits.test, restored.model.likelihood(), limit, device)?;
    let iw = match iw {
        None => restored.model.default_iw_samples(),
        Some(k) => (k > 0).then_some(k),
    };
    let report = eval::evaluate(restored.model.as_ref(), &test, iw, 100);
    Ok((restored, report))
}

/// The sample quality of the checkpoint at `path`: the Fréchet distance between
/// `config.samples` of its samples and the whole test split of `data` (by default the
/// data the run was trained on), in the features of the classifier at `classifier` (a
/// run folder or checkpoint of `elbo train classifier`), with the floor of as many
/// training images. Uses the EMA weights when the run kept them, and `sampler` (a
/// DDPM's `ancestral` or `ddim-50`; `None`: the model's default).
pub fn frechet_of_checkpoint(
    path: &Path,
    classifier: &Path,
    data: Option<&DataSpec>,
    config: &crate::eval::frechet::FrechetConfig,
    sampler: Option<&str>,
    device: Device,
) -> Result<(Restored, crate::eval::frechet::FrechetReport)> {
    let mut restored = restore(path, device, true)?;
    if let Some(sampler) = sampler {
        restored.model.configure_sampler(sampler, true)?;
    }
    let features = crate::eval::classifier::restore(classifier, device)?;
    let spec = match data {
        Some(spec) => spec.clone(),
        None => restored.meta.train_config["data"]
            .as_str()
            .unwrap_or("mnist-sample")
            .parse::<DataSpec>()?,
    };
    let splits = spec.load()?;
    let report = crate::eval::frechet::frechet_of_model(
        restored.model.as_ref(),
        &features.model,
        &splits,
        config,
        device,
    )?;
    Ok((restored, report))
}

/// Writes `n` samples of a restored model as a PNG grid at `out` (8 columns), and, with
/// `interpolation_steps`, latent interpolation strips beside it (`<out>-interpolations.png`).
/// For a hierarchical model it also writes, for each `k` from 1 to the number of layers
/// minus 1, `<out>-fixed-top-<k>.png`: rows of 8 that share a draw of the top `k` layers
/// and redraw the layers below (as many rows as `n` fills, at least one). For a model
/// that samples in steps (a DDPM) it writes `<out>-trajectory.png`: up to 8 rows of 10
/// states from `x_T` (left) to `x_0` (right).
/// Returns the files written.
pub fn write_samples(
    restored: &Restored,
    n: i64,
    out: &Path,
    interpolation_steps: Option<i64>,
) -> Result<Vec<PathBuf>> {
    let likelihood = restored.model.likelihood();
    let samples = tch::no_grad(|| restored.model.sample(n));
    crate::eval::image::save_grid(&data::to_unit_range(likelihood, &samples), 8, out)?;
    let mut written = vec![out.to_path_buf()];
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    for fixed in 1..restored.model.latent_layers() {
        let rows = (n / 8).max(1);
        if let Some(images) = tch::no_grad(|| restored.model.fixed_top_samples(fixed, rows, 8)) {
            let path = out.with_file_name(format!("{stem}-fixed-top-{fixed}.png"));
            crate::eval::image::save_grid(&data::to_unit_range(likelihood, &images), 8, &path)?;
            written.push(path);
        }
    }
    let rows = n.clamp(1, 8);
    if let Some(strip) = tch::no_grad(|| restored.model.trajectory(rows, 10)) {
        let path = out.with_file_name(format!("{stem}-trajectory.png"));
        crate::eval::image::save_grid(&data::to_unit_range(likelihood, &strip), 10, &path)?;
        written.push(path);
    }
    if let Some(steps) = interpolation_steps {
        let strips = tch::no_grad(|| restored.model.interpolations(8, steps)).ok_or_else(|| {
            Error::Config {
                detail: format!(
                    "a {} model has no single latent space to interpolate in",
                    restored.meta.model
                ),
            }
        })?;
        let path = out.with_file_name(format!("{stem}-interpolations.png"));
        crate::eval::image::save_grid(&data::to_unit_range(likelihood, &strips), steps, &path)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_names_parse_and_unknown_ones_are_refused() {
        let _generator = crate::testing::generator_lock();
        assert_eq!(
            "mnist-sample".parse::<DataSpec>().unwrap(),
            DataSpec::Bundled
        );
        assert_eq!(
            "cifar10".parse::<DataSpec>().unwrap(),
            DataSpec::Named(DatasetKind::Cifar10)
        );
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().display().to_string();
        assert_eq!(
            text.parse::<DataSpec>().unwrap(),
            DataSpec::Path(dir.path().into())
        );
        let err = "imagenet".parse::<DataSpec>().unwrap_err().to_string();
        assert!(err.contains("neither mnist-sample"), "{err}");
        assert_eq!(DataSpec::Bundled.to_string(), "mnist-sample");
    }

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
    }
}
