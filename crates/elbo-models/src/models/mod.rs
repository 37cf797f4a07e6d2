//! What every model of this crate offers the shared training, evaluation and sampling
//! code: its ELBO, term by term, per example.

pub mod ddpm;
pub mod hvae;
pub mod vae;

use tch::{Kind, Tensor};

/// The terms of a (single-sample) ELBO estimate, each of shape (batch,), in nats:
/// `ELBO = reconstruction - prior_matching - sum of layers`.
pub struct ElboTerms {
    /// `E_q[log p(x | z)]`, estimated.
    pub reconstruction: Tensor,
    /// `KL(q(z_top | x) || p(z_top))`.
    pub prior_matching: Tensor,
    /// Further KL terms by name: a hierarchical VAE's consistency terms, a diffusion
    /// model's denoising-matching terms.
    pub layers: Vec<(String, Tensor)>,
}

impl ElboTerms {
    /// The ELBO per example.
    pub fn elbo(&self) -> Tensor {
        let mut elbo = &self.reconstruction - &self.prior_matching;
        for (_, term) in &self.layers {
            elbo -= term;
        }
        elbo
    }

    /// The batch means of every term, in f64, named as in metrics: `reconstruction`,
    /// `prior_matching`, then the layers, then `elbo`.
    pub fn means(&self) -> Vec<(String, f64)> {
        let mean = |t: &Tensor| t.mean(Kind::Float).double_value(&[]);
        let mut out = vec![
            ("reconstruction".to_string(), mean(&self.reconstruction)),
            ("prior_matching".to_string(), mean(&self.prior_matching)),
        ];
        out.extend(self.layers.iter().map(|(name, t)| (name.clone(), mean(t))));
        out.push(("elbo".to_string(), mean(&self.elbo())));
        out
    }
}

/// What a training step minimises when it is not the negative ELBO (a diffusion
/// model's `L_simple`), with the values to log.
pub struct TrainingLoss {
    /// The scalar to minimise.
    pub loss: Tensor,
    /// Scalars to log by name (detached).
    pub reported: Vec<(String, Tensor)>,
}

/// A latent-variable model trained by maximising its ELBO.
pub trait ElboModel {
    /// The model family, as recorded in checkpoints (`vae`, ...).
    fn family(&self) -> &'static str;
    /// The configuration that fixes the shapes of its weights, as recorded in checkpoints.
    fn config_json(&self) -> serde_json::Value;
    /// The observation model (it decides how pixels are transformed for this model).
    fn likelihood(&self) -> crate::nn::likelihood::Likelihood;
    /// The ELBO terms of a batch `x` (in the model's data scale), one sample each.
    fn elbo_terms(&self, x: &Tensor) -> ElboTerms;
    /// `log p(x, z_k) - log q(z_k | x)` for `k` draws per example, shape (k, batch).
    fn log_importance_weights(&self, x: &Tensor, k: i64) -> Tensor;
    /// `n` samples, as images in the data scale.
    fn sample(&self, n: i64) -> Tensor;
    /// `rows` strips of `steps` images each, decoded along straight lines between two
    /// latent draws from the prior, for models with one latent space (`None` otherwise).
    fn interpolations(&self, rows: i64, steps: i64) -> Option<Tensor> {
        let _ = (rows, steps);
        None
    }
    /// Reconstructions of `x` through the posterior mean, as images in the data scale.
    fn reconstruct(&self, x: &Tensor) -> Tensor;
    /// One draw of the posterior mean of every latent layer, bottom (`z_1`) first, each
    /// flattened to (batch, dims): the mean of `q(z_l | x, ...)` given one sample of the
    /// layers it is conditioned on. Averaged over draws and examples it gives the active
    /// units ([`crate::eval::active_units`]). Models without latents return nothing.
    fn posterior_means(&self, x: &Tensor) -> Vec<(String, Tensor)> {
        let _ = x;
        Vec::new()
    }
    /// How many latent layers the model stacks (1 for a VAE).
    fn latent_layers(&self) -> usize {
        1
    }
    /// `rows * columns` images, row after row: each row shares one draw of the top
    /// `fixed` latent layers and redraws the layers below from the prior, which shows
    /// what each level of a hierarchy encodes. `None` unless `1 <= fixed <
    /// latent_layers()`.
    fn fixed_top_samples(&self, fixed: usize, rows: i64, columns: i64) -> Option<Tensor> {
        let _ = (fixed, rows, columns);
        None
    }
    /// The loss training minimises instead of the negative ELBO of [`Self::elbo_terms`]
    /// (`None`: the ELBO, with the training aids).
    fn training_loss(&self, x: &Tensor) -> Option<TrainingLoss> {
        let _ = x;
        None
    }
    /// The bound with every term evaluated rather than sampled, when
    /// [`Self::elbo_terms`] is a sampled estimate (a diffusion model's T terms).
    fn exact_bound(&self, x: &Tensor) -> Option<ElboTerms> {
        let _ = x;
        None
    }
    /// How many importance samples `elbo eval` uses when none are asked for (`None`:
    /// no IWAE bound, for models where one sample costs T network calls).
    fn default_iw_samples(&self) -> Option<i64> {
        Some(1000)
    }
    /// Chooses the sampler by name (a diffusion model's `ancestral` or `ddim-50`), and
    /// whether predictions of `x_0` are clipped; an error for models with one sampler.
    fn configure_sampler(&mut self, sampler: &str, clip_x0: bool) -> crate::Result<()> {
        let _ = clip_x0;
        Err(crate::Error::Config {
            detail: format!(
                "a {} model has a single sampler; --sampler {sampler:?} applies to DDPMs",
                self.family()
            ),
        })
    }
    /// `rows` sampling runs, each as `frames` states from `x_T` to `x_0`, row after row
    /// (models that sample in steps).
    fn trajectory(&self, rows: i64, frames: usize) -> Option<Tensor> {
        let _ = (rows, frames);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elbo_subtracts_every_kl_term() {
        let _generator = crate::testing::generator_lock();
        let terms = ElboTerms {
            reconstruction: Tensor::from_slice(&[-10.0f32, -20.0]),
            prior_matching: Tensor::from_slice(&[1.0f32, 2.0]),
            layers: vec![("layer_1".into(), Tensor::from_slice(&[0.5f32, 0.25]))],
        };
        let elbo = Vec::<f32>::try_from(terms.elbo()).unwrap();
        assert_eq!(elbo, [-11.5, -22.25]);
        let means = terms.means();
        let names: Vec<&str> = means.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["reconstruction", "prior_matching", "layer_1", "elbo"]
        );
        assert!((means[3].1 - (-16.875)).abs() < 1e-6);
    }
}
