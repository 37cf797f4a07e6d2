//! The command line: one argument struct per subcommand, holding only the options that
//! apply to it. Values are parsed into the library's types here (a wrong name is refused
//! by the parser); defaults that depend on the model (a preset's, a recipe's) are left
//! `None` for the library to fill, and the help text shows them, read from the library.

use std::path::PathBuf;

mod train;

use clap::{Args, CommandFactory, Parser, Subcommand};
use elbo_models::session::{
    self, Classes, ClipX0, DataSpec, DeviceSpec, Guidance, Recipe, RecipeName, SamplerSpec,
    TrainDefaults,
};

/// Latent-variable generative models (VAE, hierarchical VAE, DDPM) on libtorch.
#[derive(Debug, Parser)]
#[command(name = "elbo", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// What the loaded libtorch can do: CUDA, cuDNN, threads.
    Info,
    /// Train a model.
    Train {
        /// Which model.
        #[command(subcommand)]
        model: TrainModel,
    },
    /// Evaluate a run or checkpoint on its test split: the ELBO with its terms and the
    /// importance-weighted bound, in nats per image and bits per dimension; or, with
    /// --frechet, the quality of its samples.
    Eval(Box<EvalArgs>),
    /// Draw samples from a run or checkpoint as a PNG grid.
    Sample(SampleArgs),
    /// Draw a run's training curves (metrics.jsonl) as a PNG.
    Plot(PlotArgs),
    /// Bring a model made elsewhere into an elbo run.
    Import {
        /// From which format.
        #[command(subcommand)]
        from: ImportCommand,
    },
    /// Write a run's model in another tool's format.
    Export {
        /// To which format.
        #[command(subcommand)]
        to: ExportCommand,
    },
    /// Look at a data set before training on it, or pack a folder of images ahead of
    /// time.
    Data {
        /// What to do.
        #[command(subcommand)]
        action: DataCommand,
    },
}

/// `elbo import ...`.
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// A diffusers UNet2DModel folder (config.json, diffusion_pytorch_model.safetensors
    /// or .bin, scheduler_config.json; flat as google/ddpm-cifar10-32, or a pipeline's
    /// unet/ and scheduler/) as a new DDPM run, whose step-0 checkpoint `elbo sample`,
    /// `elbo eval` and `elbo train ddpm --resume` (fine-tuning) take.
    Diffusers(ImportArgs),
}

/// `elbo import diffusers`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The diffusers model folder.
    pub folder: PathBuf,
    /// The run folder to create.
    #[arg(long)]
    pub out: PathBuf,
    /// The data the model is for: its test split is what `elbo eval` reads.
    #[arg(long, default_value = "cifar10", value_parser = parse::<DataSpec>)]
    pub data: DataSpec,
    /// The recipe fine-tuning (`elbo train ddpm --resume`) continues with.
    #[arg(long, default_value = "ho-cifar10", value_parser = parse::<RecipeName>)]
    pub recipe: RecipeName,
    /// The sha256 the weights file must have (the Hub shows it for each file).
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// The run's seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `elbo export ...`.
#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// A DDPM run as a diffusers folder (model_index.json, config.json,
    /// diffusion_pytorch_model.safetensors, scheduler_config.json) that
    /// `DDPMPipeline.from_pretrained` loads; the EMA weights when the run keeps them.
    Diffusers(ExportArgs),
}

/// `elbo export diffusers`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run folder, its checkpoints/ folder, or a step-*.json checkpoint.
    pub checkpoint: PathBuf,
    /// The folder to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// `elbo data ...`.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// The counts, image size, channels, classes (with their counts), the pixels' mean
    /// and standard deviation per channel, and a grid of 64 random training images.
    Inspect(DataArgs),
    /// Pack a folder of images or parquet shards (decoded, resized, converted, in one
    /// memory-mapped file under the data folder) ahead of training; training packs on
    /// first use otherwise.
    Pack(DataArgs),
}

