//! `elbo eval`, `elbo sample` and `elbo plot`: parse, call the library once, print.

use anyhow::Result;
use elbo_models::session::{self, FrechetConfig, SampleRequest, SamplerSpec, SamplingOptions};

use crate::args::{
    DataCommand, EvalArgs, ExportCommand, FolderArgs, ImportCommand, PlotArgs, SampleArgs,
};
use crate::progress::print_eval;
use crate::train::device;

/// `elbo eval`: the bound, or with --frechet the quality of samples.
pub fn eval(mut args: EvalArgs) -> Result<()> {
    let device = device(&args.device)?;
    args.data = match &args.data {
        Some(data) => Some(args.folder.apply(data).map_err(anyhow::Error::msg)?),
        None if args.folder != FolderArgs::default() => anyhow::bail!(
            "--image-size, --channels, --test-fraction, --skip-bad, --image-column and \
             --label-column apply to --data folder:PATH or parquet:PATH; without --data the \
             run's own data is read as it was recorded"
        ),
        None => None,
    };
    if let Some(samples) = args.fid {
        return fid(&args, samples, device);
    }
    let (Some(samples), Some(classifier)) = (args.frechet, &args.classifier) else {
        if args.steps.any() {
            anyhow::bail!(
                "--no-clip, --dynamic-threshold, --class and --guidance shape the samples of \
                 --frechet; the bound does not sample"
            );
        }
        let (restored, report) = session::evaluate_checkpoint(
            &args.checkpoint,
            args.data.as_ref(),
            args.iw,
            args.examples,
            args.seed,
            device,
        )?;
        print_checkpoint(&restored);
        print_eval(&report);
        return Ok(());
    };
    let steps = &args.steps;
    let sampling = (args.sampler.is_some() || steps.any()).then(|| SamplingOptions {
        sampler: args.sampler.unwrap_or_default(),
        clip_x0: steps.clip_x0(),
        guidance: steps.guidance(),
    });
    let config = FrechetConfig {
        samples,
        seed: args.seed,
        sampling,
        ..FrechetConfig::default()
    };
    if let Some(scales) = &args.guidance_sweep {
        let (restored, report) = session::guidance_sweep(
            &args.checkpoint,
            classifier,
            args.data.as_ref(),
            &config,
            scales,
            device,
            args.sweep_out.as_deref(),
            &mut |point| {
                let classes: Vec<String> = point
                    .class_accuracy
                    .iter()
                    .map(|a| format!("{:.0}", 100.0 * a))
                    .collect();
                println!(
                    "w {:<5} Fréchet distance {:>8.3}  accuracy {:>5.1} %  per class (%) {}",
                    point.scale,
                    point.distance,
                    100.0 * point.accuracy,
                    classes.join(" ")
                )
            },
        )?;
        print_sweep(&restored, &report);
        return Ok(());
    }
    if args.sweep_out.is_some() && !args.sweep {
        anyhow::bail!(
            "--sweep-out names the chart of --sweep or --guidance-sweep, and neither was given"
        );
    }
    if args.sweep {
        let (restored, report) = session::frechet_sweep(
            &args.checkpoint,
            classifier,
            args.data.as_ref(),
            &config,
            &SamplerSpec::sweep(),
            device,
            args.sweep_out.as_deref(),
            &mut |point| {
                println!(
                    "{:<12} {:>4} network calls per image: Fréchet distance {:.3}",
                    point.sampler.to_string(),
                    point.network_calls,
                    point.distance
                )
            },
        )?;
        print_sweep(&restored, &report);
        return Ok(());
    }
    let (restored, report) = session::frechet_of_checkpoint(
        &args.checkpoint,
        classifier,
        args.data.as_ref(),
        &config,
        device,
    )?;
    print_checkpoint(&restored);
    let how = args
        .sampler
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
    Ok(())
}

/// `elbo eval --fid N [--kid]`.
fn fid(args: &EvalArgs, samples: usize, device: session::Device) -> Result<()> {
    let steps = &args.steps;
    let request = session::FidRequest {
        samples,
        kid: args.kid,
        weights: args.inception_weights.clone(),
        train_split: !args.fid_test_split,
        seed: args.seed,
        sampling: (args.sampler.is_some() || steps.any()).then(|| SamplingOptions {
            sampler: args.sampler.unwrap_or_default(),
            clip_x0: steps.clip_x0(),
            guidance: steps.guidance(),
        }),
        batch: 50,
    };
    let started = std::time::Instant::now();
    let (restored, report) =
        session::fid_of_checkpoint(&args.checkpoint, args.data.as_ref(), &request, device)?;
    print_checkpoint(&restored);
    let split = if request.train_split {
        "training"
    } else {
        "test"
    };
    println!(
        "FID (Inception pool features, {} samples vs {} {split} images): {:.3}",
        report.samples, report.reference_images, report.fid
    );
    if let Some(kid) = report.kid {
        println!(
            "KID (subsets of {}): {:.5} +- {:.5}",
            kid.subset_size, kid.mean, kid.std
        );
    }
    println!(
        "reference statistics {} ({:.1} s in all)",
        report.reference_stats.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `elbo sample --format png-dir|npz`: an export, resumable; Ctrl-C stops it after the
/// batch in hand (a second one at once).
pub fn export_samples(args: SampleArgs) -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let device = device(&args.device)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            session::exit_now(130);
        }
        eprintln!(
            "
stopping after this batch (run the same command again to continue)..."
        );
    })?;
    let request = session::ExportRequest {
        n: args.n as usize,
        batch: args.batch,
        format: args.format.unwrap_or(session::ExportFormat::PngDir),
        out: args.out.clone(),
        seed: args.seed,
        sampler: args.sampler,
        clip_x0: args.steps.clip_x0(),
        guidance: args.steps.guidance(),
    };
    let mut bar = crate::progress::Packing::export();
    let report = session::export_samples(
        &args.checkpoint,
        &request,
        device,
        &stop,
        &mut |done, total| crate::progress::packing_progress(&mut bar, done, total),
    )?;
    if report.stopped {
        eprintln!(
            "stopped: {} batches drawn; run the same command again to continue the export",
            report.drawn_batches
        );
        std::process::exit(130);
    }
    println!(
        "wrote {} samples to {} ({} batches drawn now)",
        report.samples,
        report.out.display(),
        report.drawn_batches
    );
    Ok(())
}

