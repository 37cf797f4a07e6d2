//! Training jobs as the `elbo train` commands describe them, with every default
//! resolved here (a preset's, a recipe's), never in the CLI: each job names its model
//! with typed options, and [`TrainOptions`] holds what a user may set about the run,
//! `None` where the model's defaults apply ([`super::options`]).

use std::path::PathBuf;

use elbo_data::Splits;

use super::options::{TrainDefaults, TrainOptions};
use crate::data;
use crate::dist::{Alone, Replicas};
use crate::error::{Error, Result};
use crate::eval::{self, EvalReport};
use crate::fit::{self, RunPlan, TrainData};
use crate::models::ModelConfig;
use crate::models::ddpm::{
    DdpmConfig, DdpmPreset, LossKind, Objective, Recipe, RecipeName, ScheduleKind,
    TimestepSampling, VarianceKind,
};
use crate::models::hvae::{HvaeArch, HvaeConfig, HvaeVariant};
use crate::models::vae::{VaeConfig, VaePreset};
use crate::models::vdm::{GammaKind, VdmConfig, VdmPreset};
use crate::nn::likelihood::Likelihood;
use crate::train::aids::TrainingAids;
use crate::train::{self, Control, Observer, TrainReport};

mod edm;
pub use edm::EdmJob;

/// The evaluation after a completed run, on the test split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinalEval {
    /// The IWAE bound with this many samples (none for `None`).
    pub iw: Option<i64>,
    /// Only the first this many test images (`None`: all).
    pub examples: Option<usize>,
}

/// How a job's run goes besides its model: the defaults its options override, the
/// training aids, the evaluation at the end, and the options.
pub struct Plan<'a> {
    /// The training defaults (a VAE's, a DDPM recipe's).
    pub defaults: TrainDefaults,
    /// KL warm-up and free bits.
    pub aids: TrainingAids,
    /// The evaluation after training.
    pub final_eval: FinalEval,
    /// What the user set.
    pub options: &'a TrainOptions,
}

impl<'a> Plan<'a> {
    /// The global batch: the user's, or the defaults'.
    pub fn batch_size(&self) -> usize {
        self.options.batch_size.unwrap_or(self.defaults.batch_size)
    }

    /// A diffusion model's plan (DDPM, VDM): a recipe's defaults, no aids, the bound on
    /// `final_examples` test images at the end and no IWAE bound.
    fn diffusion(recipe: RecipeName, final_examples: usize, options: &'a TrainOptions) -> Plan<'a> {
        Plan {
            defaults: TrainDefaults::recipe(&Recipe::of(recipe)),
            aids: TrainingAids::default(),
            final_eval: FinalEval {
                iw: None,
                examples: Some(final_examples),
            },
            options,
        }
    }
}

/// A training job: a model family's options, and the plan of its run.
pub trait Job {
    /// The model's name in run folders and reports (`vae-mlp`, `hvae-ladder`, ...).
    fn label(&self) -> String;
    /// The model's configuration for images of shape `image` from data of `classes`
    /// classes (0: unlabelled).
    fn model(&self, image: [i64; 3], classes: usize) -> Result<ModelConfig>;
    /// How the run goes.
    fn plan(&self) -> Plan<'_>;
    /// The model's configuration when resuming a run whose checkpoint records
    /// `recorded`: by default [`Job::model`], with what no option sets taken from the
    /// run ([`ModelConfig::adopting_fixed_fields`]); the comparison with the checkpoint
    /// follows.
    fn resumed_model(
        &self,
        recorded: &ModelConfig,
        image: [i64; 3],
        classes: usize,
    ) -> Result<ModelConfig> {
        Ok(self.model(image, classes)?.adopting_fixed_fields(recorded))
    }
}

/// What the VAE family's jobs share besides the model: its likelihood, the training
/// aids, the final IWAE bound, and the run.
#[derive(Clone, Debug, PartialEq)]
pub struct ElboTraining {
    /// The decoder likelihood.
    pub likelihood: Likelihood,
    /// KL warm-up and free bits.
    pub aids: TrainingAids,
    /// IWAE samples of the final evaluation on the whole test split (`None`: none).
    pub final_iw: Option<i64>,
    /// The run.
    pub train: TrainOptions,
}

impl Default for ElboTraining {
    /// Bernoulli, no aids, IWAE-1000 at the end, the default run options.
    fn default() -> Self {
        ElboTraining {
            likelihood: Likelihood::Bernoulli,
            aids: TrainingAids::default(),
            final_iw: Some(1000),
            train: TrainOptions::default(),
        }
    }
}

impl ElboTraining {
    /// The plan of a VAE-family run: the VAEs' defaults, these aids and evaluation.
    fn plan(&self) -> Plan<'_> {
        Plan {
            defaults: TrainDefaults::vae(),
            aids: self.aids,
            final_eval: FinalEval {
                iw: self.final_iw,
                examples: None,
            },
            options: &self.train,
        }
    }
}

