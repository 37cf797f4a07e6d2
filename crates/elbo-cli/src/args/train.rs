//! `elbo train`'s arguments: one struct per model family (and the classifier), the
//! options every run shares ([`RunArgs`], [`LoopArgs`]), and the job each family's
//! arguments describe ([`TrainArgs`]).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use elbo_models::session::{
    DataSpec, DdpmJob, DdpmPreset, Device, EdmJob, EdmPreset, ElboTraining, GammaKind, HvaeArch,
    HvaeJob, HvaeVariant, Job, Likelihood, LossKind, Objective, RecipeName, ScheduleKind,
    TimestepSampling, TrainOptions, TrainingAids, VaeJob, VaePreset, VarianceKind, VdmJob,
    VdmPreset,
};

use super::{DeviceArgs, FolderArgs, parse};

/// The models `elbo train` trains.
#[derive(Debug, Subcommand)]
pub enum TrainModel {
    /// A VAE: `vae-mlp` (pytorch/examples' architecture) or `vae-conv`.
    Vae(Box<VaeArgs>),
    /// A hierarchical VAE: the seeds' Markovian HVAE or a top-down ladder HVAE.
    Hvae(Box<HvaeArgs>),
    /// A denoising diffusion model (DDPM) with a UNet.
    Ddpm(Box<DdpmArgs>),
    /// A variational diffusion model (VDM): continuous time, a learned noise schedule.
    Vdm(Box<VdmArgs>),
    /// EDM (Karras et al. 2022): the preconditioned denoiser trained on log-normal noise
    /// levels, sampled with Heun's method.
    Edm(Box<EdmArgs>),
    /// The small image classifier whose features `elbo eval --frechet` compares.
    Classifier(Box<ClassifierArgs>),
}

/// What the arguments of every ELBO model family give `elbo train`: the loop's options,
/// the device, and the job they describe.
pub trait TrainArgs {
    /// The training loop's options.
    fn looped(&self) -> &LoopArgs;
    /// Where to train.
    fn device(&self) -> &DeviceArgs;
    /// The job, to train on `device`.
    fn boxed_job(&self, device: Device) -> Box<dyn Job>;
    /// The data, folder and seed.
    fn run_args(&self) -> &RunArgs;
}

impl TrainModel {
    /// The arguments of an ELBO model family (`None` for the classifier, which trains
    /// by a job of its own).
    pub fn elbo_family(&self) -> Option<&dyn TrainArgs> {
        match self {
            TrainModel::Vae(args) => Some(args.as_ref()),
            TrainModel::Hvae(args) => Some(args.as_ref()),
            TrainModel::Ddpm(args) => Some(args.as_ref()),
            TrainModel::Vdm(args) => Some(args.as_ref()),
            TrainModel::Edm(args) => Some(args.as_ref()),
            TrainModel::Classifier(_) => None,
        }
    }
}

/// [`TrainArgs`] for a family's arguments, which hold `run: RunArgs` and
/// `train: LoopArgs` and have a `job(device)`.
macro_rules! train_args {
    ($($args:ty),*) => {$(
        impl TrainArgs for $args {
            fn looped(&self) -> &LoopArgs {
                &self.train
            }
            fn device(&self) -> &DeviceArgs {
                &self.run.device
            }
            fn boxed_job(&self, device: Device) -> Box<dyn Job> {
                Box::new(self.job(device))
            }
            fn run_args(&self) -> &RunArgs {
                &self.run
            }
        }
    )*};
}
train_args!(VaeArgs, HvaeArgs, DdpmArgs, VdmArgs, EdmArgs);

/// What every training run has: its data, folder and seed.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// mnist-sample (bundled, the default), mnist, fashion-mnist, cifar10 (fetched with
    /// `cargo xtask data`), folder:PATH (a folder of images: one sub-folder per class,
    /// or images only), parquet:PATH (Hugging Face datasets' parquet shards: a file or
    /// a folder), or a folder of IDX files or CIFAR-10.
    #[arg(long, default_value = "mnist-sample", value_parser = parse::<DataSpec>)]
    pub data: DataSpec,
    #[command(flatten)]
    pub folder: FolderArgs,
    /// The run folder (default: runs/<model>-<UTC time>).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// The run's seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The training loop's settings; `None` takes the model's default (shown in the help of
