//! `elbo train`: parse, start the job with a Ctrl-C handler and a progress view, print.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use elbo_models::session::{
    self, ClassifierJob, ClassifierTrainConfig, Control, Finished, JobReport,
};

use crate::args::{ClassifierArgs, DeviceArgs, LoopArgs, TrainArgs, TrainModel};
use crate::launch;
use crate::progress::{ProgressView, print_eval};

/// Applies `--threads` and resolves `--device`.
pub fn device(args: &DeviceArgs) -> Result<elbo_models::session::Device> {
    if let Some(threads) = args.threads {
        session::set_threads(threads)?;
    }
    Ok(args.device.resolve()?)
}

/// Runs `elbo train <model>`: as the launcher of `--nproc` workers, as one process of a
/// data-parallel job (RANK and WORLD_SIZE set by `--nproc`, torchrun or another
/// launcher), or alone.
pub fn run(model: TrainModel) -> Result<ExitCode> {
    let args = match &model {
        TrainModel::Classifier(_) => return classifier_of(model),
        _ => model
            .elbo_family()
            .expect("every other model is an ELBO family"),
    };
    let looped = args.looped();
    let run_args = args.run_args();
    run_args
        .folder
        .apply(&run_args.data)
        .map_err(anyhow::Error::msg)?;
    let timeout = dist_timeout(looped)?;
    let world = session::World::from_env()?;
    match (looped.nproc.map(usize::from), &world) {
        (Some(n), Some(world)) if n > 1 => anyhow::bail!(
            "--nproc {n} starts the processes itself, but this process is already rank {} \
             of {} (RANK and WORLD_SIZE are set, by torchrun or another launcher): leave \
             --nproc out",
            world.rank,
            world.size
        ),
        (Some(n), None) if n > 1 => {
            // Refused here, once, rather than by each of n workers.
            let batch = args.boxed_job(session::Device::Cpu).plan().batch_size();
            session::check_global_batch(batch, n)?;
            return launch::run(launch::Launch {
                nproc: n,
                port: looped.master_port,
                timeout,
                max_restarts: looped.max_restarts,
            });
        }
        _ => {}
    }
    match &world {
        None => train_as(args, &session::Alone, device(args.device())?),
        Some(world) => {
            launch::follow_launcher();
            let rank = format!("rank {} of {}", world.rank, world.size);
            let on = world.device(device(args.device())?);
            let parallel = session::Parallel::connect(world, timeout, on).context(rank.clone())?;
            train_as(args, &parallel, on).context(rank)
        }
    }
}

fn classifier_of(model: TrainModel) -> Result<ExitCode> {
    match model {
        TrainModel::Classifier(args) => classifier(*args),
        _ => unreachable!("only called for the classifier"),
    }
}

/// The longest `--dist-timeout`: a day. c10d counts timeouts in milliseconds inside
/// 64-bit arithmetic of its own, and Gloo's waits misbehave far below the overflow
/// (9e9 s spun forever, 1e9 s timed out at once), so the value is bounded where a wait
/// still means something.
const MAX_DIST_TIMEOUT_S: f64 = 86_400.0;

/// `--dist-timeout` as a duration: a positive number of seconds, at most a day.
fn dist_timeout(args: &LoopArgs) -> Result<std::time::Duration> {
    timeout_of(args.dist_timeout)
}

