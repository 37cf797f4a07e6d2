//! Hierarchical VAEs: latents `z_1` (next to the data) up to `z_L` (the top), two ways.
//!
//! - [`markov::MarkovHvae`], the seeds' Markovian HVAE: the generative chain runs down,
//!   `p(x, z_1:T) = p(z_T) p(x | z_1) prod_{t=2..T} p(z_{t-1} | z_t)`, the inference chain
//!   runs up, `q(z_1:T | x) = q(z_1 | x) prod_{t=2..T} q(z_t | z_{t-1})`. With `T = 1` it
//!   is the VAE.
//! - [`ladder::LadderHvae`], the top-down (ladder) HVAE of the LVAE / NVAE / VDVAE family:
//!   a bottom-up deterministic path reads `x`; one top-down path, shared by the prior and
//!   the posterior, draws `z_L, ..., z_1` in that order, each posterior layer a
//!   correction of its prior, so the posterior and the prior factorise the same way and
//!   every layer's KL is a closed-form Gaussian KL.
//!
//! Both are [`ElboModel`]s under the checkpoint family `hvae`, their configuration
//! tagged by `variant`.

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::{self, Module};

use crate::error::{Error, Result};
use crate::models::ElboModel;
use crate::models::names::named_option;
use crate::nn::likelihood::Likelihood;

mod cells;
pub mod ladder;
pub mod markov;

pub use ladder::{LadderArch, LadderConfig, LadderHvae};
pub use markov::{MarkovConfig, MarkovHvae};

/// The checkpoint family of both variants.
pub const FAMILY: &str = "hvae";

/// Which hierarchical VAE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HvaeVariant {
    /// The seeds' Markovian HVAE ([`MarkovHvae`]).
    Markov,
    /// The top-down ladder HVAE ([`LadderHvae`]).
    Ladder,
}

/// The networks of an HVAE: fully connected or convolutional.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HvaeArch {
    /// Fully connected.
    Mlp,
    /// Convolutional.
    Conv,
}

named_option!(HvaeVariant => "HVAE variant", HvaeArch => "HVAE arch");

/// An HVAE's configuration, as recorded in checkpoints (`{"variant": "markov", ...}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "variant", rename_all = "kebab-case")]
pub enum HvaeConfig {
    /// See [`MarkovConfig`].
    Markov(MarkovConfig),
    /// See [`LadderConfig`].
    Ladder(LadderConfig),
}

impl HvaeConfig {
    /// The configuration `elbo train hvae` builds: `layers` latent layers of
    /// `latent_dims` (bottom first; default [`default_latent_dims`]), networks of kind
    /// `arch` (`mlp` or `conv`; default `mlp` for the Markov HVAE, `conv` for the ladder)
    /// and width `width` (default: see [`MarkovConfig::new`] and [`LadderConfig::new`]).
    pub fn new(
        variant: HvaeVariant,
        image: [i64; 3],
        layers: usize,
        latent_dims: Option<Vec<i64>>,
        arch: Option<HvaeArch>,
        width: Option<i64>,
        likelihood: Likelihood,
    ) -> Result<HvaeConfig> {
        let arch = arch.unwrap_or(match variant {
            HvaeVariant::Markov => HvaeArch::Mlp,
            HvaeVariant::Ladder => HvaeArch::Conv,
        });
        let conv = arch == HvaeArch::Conv;
        let latent_dims = match latent_dims {
            Some(dims) => dims,
            None => default_latent_dims(variant, conv, layers)?,
        };
        if latent_dims.len() != layers {
            return Err(Error::Config {
                detail: format!(
                    "--latent-dims gives {} sizes for {layers} layers: expected one per layer, \
                     bottom (z_1) first",
                    latent_dims.len()
                ),
            });
        }
        let config = match variant {
            HvaeVariant::Markov => HvaeConfig::Markov(MarkovConfig::new(
                image,
                latent_dims,
                arch,
                width,
                likelihood,
            )?),
            HvaeVariant::Ladder => HvaeConfig::Ladder(LadderConfig::new(
                image,
                latent_dims,
                arch,
                width,
                likelihood,
            )?),
        };
        Ok(config)
    }

    /// Builds the model under `path`.
    pub fn build(&self, path: &nn::Path<'_>) -> Result<Box<dyn ElboModel>> {
        Ok(match self {
            HvaeConfig::Markov(c) => Box::new(MarkovHvae::new(path, c.clone())?),
            HvaeConfig::Ladder(c) => Box::new(LadderHvae::new(path, c.clone())?),
        })
    }
}

/// Latent sizes when none are given, bottom first: the Markov HVAE has 20 per layer
/// (vae-mlp's latent, so with the MLP networks its bottom is vae-mlp); the MLP ladder
/// has 32 at the bottom, halving upwards down to 8 (LVAE's shrinking hierarchy); the
/// convolutional ladder's sizes are channels per position of its feature map (7x7 on
/// MNIST): 4 at the bottom, halving upwards down to 1.
pub fn default_latent_dims(variant: HvaeVariant, conv: bool, layers: usize) -> Result<Vec<i64>> {
    if layers == 0 {
        return Err(Error::Config {
            detail: "an HVAE needs at least 1 layer, found 0".into(),
        });
    }
    Ok(match (variant, conv) {
        (HvaeVariant::Markov, _) => vec![20; layers],
        (HvaeVariant::Ladder, false) => (0..layers).map(|l| 32i64 >> l.min(2)).collect(),
        (HvaeVariant::Ladder, true) => (0..layers).map(|l| 4i64 >> l.min(2)).collect(),
    })
}

