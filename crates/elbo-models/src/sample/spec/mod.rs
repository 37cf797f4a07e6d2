//! The names of samplers, parsed and printed in one place, and the timesteps a
//! shortened sampler keeps.

use std::fmt;
use std::str::FromStr;

use elbo_math::schedule::evenly_spaced_timesteps;
use serde::{Deserialize, Serialize};

use super::{
    NoiseProcess, Sampler,
    ancestral::{Ancestral, RespacedAncestral},
    ddim::Ddim,
    dpm::DpmSolverPp,
    edm::{Edm, EdmChurn, EdmSolver},
    unipc::UniPc,
};
use crate::error::{Error, Result};

/// How the kept timesteps of a shortened sampler are spread over `1..=T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spacing {
    /// `round(i T / S)`.
    Uniform,
    /// `round(T (i / S)^2)`, denser near the data (DDIM's choice for CIFAR-10), pushed
    /// up where rounding would repeat a step.
    Quadratic,
    /// Evenly spaced in log-SNR between t = T and t = 1 (DPM-Solver's `logSNR` steps),
    /// each the grid's nearest step.
    LogSnr,
    /// Karras et al.'s (2022) noise levels with rho = 7: `sigma_i^(1/7)` evenly spaced
    /// between those of t = T and t = 1, for `sigma = sqrt((1 - alpha_bar) /
    /// alpha_bar)`, each the grid's nearest step.
    Karras,
}

impl Spacing {
    /// The suffix of a sampler name (empty for uniform).
    fn suffix(self) -> &'static str {
        match self {
            Spacing::Uniform => "",
            Spacing::Quadratic => "-quadratic",
            Spacing::LogSnr => "-logsnr",
            Spacing::Karras => "-karras",
        }
    }

    fn from_suffix(part: &str) -> Option<Spacing> {
        if part == "uniform" {
            return Some(Spacing::Uniform);
        }
        [Spacing::Quadratic, Spacing::LogSnr, Spacing::Karras]
            .into_iter()
            .find(|s| s.suffix().strip_prefix('-') == Some(part))
    }

    /// The suffix of an EDM sampler's name, whose default is Karras's levels.
    fn edm_suffix(self) -> &'static str {
        match self {
            Spacing::Karras => "",
            Spacing::Uniform => "-uniform",
            other => other.suffix(),
        }
    }
}

/// A sampler as a user names it: the one grammar of sampler names (`ancestral`,
/// `ddim-50`, `ddim-100-eta=1`, `ddim-20-quadratic`, `dpm++2m-15`, `dpm++3m-10-logsnr`,
/// `unipc-10`), parsed and printed here only.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum SamplerSpec {
    /// `x_{t-1} ~ N(mu_theta(x_t, t), sigma_t^2)` at every one of the T steps.
    Ancestral,
    /// Ancestral steps over `steps` kept timesteps (`ancestral-S`), each to the previous
    /// kept one with the model's variance of that step (improved DDPM's respacing).
    RespacedAncestral(RespacedAncestral),
    /// DDIM over `steps` timesteps: `eta = 0` is deterministic, `eta = 1` has the
    /// posterior's variance.
    Ddim(Ddim),
    /// DPM-Solver++ of order 1 (`dpm++1`, DDIM), 2 (`dpm++2m`) or 3 (`dpm++3m`),
    /// multistep, over `steps` timesteps.
    DpmSolverPp(DpmSolverPp),
    /// UniPC (bh2, order 2, with its corrector) over `steps` timesteps.
    UniPc(UniPc),
    /// EDM's Euler (`euler-N`) or Heun (`heun-N`) steps over N noise levels, with the
    /// optional churn of its stochastic sampler.
    Edm(Edm),
}

impl Default for SamplerSpec {
    /// DDIM with 50 uniform steps and `eta = 0`: the previews and sample grids (20 times
    /// faster than ancestral sampling at T = 1000).
    fn default() -> Self {
        SamplerSpec::Ddim(Ddim {
            steps: 50,
            eta: 0.0,
            spacing: Spacing::Uniform,
        })
    }
}