/// A data set named as `--data` names it, with a folder's options.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// mnist-sample, mnist, fashion-mnist, cifar10, folder:PATH, parquet:PATH, or a
    /// folder of IDX files or CIFAR-10.
    #[arg(value_parser = parse::<DataSpec>)]
    pub data: DataSpec,
    #[command(flatten)]
    pub folder: FolderArgs,
    /// The grid of random training images (inspect).
    #[arg(long, default_value = "data-grid.png")]
    pub out: PathBuf,
    /// The seed of the images drawn for the grid (inspect).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Parses a value with the library's `FromStr` (its message names the choices).
fn parse<T: std::str::FromStr>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.parse::<T>().map_err(|e| e.to_string())
}

/// How a folder of images (`--data folder:PATH`) is read; each may also be written in
/// the name (`folder:PATH?image-size=64&channels=3`), which is how a run records it.
#[derive(Debug, Args, Clone, Default, PartialEq)]
pub struct FolderArgs {
    /// With --data folder:PATH: resize each image's short side to S (the triangle
    /// filter, antialiased, as torchvision's Resize) and crop its centre to S x S
    /// (default: every image must have one size).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub image_size: Option<u32>,
    /// With --data folder:PATH: 1 (grey, as PIL's "L") or 3 (RGB) channels (default: 1
    /// when every image is grey, else 3).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["1", "3"]))]
    pub channels: Option<String>,
    /// With --data folder:PATH without a test/ sub-folder: the share of the images held
    /// out for testing, chosen by a fixed seed (default 0.02, at least one image).
    #[arg(long, value_name = "F")]
    pub test_fraction: Option<f64>,
    /// With --data folder:PATH: leave out files that cannot be decoded, listed with why
    /// in the run folder's skipped-images.txt (default: the first one is an error).
    #[arg(long)]
    pub skip_bad: bool,
    /// With --data parquet:PATH: the image column (default: the first struct of bytes
    /// and path, as datasets' Image).
    #[arg(long, value_name = "NAME")]
    pub image_column: Option<String>,
    /// With --data parquet:PATH: the label column (default: an integer column label or
    /// labels, if any).
    #[arg(long, value_name = "NAME")]
    pub label_column: Option<String>,
}

impl FolderArgs {
    /// Whether any was given.
    fn given(&self) -> bool {
        *self != FolderArgs::default()
    }

    /// `data` with these options applied: an error when they are given for data that
    /// is not a folder of images or parquet shards (or columns for a folder).
    pub fn apply(&self, data: &DataSpec) -> Result<DataSpec, String> {
        let (DataSpec::Folder(spec) | DataSpec::Parquet(spec)) = data else {
            return if self.given() {
                Err(format!(
                    "--image-size, --channels, --test-fraction, --skip-bad, --image-column and \
                     --label-column apply to a folder of images (--data folder:PATH) or \
                     parquet shards (--data parquet:PATH), not to {data}"
                ))
            } else {
                Ok(data.clone())
            };
        };
        let parquet = matches!(data, DataSpec::Parquet(_));
        if !parquet && (self.image_column.is_some() || self.label_column.is_some()) {
            return Err(
                "--image-column and --label-column apply to parquet shards (--data \
                 parquet:PATH); a folder's labels are its sub-folders"
                    .to_string(),
            );
        }
        let mut spec = spec.clone();
        let o = &mut spec.options;
        if let Some(s) = self.image_size {
            o.image_size = Some(s);
        }
        if let Some(c) = &self.channels {
            o.channels = c.parse().ok();
        }
        if let Some(f) = self.test_fraction {
            if !(f > 0.0 && f < 1.0) {
                return Err(format!("--test-fraction must be in (0, 1), found {f}"));
            }
            o.test_fraction = f;
        }
        o.skip_bad |= self.skip_bad;
        if let Some(c) = &self.image_column {
            spec.columns.image = Some(c.clone());
        }
        if let Some(c) = &self.label_column {
            spec.columns.label = Some(c.clone());
        }
        Ok(if parquet {
            DataSpec::Parquet(spec)
        } else {
            DataSpec::Folder(spec)
        })
    }
}