fn timeout_of(secs: f64) -> Result<std::time::Duration> {
    if !(secs.is_finite() && secs > 0.0 && secs <= MAX_DIST_TIMEOUT_S) {
        anyhow::bail!(
            "--dist-timeout must be a positive number of seconds up to {MAX_DIST_TIMEOUT_S} (a \
             day), found {secs}"
        );
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Trains on `on` as one of `replicas` (alone, or one process of a data-parallel job):
/// rank 0 shows progress and the results; the others are silent unless they fail.
fn train_as(
    args: &dyn TrainArgs,
    replicas: &dyn session::Replicas,
    on: session::Device,
) -> Result<ExitCode> {
    let job = args.boxed_job(on);
    let looped = args.looped();
    if looped.deterministic {
        session::use_deterministic_algorithms(true)
            .map_err(|e| anyhow::anyhow!("--deterministic: {e}"))?;
    }
    let stop = stop_flag()?;
    let control = Control {
        resume: looped.resume,
        stop: &stop,
        allow_changes: looped.allow_changes,
    };
    if replicas.rank() != 0 {
        let report = session::train_in(job.as_ref(), replicas, control, &mut ())?;
        return Ok(match report.train.finished {
            Finished::Interrupted { .. } => ExitCode::from(130),
            Finished::Completed => ExitCode::SUCCESS,
        });
    }
    let mut progress = ProgressView::new();
    let report = session::train_in(job.as_ref(), replicas, control, &mut progress)?;
    progress.finish();
    finish(&report)
}

/// A flag that the first Ctrl-C (or SIGTERM) raises (the run stops after its step with
/// a checkpoint); a second one exits at once, and so does a process of a data-parallel
/// job that, after the request, waits in a collective for [`STUCK_AFTER_STOP`].
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // A second Ctrl-C: the user wants out now, while the main thread may be inside
            // libtorch; no destructor may run under its feet. Files are written under
            // temporary names first, so none is left half-written.
            session::exit_now(130);
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit at once)...");
        watch_for_a_stuck_collective(Instant::now());
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

/// How long a process may wait in a collective after a stop request. The processes of a
/// job step in lockstep and the launcher (or the cluster) asks all of them to stop, so
/// the others arrive within a fraction of a step; a wait this long after the request is
/// for a process that will not come (stopped, hung, or lost without a broken socket),
/// and `--dist-timeout` may be a day.
const STUCK_AFTER_STOP: Duration = Duration::from_secs(10);

/// After a stop request: exits (130) when this process has waited in one collective for
/// [`STUCK_AFTER_STOP`] since the request, saying so. The checkpoints already written
/// are complete; the step in flight is lost, as it would be on any path out.
fn watch_for_a_stuck_collective(asked: Instant) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let Some((what, since)) = session::waiting_in() else {
                continue;
            };
            let stuck = since.max(asked).elapsed();
            if stuck >= STUCK_AFTER_STOP {
                eprintln!(
                    "stopping now: after the stop request this process waited {}s in {what} \
                     for the other processes of the job, which did not come (stopped, hung or \
                     lost); the checkpoints already written are complete",
                    stuck.as_secs()
                );
                session::exit_now(130);
            }
        }
    });
}

fn finish(report: &JobReport) -> Result<ExitCode> {
    if let (Finished::Completed, true) = (&report.train.finished, report.stopped) {
        eprintln!(
            "interrupted during the final evaluation; checkpoint {}\nevaluate with: elbo eval {}",
            report.train.checkpoint.display(),
            report.run.display()
        );
        return Ok(ExitCode::from(130));
    }
    match report.train.finished {
        Finished::Interrupted { step } => {
            eprintln!(
                "interrupted after step {step}; checkpoint {}\nresume with: elbo train ... --run {} --resume (and the same options)",
                report.train.checkpoint.display(),
                report.run.display()
            );
            return Ok(ExitCode::from(130));
        }
        Finished::Completed => println!("checkpoint {}", report.train.checkpoint.display()),
    }
    if let Some(digest) = &report.train.agreed {
        println!(
            "every process holds the same final state (weights, Adam moments, EMA): sha256 {digest}"
        );
    }
    if let Some(eval) = &report.eval {
        print_eval(eval);
    }
    if let Some(samples) = &report.samples {
        println!("samples {}", samples.display());
    }
    if let Some(curves) = &report.curves {
        println!("curves {}", curves.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn classifier(args: ClassifierArgs) -> Result<ExitCode> {
    let job = ClassifierJob {
        data: args.run.data.clone(),
        run: session::run_folder(args.run.run.as_ref(), "classifier"),
        config: ClassifierTrainConfig {
            epochs: args.epochs,
            batch_size: args.batch_size,
            lr: args.lr,
            seed: args.run.seed,
            ..ClassifierTrainConfig::default()
        },
        device: device(&args.run.device)?,
    };
    eprintln!(
        "training the classifier on {} into {}",
        job.data,
        job.run.display()
    );
    let report = elbo_models::session::train_classifier(&job, &mut |e| {
        eprintln!(
            "epoch {} (step {}): cross-entropy {:.4}, test accuracy {:.4}",
            e.epoch, e.step, e.cross_entropy, e.test_accuracy
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
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::timeout_of;

    /// A timeout too large for c10d (1e300, 1e20, 9e9, 1e9 seconds: a panic, a hang, a
    /// false timeout before) is refused with the range; a day is the most.
    #[test]
    fn the_dist_timeout_is_a_positive_number_of_seconds_up_to_a_day() {
        assert_eq!(timeout_of(60.0).unwrap().as_secs(), 60);
        assert_eq!(timeout_of(86_400.0).unwrap().as_secs(), 86_400);
        for bad in [
            1e300,
            1e20,
            9e9,
            1e9,
            86_400.5,
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
        ] {
            let err = timeout_of(bad).unwrap_err().to_string();
            assert!(err.contains("up to 86400"), "{bad}: {err}");
        }
    }
}