/// A VAE training job (`elbo train vae`).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct VaeJob {
    /// The network.
    pub preset: VaePreset,
    /// Likelihood, aids, evaluation, run.
    pub training: ElboTraining,
}

impl Job for VaeJob {
    fn label(&self) -> String {
        self.preset.to_string()
    }
    fn model(&self, image: [i64; 3], _classes: usize) -> Result<ModelConfig> {
        let config = VaeConfig::preset(self.preset, image, self.training.likelihood)?;
        Ok(ModelConfig::Vae(config))
    }
    fn plan(&self) -> Plan<'_> {
        self.training.plan()
    }
}

/// A hierarchical VAE training job (`elbo train hvae`).
#[derive(Clone, Debug, PartialEq)]
pub struct HvaeJob {
    /// Markov or ladder.
    pub variant: HvaeVariant,
    /// Latent layers.
    pub layers: usize,
    /// Latent sizes, bottom first (default [`crate::models::hvae::default_latent_dims`]).
    pub latent_dims: Option<Vec<i64>>,
    /// The networks (default: MLP for the Markov HVAE, convolutional for the ladder).
    pub arch: Option<HvaeArch>,
    /// Width of the deterministic networks (default: the variant's).
    pub width: Option<i64>,
    /// Likelihood, aids, evaluation, run.
    pub training: ElboTraining,
}

impl Job for HvaeJob {
    fn label(&self) -> String {
        format!("hvae-{}", self.variant)
    }
    fn model(&self, image: [i64; 3], _classes: usize) -> Result<ModelConfig> {
        Ok(ModelConfig::Hvae(HvaeConfig::new(
            self.variant,
            image,
            self.layers,
            self.latent_dims.clone(),
            self.arch,
            self.width,
            self.training.likelihood,
        )?))
    }
    fn plan(&self) -> Plan<'_> {
        self.training.plan()
    }
}

/// A DDPM training job (`elbo train ddpm`): a preset with changes, a recipe for the
/// training settings the options do not give.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct DdpmJob {
    /// The network (default `ddpm-mnist`; `None` when resuming: the run's own network,
    /// such as an imported one's).
    pub preset: Option<DdpmPreset>,
    /// The training settings.
    pub recipe: RecipeName,
    /// The noise schedule (default the preset's linear).
    pub schedule: Option<ScheduleKind>,
    /// T (default 1000).
    pub timesteps: Option<usize>,
    /// What the network predicts (default eps).
    pub objective: Option<Objective>,
    /// What training minimises (default `L_simple`).
    pub loss: Option<LossKind>,
    /// How training draws timesteps (default uniform; importance sampling needs
    /// `loss: Vlb`).
    pub timestep_sampling: Option<TimestepSampling>,
    /// The reverse variance (default fixed-large; learned-range doubles the network's
    /// output channels).
    pub variance: Option<VarianceKind>,
    /// λ of the hybrid loss (`loss: Hybrid`; default improved DDPM's 0.001).
    pub hybrid_weight: Option<f64>,
    /// Dropout in the residual blocks (default the preset's).
    pub dropout: Option<f64>,
    /// Class-conditional with this label dropout (`--cond-drop`; `None`: unconditional):
    /// the network learns `p(x | class)` and, from the dropped labels, `p(x)`, which
    /// classifier-free guidance combines at sampling.
    pub cond_drop: Option<f64>,
    /// Test images of the final evaluation of the full bound (T network calls each).
    pub final_examples: usize,
    /// The run.
    pub train: TrainOptions,
}

impl DdpmJob {
    /// The preset for `image` with the job's changes, conditional on `classes` classes
    /// with `cond_drop`.
    pub fn config(&self, image: [i64; 3], classes: usize) -> Result<DdpmConfig> {
        self.changing(
            DdpmConfig::preset(self.preset.unwrap_or_default(), image)?,
            classes,
        )
    }