impl FromStr for SamplerSpec {
    type Err = Error;

    /// `ancestral`; `ddim-S` with optional `-eta=E`; `dpm++1-S`, `dpm++2m-S`,
    /// `dpm++3m-S`; `unipc-S`; each with an optional spacing `-quadratic`, `-logsnr`,
    /// `-karras` (`-uniform`, the default); `euler-N` and `heun-N` (EDM; Karras's levels
    /// by default) with optional `-churn=S`, `-tmin=`, `-tmax=`, `-snoise=`: `ddim-50`,
    /// `ddim-100-eta=1`, `ddim-50-quadratic`, `dpm++2m-15-karras`, `heun-18`,
    /// `heun-18-churn=40-tmin=0.05-tmax=50-snoise=1.003`.
    fn from_str(text: &str) -> Result<SamplerSpec> {
        let bad = || Error::Config {
            detail: format!(
                "unknown sampler {text:?}: expected ancestral[-S], ddim-S[-eta=E], dpm++1-S, \
                 dpm++2m-S, dpm++3m-S, unipc-S or EDM's euler-N and heun-N \
                 [-churn=S[-tmin=T][-tmax=T][-snoise=S]], each with an optional spacing \
                 -uniform, -quadratic, -logsnr or -karras (for example ddim-50, dpm++2m-15, \
                 heun-18)"
            ),
        };
        if text == "ancestral" {
            return Ok(SamplerSpec::Ancestral);
        }
        enum Family {
            Ancestral,
            Ddim,
            UniPc,
            Dpm(usize),
            Edm(EdmSolver),
        }
        // The name and the step count, then the options: `-KEY=NUMBER` (a number may
        // carry its own minus signs, as in 1e-3) and at most one spacing.
        let (name, rest) = text.split_once('-').ok_or_else(bad)?;
        let family = match name {
            "ancestral" => Family::Ancestral,
            "ddim" => Family::Ddim,
            "unipc" => Family::UniPc,
            "dpm++1" => Family::Dpm(1),
            "dpm++2m" => Family::Dpm(2),
            "dpm++3m" => Family::Dpm(3),
            "euler" => Family::Edm(EdmSolver::Euler),
            "heun" => Family::Edm(EdmSolver::Heun),
            _ => return Err(bad()),
        };
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let steps = rest[..digits].parse::<usize>().map_err(|_| bad())?;
        let mut options = &rest[digits..];
        let mut spacing = None;
        let mut numbers: Vec<(&str, f64, &str)> = Vec::new();
        while !options.is_empty() {
            let option = options.strip_prefix('-').ok_or_else(bad)?;
            if let Some((key, value)) = option.split_once('=')
                && !key.contains('-')
            {
                // The number runs to the next option (a letter after a dash) or the end.
                let end = value
                    .char_indices()
                    .find(|&(i, c)| c == '-' && value[i + 1..].starts_with(char::is_alphabetic))
                    .map_or(value.len(), |(i, _)| i);
                let number = &value[..end];
                let Ok(v) = number.parse::<f64>() else {
                    let range = if key == "eta" { " in [0, 1]" } else { "" };
                    return Err(Error::Config {
                        detail: format!(
                            "sampler {text:?}: {key} must be a number{range}, found {number:?}"
                        ),
                    });
                };
                let allowed = match family {
                    Family::Ddim => ["eta"].as_slice(),
                    Family::Edm(_) => ["churn", "tmin", "tmax", "snoise"].as_slice(),
                    _ => [].as_slice(),
                };
                if !allowed.contains(&key) {
                    if ["churn", "tmin", "tmax", "snoise"].contains(&key) {
                        return Err(Error::Config {
                            detail: format!(
                                "sampler {text:?}: -{key}= is the churn of EDM's stochastic \
                                 sampler (euler-N or heun-N with -churn=S); this sampler has \
                                 none (DDIM's own noise is -eta=E)"
                            ),
                        });
                    }
                    return Err(bad());
                }
                if numbers.iter().any(|(k, _, _)| *k == key) {
                    return Err(bad());
                }
                // -0 is 0.
                numbers.push((key, v + 0.0, number));
                options = &value[end..];
                continue;
            }
            let end = option.find('-').unwrap_or(option.len());
            let s = Spacing::from_suffix(&option[..end]).ok_or_else(bad)?;
            if spacing.replace(s).is_some() {
                return Err(Error::Config {
                    detail: format!("sampler {text:?} names two spacings: choose one"),
                });
            }
            options = &option[end..];
        }
        let entry = |key: &str| numbers.iter().find(|(k, _, _)| *k == key);
        let number = |key: &str| entry(key).map(|(_, v, _)| *v);
        Ok(match family {
            Family::Ancestral => SamplerSpec::RespacedAncestral(RespacedAncestral {
                steps,
                spacing: spacing.unwrap_or(Spacing::Uniform),
            }),
            Family::Ddim => {
                let eta = number("eta").unwrap_or(0.0);
                if !(0.0..=1.0).contains(&eta) {
                    let typed = entry("eta").map_or("", |(_, _, typed)| typed);
                    return Err(Error::Config {
                        detail: format!(
                            "sampler {text:?}: DDIM's eta must be in [0, 1] (0: deterministic, \
                             1: the posterior's variance), found {typed}"
                        ),
                    });
                }
                SamplerSpec::Ddim(Ddim {
                    steps,
                    eta,
                    spacing: spacing.unwrap_or(Spacing::Uniform),
                })
            }
            Family::UniPc => SamplerSpec::UniPc(UniPc {
                steps,
                spacing: spacing.unwrap_or(Spacing::Uniform),
            }),
            Family::Dpm(order) => SamplerSpec::DpmSolverPp(DpmSolverPp {
                steps,
                order,
                spacing: spacing.unwrap_or(Spacing::Uniform),
            }),
            Family::Edm(solver) => {
                let churn = match number("churn") {
                    None => {
                        if let Some((key, _, _)) = numbers.first() {
                            return Err(Error::Config {
                                detail: format!(
                                    "sampler {text:?}: -{key}= shapes the churn, and there is \
                                     none: give -churn=S (S > 0) too"
                                ),
                            });
                        }
                        None
                    }
                    Some(churn) => {
                        let spec = EdmChurn {
                            churn,
                            tmin: number("tmin").unwrap_or(0.0),
                            tmax: number("tmax").filter(|t| t.is_finite()),
                            noise: number("snoise").unwrap_or(1.0),
                        };
                        spec.math().validate().map_err(|e| Error::Config {
                            detail: format!("sampler {text:?}: {e}"),
                        })?;
                        Some(spec)
                    }
                };
                SamplerSpec::Edm(Edm {
                    steps,
                    solver,
                    spacing: spacing.unwrap_or(Spacing::Karras),
                    churn,
                })
            }
        })
    }
}

