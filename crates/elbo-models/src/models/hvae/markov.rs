//! The seeds' Markovian HVAE. With `z_0 = x`:
//!
//! ```text
//! p(x, z_1:T)   = p(z_T) p(x | z_1) prod_{t=2..T} p(z_{t-1} | z_t)     p(z_T) = N(0, I)
//! q(z_1:T | x)  = q(z_1 | x) prod_{t=2..T} q(z_t | z_{t-1})
//! ```
//!
//! The ELBO `E_q[log p(x, z_1:T) - log q(z_1:T | x)]` is regrouped so that each factor of
//! `q` meets the factor of `p` over the same variable:
//!
//! ```text
//! ELBO = E_q[log p(x | z_1)]                                       reconstruction
//!      - E_q[KL(q(z_T | z_{T-1}) || p(z_T))]                        prior matching
//!      - sum_{t=1..T-1} E_q[log q(z_t | z_{t-1}) - log p(z_t | z_{t+1})]   consistency_t
//! ```
//!
//! The prior matching is a closed-form KL given the drawn `z_{T-1}`. A consistency term
//! is not a KL between two Gaussians of the same conditioning: the inference chain runs
//! up and the generative chain down, so `z_{t+1}` is itself drawn from `z_t`, and the
//! term is estimated as the log-ratio at the drawn `z_t, z_{t+1}` (one sample of the
//! chain per example). With `T = 1` there is no consistency term and the bound is the
//! VAE's, with the same networks ([`crate::models::vae::Vae`] is the bottom layer).

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Tensor};

use super::HvaeArch;
use super::{GaussianMlp, check_latent_dims, draw, layer_name, log_density_of_draw, repeat_batch};
use crate::error::{Error, Result};
use crate::models::ElboStep;
use crate::models::vae::{Vae, VaeArch, VaeConfig, VaePreset};
use crate::models::{Capabilities, ElboModel, ElboTerms, Hierarchical, Latents, ModelConfig};
use crate::nn::gaussian;
use crate::nn::likelihood::Likelihood;
use crate::train::TrainStep;
use crate::train::aids::TrainingAids;

/// A Markovian HVAE's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarkovConfig {
    /// Image shape (channels, height, width).
    pub image: [i64; 3],
    /// Sizes of `z_1` (bottom) to `z_T` (top).
    pub latent_dims: Vec<i64>,
    /// The networks of `q(z_1 | x)` and `p(x | z_1)`, as a VAE's.
    pub arch: VaeArch,
    /// Hidden widths (ReLU) of the Gaussian transitions `q(z_t | z_{t-1})` and
    /// `p(z_{t-1} | z_t)`.
    pub transition_hidden: Vec<i64>,
    /// The decoder likelihood.
    pub likelihood: Likelihood,
}

impl MarkovConfig {
    /// `arch` `mlp` puts vae-mlp's networks (784-400-z_1 and back) between `x` and `z_1`,
    /// `conv` vae-conv's; the transitions between layers have one hidden layer of `width`
    /// units (default 200).
    pub fn new(
        image: [i64; 3],
        latent_dims: Vec<i64>,
        arch: HvaeArch,
        width: Option<i64>,
        likelihood: Likelihood,
    ) -> Result<MarkovConfig> {
        let preset = match arch {
            HvaeArch::Mlp => VaePreset::Mlp,
            HvaeArch::Conv => VaePreset::Conv,
        };
        let bottom = VaeConfig::preset(preset, image, likelihood)?;
        let config = MarkovConfig {
            image,
            latent_dims,
            arch: bottom.arch,
            transition_hidden: vec![width.unwrap_or(200)],
            likelihood,
        };
        config.validate()?;
        Ok(config)
    }

    /// The VAE between `x` and `z_1`.
    pub fn bottom(&self) -> VaeConfig {
        VaeConfig {
            image: self.image,
            latent_dim: self.latent_dims.first().copied().unwrap_or(0),
            arch: self.arch.clone(),
            likelihood: self.likelihood,
        }
    }

    /// Checks that the networks can be built.
    pub fn validate(&self) -> Result<()> {
        check_latent_dims(&self.latent_dims)?;
        if self.transition_hidden.iter().any(|&w| w <= 0) {
            return Err(Error::Config {
                detail: format!(
                    "transition widths must be positive, found {:?}",
                    self.transition_hidden
                ),
            });
        }
        self.bottom().validate()
    }
}