    /// `config` with the job's changes.
    fn changing(&self, mut config: DdpmConfig, classes: usize) -> Result<DdpmConfig> {
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
        if let Some(v) = self.timestep_sampling {
            config.timestep_sampling = v;
        }
        if let Some(v) = self.variance {
            config = config.with_variance(v);
        }
        if let Some(w) = self.hybrid_weight {
            config.hybrid_weight = Some(w);
        }
        if let Some(v) = self.dropout {
            config.unet.dropout = v;
        }
        if let Some(p) = self.cond_drop {
            if classes < 2 {
                return Err(Error::Config {
                    detail: format!(
                        "--cond-drop trains a class-conditional model, which needs labelled \
                         data of at least 2 classes (a folder with one sub-folder per class); \
                         this data has {classes}"
                    ),
                });
            }
            config = config.conditional(classes as i64, p)?;
        }
        config.validate()?;
        Ok(config)
    }
}

impl Job for DdpmJob {
    fn label(&self) -> String {
        self.preset.unwrap_or_default().to_string()
    }
    fn model(&self, image: [i64; 3], classes: usize) -> Result<ModelConfig> {
        Ok(ModelConfig::Ddpm(self.config(image, classes)?))
    }
    /// Without a preset, the run's own network with the job's changes.
    fn resumed_model(
        &self,
        recorded: &ModelConfig,
        image: [i64; 3],
        classes: usize,
    ) -> Result<ModelConfig> {
        match (self.preset, recorded) {
            (None, ModelConfig::Ddpm(run)) => {
                Ok(ModelConfig::Ddpm(self.changing(run.clone(), classes)?))
            }
            _ => Ok(self.model(image, classes)?.adopting_fixed_fields(recorded)),
        }
    }
    fn plan(&self) -> Plan<'_> {
        Plan::diffusion(self.recipe, self.final_examples, &self.train)
    }
}

/// A VDM training job (`elbo train vdm`): a preset with changes, trained with a DDPM
/// recipe's settings.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct VdmJob {
    /// The network.
    pub preset: VdmPreset,
    /// The training settings.
    pub recipe: RecipeName,
    /// The schedule (default: monotone).
    pub gamma: Option<GammaKind>,
    /// `gamma(0)` and `gamma(1)`, fixed or where learning starts (default -13.3 and 5).
    pub gamma_range: Option<(f64, f64)>,
    /// `Some(T)`: the T-step bound instead of the continuous-time one.
    pub timesteps: Option<usize>,
    /// The samplers' grid and the evaluation's times (default 1000).
    pub grid: Option<usize>,
    /// The Fourier features' exponents (default 6 and 7; empty: none).
    pub fourier: Option<Vec<i64>>,
    /// The learning-rate multiplier of a learned schedule's parameters (default 1).
    pub schedule_lr: Option<f64>,
    /// Dropout in the residual blocks (default the preset's).
    pub dropout: Option<f64>,
    /// Test images of the final evaluation of the bound (one network call per image
    /// and time of the grid).
    pub final_examples: usize,
    /// The run.
    pub train: TrainOptions,
}

impl VdmJob {
    /// The preset for `image` with the job's changes.
    pub fn config(&self, image: [i64; 3]) -> Result<VdmConfig> {
        let mut config = VdmConfig::preset(self.preset, image)?;
        if let Some(v) = self.gamma {
            config.gamma = v;
        }
        if let Some((lo, hi)) = self.gamma_range {
            config.gamma_min = lo;
            config.gamma_max = hi;
        }
        if self.timesteps.is_some() {
            config.timesteps = self.timesteps;
        }
        if let Some(v) = self.grid {
            config.sampling_steps = v;
        }
        if let Some(v) = self.dropout {
            config.unet.dropout = v;
        }
        if self.schedule_lr.is_some() {
            config.schedule_lr = self.schedule_lr;
        }
        if let Some(exponents) = &self.fourier {
            config = config.with_fourier(exponents.clone())?;
        }
        config.validate()?;
        Ok(config)
    }
}

impl Job for VdmJob {
    fn label(&self) -> String {
        self.preset.to_string()
    }
    fn model(&self, image: [i64; 3], _classes: usize) -> Result<ModelConfig> {
        Ok(ModelConfig::Vdm(self.config(image)?))
    }
    fn plan(&self) -> Plan<'_> {
        Plan::diffusion(self.recipe, self.final_examples, &self.train)
    }
}

/// What a finished (or interrupted) job reports.
pub struct JobReport {
    /// The run folder.
    pub run: PathBuf,
    /// The training loop's report.
    pub train: TrainReport,
    /// The final evaluation on the test split, when the run completed and was not
    /// stopped during it.
    pub eval: Option<EvalReport>,
    /// The stop flag was raised (during training, or during the final evaluation, which
    /// was then given up: the checkpoint is written either way).
    pub stopped: bool,
    /// The newest sample grid.
    pub samples: Option<PathBuf>,
    /// The training curves, when drawn.
    pub curves: Option<PathBuf>,
}

