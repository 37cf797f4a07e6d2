//! `elbo`: train, evaluate and sample the evidence-lower-bound models of this workspace.
//! Thin by design: it parses arguments, draws progress, and calls into `elbo-models`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use elbo_models::DeviceSpec;
use elbo_models::eval::EvalReport;
use elbo_models::eval::classifier::{self, ClassifierJob, ClassifierTrainConfig};
use elbo_models::eval::frechet::FrechetConfig;
use elbo_models::models::ddpm::Recipe;
use elbo_models::models::hvae::HvaeVariant;
use elbo_models::nn::likelihood::Likelihood;
use elbo_models::session::{
    self, DataSpec, DdpmJob, DdpmOverrides, HvaeJob, JobReport, JobSpec, VaeJob,
};
use elbo_models::train::aids::TrainingAids;
use elbo_models::train::{Control, Finished, LrDecay, Progress, TrainConfig};

/// Latent-variable generative models (VAE, hierarchical VAE, DDPM) on libtorch.
#[derive(Debug, Parser)]
#[command(name = "elbo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What the loaded libtorch can do: CUDA, cuDNN, threads.
    Info,
    /// Train a model.
    Train {
        #[command(subcommand)]
        model: TrainModel,
    },
    /// Evaluate a run or checkpoint on its test split: the ELBO with its terms and the
    /// importance-weighted bound, in nats per image and bits per dimension.
    Eval {
        /// A run folder, its checkpoints/ folder, or a step-*.json checkpoint.
        checkpoint: PathBuf,
        /// Samples of the importance-weighted bound (IWAE); 0 for none (default 1000 for
        /// the VAEs, none for a DDPM, where one sample costs T network calls).
        #[arg(long)]
        iw: Option<i64>,
        /// Evaluate on this data instead of the run's own.
        #[arg(long)]
        data: Option<String>,
        /// Only the first N test examples.
        #[arg(long)]
        examples: Option<usize>,
        /// Measure sample quality instead of the bound: the Fréchet distance between N
        /// samples and the whole test split in the features of --classifier, with the
        /// floor of N training images.
        #[arg(long, value_name = "N", requires = "classifier")]
        frechet: Option<usize>,
        /// The classifier (run folder or checkpoint of `elbo train classifier`) whose
        /// features --frechet compares.
        #[arg(
            long,
            value_name = "CLASSIFIER_RUN_OR_CHECKPOINT",
            requires = "frechet"
        )]
        classifier: Option<PathBuf>,
        /// The seed of --frechet's draws and of its choice of training images.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// A DDPM's sampler for --frechet: ancestral, or ddim-S[-eta=E][-quadratic]
        /// (default ddim-50).
        #[arg(long, requires = "frechet")]
        sampler: Option<String>,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Draw samples from a run or checkpoint as a PNG grid.
    Sample {
        /// A run folder, its checkpoints/ folder, or a step-*.json checkpoint.
        checkpoint: PathBuf,
        /// How many samples.
        #[arg(long, default_value_t = 64)]
        n: i64,
        /// The PNG to write.
        #[arg(long, default_value = "samples.png")]
        out: PathBuf,
        /// Also write latent interpolation strips of this many steps.
        #[arg(long)]
        interpolate: Option<i64>,
        /// The seed of the draws.
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// A DDPM's sampler: ancestral (Ho et al.'s algorithm 2, T steps), or
        /// ddim-S[-eta=E][-quadratic] (default ddim-50: 50 steps, eta 0, uniform).
        #[arg(long)]
        sampler: Option<String>,
        /// With --sampler: do not clip each step's prediction of x_0 to [-1, 1].
        #[arg(long)]
        no_clip: bool,
        #[command(flatten)]
        device: DeviceArgs,
    },
}

#[derive(Debug, Subcommand)]
enum TrainModel {
    /// A VAE: `vae-mlp` (pytorch/examples' architecture) or `vae-conv`.
    Vae(Box<VaeArgs>),
    /// A hierarchical VAE: the seeds' Markovian HVAE or a top-down ladder HVAE.
    Hvae(Box<HvaeArgs>),
    /// A denoising diffusion model (DDPM) with a UNet.
    Ddpm(Box<DdpmArgs>),
    /// The small image classifier whose features `elbo eval --frechet` compares.
    Classifier(Box<ClassifierArgs>),
}

