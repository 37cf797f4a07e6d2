//! Sampling the reverse process: ancestral sampling (Ho et al., algorithm 2) and DDIM
//! (Song et al.) with `eta` and a chosen number of steps, on the full schedule or a
//! respaced one ([`NoiseSchedule::respace`] keeps `alpha_bar` at the kept steps).

use std::fmt;
use std::str::FromStr;

use elbo_math::NoiseSchedule;
use elbo_math::schedule::evenly_spaced_timesteps;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::models::ddpm::diffusion::Diffusion;

/// How the kept timesteps of a shortened sampler are spread over `1..=T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spacing {
    /// `round(i T / S)`.
    Uniform,
    /// `round(T (i / S)^2)`, denser near the data (DDIM's choice for CIFAR-10), pushed
    /// up where rounding would repeat a step.
    Quadratic,
}

/// The reverse-process sampler.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Sampler {
    /// `x_{t-1} ~ N(mu_theta(x_t, t), sigma_t^2)` at every one of the T steps.
    Ancestral,
    /// DDIM over `steps` timesteps: `eta = 0` is deterministic, `eta = 1` has the
    /// posterior's variance.
    Ddim {
        /// Network evaluations (timesteps kept).
        steps: usize,
        /// The noise scale.
        eta: f64,
        /// Which timesteps.
        spacing: Spacing,
    },
}

impl Default for Sampler {
    /// DDIM with 50 uniform steps and `eta = 0`: the previews and sample grids (20 times
    /// faster than ancestral sampling at T = 1000).
    fn default() -> Self {
        Sampler::Ddim {
            steps: 50,
            eta: 0.0,
            spacing: Spacing::Uniform,
        }
    }
}

impl FromStr for Sampler {
    type Err = Error;

    /// `ancestral`, or `ddim-S` with optional `-eta=E` and `-quadratic`: `ddim-50`,
    /// `ddim-100-eta=1`, `ddim-50-quadratic`.
    fn from_str(text: &str) -> Result<Sampler> {
        let bad = || Error::Config {
            detail: format!(
                "unknown sampler {text:?}: expected ancestral or ddim-S[-eta=E][-quadratic] \
                 (for example ddim-50)"
            ),
        };
        if text == "ancestral" {
            return Ok(Sampler::Ancestral);
        }
        let mut parts = text.split('-');
        if parts.next() != Some("ddim") {
            return Err(bad());
        }
        let steps = parts
            .next()
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(bad)?;
        let (mut eta, mut spacing) = (0.0, Spacing::Uniform);
        for part in parts {
            if let Some(value) = part.strip_prefix("eta=") {
                eta = value
                    .parse::<f64>()
                    .ok()
                    .filter(|e| e.is_finite() && *e >= 0.0)
                    .ok_or_else(bad)?;
            } else if part == "quadratic" {
                spacing = Spacing::Quadratic;
            } else {
                return Err(bad());
            }
        }
        Ok(Sampler::Ddim {
            steps,
            eta,
            spacing,
        })
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sampler::Ancestral => f.write_str("ancestral"),
            Sampler::Ddim {
                steps,
                eta,
                spacing,
            } => {
                write!(f, "ddim-{steps}")?;
                if *eta != 0.0 {
                    write!(f, "-eta={eta}")?;
                }
                if *spacing == Spacing::Quadratic {
                    f.write_str("-quadratic")?;
                }
                Ok(())
            }
        }
    }
}

/// `count` timesteps of `1..=big_t` spaced as asked, strictly increasing, ending at T.
pub fn kept_timesteps(big_t: usize, count: usize, spacing: Spacing) -> Result<Vec<usize>> {
    if count == 0 || count > big_t {
        return Err(Error::Config {
            detail: format!("a sampler needs between 1 and T = {big_t} steps, found {count}"),
        });
    }
    match spacing {
        Spacing::Uniform => evenly_spaced_timesteps(big_t, count).map_err(|e| Error::Config {
            detail: e.to_string(),
        }),
        Spacing::Quadratic => {
            let mut out = Vec::with_capacity(count);
            let mut previous = 0usize;
            for i in 1..=count {
                let fraction = i as f64 / count as f64;
                let ideal = (big_t as f64 * fraction * fraction).round() as usize;
                // Leave room for the steps still to come (each at least one higher).
                let t = ideal.max(previous + 1).min(big_t - (count - i));
                out.push(t);
                previous = t;
            }
            Ok(out)
        }
    }
}

/// The network as a sampler sees it: output at `(x_t, t)`.
pub type Network<'a> = dyn Fn(&Tensor, &Tensor) -> Tensor + 'a;