/// The Markovian HVAE on a [`nn::VarStore`].
pub struct MarkovHvae {
    config: MarkovConfig,
    bottom: Vae,
    /// `q(z_t | z_{t-1})` for `t = 2..T`.
    up: Vec<GaussianMlp>,
    /// `p(z_{t-1} | z_t)` for `t = 2..T`.
    down: Vec<GaussianMlp>,
    device: tch::Device,
}

/// One draw of the inference chain: the latents, bottom first, with the parameters of
/// their `q` factors and the noise that drew them.
struct Chain {
    z: Vec<Tensor>,
    q: Vec<(Tensor, Tensor)>,
    eps: Vec<Tensor>,
}

impl MarkovHvae {
    /// Builds the networks under `path`. The bottom VAE's variables have the names a
    /// [`Vae`] built under the same path has, so a VAE's weights load into a `T = 1`
    /// Markov HVAE.
    pub fn new(path: &nn::Path<'_>, config: MarkovConfig) -> Result<MarkovHvae> {
        config.validate()?;
        let bottom = Vae::new(path, config.bottom())?;
        let dims = &config.latent_dims;
        let hidden = &config.transition_hidden;
        let up = (1..dims.len())
            .map(|i| {
                GaussianMlp::new(
                    &(path / format!("q{}", i + 1)),
                    dims[i - 1],
                    hidden,
                    dims[i],
                )
            })
            .collect();
        let down = (1..dims.len())
            .map(|i| GaussianMlp::new(&(path / format!("p{}", i)), dims[i], hidden, dims[i - 1]))
            .collect();
        Ok(MarkovHvae {
            device: path.device(),
            config,
            bottom,
            up,
            down,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MarkovConfig {
        &self.config
    }

    /// Draws the inference chain `z_1 ~ q(z_1 | x)`, `z_t ~ q(z_t | z_{t-1})`, starting
    /// from `q(z_1 | x)`'s parameters (one row per chain).
    fn infer(&self, mean: Tensor, log_var: Tensor) -> Chain {
        let (z1, eps1) = draw(&mean, &log_var);
        let mut previous = z1.shallow_clone();
        let mut chain = Chain {
            z: vec![z1],
            q: vec![(mean, log_var)],
            eps: vec![eps1],
        };
        for up in &self.up {
            let (mean, log_var) = up.forward(&previous);
            let (z, eps) = draw(&mean, &log_var);
            previous = z.shallow_clone();
            chain.z.push(z);
            chain.q.push((mean, log_var));
            chain.eps.push(eps);
        }
        chain
    }

    /// The ELBO terms of `x` at the drawn chain `chain` (of [`Self::infer`]).
    fn terms_of_chain(&self, x: &Tensor, chain: &Chain) -> ElboTerms {
        let top = chain.q.len() - 1;
        let reconstruction = self
            .config
            .likelihood
            .log_prob(&self.bottom.decode(&chain.z[0]), x);
        let prior_matching = gaussian::kl_to_standard_normal(&chain.q[top].0, &chain.q[top].1);
        let layers = (0..top)
            .map(|i| {
                let log_q = log_density_of_draw(&chain.eps[i], &chain.q[i].1);
                let (p_mean, p_log_var) = self.down[i].forward(&chain.z[i + 1]);
                let log_p = gaussian::log_density(&chain.z[i], &p_mean, &p_log_var);
                (format!("consistency_{}", i + 1), log_q - log_p)
            })
            .collect();
        ElboTerms {
            reconstruction,
            prior_matching,
            layers,
        }
    }

    /// Runs the generative chain down from `z_t` (`t` 1-based) to `z_1`, drawing each
    /// layer from `p(z_{s-1} | z_s)`, and returns the decoder's mean.
    fn descend(&self, mut z: Tensor, t: usize) -> Tensor {
        for s in (2..=t).rev() {
            let (mean, log_var) = self.down[s - 2].forward(&z);
            z = gaussian::reparameterise(&mean, &log_var);
        }
        self.config.likelihood.mean(&self.bottom.decode(&z))
    }

    fn top_prior_draw(&self, n: i64) -> Tensor {
        let top = *self.config.latent_dims.last().unwrap_or(&1);
        Tensor::randn([n, top], (Kind::Float, self.device))
    }
}

impl ElboModel for MarkovHvae {
    fn config(&self) -> ModelConfig {
        ModelConfig::Hvae(super::HvaeConfig::Markov(self.config.clone()))
    }

    fn likelihood(&self) -> Likelihood {
        self.config.likelihood
    }

    fn elbo_terms(&self, x: &Tensor) -> ElboTerms {
        let (mean, log_var) = self.bottom.encode(x);
        self.terms_of_chain(x, &self.infer(mean, log_var))
    }

    fn log_importance_weights(&self, x: &Tensor, k: i64) -> Result<Tensor> {
        let (mean, log_var) = self.bottom.encode(x);
        let batch = mean.size()[0];
        let chain = self.infer(repeat_batch(&mean, k), repeat_batch(&log_var, k));
        let x_rep = repeat_batch(x, k);
        let top = chain.z.len() - 1;
        let mut log_w = self
            .config
            .likelihood
            .log_prob(&self.bottom.decode(&chain.z[0]), &x_rep)
            + gaussian::log_density_standard(&chain.z[top]);
        for i in 0..=top {
            log_w -= log_density_of_draw(&chain.eps[i], &chain.q[i].1);
            if i < top {
                let (p_mean, p_log_var) = self.down[i].forward(&chain.z[i + 1]);
                log_w += gaussian::log_density(&chain.z[i], &p_mean, &p_log_var);
            }
        }
        Ok(log_w.reshape([k, batch]))
    }

    fn sample(&self, n: i64) -> Result<Tensor> {
        Ok(self.descend(self.top_prior_draw(n), self.config.latent_dims.len()))
    }

    fn reconstruct(&self, x: &Tensor) -> Tensor {
        let (mean, _) = self.bottom.encode(x);
        self.config.likelihood.mean(&self.bottom.decode(&mean))
    }

    fn train_step(&self) -> Result<Box<dyn TrainStep + '_>> {
        ElboStep::boxed(self, &TrainingAids::default())
    }

    fn capabilities(&self) -> Capabilities<'_> {
        Capabilities::hierarchical(self)
    }
}

impl Latents for MarkovHvae {
    fn latent_layers(&self) -> usize {
        self.config.latent_dims.len()
    }