impl fmt::Display for SamplerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SamplerSpec::Ancestral => f.write_str("ancestral"),
            SamplerSpec::RespacedAncestral(RespacedAncestral { steps, spacing }) => {
                write!(f, "ancestral-{steps}{}", spacing.suffix())
            }
            SamplerSpec::Ddim(Ddim {
                steps,
                eta,
                spacing,
            }) => {
                write!(f, "ddim-{steps}")?;
                if *eta != 0.0 {
                    write!(f, "-eta={eta}")?;
                }
                f.write_str(spacing.suffix())
            }
            SamplerSpec::DpmSolverPp(DpmSolverPp {
                steps,
                order,
                spacing,
            }) => {
                let kind = if *order == 1 { "1" } else { "m" };
                let order = if *order == 1 {
                    String::new()
                } else {
                    order.to_string()
                };
                write!(f, "dpm++{order}{kind}-{steps}{}", spacing.suffix())
            }
            SamplerSpec::UniPc(UniPc { steps, spacing }) => {
                write!(f, "unipc-{steps}{}", spacing.suffix())
            }
            SamplerSpec::Edm(edm) => {
                write!(f, "{}-{}{}", edm_name(edm), edm.steps, edm_options(edm))
            }
        }
    }
}

/// `euler` or `heun`.
fn edm_name(edm: &Edm) -> &'static str {
    match edm.solver {
        EdmSolver::Euler => "euler",
        EdmSolver::Heun => "heun",
    }
}