/// How a DDPM's steps treat their prediction of x_0, and a class-conditional DDPM's
/// classes and guidance (`elbo sample`, `elbo eval --frechet`).
#[derive(Debug, Args)]
pub struct StepArgs {
    /// A DDPM: do not clip each step's prediction of x_0 to [-1, 1].
    #[arg(long, conflicts_with = "dynamic_threshold")]
    pub no_clip: bool,
    /// A DDPM: Saharia et al.'s dynamic thresholding instead of clipping: per image, the
    /// P quantile of |x_0| (at least 1) becomes the range x_0 is clipped to and divided
    /// by (they use 0.995).
    #[arg(long, value_name = "P")]
    pub dynamic_threshold: Option<f64>,
    /// A class-conditional DDPM (trained with --cond-drop): draw this class, or `all`
    /// (as many of each class in class order: one row per class in a grid).
    #[arg(long, value_name = "K|all", value_parser = parse::<Classes>)]
    pub class: Option<Classes>,
    /// With --class: classifier-free guidance's w, eps = (1 + w) eps(x, class) - w
    /// eps(x, null) (default 0: the conditional model alone).
    #[arg(
        long,
        value_name = "W",
        requires = "class",
        allow_negative_numbers = true
    )]
    pub guidance: Option<f64>,
}

impl StepArgs {
    /// What each step does with its x_0.
    pub fn clip_x0(&self) -> ClipX0 {
        match (self.no_clip, self.dynamic_threshold) {
            (true, _) => ClipX0::None,
            (false, Some(percentile)) => ClipX0::Dynamic { percentile },
            (false, None) => ClipX0::Static,
        }
    }

    /// The classes and guidance asked for.
    pub fn guidance(&self) -> Option<Guidance> {
        self.class.map(|classes| Guidance {
            classes,
            scale: self.guidance.unwrap_or(0.0),
        })
    }

    /// Whether any of these options was given.
    pub fn any(&self) -> bool {
        self.no_clip || self.dynamic_threshold.is_some() || self.class.is_some()
    }
}

/// Where to compute.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = parse::<DeviceSpec>)]
    pub device: DeviceSpec,
    /// CPU threads libtorch may use (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
}