#[derive(Debug, Args)]
struct DdpmArgs {
    /// ddpm-mnist (1.6 M parameters) or ddpm-cifar10 (Ho et al.'s 35.7 M).
    #[arg(long, default_value = "ddpm-mnist")]
    preset: String,
    /// Training settings: mnist (2,000 steps of 64, lr 5e-4, warm-up 200, clip 1, EMA
    /// 0.995) or ho-cifar10 (Ho et al.: 800k steps of 128, lr 2e-4, warm-up 5,000, clip 1,
    /// EMA 0.9999, flips). Options given explicitly win over the recipe.
    #[arg(long, default_value = "mnist")]
    recipe: String,
    /// linear, cosine or sigmoid (default: the preset's linear).
    #[arg(long)]
    schedule: Option<String>,
    /// T (default 1000).
    #[arg(long)]
    timesteps: Option<usize>,
    /// What the network predicts: eps (default), x0 or v.
    #[arg(long)]
    objective: Option<String>,
    /// simple (L_simple, default) or vlb (the bound's own weighting).
    #[arg(long)]
    loss: Option<String>,
    /// The reverse variance: fixed-large (beta, default) or fixed-small (beta-tilde).
    #[arg(long)]
    variance: Option<String>,
    /// Dropout in the residual blocks (default: the preset's).
    #[arg(long)]
    dropout: Option<f64>,
    /// After training, evaluate the full bound on this many test images (T network
    /// calls each); `elbo eval --examples N` measures more.
    #[arg(long, default_value_t = 100)]
    final_examples: usize,
    #[command(flatten)]
    common: TrainArgs,
}

