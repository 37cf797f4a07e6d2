//! `cargo xtask data`: download (or import) a data set into the data folder, verified.
//!
//! The work is done by `elbo_data::fetch` / `elbo_data::import`; this module parses the
//! arguments, draws progress bars from the library's events and prints the result.

use std::path::PathBuf;

use anyhow::{Context, Result};
use elbo_data::{DatasetKind, DownloadConfig, DownloadEvent, FetchedFile, Outcome};
use indicatif::{ProgressBar, ProgressStyle};

/// A data set `cargo xtask data` can fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetArg {
    /// MNIST digits (4 files, about 11 MB).
    Mnist,
    /// Fashion-MNIST (4 files, about 30 MB).
    FashionMnist,
    /// CIFAR-10, binary version (one archive, about 163 MB).
    Cifar10,
    /// Not a data set: the FID Inception's weights (pytorch-fid's
    /// pt_inception-2015-12-05-6726825d.pth, 95.6 MB), verified and converted to
    /// safetensors for `elbo eval --fid`.
    Inception,
}

impl DatasetArg {
    fn kind(self) -> Option<DatasetKind> {
        match self {
            DatasetArg::Mnist => Some(DatasetKind::Mnist),
            DatasetArg::FashionMnist => Some(DatasetKind::FashionMnist),
            DatasetArg::Cifar10 => Some(DatasetKind::Cifar10),
            DatasetArg::Inception => None,
        }
    }
}

/// Arguments of `cargo xtask data`.
#[derive(Debug, clap::Args)]
pub struct DataArgs {
    /// The data set to fetch.
    #[arg(value_enum)]
    pub dataset: DatasetArg,
    /// The data folder; the files go into its `<dataset>/` subfolder. Default:
    /// $ELBO_DATA_DIR, else $XDG_CACHE_HOME/elbo/data, else ~/.cache/elbo/data.
    #[arg(long, value_name = "D")]
    pub dir: Option<PathBuf>,
    /// Download from this base URL instead of the canonical host (a mirror, or a
    /// proxy); the file names are appended to it.
    #[arg(long, value_name = "URL", conflicts_with = "from")]
    pub mirror: Option<String>,
    /// Import files you already have instead of downloading: a folder holding them,
    /// or the file itself. They are verified the same way and copied.
    #[arg(long, value_name = "PATH")]
    pub from: Option<PathBuf>,
}

/// Runs `cargo xtask data`.
pub fn run(args: &DataArgs) -> Result<()> {
    let root = match &args.dir {
        Some(dir) => dir.clone(),
        None => elbo_data::default_data_dir()?,
    };
    let Some(kind) = args.dataset.kind() else {
        return inception(args, &root);
    };
    let folder = root.join(kind.name());
    let mut manifest = kind.manifest();
    if let Some(mirror) = &args.mirror {
        manifest = manifest.with_base_url(mirror.clone());
    }
    println!("{kind}: into {}", folder.display());

    let mut bars = Bars::default();
    let fetched = match &args.from {
        Some(from) => elbo_data::import(&manifest, from, &folder, &mut |e| bars.on(e)),
        None => elbo_data::fetch(&manifest, &folder, &DownloadConfig::default(), &mut |e| {
            bars.on(e)
        }),
    };
    bars.clear();
    let fetched = fetched?;
    report(&fetched);

    let splits = elbo_data::load(kind, &folder)
        .with_context(|| format!("the verified files in {} do not load", folder.display()))?;
    let [c, h, w] = splits.train.image_shape();
    println!(
        "{kind}: {} training and {} test images of {c} x {h} x {w}, ready in {}",
        splits.train.len(),
        splits.test.len(),
        folder.display()
    );
    Ok(())
}

/// `cargo xtask data inception`: the FID Inception's weights, fetched (or imported with
/// `--from`) and verified against their pinned sha256 and size, then converted.
fn inception(args: &DataArgs, root: &std::path::Path) -> Result<()> {
    let mut manifest = elbo_data::FID_INCEPTION;
    if let Some(mirror) = &args.mirror {
        manifest = manifest.with_base_url(mirror.clone());
    }
    println!(
        "FID Inception weights: into {}",
        root.join(elbo_data::INCEPTION_FOLDER).display()
    );
    let mut bars = Bars::default();
    let fetched = elbo_data::fetch_inception(
        &manifest,
        root,
        args.from.as_deref(),
        &DownloadConfig::default(),
        &mut |e| bars.on(e),
    );
    bars.clear();
    let (fetched, converted) = fetched?;
    report(&fetched);
    println!(
        "converted to {} (what `elbo eval --fid` reads)",
        converted.display()
    );
    Ok(())
}

/// Prints how each file came to be in place, and any sha256 still to pin.
fn report(fetched: &[FetchedFile]) {
    for file in fetched {
        let how = match file.outcome {
            Outcome::AlreadyPresent => "already present",
            Outcome::Downloaded => "downloaded",
            Outcome::Imported => "imported",
        };
        println!("  {how:<15} {}  sha256 {}", file.name, file.digests.sha256);
        if !file.sha256_pinned {
            println!(
                "  {:<15} {}  sha256 {} (not in the manifest yet: pin it in crates/elbo-data/src/manifest.rs)",
                "", file.name, file.digests.sha256
            );
        }
    }
}

/// The progress bar of the file being transferred.
#[derive(Default)]
struct Bars {
    current: Option<ProgressBar>,
}

impl Bars {
    fn on(&mut self, event: DownloadEvent<'_>) {
        match event {
            DownloadEvent::AlreadyPresent { file, .. } => {
                println!("  {file}: already present and verified");
            }
            DownloadEvent::Started {
                file,
                source,
                total,
            } => {
                self.clear();
                let bar = match total {
                    Some(total) => ProgressBar::new(total).with_style(style(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )),
                    None => ProgressBar::new_spinner()
                        .with_style(style("{msg} {spinner} {bytes} {bytes_per_sec}")),
                };
                bar.set_message(file.to_owned());
                bar.println(format!("  {file}: from {source}"));
                self.current = Some(bar);
            }
            DownloadEvent::Progress { received, .. } => {
                if let Some(bar) = &self.current {
                    bar.set_position(received);
                }
            }
            DownloadEvent::Retrying {
                file,
                attempt,
                delay,
                error,
            } => {
                self.clear();
                eprintln!(
                    "  {file}: attempt {attempt} failed ({error}); retrying in {:.1} s",
                    delay.as_secs_f64()
                );
            }
            DownloadEvent::Verified { file, .. } => {
                self.clear();
                println!("  {file}: verified");
            }
            _ => {}
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.current.take() {
            bar.finish_and_clear();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