/// `elbo import diffusers`.
pub fn import(from: ImportCommand) -> Result<()> {
    let ImportCommand::Diffusers(args) = from;
    let report = session::import_diffusers(&session::ImportRequest {
        folder: args.folder,
        run: args.out,
        data: args.data,
        recipe: args.recipe,
        sha256: args.sha256,
        seed: args.seed,
    })?;
    println!(
        "imported {} ({} parameters; sha256 {})",
        report.weights.0.display(),
        report.parameters,
        report.weights.1
    );
    println!("checkpoint {}", report.checkpoint.display());
    Ok(())
}

/// `elbo export diffusers`.
pub fn export(to: ExportCommand) -> Result<()> {
    let ExportCommand::Diffusers(args) = to;
    for path in session::export_diffusers(&args.checkpoint, &args.out)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn print_sweep<P>(restored: &session::Restored, report: &session::SweepReport<P>) {
    print_checkpoint(restored);
    println!(
        "  floor: {} training images vs the test images: {:.3}",
        report.samples, report.floor
    );
    println!(
        "chart {}\npoints {}",
        report.plot.display(),
        report.json.display()
    );
}

fn print_checkpoint(restored: &session::Restored) {
    println!(
        "checkpoint {} (step {})",
        restored.path.display(),
        restored.meta.step
    );
}

/// `elbo sample`.
pub fn sample(args: SampleArgs) -> Result<()> {
    let device = device(&args.device)?;
    let request = SampleRequest {
        n: args.n,
        out: args.out,
        interpolation_steps: args.interpolate,
        sampler: args.sampler,
        clip_x0: args.steps.clip_x0(),
        guidance: args.steps.guidance(),
        seed: args.seed,
    };
    for path in session::sample_checkpoint(&args.checkpoint, &request, device)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `elbo plot`.
pub fn plot(args: PlotArgs) -> Result<()> {
    if args.weighting {
        let out = match args.out.as_deref() {
            Some(dir) if dir.is_dir() => Some(dir.join("weighting.png")),
            other => other.map(std::path::Path::to_path_buf),
        };
        let (path, weighting) = session::plot_weighting(&args.run, out.as_deref())?;
        println!("objective {}", weighting.objective);
        println!(
            "weighting {} (the ELBO's is 1 everywhere)",
            if weighting.monotone {
                "monotone: an ELBO of noise-augmented data (Kingma & Gao 2023)"
            } else {
                "not monotone in the noise level"
            }
        );
        println!("wrote {}", path.display());
        return Ok(());
    }
    // `--out DIR`: the charts go into it, under their usual names.
    let (out, schedule) = match args.out.as_deref() {
        Some(dir) if dir.is_dir() => (Some(dir.join("curves.png")), Some(dir.join("gamma.png"))),
        Some(file) => (
            Some(file.to_path_buf()),
            Some(file.with_extension("gamma.png")),
        ),
        None => (None, None),
    };
    let path = session::plot_run(&args.run, out.as_deref())?;
    println!("wrote {}", path.display());
    // A VDM's learned schedule beside the curves.
    if let Some(path) = session::plot_schedule(&args.run, schedule.as_deref())? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `elbo data inspect` and `elbo data pack`.
pub fn data(action: DataCommand) -> Result<()> {
    let mut packing = crate::progress::Packing::new();
    let progress = &mut |done: usize, total: usize| {
        crate::progress::packing_progress(&mut packing, done, total);
    };
    match action {
        DataCommand::Inspect(args) => {
            let data = args.folder.apply(&args.data).map_err(anyhow::Error::msg)?;
            let report = session::inspect_data(&data, &args.out, args.seed, progress)?;
            let (train, test) = report.counts;
            let [c, h, w] = report.shape;
            println!("data {}", report.data);
            println!(
                "images {train} training, {test} test, {c}x{h}x{w} (channels x height x width)"
            );
            if report.classes.is_empty() {
                println!("classes none (unlabelled)");
            } else {
                println!("classes {} (training images of each)", report.classes.len());
                for (name, n) in &report.classes {
                    println!("  {name:<20} {n}");
                }
            }
            for (k, (mean, std)) in report.pixel_mean_std.iter().enumerate() {
                println!("pixels channel {k}: mean {mean:.4}, std {std:.4} (in [0, 1])");
            }
            if !report.skipped.is_empty() {
                println!("skipped {} files (--skip-bad):", report.skipped.len());
                for (file, why) in &report.skipped {
                    println!("  {}: {why}", file.display());
                }
            }
            println!("wrote {}", report.grid.display());
        }
        DataCommand::Pack(args) => {
            let data = args.folder.apply(&args.data).map_err(anyhow::Error::msg)?;
            let started = std::time::Instant::now();
            let info = session::pack_data(&data, progress)?;
            let bytes: u64 = std::fs::read_dir(&info.dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok()?.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            println!(
                "{} {} ({:.1} MB) in {:.1} s",
                if info.packed_now {
                    "packed"
                } else {
                    "already packed:"
                },
                info.dir.display(),
                bytes as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
