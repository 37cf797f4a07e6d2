//! `tvariance`: how much improved DDPM's importance sampling of timesteps
//! (`elbo_math::timesteps`, `--t-sampler loss-second-moment`) lowers the variance of
//! the one-sample estimate of a DDPM's bound, on a trained checkpoint.
//!
//! For each of `--examples` test images it evaluates the bound's term at every t
//! (`bound::terms_at`, one draw of x_t each: T network calls per image), a table
//! `L[i][t]`. The one-sample estimate of the sum of the terms is `T L_t` at a uniform t,
//! or `L_t / p_t` at t drawn from `p`; `p` is what the sampler converges to,
//! proportional to the root mean square of `L[.][t]` over the images, with 0.001 of the
//! uniform distribution mixed in. Each table entry is an independent draw of (t, x_t),
//! so the variance over t of a row is the estimator's whole variance (t and x_t) for
//! that image. Prints one JSON line: the mean over images of each estimator's standard
//! deviation (nats per image), their ratio, and the means (equal: both are unbiased).
//!
//! A checkpoint of a run trained with `--t-sampler loss-second-moment` also gets the
//! spread under its own sampler's p (its history, from training images:
//! `sd_run_sampler_nats`).
//!
//! A VDM checkpoint gets the same table from its diffusion loss at `--points` stratified
//! times (`Vdm::diffusion_profile`, divided by the number of times, so that the rows sum
//! to the loss): the uniform estimator is then the one-sample estimate at t ~ U(0, 1)
//! under its learned schedule, and the weighted one what importance sampling of t would
//! add on top of that schedule.
//!
//! ```text
//! cargo run --release -p elbo-benches --bin tvariance -- RUN --examples 20 --threads 2
//! ```

use std::path::PathBuf;

use clap::Parser;
use elbo_math::timesteps::{LossSecondMoment, weighted_estimate_moments};
use elbo_models::models::ddpm::{Ddpm, DdpmConfig, Decoder, bound};
use elbo_models::models::vdm::{Vdm, VdmConfig};
use elbo_models::nn::likelihood::Likelihood;
use elbo_models::session::DataSpec;
use elbo_models::train::{self, checkpoint};
use tch::{Device, Kind, Tensor};

#[derive(Parser, Debug)]
#[command(
    about = "The variance of a diffusion's one-sample bound estimate: uniform t vs importance-sampled t"
)]
struct Args {
    /// A DDPM or VDM run folder or checkpoint.
    checkpoint: PathBuf,
    /// Test images (each costs T network calls).
    #[arg(long, default_value_t = 20)]
    examples: usize,
    /// CPU threads.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// The seed of the draws of x_t.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// A VDM's times (default: its evaluation's, T or the grid's 1000).
    #[arg(long)]
    points: Option<usize>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    let loaded = checkpoint::load(&checkpoint::resolve_checkpoint(&args.checkpoint)?)?;
    let splits = DataSpec::default().load()?;
    let x0 = elbo_models::data::fixed_tensor(
        &splits.test,
        Likelihood::DiscretizedGaussian,
        Some(args.examples),
        Device::Cpu,
    )?;
    let n = x0.size()[0];
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let config = loaded.meta.model_config.clone();
    // table[t - 1] = the term of every image at t, nats.
    let table: Vec<Vec<f64>> = match loaded.meta.model.as_str() {
        "ddpm" => {
            let model = Ddpm::new(&vs.root(), serde_json::from_value::<DdpmConfig>(config)?)?;
            train::load_weights(&mut vs, &loaded.tensors, true)?;
            let big_t = model.diffusion().timesteps();
            tch::manual_seed(args.seed);
            let network = model.network();
            tch::no_grad(|| {
                (1..=big_t)
                    .map(|t| {
                        let tt = Tensor::full([n], t as i64, (Kind::Int64, Device::Cpu));
                        let d = model.diffusion();
                        let terms = bound::terms_at(d, &network, &x0, &tt, Decoder::Discretized);
                        Vec::<f64>::try_from(terms.to_kind(Kind::Double)).unwrap_or_default()
                    })
                    .collect()
            })
        }
        "vdm" => {
            let model = Vdm::new(&vs.root(), serde_json::from_value::<VdmConfig>(config)?)?;
            train::load_weights(&mut vs, &loaded.tensors, true)?;
            let points = args.points.unwrap_or(model.bound_points());
            tch::manual_seed(args.seed);
            let profile = tch::no_grad(|| model.diffusion_profile(&x0, points)) / points as f64;
            (0..points as i64)
                .map(|k| Vec::<f64>::try_from(profile.get(k).to_kind(Kind::Double)))
                .collect::<Result<_, _>>()?
        }
        other => return Err(format!("expected a ddpm or vdm checkpoint, found {other}").into()),
    };
    let big_t = table.len();
    let (history, uniform_share) = LossSecondMoment::IMPROVED_DDPM;
    // The whole sum (t = 1..=T, as --loss vlb trains on), and the denoising terms alone
    // (t = 2..=T, what `sampled_terms` estimates beside an exact L_0 and L_T).
    let p = importance(&table, uniform_share);
    let whole = moments(&table, &p);
    let denoising = moments(&table[1..], &importance(&table[1..], uniform_share));
    let largest = p.iter().copied().fold(0.0, f64::max);
    // A run trained with --t-sampler loss-second-moment keeps its sampler's history in
    // its checkpoints: its own p, fitted on training images (out of sample here).
    let own = run_sampler(&loaded.tensors, big_t).map(|p| moments(&table, &p).sd_weighted);
    println!(
        "{}",
        serde_json::json!({
            "checkpoint": args.checkpoint, "model": loaded.meta.model, "step": loaded.meta.step,
            "examples": n,
            "timesteps": big_t, "history_per_t": history, "uniform_share": uniform_share,
            "sum_nats": whole.mean, "sum_nats_weighted": whole.mean_weighted,
            "sd_uniform_nats": whole.sd_uniform, "sd_weighted_nats": whole.sd_weighted,
            "sd_ratio": whole.sd_weighted / whole.sd_uniform,
            "denoising_nats": denoising.mean,
            "denoising_sd_uniform_nats": denoising.sd_uniform,
            "denoising_sd_weighted_nats": denoising.sd_weighted,
            "denoising_sd_ratio": denoising.sd_weighted / denoising.sd_uniform,
            "largest_p": largest, "argmax_p": p.iter().position(|&x| x == largest).map(|i| i + 1),
            "sd_run_sampler_nats": own,
        })
    );
    Ok(())
}