#[derive(Debug, Args)]
struct ClassifierArgs {
    /// mnist-sample (bundled, the default), mnist, fashion-mnist, cifar10, or a folder.
    #[arg(long, default_value = "mnist-sample")]
    data: String,
    /// The run folder (default: runs/classifier-<UTC time>).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Epochs of training.
    #[arg(long, default_value_t = 5)]
    epochs: u64,
    /// Examples per step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// The run's seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Debug, Args)]
struct DeviceArgs {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// CPU threads libtorch may use (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
}

impl DeviceArgs {
    fn apply(&self) -> Result<tch::Device> {
        if let Some(threads) = self.threads {
            if threads < 1 {
                bail!("--threads must be at least 1, found {threads}");
            }
            tch::set_num_threads(threads);
        }
        Ok(self.device.parse::<DeviceSpec>()?.resolve()?)
    }
}

#[derive(Debug, Args)]
struct VaeArgs {
    /// vae-mlp or vae-conv.
    #[arg(long, default_value = "vae-mlp")]
    preset: String,
    #[command(flatten)]
    common: TrainArgs,
}

#[derive(Debug, Args)]
struct HvaeArgs {
    /// markov (the seeds' Markovian HVAE) or ladder (top-down, LVAE/NVAE/VDVAE-style).
    #[arg(long, default_value = "ladder")]
    variant: String,
    /// Latent layers.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Latent sizes, bottom (z_1) first, comma-separated (default: markov 20 per layer;
    /// ladder mlp 32,16,8,...; ladder conv 4,2,1,... channels per position).
    #[arg(long, value_delimiter = ',')]
    latent_dims: Option<Vec<i64>>,
    /// mlp or conv (default: mlp for markov, conv for ladder).
    #[arg(long)]
    arch: Option<String>,
    /// Width of the networks (default: markov transitions 200 units; ladder mlp 256
    /// units, conv 64 channels).
    #[arg(long)]
    width: Option<i64>,
    #[command(flatten)]
    common: TrainArgs,
}

/// The options every `elbo train` model shares.
#[derive(Debug, Args)]
struct TrainArgs {
    /// bernoulli (dynamically binarised data), continuous-bce (pytorch/examples; not a
    /// likelihood) or discretized-gaussian (8-bit data in [-1, 1]).
    #[arg(long, default_value = "bernoulli")]
    likelihood: String,
    /// mnist-sample (bundled, the default), mnist, fashion-mnist, cifar10 (fetched with
    /// `cargo xtask data`), or a folder.
    #[arg(long, default_value = "mnist-sample")]
    data: String,
    /// The run folder (default: runs/<preset>-<UTC time>).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Continue the run in --run from its newest checkpoint.
    #[arg(long, requires = "run")]
    resume: bool,
    /// Epochs of training (ignored when --steps is given).
    #[arg(long, default_value_t = 10)]
    epochs: u64,
    /// Optimiser steps of training.
    #[arg(long)]
    steps: Option<u64>,
    /// Examples per step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Peak learning rate (Adam).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Cosine decay to this fraction of the peak learning rate at the last step.
    #[arg(long)]
    cosine_to: Option<f64>,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip the global gradient norm.
    #[arg(long)]
    clip: Option<f64>,
    /// Keep an EMA of the weights with this decay (used by eval and sample).
    #[arg(long)]
    ema: Option<f64>,
    /// The run's seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 1000)]
    checkpoint_every: u64,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// IWAE samples for the final evaluation on the test split; 0 for none.
    #[arg(long, default_value_t = 1000)]
    iw: i64,
    /// KL warm-up: the KL terms' weight in the loss rises linearly to 1 over this many
    /// steps (0: off). The reported ELBO is always the true bound.
    #[arg(long, default_value_t = 0)]
    kl_warmup: u64,
    /// Free bits: nats per KL term (prior matching, each layer) below which it is not
    /// penalised, on the batch mean (0: off).
    #[arg(long, default_value_t = 0.0)]
    free_bits: f64,
    /// Skip updates whose gradient norm exceeds this (off by default).
    #[arg(long)]
    skip_grad_norm: Option<f64>,
    /// Mixed precision on CUDA: `bf16` runs each forward pass under autocast in
    /// bfloat16 (refused on the CPU).
    #[arg(long, value_parser = ["bf16"])]
    autocast: Option<String>,
    #[command(flatten)]
    device: DeviceArgs,
}

fn main() -> ExitCode {
    // Freed tensor memory is reused without page faults (see the function's docs); on a
    // C library other than glibc nothing changes, which costs speed, not correctness.
    let _ = elbo_models::retain_freed_memory();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let given = explicit_train_options(&matches);
    match run(cli.command, &given) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The ids of the `elbo train <model>` options given on the command line (not
/// defaulted), so that a recipe fills in only the others.
fn explicit_train_options(matches: &ArgMatches) -> Vec<String> {
    let Some((_, train)) = matches.subcommand() else {
        return Vec::new();
    };
    let Some((_, model)) = train.subcommand() else {
        return Vec::new();
    };
    model
        .ids()
        .filter(|id| model.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.to_string())
        .collect()
}

fn run(command: Command, given: &[String]) -> Result<ExitCode> {
    match command {
        Command::Info => {
            println!("elbo {}", env!("CARGO_PKG_VERSION"));
            println!("{}", elbo_models::RuntimeInfo::current());
        }
        Command::Train {
            model: TrainModel::Vae(args),
        } => return train_vae(*args),
        Command::Train {
            model: TrainModel::Hvae(args),
        } => return train_hvae(*args),
        Command::Train {
            model: TrainModel::Ddpm(args),
        } => return train_ddpm(*args, given),
        Command::Train {
            model: TrainModel::Classifier(args),
        } => train_classifier(*args)?,
        Command::Eval {
            checkpoint,
            iw,
            data,
            examples,
            frechet: Some(samples),
            classifier: Some(classifier),
            seed,
            sampler,
            device,
        } => {
            let _ = (iw, examples);
            let device = device.apply()?;
            let data = data.map(|d| d.parse::<DataSpec>()).transpose()?;
            let config = FrechetConfig {
                samples,
                seed,
                ..FrechetConfig::default()
            };
            let (restored, report) = session::frechet_of_checkpoint(
                &checkpoint,
                &classifier,
                data.as_ref(),
                &config,
                sampler.as_deref(),
                device,
            )?;
            println!(
                "checkpoint {} (step {})",
                restored.path.display(),
                restored.meta.step
            );
            let how = sampler
                .map(|s| format!(", sampler {s}"))
                .unwrap_or_default();
            println!(
                "Fréchet distance (classifier features, {} samples{how} vs {} test images): {:.3}",
                report.samples, report.test_images, report.distance
            );
            println!(
                "  floor: {} training images vs the same {} test images: {:.3} ({} features)",
                report.samples, report.test_images, report.train_floor, report.features
            );
        }
        Command::Eval {
            checkpoint,
            iw,
            data,
            examples,
            device,
            ..
        } => {
            let device = device.apply()?;
            let data = data.map(|d| d.parse::<DataSpec>()).transpose()?;
            let (restored, report) =
                session::evaluate_checkpoint(&checkpoint, data.as_ref(), iw, examples, device)?;
            println!(
                "checkpoint {} (step {})",
                restored.path.display(),
                restored.meta.step
            );
            print_eval(&report);
        }
        Command::Sample {
            checkpoint,
            n,
            out,
            interpolate,
            seed,
            sampler,
            no_clip,
            device,
        } => {
            let device = device.apply()?;
            if n < 1 {
                bail!("--n must be at least 1, found {n}");
            }
            let mut restored = session::restore(&checkpoint, device, true)?;
            match (&sampler, no_clip) {
                (Some(s), _) => restored.model.configure_sampler(s, !no_clip)?,
                (None, true) => restored.model.configure_sampler("ddim-50", false)?,
                (None, false) => {}
            }
            tch::manual_seed(seed);
            for path in session::write_samples(&restored, n, &out, interpolate)? {
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn train_classifier(args: ClassifierArgs) -> Result<()> {
    let device = args.device.apply()?;
    let data: DataSpec = args.data.parse()?;
    let run = args
        .run
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("classifier-{}", utc_stamp())));
    let job = ClassifierJob {
        data,
        run,
        config: ClassifierTrainConfig {
            epochs: args.epochs,
            batch_size: args.batch_size,
            lr: args.lr,
            seed: args.seed,
            ..ClassifierTrainConfig::default()
        },
        device,
    };
    eprintln!(
        "training the classifier on {} into {}",
        job.data,
        job.run.display()
    );
    let report = classifier::run_job(&job, &mut |e| {
        eprintln!(
            "epoch {} (step {}): train loss {:.4}, test accuracy {:.4}",
            e.epoch, e.step, e.train_loss, e.test_accuracy
        );
    })?;
    println!("checkpoint {}", report.checkpoint.display());
    println!(
        "test accuracy {:.4} on {} test images after {} epochs ({} steps, {:.1} s)",
        report.last.test_accuracy,
        report.test_examples,
        report.last.epoch,
        report.last.step,
        report.seconds
    );
    Ok(())
}

fn train_vae(args: VaeArgs) -> Result<ExitCode> {
    let common = args.common.resolve(&args.preset)?;
    let job = VaeJob {
        preset: args.preset.clone(),
        spec: common.clone(),
    };
    run_training(
        &args.common,
        &common,
        "vae",
        &args.preset,
        |control, observer| session::train_vae(&job, control, observer),
    )
}

fn train_hvae(args: HvaeArgs) -> Result<ExitCode> {
    let variant: HvaeVariant = args.variant.parse()?;
    let name = format!("hvae-{variant}");
    let common = args.common.resolve(&name)?;
    let job = HvaeJob {
        variant,
        layers: args.layers,
        latent_dims: args.latent_dims.clone(),
        arch: args.arch.clone(),
        width: args.width,
        spec: common.clone(),
    };
    run_training(&args.common, &common, "hvae", &name, |control, observer| {
        session::train_hvae(&job, control, observer)
    })
}

fn train_ddpm(args: DdpmArgs, given: &[String]) -> Result<ExitCode> {
    let recipe = Recipe::named(&args.recipe)?;
    let name = args.preset.clone();
    let mut common = args.common.resolve(&name)?;
    let is_given = |id: &str| given.iter().any(|g| g == id);
    if !is_given("likelihood") {
        common.likelihood = Likelihood::DiscretizedGaussian;
    }
    let config = &mut common.config;
    if !is_given("steps") && !is_given("epochs") {
        config.steps = recipe.steps;
        common.epochs = None;
    }
    if !is_given("batch_size") {
        config.batch_size = recipe.batch_size;
    }
    if !is_given("lr") {
        config.lr = recipe.lr;
    }
    if !is_given("warmup") {
        config.warmup_steps = recipe.warmup_steps;
    }
    if !is_given("clip") {
        config.clip_grad_norm = Some(recipe.clip_grad_norm);
    }
    if !is_given("ema") {
        config.ema_decay = Some(recipe.ema_decay);
    }
    config.horizontal_flip = recipe.horizontal_flip;
    // The per-epoch check of the bound costs 2 network calls per image.
    config.eval_examples = 100;
    common.final_examples = Some(args.final_examples);
    if !is_given("iw") {
        common.final_iw = None;
    }
    let overrides = DdpmOverrides {
        schedule: args
            .schedule
            .as_deref()
            .map(|s| kebab("--schedule", s))
            .transpose()?,
        timesteps: args.timesteps,
        objective: args
            .objective
            .as_deref()
            .map(|s| kebab("--objective", s))
            .transpose()?,
        loss: args
            .loss
            .as_deref()
            .map(|s| kebab("--loss", s))
            .transpose()?,
        variance: args
            .variance
            .as_deref()
            .map(|s| kebab("--variance", s))
            .transpose()?,
        dropout: args.dropout,
    };
    let job = DdpmJob {
        preset: name.clone(),
        overrides,
        spec: common.clone(),
    };
    run_training(&args.common, &common, "ddpm", &name, |control, observer| {
        session::train_ddpm(&job, control, observer)
    })
}

/// One of the library's kebab-case option values (`fixed-large`, `x0`, ...), by its
/// serde name.
fn kebab<T: serde::de::DeserializeOwned>(flag: &str, text: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|e| anyhow::anyhow!("{flag} {text:?}: {e}"))
}

impl TrainArgs {
    /// What a job needs besides its model.
    fn resolve(&self, name: &str) -> Result<JobSpec> {
        let device = self.device.apply()?;
        let likelihood: Likelihood = self.likelihood.parse()?;
        let data: DataSpec = self.data.parse()?;
        let defaults = TrainConfig::default();
        let config = TrainConfig {
            steps: self.steps.unwrap_or(0),
            batch_size: self.batch_size,
            lr: self.lr,
            warmup_steps: self.warmup,
            decay: match self.cosine_to {
                Some(final_fraction) => LrDecay::Cosine { final_fraction },
                None => LrDecay::Constant,
            },
            adam: elbo_models::train::AdamConfigSerde {
                weight_decay: self.weight_decay,
                ..defaults.adam
            },
            clip_grad_norm: self.clip,
            ema_decay: self.ema,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            keep_checkpoints: self.keep,
            aids: TrainingAids {
                kl_warmup_steps: self.kl_warmup,
                free_bits: self.free_bits,
                skip_grad_norm: self.skip_grad_norm,
            },
            autocast_bf16: self.autocast.is_some(),
            ..defaults
        };
        let run = self
            .run
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(format!("{name}-{}", utc_stamp())));
        Ok(JobSpec {
            likelihood,
            data,
            run,
            config,
            device,
            final_iw: (self.iw > 0).then_some(self.iw),
            epochs: self.steps.is_none().then_some(self.epochs),
            final_examples: None,
        })
    }
}

/// Trains with a Ctrl-C handler and a progress view, then prints the outcome.
fn run_training(
    args: &TrainArgs,
    job: &JobSpec,
    command: &str,
    name: &str,
    train: impl FnOnce(Control<'_>, &mut dyn FnMut(&Progress)) -> elbo_models::Result<JobReport>,
) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C: the user wants out now.
                std::process::exit(130);
            }
            eprintln!("\nstopping after this step (Ctrl-C again to quit at once)...");
        })
        .context("installing the Ctrl-C handler")?;
    }
    eprintln!("training {name} on {} into {}", job.data, job.run.display());
    let mut progress = ProgressView::new();
    let report = train(
        Control {
            resume: args.resume,
            stop: &stop,
        },
        &mut |p| progress.update(p),
    )?;
    progress.finish();
    match report.train.finished {
        Finished::Interrupted { step } => {
            eprintln!(
                "interrupted after step {step}; checkpoint {}\nresume with: elbo train {command} --run {} --resume (and the same options)",
                report.train.checkpoint.display(),
                job.run.display()
            );
            return Ok(ExitCode::from(130));
        }
        Finished::Completed => {
            println!("checkpoint {}", report.train.checkpoint.display());
        }
    }
    if let Some(eval) = &report.eval {
        print_eval(eval);
    }
    if let Some(samples) = &report.samples {
        println!("samples {}", samples.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_eval(report: &EvalReport) {
    println!(
        "test set: {} examples, {} dimensions each",
        report.examples, report.dims
    );
    let width = report
        .terms
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0)
        .max(16);
    for (name, value) in &report.terms {
        println!(
            "  {name:<width$} {value:>12.3} nats  ({:.4} bits/dim)",
            report.bits_per_dim(-value.abs())
        );
    }
    println!(
        "  ELBO             {:>12.3} nats  ({:.4} bits/dim)",
        report.elbo(),
        report.bits_per_dim(report.elbo())
    );
    if let Some((k, bound)) = report.iwae {
        println!(
            "  IWAE-{k:<10} {bound:>12.3} nats  (NLL <= {:.3} nats, {:.4} bits/dim)",
            -bound,
            report.bits_per_dim(bound)
        );
    }
    if !report.active_units.is_empty() {
        println!(
            "active units (posterior-mean variance over the test set > {}):",
            elbo_models::eval::ACTIVE_UNIT_THRESHOLD
        );
        for units in &report.active_units {
            println!(
                "  {:<16} {:>5} of {}",
                units.layer, units.active, units.dims
            );
        }
    }
}

/// A progress bar on a terminal; plain lines otherwise (CI, logs).
struct ProgressView {
    bar: Option<indicatif::ProgressBar>,
}

impl ProgressView {
    fn new() -> ProgressView {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} < {eta_precise}]",
            ) {
                bar.set_style(style);
            }
            bar
        });
        ProgressView { bar }
    }

    fn update(&mut self, p: &Progress) {
        let terms: Vec<String> = p
            .terms
            .iter()
            .map(|(name, value)| format!("{name} {value:.2}"))
            .collect();
        let mut message = format!("{} | {:.1} it/s", terms.join(" "), p.steps_per_second);
        if let Some(test) = p.test_elbo {
            message.push_str(&format!(" | test elbo {test:.2}"));
        }
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.steps);
                bar.set_position(p.step);
                bar.set_message(message);
                if let Some(test) = p.test_elbo {
                    bar.println(format!("epoch {}: test elbo {test:.3}", p.epoch + 1));
                }
            }
            None if p.test_elbo.is_some() || p.step.is_multiple_of(100) || p.step == p.steps => {
                eprintln!(
                    "step {}/{} (epoch {}): {message}",
                    p.step,
                    p.steps,
                    p.epoch + 1
                );
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The current UTC time as `YYYYMMDD-HHMMSS`, for run folder names.
fn utc_stamp() -> String {
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
        let stamp = utc_stamp();
        assert_eq!(stamp.len(), 15, "{stamp}");
        let year: i32 = stamp[..4].parse().unwrap();
        assert!((2024..2200).contains(&year), "{stamp}");
        assert_eq!(&stamp[8..9], "-");
    }

    #[test]
    fn the_command_line_parses() {
        Cli::command_for_test().debug_assert();
        let cli = Cli::try_parse_from(["elbo", "train", "vae", "--epochs", "2", "--device", "cpu"])
            .unwrap();
        assert!(matches!(cli.command, Command::Train { .. }));
        let err = Cli::try_parse_from(["elbo", "train", "vae", "--resume"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--run"), "{err}");
    }

    #[test]
    fn train_hvae_parses_its_options_and_the_shared_ones() {
        let cli = Cli::try_parse_from([
            "elbo",
            "train",
            "hvae",
            "--variant",
            "markov",
            "--layers",
            "3",
            "--latent-dims",
            "20,10,5",
            "--kl-warmup",
            "500",
            "--free-bits",
            "0.25",
            "--epochs",
            "2",
        ])
        .unwrap();
        let Command::Train {
            model: TrainModel::Hvae(args),
        } = cli.command
        else {
            panic!("expected train hvae");
        };
        assert_eq!(args.layers, 3);
        assert_eq!(args.latent_dims, Some(vec![20, 10, 5]));
        assert_eq!(args.common.kl_warmup, 500);
        assert_eq!(args.common.free_bits, 0.25);
        assert_eq!(args.common.epochs, 2);
        assert_eq!(args.common.skip_grad_norm, None);
        let resolved = args.common.resolve("hvae-markov").unwrap();
        assert_eq!(resolved.config.aids.kl_warmup_steps, 500);
        let err = Cli::try_parse_from(["elbo", "train", "hvae", "--latent-dims", "a,b"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--latent-dims"), "{err}");
    }

    #[test]
    fn eval_frechet_needs_a_classifier_and_train_classifier_parses() {
        let cli = Cli::try_parse_from([
            "elbo",
            "eval",
            "runs/x",
            "--frechet",
            "1000",
            "--classifier",
            "runs/c",
        ])
        .unwrap();
        let Command::Eval {
            frechet,
            classifier,
            seed,
            ..
        } = cli.command
        else {
            panic!("expected eval");
        };
        assert_eq!(frechet, Some(1000));
        assert_eq!(classifier, Some(PathBuf::from("runs/c")));
        assert_eq!(seed, 0);
        let err = Cli::try_parse_from(["elbo", "eval", "runs/x", "--frechet", "10"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--classifier"), "{err}");
        let cli = Cli::try_parse_from(["elbo", "train", "classifier", "--epochs", "3"]).unwrap();
        let Command::Train {
            model: TrainModel::Classifier(args),
        } = cli.command
        else {
            panic!("expected train classifier");
        };
        assert_eq!((args.epochs, args.batch_size, args.seed), (3, 128, 0));
    }

    #[test]
    fn train_ddpm_parses_and_a_recipe_fills_only_the_options_not_given() {
        let argv = [
            "elbo",
            "train",
            "ddpm",
            "--objective",
            "v",
            "--lr",
            "1e-4",
            "--timesteps",
            "500",
        ];
        let matches = Cli::command().try_get_matches_from(argv).unwrap();
        let given = explicit_train_options(&matches);
        assert!(given.contains(&"lr".to_string()), "{given:?}");
        assert!(given.contains(&"objective".to_string()), "{given:?}");
        assert!(!given.contains(&"batch_size".to_string()), "{given:?}");
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let Command::Train {
            model: TrainModel::Ddpm(args),
        } = cli.command
        else {
            panic!("expected train ddpm");
        };
        assert_eq!(args.preset, "ddpm-mnist");
        assert_eq!(args.recipe, "mnist");
        assert_eq!(args.timesteps, Some(500));
        let objective: elbo_models::models::ddpm::Objective = kebab("--objective", "v").unwrap();
        assert_eq!(objective, elbo_models::models::ddpm::Objective::V);
        let err = kebab::<elbo_models::models::ddpm::VarianceKind>("--variance", "learned")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--variance \"learned\""), "{err}");
        assert!(err.contains("fixed-large"), "{err}");
        let cli =
            Cli::try_parse_from(["elbo", "sample", "runs/x", "--sampler", "ddim-20"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Sample {
                sampler: Some(_),
                ..
            }
        ));
    }

    impl Cli {
        fn command_for_test() -> clap::Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}