    fn posterior_means(&self, x: &Tensor) -> Vec<(String, Tensor)> {
        let (mean, log_var) = self.bottom.encode(x);
        let chain = self.infer(mean, log_var);
        chain
            .q
            .into_iter()
            .enumerate()
            .map(|(i, (mean, _))| (layer_name(i + 1), mean))
            .collect()
    }
}

impl Hierarchical for MarkovHvae {
    fn fixed_top_samples(&self, fixed: usize, rows: i64, columns: i64) -> Result<Tensor> {
        let layers = self.config.latent_dims.len();
        super::check_fixed_top(fixed, layers, rows, columns)?;
        // Draw z_T down to z_{T-fixed+1} once per row, then repeat each row.
        let mut z = self.top_prior_draw(rows);
        for s in ((layers - fixed + 2)..=layers).rev() {
            let (mean, log_var) = self.down[s - 2].forward(&z);
            z = gaussian::reparameterise(&mean, &log_var);
        }
        let z = z.repeat_interleave_self_int(columns, 0, None);
        Ok(self.descend(z, layers - fixed + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gaussian::tests::values;
    use tch::nn::VarStore;

    fn model(dims: Vec<i64>) -> (VarStore, MarkovHvae) {
        tch::manual_seed(1);
        let vs = VarStore::new(tch::Device::Cpu);
        let config = MarkovConfig::new(
            [1, 28, 28],
            dims,
            HvaeArch::Mlp,
            Some(32),
            Likelihood::Bernoulli,
        )
        .unwrap();
        let m = MarkovHvae::new(&vs.root(), config).unwrap();
        (vs, m)
    }

    fn binary(n: i64) -> Tensor {
        Tensor::rand([n, 1, 28, 28], (Kind::Float, tch::Device::Cpu)).round()
    }

    #[test]
    fn shapes_names_and_samples() {
        let _generator = crate::testing::generator_lock();
        let (_vs, m) = model(vec![8, 6, 4]);
        let x = binary(5);
        let terms = m.elbo_terms(&x);
        let names: Vec<&str> = terms.layers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["consistency_1", "consistency_2"]);
        assert_eq!(terms.prior_matching.size(), [5]);
        assert_eq!(m.log_importance_weights(&x, 3).unwrap().size(), [3, 5]);
        assert_eq!(m.sample(4).unwrap().size(), [4, 1, 28, 28]);
        let means = m.posterior_means(&x);
        let shapes: Vec<(String, Vec<i64>)> =
            means.into_iter().map(|(n, t)| (n, t.size())).collect();
        assert_eq!(
            shapes,
            [
                ("z_1".to_string(), vec![5, 8]),
                ("z_2".to_string(), vec![5, 6]),
                ("z_3".to_string(), vec![5, 4])
            ]
        );
        assert_eq!(m.fixed_top_samples(2, 2, 3).unwrap().size(), [6, 1, 28, 28]);
        assert!(m.fixed_top_samples(3, 2, 3).is_err());
        assert!(m.fixed_top_samples(0, 2, 3).is_err());
    }

    /// The top term against elbo-math: `KL(q(z_T | z_{T-1}) || N(0, I))` in closed form.
    #[test]
    fn prior_matching_is_the_closed_form_kl_of_the_top_transition() {
        let _generator = crate::testing::generator_lock();
        let (_vs, m) = model(vec![3, 2]);
        let x = binary(1);
        // One draw of the chain serves both sides (no re-seeding of libtorch's global
        // generator, which other test threads draw from).
        let (mean, log_var) = m.bottom.encode(&x);
        let chain = m.infer(mean, log_var);
        let terms = m.terms_of_chain(&x, &chain);
        let (q_mean, q_log_var) = (values(&chain.q[1].0), values(&chain.q[1].1));
        let want: f64 = q_mean
            .iter()
            .zip(&q_log_var)
            .map(|(&mu, &lv)| elbo_math::gaussian::kl_to_standard_normal(mu, lv))
            .sum();
        let got = values(&terms.prior_matching)[0];
        // f32 tensors, two terms of size ~1: 1e-5 relative.
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }

    /// The consistency term is the log-ratio `log q(z_1 | x) - log p(z_1 | z_2)` at the
    /// drawn chain: checked against elbo-math's log-densities with the same draws.
    #[test]
    fn consistency_is_the_log_ratio_at_the_drawn_chain() {
        let _generator = crate::testing::generator_lock();
        let (_vs, m) = model(vec![3, 2]);
        let x = binary(1);
        let (mean, log_var) = m.bottom.encode(&x);
        let chain = m.infer(mean, log_var);
        let terms = m.terms_of_chain(&x, &chain);
        let (p_mean, p_log_var) = m.down[0].forward(&chain.z[1]);
        let z1 = values(&chain.z[0]);
        let (qm, qlv) = (values(&chain.q[0].0), values(&chain.q[0].1));
        let (pm, plv) = (values(&p_mean), values(&p_log_var));
        let want: f64 = (0..3)
            .map(|i| {
                elbo_math::gaussian::log_density(z1[i], qm[i], qlv[i])
                    - elbo_math::gaussian::log_density(z1[i], pm[i], plv[i])
            })
            .sum();
        let got = values(&terms.layers[0].1)[0];
        // f32 tensors: log-densities of size ~1-10, 1e-4 absolute.
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }

    #[test]
    fn bad_configurations_are_refused() {
        let _generator = crate::testing::generator_lock();
        let err = MarkovConfig::new(
            [1, 28, 28],
            vec![4, 0],
            HvaeArch::Mlp,
            None,
            Likelihood::Bernoulli,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("latent sizes must be positive"), "{err}");
        let err = "resnet".parse::<HvaeArch>().unwrap_err().to_string();
        assert!(err.contains("expected mlp or conv"), "{err}");
        let err = MarkovConfig::new(
            [1, 30, 30],
            vec![4],
            HvaeArch::Conv,
            None,
            Likelihood::Bernoulli,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("divisible by 4"), "{err}");
    }
}