/// `elbo eval`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("sweeps").args(["sweep", "guidance_sweep"])))]
#[command(group(clap::ArgGroup::new("quality").args(["frechet", "fid"])))]
pub struct EvalArgs {
    /// A run folder, its checkpoints/ folder, or a step-*.json checkpoint.
    pub checkpoint: PathBuf,
    /// Samples of the importance-weighted bound (IWAE); 0 for none (default 1000 for
    /// the VAEs, none for a DDPM, where one sample costs T network calls).
    #[arg(long, conflicts_with = "quality", value_parser = clap::value_parser!(i64).range(0..))]
    pub iw: Option<i64>,
    /// Evaluate on this data instead of the run's own.
    #[arg(long, value_parser = parse::<DataSpec>)]
    pub data: Option<DataSpec>,
    #[command(flatten)]
    pub folder: FolderArgs,
    /// Only the first N test examples.
    #[arg(long, conflicts_with = "quality")]
    pub examples: Option<usize>,
    /// Measure sample quality instead of the bound: the Fréchet distance between N
    /// samples and the whole test split in the features of --classifier, with the
    /// floor of N training images.
    #[arg(long, value_name = "N", requires = "classifier")]
    pub frechet: Option<usize>,
    /// Inception FID of N samples against the data's training split (as pytorch-fid,
    /// in the features of its FID Inception: fetch the weights with `cargo xtask data
    /// inception`); the reference statistics are computed once and cached.
    #[arg(long, value_name = "N", conflicts_with = "frechet")]
    pub fid: Option<usize>,
    /// With --fid: also KID (torch-fidelity's: 100 subsets of at most 1000).
    #[arg(long, requires = "fid")]
    pub kid: bool,
    /// With --fid: the converted FID Inception weights (default: where `cargo xtask data
    /// inception` puts them, in the data folder).
    #[arg(long, value_name = "PATH", requires = "fid")]
    pub inception_weights: Option<PathBuf>,
    /// With --fid: compare with the test split instead of the training split.
    #[arg(long, requires = "fid")]
    pub fid_test_split: bool,
    /// The classifier (run folder or checkpoint of `elbo train classifier`) whose
    /// features --frechet compares.
    #[arg(
        long,
        value_name = "CLASSIFIER_RUN_OR_CHECKPOINT",
        requires = "frechet"
    )]
    pub classifier: Option<PathBuf>,
    /// The seed of the draws: the bound's noise (so an evaluation can be repeated
    /// exactly), or --frechet's samples and its choice of training images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A DDPM's sampler for --frechet: ancestral, ddim-S[-eta=E], DPM-Solver++
    /// dpm++1-S, dpm++2m-S, dpm++3m-S, or unipc-S; a spacing -quadratic, -logsnr or
    /// -karras may follow (default ddim-50).
    #[arg(long, requires = "quality", value_parser = parse::<SamplerSpec>)]
    pub sampler: Option<SamplerSpec>,
    /// With --frechet, for a DDPM: the quality-versus-cost sweep, N samples with each
    /// of DDIM at 5, 10, 15, 20, 50 network calls and DPM-Solver++ 2M and UniPC at 5,
    /// 10, 15, 20; writes the chart of the distance against the calls.
    #[arg(long, requires = "frechet", conflicts_with_all = ["sampler", "class"])]
    pub sweep: bool,
    /// With --frechet, for a class-conditional DDPM: at each guidance scale w of the
    /// list (e.g. 0,1,3), N samples (as many of each class) with --sampler; their
    /// Fréchet distance and the classifier's accuracy on them, per class; writes the
    /// chart against w.
    #[arg(
        long,
        value_name = "W,W,...",
        value_delimiter = ',',
        allow_negative_numbers = true,
        requires = "frechet",
        conflicts_with_all = ["sweep", "class"]
    )]
    pub guidance_sweep: Option<Vec<f64>>,
    /// With --sweep or --guidance-sweep: the chart's file (default frechet-sweep.png or
    /// guidance-sweep.png in the run folder; the points go beside it as .json).
    #[arg(long, requires = "sweeps")]
    pub sweep_out: Option<PathBuf>,
    #[command(flatten)]
    pub steps: StepArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `elbo sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A run folder, its checkpoints/ folder, or a step-*.json checkpoint.
    pub checkpoint: PathBuf,
    /// How many samples (a grid: at most 100000; an export: at most 10000000).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(i64).range(1..=10_000_000))]
    pub n: i64,
    /// The PNG grid to write, or with --format the export's folder (png-dir) or .npz
    /// file.
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    /// Export every sample for other tools instead of a grid: png-dir (a folder of
    /// PNGs, as pytorch-fid and clean-fid read) or npz (guided-diffusion's layout: uint8
    /// NHWC in arr_0, labels in arr_1 with --class). In batches; run the same command
    /// again to continue an interrupted export.
    #[arg(long, value_name = "png-dir|npz", value_parser = parse::<session::ExportFormat>)]
    pub format: Option<session::ExportFormat>,
    /// With --format: samples per batch (the unit an interrupted export resumes from).
    #[arg(long, default_value_t = 250, requires = "format")]
    pub batch: usize,
    /// Also write latent interpolation strips of this many steps (a VAE's).
    #[arg(long, conflicts_with = "format", value_parser = clap::value_parser!(i64).range(2..=1000))]
    pub interpolate: Option<i64>,
    /// The seed of the draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A DDPM's sampler: ancestral (Ho et al.'s algorithm 2, T steps), ddim-S[-eta=E],
    /// DPM-Solver++ dpm++1-S, dpm++2m-S, dpm++3m-S, or unipc-S (S network calls); a
    /// spacing -quadratic, -logsnr or -karras may follow (default ddim-50: 50 steps,
    /// eta 0, uniform).
    #[arg(long, value_parser = parse::<SamplerSpec>)]
    pub sampler: Option<SamplerSpec>,
    #[command(flatten)]
    pub steps: StepArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `elbo plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A run folder (with its metrics.jsonl).
    pub run: PathBuf,
    /// The PNG to write, or a folder to write curves.png (and a VDM's gamma.png) into
    /// (default: the run folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw the run's training objective as a weighting w(lambda) of the ELBO over
    /// log-SNR (Kingma & Gao 2023), beside the ELBO's constant, into weighting.png
    /// (a diffusion model's run).
    #[arg(long)]
    pub weighting: bool,
}