/// each model's command).
#[derive(Debug, Args)]
pub struct LoopArgs {
    /// Continue the run in --run from its newest checkpoint.
    #[arg(long, requires = "run")]
    pub resume: bool,
    /// Train on N processes of this machine (data-parallel on torch's c10d with Gloo):
    /// --batch-size stays the global batch, each process takes its slice. Under
    /// torchrun or another launcher that sets RANK and WORLD_SIZE, leave it out.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub nproc: Option<u16>,
    /// With --nproc: the port of the rendezvous on 127.0.0.1 (default: a free one).
    #[arg(long, requires = "nproc", value_parser = clap::value_parser!(u16).range(1..))]
    pub master_port: Option<u16>,
    /// With --nproc: restart the whole job up to K times when a worker fails (as
    /// torchrun's --max-restarts); each attempt resumes the newest checkpoint, so it
    /// needs --resume. A Ctrl-C or SIGTERM is never restarted.
    #[arg(
        long,
        value_name = "K",
        requires = "nproc",
        default_value_t = 0,
        value_parser = clap::value_parser!(u32).range(0..=1000)
    )]
    pub max_restarts: u32,
    /// Seconds a data-parallel process waits for the others (the rendezvous, each
    /// collective) before it gives up with an error.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub dist_timeout: f64,
    /// With --resume: accept training options that differ from the run's (each change
    /// is recorded in metrics.jsonl; the run is then not bit-exact to an unbroken one).
    #[arg(long, requires = "resume")]
    pub allow_changes: bool,
    /// Epochs of training (ignored when --steps is given).
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Optimiser steps of training.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Examples per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (Adam).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear warm-up steps.
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Cosine decay to this fraction of the peak learning rate at the last step
    /// (default: constant).
    #[arg(long)]
    pub cosine_to: Option<f64>,
    /// AdamW's decoupled weight decay (default 0).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm.
    #[arg(long)]
    pub clip: Option<f64>,
    /// Keep an EMA of the weights with this decay (used by eval and sample).
    #[arg(long)]
    pub ema: Option<f64>,
    /// Checkpoint every N steps, and at the end (default 1000).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Checkpoints to keep (default 3).
    #[arg(long)]
    pub keep: Option<usize>,
    /// Do not write TensorBoard event files in the run folder (written by default:
    /// `tensorboard --logdir runs`).
    #[arg(long)]
    pub no_tensorboard: bool,
    /// Skip updates whose gradient norm exceeds this (default: never).
    #[arg(long)]
    pub skip_grad_norm: Option<f64>,
    /// Mixed precision on CUDA: `bf16` runs each forward pass under autocast in
    /// bfloat16 (refused on the CPU).
    #[arg(long, value_parser = ["bf16"])]
    pub autocast: Option<String>,
    /// Deterministic algorithms only (libtorch's use_deterministic_algorithms, cuDNN
    /// without its benchmark search): an operation without a deterministic kernel then
    /// fails, naming itself. On CUDA, cuBLAS also needs CUBLAS_WORKSPACE_CONFIG=:4096:8
    /// in the environment. The CPU is deterministic already.
    #[arg(long)]
    pub deterministic: bool,
}

/// What the VAEs add: the likelihood, the training aids, the final IWAE bound.
#[derive(Debug, Args)]
pub struct VaeFamilyArgs {
    /// bernoulli (dynamically binarised data), continuous-bce (pytorch/examples; not a
    /// likelihood) or discretized-gaussian (8-bit data in [-1, 1]).
    #[arg(long, default_value = "bernoulli", value_parser = parse::<Likelihood>)]
    pub likelihood: Likelihood,
    /// KL warm-up: the KL terms' weight in the loss rises linearly to 1 over this many
    /// steps (0: off). The reported ELBO is always the true bound.
    #[arg(long, default_value_t = 0)]
    pub kl_warmup: u64,
    /// Free bits: nats per KL term (prior matching, each layer) below which it is not
    /// penalised, on the batch mean (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub free_bits: f64,
    /// IWAE samples for the final evaluation on the test split; 0 for none.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(0..))]
    pub iw: i64,
}