/// An EDM sampler's options as its name gives them: the churn's, then the spacing.
fn edm_options(edm: &Edm) -> String {
    let mut out = String::new();
    if let Some(c) = edm.churn {
        out.push_str(&format!("-churn={}", c.churn));
        if c.tmin != 0.0 {
            out.push_str(&format!("-tmin={}", c.tmin));
        }
        if let Some(tmax) = c.tmax {
            out.push_str(&format!("-tmax={tmax}"));
        }
        if c.noise != 1.0 {
            out.push_str(&format!("-snoise={}", c.noise));
        }
    }
    out + edm.spacing.edm_suffix()
}

/// `count` timesteps of `1..=T` (T the process's steps) spaced as asked, strictly
/// increasing, ending at T.
pub fn kept_timesteps(
    process: &dyn NoiseProcess,
    count: usize,
    spacing: Spacing,
) -> Result<Vec<usize>> {
    let big_t = process.timesteps();
    if count == 0 || count > big_t {
        return Err(Error::Config {
            detail: format!("a sampler needs between 1 and T = {big_t} steps, found {count}"),
        });
    }
    // For the spacings in noise level: each target (a log-SNR, from t = 1 to t = T) as
    // the grid step whose log-SNR is nearest.
    let nearest = |targets: Vec<f64>| -> Result<Vec<usize>> {
        let grid: Vec<f64> = (1..=big_t)
            .map(|t| process.log_snr(t))
            .collect::<Result<_>>()?;
        Ok(targets
            .into_iter()
            .map(|target| {
                let closest = grid
                    .iter()
                    .enumerate()
                    .min_by(|a, b| (a.1 - target).abs().total_cmp(&(b.1 - target).abs()));
                closest.map_or(big_t, |(i, _)| i + 1)
            })
            .collect())
    };
    let fraction = |i: usize| {
        if count == 1 {
            1.0
        } else {
            (i - 1) as f64 / (count - 1) as f64
        }
    };
    let ideal: Vec<usize> = match spacing {
        Spacing::Uniform => {
            return evenly_spaced_timesteps(big_t, count).map_err(|e| Error::Config {
                detail: e.to_string(),
            });
        }
        Spacing::Quadratic => (1..=count)
            .map(|i| {
                let fraction = i as f64 / count as f64;
                (big_t as f64 * fraction * fraction).round() as usize
            })
            .collect(),
        Spacing::LogSnr => {
            let (low, high) = (process.log_snr(big_t)?, process.log_snr(1)?);
            nearest(
                (1..=count)
                    .map(|i| high + (low - high) * fraction(i))
                    .collect(),
            )?
        }
        Spacing::Karras => {
            // sigma = exp(-log_snr / 2); sigma^(1/rho) evenly spaced from t = 1 to T.
            const RHO: f64 = 7.0;
            let root = |t: usize| -> Result<f64> { Ok((-process.log_snr(t)? / 2.0 / RHO).exp()) };
            let (small, large) = (root(1)?, root(big_t)?);
            nearest(
                (1..=count)
                    .map(|i| {
                        let sigma = (small + (large - small) * fraction(i)).powf(RHO);
                        -2.0 * sigma.ln()
                    })
                    .collect(),
            )?
        }
    };
    // Strictly rising, each at least one above the last, leaving room for the steps
    // still to come, and ending at T.
    let mut out = Vec::with_capacity(count);
    let mut previous = 0usize;
    for (i, t) in ideal.into_iter().enumerate() {
        let t = t.max(previous + 1).min(big_t - (count - 1 - i));
        out.push(t);
        previous = t;
    }
    Ok(out)
}

