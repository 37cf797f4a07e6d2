//! The names of samplers, parsed and printed in one place, and the timesteps a
//! shortened sampler keeps.

use std::fmt;
use std::str::FromStr;

use elbo_math::schedule::evenly_spaced_timesteps;
use serde::{Deserialize, Serialize};

use super::{Sampler, ancestral::Ancestral, ddim::Ddim};
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
}

/// A sampler as a user names it: the one grammar of sampler names (`ancestral`,
/// `ddim-50`, `ddim-100-eta=1`, `ddim-20-quadratic`), parsed and printed here only.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum SamplerSpec {
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

impl Default for SamplerSpec {
    /// DDIM with 50 uniform steps and `eta = 0`: the previews and sample grids (20 times
    /// faster than ancestral sampling at T = 1000).
    fn default() -> Self {
        SamplerSpec::Ddim {
            steps: 50,
            eta: 0.0,
            spacing: Spacing::Uniform,
        }
    }
}

impl FromStr for SamplerSpec {
    type Err = Error;

    /// `ancestral`, or `ddim-S` with optional `-eta=E` and `-quadratic`: `ddim-50`,
    /// `ddim-100-eta=1`, `ddim-50-quadratic`.
    fn from_str(text: &str) -> Result<SamplerSpec> {
        let bad = || Error::Config {
            detail: format!(
                "unknown sampler {text:?}: expected ancestral or ddim-S[-eta=E][-quadratic] \
                 (for example ddim-50)"
            ),
        };
        if text == "ancestral" {
            return Ok(SamplerSpec::Ancestral);
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
        Ok(SamplerSpec::Ddim {
            steps,
            eta,
            spacing,
        })
    }
}

impl fmt::Display for SamplerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SamplerSpec::Ancestral => f.write_str("ancestral"),
            SamplerSpec::Ddim {
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

impl SamplerSpec {
    /// The sampler it names.
    pub fn build(&self) -> Box<dyn Sampler> {
        match *self {
            SamplerSpec::Ancestral => Box::new(Ancestral),
            SamplerSpec::Ddim {
                steps,
                eta,
                spacing,
            } => Box::new(Ddim {
                steps,
                eta,
                spacing,
            }),
        }
    }

    /// Checks that it fits a process of `big_t` steps (no more steps than T).
    pub fn validate(&self, big_t: usize) -> Result<()> {
        if let SamplerSpec::Ddim { steps, spacing, .. } = *self {
            kept_timesteps(big_t, steps, spacing)?;
        }
        Ok(())
    }
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
            let s: SamplerSpec = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
        }
        assert_eq!(
            "ddim-10-eta=0.5".parse::<SamplerSpec>().unwrap(),
            SamplerSpec::Ddim {
                steps: 10,
                eta: 0.5,
                spacing: Spacing::Uniform
            }
        );
        for bad in ["ddpm", "ddim", "ddim-x", "ddim-5-eta=-1", "ddim-5-cubic"] {
            let err = bad.parse::<SamplerSpec>().unwrap_err().to_string();
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