/// The full command, with each model's real defaults in the help of its training
/// options (read from the library's presets and recipes).
pub fn command() -> clap::Command {
    let vae = TrainDefaults::vae();
    let mnist = TrainDefaults::recipe(&Recipe::of(RecipeName::Mnist));
    let cifar = TrainDefaults::recipe(&Recipe::of(RecipeName::HoCifar10));
    let epochs = |d: &TrainDefaults| match d.length {
        session::Length::Epochs(e) => format!("{e} epochs"),
        session::Length::Steps(s) => format!("{s} steps"),
    };
    let maybe = |v: Option<f64>| v.map_or("off".to_string(), |v| v.to_string());
    let vae_help: Vec<(&str, String)> = vec![
        ("epochs", format!("[default: {}]", epochs(&vae))),
        ("batch_size", format!("[default: {}]", vae.batch_size)),
        ("lr", format!("[default: {}]", vae.lr)),
        ("warmup", format!("[default: {}]", vae.warmup)),
        ("clip", format!("[default: {}]", maybe(vae.clip))),
        ("ema", format!("[default: {}]", maybe(vae.ema))),
    ];
    let recipe = |pick: &dyn Fn(&TrainDefaults) -> String| {
        format!(
            "[default: the recipe's: mnist {}, ho-cifar10 {}]",
            pick(&mnist),
            pick(&cifar)
        )
    };
    let ddpm_help: Vec<(&str, String)> = vec![
        (
            "epochs",
            "[default: none: the recipe gives steps]".to_string(),
        ),
        ("steps", recipe(&|d| epochs(d))),
        ("batch_size", recipe(&|d| d.batch_size.to_string())),
        ("lr", recipe(&|d| d.lr.to_string())),
        ("warmup", recipe(&|d| d.warmup.to_string())),
        ("clip", recipe(&|d| maybe(d.clip))),
        ("ema", recipe(&|d| maybe(d.ema))),
    ];
    let with_defaults = |cmd: clap::Command, help: Vec<(&str, String)>| {
        help.into_iter().fold(cmd, |cmd, (id, default)| {
            cmd.mut_arg(id, |arg| {
                let text = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                arg.help(format!("{text} {default}"))
            })
        })
    };
    Cli::command().mut_subcommand("train", |train| {
        train
            .mut_subcommand("vae", |c| with_defaults(c, vae_help.clone()))
            .mut_subcommand("hvae", |c| with_defaults(c, vae_help.clone()))
            .mut_subcommand("ddpm", |c| with_defaults(c, ddpm_help.clone()))
            .mut_subcommand("vdm", |c| with_defaults(c, ddpm_help.clone()))
            .mut_subcommand("edm", |c| with_defaults(c, ddpm_help.clone()))
    })
}

pub use train::{ClassifierArgs, LoopArgs, TrainArgs, TrainModel};

#[cfg(test)]
mod tests;