/// The run folder of a job: the one asked for, or `runs/<label>-<UTC time>`.
pub fn run_folder(asked: Option<&PathBuf>, label: &str) -> PathBuf {
    asked
        .cloned()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("{label}-{}", utc_stamp())))
}

/// Runs a job: loads the data, builds the model (or, with `control.resume`, restores
/// it), trains, and evaluates on the test split.
pub fn train(
    job: &dyn Job,
    control: Control<'_>,
    observer: &mut dyn Observer,
) -> Result<JobReport> {
    train_in(job, &Alone, control, observer)
}

/// [`train`] as one of `replicas` (a data-parallel job, [`crate::dist::Parallel`]): every
/// process runs this with the same job; rank 0 writes the run folder, evaluates at each
/// epoch's end and after training; the others train and return without evaluation.
pub fn train_in(
    job: &dyn Job,
    replicas: &dyn Replicas,
    control: Control<'_>,
    observer: &mut dyn Observer,
) -> Result<JobReport> {
    let writer = replicas.rank() == 0;
    let plan = job.plan();
    let options = plan.options;
    let loaded = options
        .data
        .load_all_with(&mut |done, total| observer.packing(done, total))?;
    let splits: Splits = loaded.splits;
    let [c, h, w] = splits.train.image_shape().map(|d| d as i64);
    let label = job.label();
    let run = train::RunDir::new(run_folder(options.run.as_ref(), &label));
    let newest = control
        .resume
        .then(|| train::checkpoint::list(&run.checkpoints()).ok()?.pop())
        .flatten();
    let recorded = newest
        .and_then(|json| train::checkpoint::read_meta(&json).ok())
        .and_then(|meta| ModelConfig::from_record(&meta.model, &meta.model_config).ok());
    let model_config = match &recorded {
        Some(recorded) => job.resumed_model(recorded, [c, h, w], loaded.classes.len())?,
        None => job.model([c, h, w], loaded.classes.len())?,
    };
    let config = options.resolve(&plan.defaults, splits.train.len(), plan.aids)?;
    let device = options.device;
    let mut vs = train::var_store(config.seed, device);
    let model = model_config.build(&vs.root())?;
    if writer && !loaded.skipped.is_empty() {
        write_skipped(&run, &loaded.skipped)?;
    }
    let data = TrainData {
        train: &splits.train,
        test: &splits.test,
    };
    let run_plan = RunPlan {
        config: &config,
        run: &run,
        label,
        replicas,
    };
    let report = fit::fit(model.as_ref(), &mut vs, &data, run_plan, control, observer)?;
    // `--final-examples 0`: no evaluation at the end (`elbo eval` does it later).
    let wanted = plan.final_eval.examples != Some(0);
    let eval = match report.finished {
        train::Finished::Completed if writer && wanted => {
            let FinalEval { iw, examples } = plan.final_eval;
            let test = data::fixed_tensor(&splits.test, model.likelihood(), examples, device)?;
            eval::evaluate_until(model.as_ref(), &test, iw, 100, control.stop)?
        }
        _ => None,
    };
    let stopped = control.stop.load(std::sync::atomic::Ordering::SeqCst);
    let curves = run.curves();
    Ok(JobReport {
        stopped,
        samples: run.newest_samples(),
        curves: curves.exists().then_some(curves),
        run: run.root,
        train: report,
        eval,
    })
}

/// Lists the files a folder's `skip-bad` left out (one per line: the path, a tab, why)
/// in the run folder, whole or not at all.
fn write_skipped(run: &train::RunDir, skipped: &[(PathBuf, String)]) -> Result<()> {
    let path = run.skipped_images();
    std::fs::create_dir_all(&run.root).map_err(|e| Error::file("create", &run.root, e))?;
    let text: String = skipped
        .iter()
        .map(|(file, why)| format!("{}\t{why}\n", file.display()))
        .collect();
    train::checkpoint::write_atomically(&path, |temp| Ok(std::fs::write(temp, &text)?))
}

/// The current UTC time as `YYYYMMDD-HHMMSS`, for run folder names.
pub fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_is_a_utc_date_and_time() {
        let _generator = crate::testing::generator_lock();
        let stamp = utc_stamp();
        assert_eq!(stamp.len(), 15, "{stamp}");
        let year: i32 = stamp[..4].parse().unwrap();
        assert!((2024..2200).contains(&year), "{stamp}");
        assert_eq!(&stamp[8..9], "-");
    }
}
