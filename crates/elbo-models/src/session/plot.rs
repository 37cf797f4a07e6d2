//! `elbo plot`: a run's training curves, and a VDM run's learned noise schedule.

use std::path::{Path, PathBuf};

use tch::Device;
use tch::nn::VarStore;

use super::restore::restore;
use crate::error::{Error, Result};
use crate::models::ModelConfig;
use crate::train::{self, RunDir, checkpoint};

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
    let text = std::fs::read_to_string(&metrics).map_err(|e| Error::file("read", &metrics, e))?;
    train::metrics::check_lines(&metrics, &text)?;
    let out = out.map_or_else(|| folder.curves(), Path::to_path_buf);
    let title = run
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run.display().to_string());
    if !train::metrics::write_curves(&metrics, &out, &title)? {
        return Err(Error::Config {
            detail: format!(
                "{} holds no metrics lines with a step and a value to plot",
                metrics.display()
            ),
        });
    }
    Ok(out)
}

/// A VDM run's learned noise schedule: `gamma(t)` of its newest checkpoint (the EMA
/// weights, which evaluation and sampling use) beside the schedule it started from (the
/// model built again from the run's seed, as training built it), as a PNG at `out`
/// (default: the run's `gamma.png`). `None` for a run of another family, or without a
/// checkpoint yet; an error for a `config.json` that contradicts the checkpoints.
pub fn plot_schedule(run: &Path, out: Option<&Path>) -> Result<Option<PathBuf>> {
    // The newest checkpoint names the family (only its JSON is read for that).
    let folder = RunDir::new(run);
    let Some(newest) = checkpoint::list(&folder.checkpoints())?.pop() else {
        return Ok(None);
    };
    let meta = checkpoint::read_meta(&newest)?;
    checkpoint::check_run_config(&folder.config(), &meta)?;
    if meta.model != crate::models::vdm::FAMILY {
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
    let out = out.map_or_else(|| folder.schedule_chart(), Path::to_path_buf);
    elbo_plot::write(&out, &figure).map_err(|e| Error::plot(out.clone(), e))?;
    Ok(Some(out))
}

/// What a run's training objective is as a weighted ELBO (Kingma & Gao 2023, see
/// `elbo_math::weighting`): its name, its weighting `w(λ)` at the noise levels it
/// trains on (`(λ, w)`, λ the log-SNR), and whether `w` is monotone.
#[derive(Clone, Debug, PartialEq)]
pub struct Weighting {
    /// The objective, as the chart's legend names it.
    pub objective: String,
    /// `(λ, w(λ))` over the levels training draws.
    pub points: Vec<(f64, f64)>,
    /// Whether `w` does not increase with λ (the objective is then the ELBO of
    /// noise-augmented data).
    pub monotone: bool,
}

/// The weighting of the objective a diffusion model's configuration trains with: a
/// DDPM's `L_simple` (its target and schedule) or T-step bound (its reverse variance);
/// the VDM's bound (`w = 1` on its noise levels). An error for another family.
pub fn weighting_of(config: &ModelConfig) -> Result<Weighting> {
    use crate::models::ddpm::{LossKind, Objective, VarianceKind};
    use elbo_math::parameterisation::Prediction;
    use elbo_math::weighting;
    let math = |e: elbo_math::MathError| Error::MathIn {
        what: "the objective's weighting".to_string(),
        source: e,
    };
    let (objective, points) = match config {
        ModelConfig::Ddpm(c) => {
            let schedule = c.schedule.build(c.timesteps)?;
            let target = match c.objective {
                Objective::Eps => Prediction::Eps,
                Objective::X0 => Prediction::X0,
                Objective::V => Prediction::V,
            };
            match c.loss {
                LossKind::Simple => (
                    format!("L_simple, {} target, {} schedule", c.objective, c.schedule),
                    weighting::simple(&schedule, target).map_err(math)?,
                ),
                // The hybrid loss's L_vlb term does not reach the mean.
                LossKind::Hybrid => (
                    format!(
                        "hybrid (the mean by L_simple, {} target, {} schedule)",
                        c.objective, c.schedule
                    ),
                    weighting::simple(&schedule, target).map_err(math)?,
                ),
                LossKind::Vlb => (
                    match c.variance {
                        VarianceKind::LearnedRange => format!(
                            "L_vlb, learned variance (drawn at beta_tilde, its optimum's \
                             limit), {} schedule",
                            c.schedule
                        ),
                        v => format!("L_vlb, {v} variance, {} schedule", c.schedule),
                    },
                    weighting::vlb(&schedule, |t| match c.variance {
                        VarianceKind::FixedSmall | VarianceKind::LearnedRange => {
                            schedule.posterior_variance(t)
                        }
                        VarianceKind::FixedLarge => schedule.beta(t),
                    })
                    .map_err(math)?,
                ),
            }
        }
        ModelConfig::Vdm(c) => {
            const POINTS: usize = 200;
            let (lo, hi) = (-c.gamma_max, -c.gamma_min);
            (
                "the VDM's bound (the ELBO)".to_string(),
                (0..=POINTS)
                    .map(|i| {
                        let lambda = lo + (hi - lo) * i as f64 / POINTS as f64;
                        (lambda, weighting::elbo(lambda))
                    })
                    .collect(),
            )
        }
        ModelConfig::Edm(c) => {
            const POINTS: usize = 400;
            let (lo, hi) = (-2.0 * c.sigma_max.ln(), -2.0 * c.sigma_min.ln());
            let sigma = c.training_sigma();
            (
                format!(
                    "EDM's loss, ln sigma ~ N({}, {}^2), sigma_data {}",
                    c.p_mean, c.p_std, c.sigma_data
                ),
                (0..=POINTS)
                    .map(|i| {
                        let lambda = lo + (hi - lo) * i as f64 / POINTS as f64;
                        (lambda, weighting::edm(lambda, &sigma, c.sigma_data))
                    })
                    .collect(),
            )
        }
        other => {
            return Err(Error::Config {
                detail: format!(
                    "a weighting over noise levels belongs to a diffusion model (ddpm, vdm, \
                     edm); this run is a {}",
                    other.family()
                ),
            });
        }
    };
    let monotone = weighting::is_monotone(&points);
    Ok(Weighting {
        objective,
        points,
        monotone,
    })
}

/// `elbo plot RUN --weighting`: the run's objective as a weighting of the ELBO over
/// log-SNR (its newest checkpoint's configuration) beside the ELBO's own (`w = 1`), as
/// a PNG at `out` (default: the run's `weighting.png`); returns the file and the
/// weighting.
pub fn plot_weighting(run: &Path, out: Option<&Path>) -> Result<(PathBuf, Weighting)> {
    let folder = RunDir::new(run);
    let Some(newest) = checkpoint::list(&folder.checkpoints())?.pop() else {
        return Err(Error::Config {
            detail: format!(
                "{} has no checkpoint yet: the weighting is read from a checkpoint's model \
                 configuration",
                run.display()
            ),
        });
    };
    let meta = checkpoint::read_meta(&newest)?;
    checkpoint::check_run_config(&folder.config(), &meta)?;
    let config = ModelConfig::from_record(&meta.model, &meta.model_config)?;
    let weighting = weighting_of(&config)?;
    let (lo, hi) = weighting
        .points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.0), hi.max(p.0))
        });
    let figure = elbo_plot::Figure {
        title: format!(
            "{}: w(lambda){}",
            weighting.objective,
            if weighting.monotone {
                ", monotone (an ELBO of noise-augmented data)"
            } else {
                ", not monotone"
            }
        ),
        panels: vec![elbo_plot::Panel {
            title: "the objective as 1/2 E[w(lambda)/p(lambda) |eps_hat - eps|^2]".to_string(),
            x_label: "lambda = log SNR".to_string(),
            series: vec![
                elbo_plot::Series {
                    name: "this run".to_string(),
                    points: weighting.points.clone(),
                    style: elbo_plot::Style::Line,
                },
                elbo_plot::Series {
                    name: "ELBO (w = 1)".to_string(),
                    points: vec![(lo, 1.0), (hi, 1.0)],
                    style: elbo_plot::Style::Line,
                },
            ],
        }],
    };
    let out = out.map_or_else(|| folder.weighting_chart(), Path::to_path_buf);
    elbo_plot::write(&out, &figure).map_err(|e| Error::plot(out.clone(), e))?;
    Ok((out, weighting))
}