/// `elbo train vae`.
#[derive(Debug, Args)]
pub struct VaeArgs {
    /// vae-mlp or vae-conv.
    #[arg(long, default_value = "vae-mlp", value_parser = parse::<VaePreset>)]
    pub preset: VaePreset,
    #[command(flatten)]
    pub family: VaeFamilyArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub train: LoopArgs,
}

/// `elbo train hvae`.
#[derive(Debug, Args)]
pub struct HvaeArgs {
    /// markov (the seeds' Markovian HVAE) or ladder (top-down, LVAE/NVAE/VDVAE-style).
    #[arg(long, default_value = "ladder", value_parser = parse::<HvaeVariant>)]
    pub variant: HvaeVariant,
    /// Latent layers.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Latent sizes, bottom (z_1) first, comma-separated (default: markov 20 per layer;
    /// ladder mlp 32,16,8,...; ladder conv 4,2,1,... channels per position).
    #[arg(long, value_delimiter = ',')]
    pub latent_dims: Option<Vec<i64>>,
    /// mlp or conv (default: mlp for markov, conv for ladder).
    #[arg(long, value_parser = parse::<HvaeArch>)]
    pub arch: Option<HvaeArch>,
    /// Width of the networks (default: markov transitions 200 units; ladder mlp 256
    /// units, conv 64 channels).
    #[arg(long)]
    pub width: Option<i64>,
    #[command(flatten)]
    pub family: VaeFamilyArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub train: LoopArgs,
}

/// `elbo train ddpm`.
#[derive(Debug, Args)]
pub struct DdpmArgs {
    /// ddpm-mnist (1.6 M parameters), ddpm-cifar10 (Ho et al.'s 35.7 M) or ddpm-64
    /// (improved DDPM's 64x64 network, 116 M) [default: ddpm-mnist; with --resume: the
    /// run's own network, such as one `elbo import diffusers` made]
    #[arg(long, value_parser = parse::<DdpmPreset>)]
    pub preset: Option<DdpmPreset>,
    /// The training settings the options below do not give: mnist or ho-cifar10 (see
    /// each option's default).
    #[arg(long, default_value = "mnist", value_parser = parse::<RecipeName>)]
    pub recipe: RecipeName,
    /// linear, cosine or sigmoid (default: the preset's linear).
    #[arg(long, value_parser = parse::<ScheduleKind>)]
    pub schedule: Option<ScheduleKind>,
    /// T (default 1000).
    #[arg(long)]
    pub timesteps: Option<usize>,
    /// What the network predicts: eps (default), x0 or v.
    #[arg(long, value_parser = parse::<Objective>)]
    pub objective: Option<Objective>,
    /// simple (L_simple, default), vlb (the bound's own weighting) or hybrid (improved
    /// DDPM's L_simple + 0.001 L_vlb, for --variance learned-range).
    #[arg(long, value_parser = parse::<LossKind>)]
    pub loss: Option<LossKind>,
    /// lambda of --loss hybrid (default 0.001): L_simple + lambda T L_t in bits/dim.
    #[arg(long, value_name = "LAMBDA")]
    pub hybrid_weight: Option<f64>,
    /// How training draws timesteps: uniform (default) or loss-second-moment (improved
    /// DDPM's importance sampling, with --loss vlb: p_t proportional to the root mean
    /// square of the last 10 losses at t, each term weighted by 1 / (T p_t)).
    #[arg(long, value_name = "SAMPLER", value_parser = parse::<TimestepSampling>)]
    pub t_sampler: Option<TimestepSampling>,
    /// The reverse variance: fixed-large (beta, default), fixed-small (beta-tilde) or
    /// learned-range (improved DDPM: the network also predicts where each step's
    /// log-variance lies between the two; trained with --loss hybrid or vlb).
    #[arg(long, value_parser = parse::<VarianceKind>)]
    pub variance: Option<VarianceKind>,
    /// Dropout in the residual blocks (default: the preset's).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Class-conditional, for classifier-free guidance: each training label is replaced
    /// by the null label with this probability (e.g. 0.1), so that the one network also
    /// learns the unconditional model. `elbo sample --class K --guidance W` then draws a
    /// class.
    #[arg(long, value_name = "P")]
    pub cond_drop: Option<f64>,
    /// After training, evaluate the full bound on this many test images (T network
    /// calls each; 0: none); `elbo eval --examples N` measures more.
    #[arg(long, default_value_t = 100)]
    pub final_examples: usize,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub train: LoopArgs,
}