impl SamplerSpec {
    /// Its name without the step count: `ancestral`, `ddim`, `dpm++2m`, `unipc-logsnr`
    /// (the curves of a quality-versus-cost sweep).
    pub fn family(&self) -> String {
        match *self {
            SamplerSpec::Ancestral => "ancestral".to_string(),
            SamplerSpec::RespacedAncestral(RespacedAncestral { spacing, .. }) => {
                format!("ancestral{}", spacing.suffix())
            }
            SamplerSpec::Ddim(Ddim { eta, spacing, .. }) => {
                let eta = if eta == 0.0 {
                    String::new()
                } else {
                    format!("-eta={eta}")
                };
                format!("ddim{eta}{}", spacing.suffix())
            }
            SamplerSpec::DpmSolverPp(DpmSolverPp { order, spacing, .. }) => {
                let kind = if order == 1 {
                    "1".to_string()
                } else {
                    format!("{order}m")
                };
                format!("dpm++{kind}{}", spacing.suffix())
            }
            SamplerSpec::UniPc(UniPc { spacing, .. }) => format!("unipc{}", spacing.suffix()),
            SamplerSpec::Edm(ref edm) => format!("{}{}", edm_name(edm), edm_options(edm)),
        }
    }

    /// The samplers of a quality-versus-cost sweep: DDIM at 5, 10, 15, 20 and 50 network
    /// calls, DPM-Solver++ 2M and UniPC at 5, 10, 15 and 20 (uniform spacing, as each
    /// sampler's default; ancestral sampling, at T calls, is left to `--sampler`).
    pub fn sweep() -> Vec<SamplerSpec> {
        let uniform = Spacing::Uniform;
        let mut out: Vec<SamplerSpec> = [5, 10, 15, 20, 50]
            .map(|steps| {
                SamplerSpec::Ddim(Ddim {
                    steps,
                    eta: 0.0,
                    spacing: uniform,
                })
            })
            .to_vec();
        for steps in [5, 10, 15, 20] {
            out.push(SamplerSpec::DpmSolverPp(DpmSolverPp {
                steps,
                order: 2,
                spacing: uniform,
            }));
        }
        for steps in [5, 10, 15, 20] {
            out.push(SamplerSpec::UniPc(UniPc {
                steps,
                spacing: uniform,
            }));
        }
        out
    }

    /// The sampler it names.
    pub fn build(&self) -> Box<dyn Sampler> {
        match *self {
            SamplerSpec::Ancestral => Box::new(Ancestral),
            SamplerSpec::RespacedAncestral(sampler) => Box::new(sampler),
            SamplerSpec::Ddim(sampler) => Box::new(sampler),
            SamplerSpec::DpmSolverPp(sampler) => Box::new(sampler),
            SamplerSpec::UniPc(sampler) => Box::new(sampler),
            SamplerSpec::Edm(sampler) => Box::new(sampler),
        }
    }

    /// Checks that it fits `process` (no more steps than T; an order of 1 to 3).
    pub fn validate(&self, process: &dyn NoiseProcess) -> Result<()> {
        match *self {
            SamplerSpec::Ancestral => {}
            SamplerSpec::Ddim(Ddim { steps, spacing, .. })
            | SamplerSpec::RespacedAncestral(RespacedAncestral { steps, spacing })
            | SamplerSpec::UniPc(UniPc { steps, spacing })
            | SamplerSpec::Edm(Edm { steps, spacing, .. }) => {
                kept_timesteps(process, steps, spacing)?;
            }
            SamplerSpec::DpmSolverPp(DpmSolverPp {
                steps,
                order,
                spacing,
            }) => {
                if !(1..=3).contains(&order) {
                    return Err(Error::Config {
                        detail: format!("DPM-Solver++ has orders 1 to 3, found {order}"),
                    });
                }
                kept_timesteps(process, steps, spacing)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