/// Runs the reverse process from `x_T ~ N(0, I)` of shape `shape` to `x_0`, with
/// `network` evaluated once per kept step. Every step draws a standard normal `z` (also
/// when DDIM's `eta = 0` leaves it unused, so that the random stream does not depend on
/// `eta`). With `clip_x0`, each step's prediction of `x_0` is clipped to [-1, 1].
/// `record` intermediate states `x_t` are returned beside the result, evenly spread
/// over the steps (the last is the result).
pub fn sample(
    diffusion: &Diffusion,
    network: &Network<'_>,
    shape: &[i64],
    sampler: Sampler,
    clip_x0: bool,
    record: usize,
) -> Result<(Tensor, Vec<Tensor>)> {
    let big_t = diffusion.timesteps();
    let (kept, eta) = match sampler {
        Sampler::Ancestral => ((1..=big_t).collect::<Vec<_>>(), None),
        Sampler::Ddim {
            steps,
            eta,
            spacing,
        } => (kept_timesteps(big_t, steps, spacing)?, Some(eta)),
    };
    let respaced: NoiseSchedule = if kept.len() == big_t {
        diffusion.schedule().clone()
    } else {
        diffusion
            .schedule()
            .respace(&kept)
            .map_err(|e| Error::Config {
                detail: format!("respacing the schedule: {e}"),
            })?
    };
    let math = |e: elbo_math::MathError| Error::Config {
        detail: format!("sampler coefficients: {e}"),
    };
    let device = diffusion.device();
    let mut x = Tensor::randn(shape, (Kind::Float, device));
    let s = kept.len();
    let mut trajectory = Vec::new();
    let every = if record == 0 { 0 } else { s.div_ceil(record) };
    for i in (1..=s).rev() {
        let t_net = kept[i - 1];
        let t = Tensor::full([shape[0]], t_net as i64, (Kind::Int64, device));
        let output = network(&x, &t);
        let z = x.randn_like();
        let (x0_hat, eps_hat) = diffusion.predictions(&output, &x, &t, clip_x0);
        let ab_prev = respaced.alpha_bar(i - 1).map_err(math)?;
        x = match eta {
            None => {
                // Ancestral: the posterior mean at the predicted x_0, on this schedule
                // (the original one: kept = 1..=T), plus sigma_t z except at the end.
                let mean = diffusion.reverse_mean(&x0_hat, &x, &t);
                if i > 1 {
                    mean + z * diffusion.model_variance(t_net).sqrt()
                } else {
                    mean
                }
            }
            Some(eta) => {
                let tilde = if i > 1 {
                    respaced.posterior_variance(i).map_err(math)?
                } else {
                    0.0
                };
                let variance = eta * eta * tilde;
                let direction = (1.0 - ab_prev - variance).max(0.0).sqrt();
                x0_hat * ab_prev.sqrt() + eps_hat * direction + z * variance.sqrt()
            }
        };
        if every > 0 && ((s - i + 1) % every == 0 || i == 1) {
            trajectory.push(x.shallow_clone());
        }
    }
    Ok((x, trajectory))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_names_parse_and_print() {
        let _generator = crate::testing::generator_lock();
        for text in [
            "ancestral",
            "ddim-50",
            "ddim-100-eta=1",
            "ddim-20-quadratic",
        ] {
            let s: Sampler = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
        }
        assert_eq!(
            "ddim-10-eta=0.5".parse::<Sampler>().unwrap(),
            Sampler::Ddim {
                steps: 10,
                eta: 0.5,
                spacing: Spacing::Uniform
            }
        );
        for bad in ["ddpm", "ddim", "ddim-x", "ddim-5-eta=-1", "ddim-5-cubic"] {
            let err = bad.parse::<Sampler>().unwrap_err().to_string();
            assert!(err.contains("expected ancestral or ddim-S"), "{bad}: {err}");
        }
    }

    #[test]
    fn kept_timesteps_rise_strictly_and_end_at_t() {
        let _generator = crate::testing::generator_lock();
        for spacing in [Spacing::Uniform, Spacing::Quadratic] {
            for (big_t, count) in [(1000, 50), (1000, 1000), (10, 3), (7, 7), (1000, 1)] {
                let kept = kept_timesteps(big_t, count, spacing).unwrap();
                assert_eq!(kept.len(), count);
                assert_eq!(*kept.last().unwrap(), big_t, "{spacing:?} {big_t} {count}");
                assert!(kept[0] >= 1);
                assert!(kept.windows(2).all(|w| w[0] < w[1]), "{kept:?}");
            }
        }
        let quadratic = kept_timesteps(1000, 10, Spacing::Quadratic).unwrap();
        assert_eq!(quadratic[..3], [10, 40, 90]);
        let err = kept_timesteps(100, 101, Spacing::Uniform)
            .unwrap_err()
            .to_string();
        assert!(err.contains("between 1 and T = 100"), "{err}");
    }
}