/// `elbo train edm`.
#[derive(Debug, Args)]
pub struct EdmArgs {
    /// edm-mnist (ddpm-mnist's UNet) or edm-cifar10 (ddpm-cifar10's).
    #[arg(long, default_value = "edm-mnist", value_parser = parse::<EdmPreset>)]
    pub preset: EdmPreset,
    /// The training settings the options below do not give: mnist or ho-cifar10 (the
    /// DDPM's recipes).
    #[arg(long, default_value = "mnist", value_parser = parse::<RecipeName>)]
    pub recipe: RecipeName,
    /// sigma_data, the data's standard deviation the preconditioning assumes [default:
    /// 0.5].
    #[arg(long)]
    pub sigma_data: Option<f64>,
    /// The mean of ln(sigma) in training [default: -1.2].
    #[arg(long, allow_hyphen_values = true)]
    pub p_mean: Option<f64>,
    /// The standard deviation of ln(sigma) in training [default: 1.2].
    #[arg(long)]
    pub p_std: Option<f64>,
    /// The noise levels of the grid evaluation and the samplers run on (ln sigma evenly
    /// from 0.002 to 80) [default: 1000].
    #[arg(long)]
    pub levels: Option<usize>,
    /// Dropout in the residual blocks (default: the preset's).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// After training, evaluate the grid's bound on this many test images (one network
    /// call per image and level; 0: none).
    #[arg(long, default_value_t = 100)]
    pub final_examples: usize,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub train: LoopArgs,
}

impl EdmArgs {
    /// The job.
    pub fn job(&self, device: Device) -> EdmJob {
        EdmJob {
            preset: self.preset,
            recipe: self.recipe,
            sigma_data: self.sigma_data,
            p_mean: self.p_mean,
            p_std: self.p_std,
            levels: self.levels,
            dropout: self.dropout,
            final_examples: self.final_examples,
            train: self.train.options(&self.run, device),
        }
    }
}

/// `elbo train vdm`.
#[derive(Debug, Args)]
pub struct VdmArgs {
    /// vdm-mnist (ddpm-mnist's UNet) or vdm-cifar10 (ddpm-cifar10's).
    #[arg(long, default_value = "vdm-mnist", value_parser = parse::<VdmPreset>)]
    pub preset: VdmPreset,
    /// The training settings the options below do not give: mnist or ho-cifar10 (the
    /// DDPM's recipes).
    #[arg(long, default_value = "mnist", value_parser = parse::<RecipeName>)]
    pub recipe: RecipeName,
    /// The noise schedule gamma(t) = -log SNR(t): monotone (learned endpoints and shape,
    /// default), learned-endpoints (linear between learned endpoints) or fixed (linear).
    #[arg(long, value_parser = parse::<GammaKind>)]
    pub schedule: Option<GammaKind>,
    /// gamma(0), fixed or where learning starts [default: -13.3].
    #[arg(long, allow_hyphen_values = true)]
    pub gamma_min: Option<f64>,
    /// gamma(1), fixed or where learning starts [default: 5].
    #[arg(long, allow_hyphen_values = true)]
    pub gamma_max: Option<f64>,
    /// Train on the T-step bound instead of the continuous-time one.
    #[arg(long)]
    pub timesteps: Option<usize>,
    /// The exponents n of the Fourier features sin(2^n pi z), cos(2^n pi z) given to the
    /// network [default: 6,7].
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "no_fourier")]
    pub fourier: Option<Vec<i64>>,
    /// No Fourier features: the network sees z_t only.
    #[arg(long)]
    pub no_fourier: bool,
    /// The steps of the grid the samplers run on, and the times at which evaluation
    /// takes the diffusion loss [default: 1000].
    #[arg(long)]
    pub grid: Option<usize>,
    /// The learning-rate multiplier of the learned schedule's parameters (gamma.*), a
    /// group of their own (default 1: the network's rate).
    #[arg(long, value_name = "M")]
    pub schedule_lr: Option<f64>,
    /// Dropout in the residual blocks (default: the preset's).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// After training, evaluate the bound on this many test images (1000 network calls
    /// each; 0: none); `elbo eval --examples N` measures more.
    #[arg(long, default_value_t = 100)]
    pub final_examples: usize,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub train: LoopArgs,
}