/// The mean over images of each estimator's mean and standard deviation.
struct Moments {
    mean: f64,
    mean_weighted: f64,
    sd_uniform: f64,
    sd_weighted: f64,
}

/// The converged sampler's p over the rows of `table` (one row per t): a
/// [`LossSecondMoment`] holding each row as its history.
fn importance(table: &[Vec<f64>], uniform_share: f64) -> Vec<f64> {
    let width = table.first().map_or(1, Vec::len).max(1);
    LossSecondMoment::new(table.len(), width, uniform_share)
        .and_then(|s| s.with_history(table.to_vec()))
        .map(|s| s.probabilities())
        .unwrap_or_else(|_| vec![1.0 / table.len() as f64; table.len()])
}

/// The sampler a checkpoint keeps (`step.timesteps.losses` and `counts`): its p over
/// `steps` timesteps.
fn run_sampler(
    tensors: &std::collections::BTreeMap<String, Tensor>,
    steps: usize,
) -> Option<Vec<f64>> {
    let losses = tensors.get("step.timesteps.losses")?;
    let counts =
        Vec::<f64>::try_from(tensors.get("step.timesteps.counts")?.to_kind(Kind::Double)).ok()?;
    let width = losses.size().get(1).copied()? as usize;
    let flat = Vec::<f64>::try_from(losses.to_kind(Kind::Double).flatten(0, -1)).ok()?;
    if counts.len() != steps {
        return None;
    }
    let history = (0..steps)
        .map(|t| flat[t * width..t * width + (counts[t] as usize).min(width)].to_vec())
        .collect();
    let (_, uniform_share) = LossSecondMoment::IMPROVED_DDPM;
    LossSecondMoment::new(steps, width, uniform_share)
        .and_then(|s| s.with_history(history))
        .map(|s| s.probabilities())
        .ok()
}

/// The one-sample estimates of the sum of `table`'s rows for each image (column): at a
/// uniform row, and at a row drawn from `p`.
fn moments(table: &[Vec<f64>], p: &[f64]) -> Moments {
    let steps = table.len();
    let uniform = vec![1.0 / steps as f64; steps];
    let n = table[0].len();
    let scale = steps as f64;
    let mut m = Moments {
        mean: 0.0,
        mean_weighted: 0.0,
        sd_uniform: 0.0,
        sd_weighted: 0.0,
    };
    for i in 0..n {
        let row: Vec<f64> = table.iter().map(|column| column[i]).collect();
        // weighted_estimate_moments estimates the mean row; the sum is `steps` times it.
        let (mu, var_u) = weighted_estimate_moments(&row, &uniform).unwrap_or((f64::NAN, f64::NAN));
        let (mw, var_w) = weighted_estimate_moments(&row, p).unwrap_or((f64::NAN, f64::NAN));
        m.mean += scale * mu / n as f64;
        m.mean_weighted += scale * mw / n as f64;
        m.sd_uniform += scale * var_u.max(0.0).sqrt() / n as f64;
        m.sd_weighted += scale * var_w.max(0.0).sqrt() / n as f64;
    }
    m
}