/// Checks a request for samples that fix the top `fixed` of `layers` layers, in a grid
/// of `rows` by `columns`.
pub(crate) fn check_fixed_top(fixed: usize, layers: usize, rows: i64, columns: i64) -> Result<()> {
    if fixed == 0 || fixed >= layers || rows < 1 || columns < 1 {
        return Err(Error::Config {
            detail: format!(
                "fixed-top samples need 1 <= fixed < {layers} layers and a grid of at least \
                 1x1, found fixed {fixed}, {rows}x{columns}"
            ),
        });
    }
    Ok(())
}

/// Checks latent sizes: at least one, all positive.
pub(crate) fn check_latent_dims(dims: &[i64]) -> Result<()> {
    if dims.is_empty() || dims.iter().any(|&d| d <= 0) {
        return Err(Error::Config {
            detail: format!(
                "latent sizes must be positive, one per layer (at least one), found {dims:?}"
            ),
        });
    }
    Ok(())
}

/// The name of layer `l` (1-based, `z_1` at the bottom).
pub(crate) fn layer_name(l: usize) -> String {
    format!("z_{l}")
}

/// `t` (batch, ...) repeated `k` times along a new leading axis and flattened back:
/// (k * batch, ...), draw-major, so that `.reshape([k, batch])` undoes it.
pub(crate) fn repeat_batch(t: &Tensor, k: i64) -> Tensor {
    let mut size = vec![k];
    size.extend(t.size());
    t.unsqueeze(0).expand(size, false).flatten(0, 1)
}

/// A diagonal Gaussian conditional `N(mean(u), exp(log_var(u)))` given by an MLP with
/// ReLU hidden layers: the Markov HVAE's transitions.
#[derive(Debug)]
pub(crate) struct GaussianMlp {
    body: nn::Sequential,
    mean: nn::Linear,
    log_var: nn::Linear,
}

impl GaussianMlp {
    pub(crate) fn new(path: &nn::Path<'_>, input: i64, hidden: &[i64], output: i64) -> Self {
        let mut body = nn::seq();
        let mut width = input;
        for (i, &next) in hidden.iter().enumerate() {
            body = body
                .add(nn::linear(
                    path / format!("hidden{i}"),
                    width,
                    next,
                    Default::default(),
                ))
                .add_fn(Tensor::relu);
            width = next;
        }
        // The heads start with weights scaled by 0.1: a transition starts near
        // N(bias, ~I) whatever its input. With the He initialisation as it is, log-variances
        // of several units compound along the chain and overflowed the first steps.
        let head = |name: &str| {
            let layer = nn::linear(path / name, width, output, Default::default());
            tch::no_grad(|| {
                let _ = layer.ws.shallow_clone().g_mul_scalar_(0.1);
            });
            layer
        };
        GaussianMlp {
            body,
            mean: head("mean"),
            log_var: head("log_var"),
        }
    }

    /// The mean and log-variance given `u`.
    pub(crate) fn forward(&self, u: &Tensor) -> (Tensor, Tensor) {
        let h = self.body.forward(u);
        (self.mean.forward(&h), self.log_var.forward(&h))
    }
}

/// `log N(z; mean, exp(log_var))` per example where `z = mean + exp(log_var / 2) * eps`:
/// `-(eps^2 + log_var + log 2 pi) / 2` summed, exact in `eps` (no cancellation).
pub(crate) fn log_density_of_draw(eps: &Tensor, log_var: &Tensor) -> Tensor {
    crate::nn::gaussian::sum_per_example(
        &((eps.square() + log_var + 1.837_877_066_409_345_3) * -0.5),
    )
}

/// A reparameterised draw with its noise: `(mean + exp(log_var / 2) * eps, eps)`.
pub(crate) fn draw(mean: &Tensor, log_var: &Tensor) -> (Tensor, Tensor) {
    let eps = mean.randn_like();
    (mean + (log_var * 0.5).exp() * &eps, eps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_and_default_sizes() {
        let _generator = crate::testing::generator_lock();
        assert_eq!(
            "markov".parse::<HvaeVariant>().unwrap(),
            HvaeVariant::Markov
        );
        assert_eq!(HvaeVariant::Ladder.to_string(), "ladder");
        let err = "deep".parse::<HvaeVariant>().unwrap_err().to_string();
        assert!(err.contains("expected markov or ladder"), "{err}");
        assert_eq!(
            default_latent_dims(HvaeVariant::Markov, false, 2).unwrap(),
            [20, 20]
        );
        assert_eq!(
            default_latent_dims(HvaeVariant::Ladder, false, 4).unwrap(),
            [32, 16, 8, 8]
        );
        assert_eq!(
            default_latent_dims(HvaeVariant::Ladder, true, 4).unwrap(),
            [4, 2, 1, 1]
        );
        assert!(default_latent_dims(HvaeVariant::Ladder, true, 0).is_err());
        let err = HvaeConfig::new(
            HvaeVariant::Markov,
            [1, 28, 28],
            3,
            Some(vec![8, 4]),
            None,
            None,
            Likelihood::Bernoulli,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("2 sizes for 3 layers"), "{err}");
    }

    #[test]
    fn repeat_batch_is_draw_major() {
        let _generator = crate::testing::generator_lock();
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).reshape([3, 1]);
        let r = repeat_batch(&t, 2);
        assert_eq!(r.size(), [6, 1]);
        let v = Vec::<f32>::try_from(r.flatten(0, -1)).unwrap();
        assert_eq!(v, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    }
}