/// `elbo train classifier`.
#[derive(Debug, Args)]
pub struct ClassifierArgs {
    /// Epochs of training.
    #[arg(long, default_value_t = 5)]
    pub epochs: u64,
    /// Examples per step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[command(flatten)]
    pub run: RunArgs,
}

impl LoopArgs {
    /// The run's options (the parsed values; the library fills the rest).
    pub fn options(&self, run: &RunArgs, device: Device) -> TrainOptions {
        TrainOptions {
            data: run
                .folder
                .apply(&run.data)
                .unwrap_or_else(|_| run.data.clone()),
            run: run.run.clone(),
            device,
            epochs: self.epochs,
            steps: self.steps,
            batch_size: self.batch_size,
            lr: self.lr,
            warmup: self.warmup,
            cosine_to: self.cosine_to,
            weight_decay: self.weight_decay,
            clip: self.clip,
            ema: self.ema,
            seed: run.seed,
            checkpoint_every: self.checkpoint_every,
            keep: self.keep,
            skip_grad_norm: self.skip_grad_norm,
            autocast_bf16: self.autocast.is_some(),
            tensorboard: !self.no_tensorboard,
        }
    }
}

impl VaeFamilyArgs {
    /// What the VAE family's jobs share, for the run `run` of `train`.
    fn training(&self, train: &LoopArgs, run: &RunArgs, device: Device) -> ElboTraining {
        ElboTraining {
            likelihood: self.likelihood,
            aids: TrainingAids {
                kl_warmup_steps: self.kl_warmup,
                free_bits: self.free_bits,
                skip_grad_norm: None,
            },
            final_iw: (self.iw > 0).then_some(self.iw),
            train: train.options(run, device),
        }
    }
}

impl VaeArgs {
    /// The job.
    pub fn job(&self, device: Device) -> VaeJob {
        VaeJob {
            preset: self.preset,
            training: self.family.training(&self.train, &self.run, device),
        }
    }
}

impl HvaeArgs {
    /// The job.
    pub fn job(&self, device: Device) -> HvaeJob {
        HvaeJob {
            variant: self.variant,
            layers: self.layers,
            latent_dims: self.latent_dims.clone(),
            arch: self.arch,
            width: self.width,
            training: self.family.training(&self.train, &self.run, device),
        }
    }
}

impl DdpmArgs {
    /// The job.
    pub fn job(&self, device: Device) -> DdpmJob {
        DdpmJob {
            preset: self.preset,
            recipe: self.recipe,
            schedule: self.schedule,
            timesteps: self.timesteps,
            objective: self.objective,
            loss: self.loss,
            timestep_sampling: self.t_sampler,
            variance: self.variance,
            hybrid_weight: self.hybrid_weight,
            dropout: self.dropout,
            cond_drop: self.cond_drop,
            final_examples: self.final_examples,
            train: self.train.options(&self.run, device),
        }
    }
}

impl VdmArgs {
    /// The job (one end of the schedule given alone keeps the other's default).
    pub fn job(&self, device: Device) -> VdmJob {
        let (lo, hi) = elbo_models::session::KINGMA_GAMMA;
        let gamma_range = (self.gamma_min.is_some() || self.gamma_max.is_some())
            .then(|| (self.gamma_min.unwrap_or(lo), self.gamma_max.unwrap_or(hi)));
        VdmJob {
            preset: self.preset,
            recipe: self.recipe,
            gamma: self.schedule,
            gamma_range,
            timesteps: self.timesteps,
            grid: self.grid,
            schedule_lr: self.schedule_lr,
            fourier: if self.no_fourier {
                Some(Vec::new())
            } else {
                self.fourier.clone()
            },
            dropout: self.dropout,
            final_examples: self.final_examples,
            train: self.train.options(&self.run, device),
        }
    }
}
