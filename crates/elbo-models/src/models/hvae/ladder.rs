//! The top-down (ladder) HVAE of the LVAE / NVAE / VDVAE family, with latents `z_1`
//! (bottom) to `z_L` (top):
//!
//! ```text
//! bottom-up:  e = stem(x); e_l = up_l(e_{l-1})                  (deterministic, l = 1..L)
//! top-down:   h = h_start; for l = L..1:
//!               p(z_l | z_>l)    = N(prior_l(h))                (N(0, I) for l = L)
//!               q(z_l | z_>l, x) = N(prior mean + dmu_l(h, e_l), prior log-var + dlv_l(h, e_l))
//!               h = cell_l(h + project_l(z_l))
//!             p(x | z) = likelihood(output(h))
//! ```
//!
//! The posterior and the prior share the top-down path and factorise in the same
//! order, so
//!
//! ```text
//! ELBO = E_q[log p(x | z)] - KL(q(z_L | x) || N(0, I)) - sum_{l<L} E_q[KL(q(z_l | z_>l, x) || p(z_l | z_>l))]
//!        reconstruction      prior matching               kl_layer_l
//! ```
//!
//! every KL in closed form between diagonal Gaussians given one draw of the layers above.
//! Each posterior is parameterised relative to its prior (NVAE's residual
//! parameterisation): its mean and log-variance are the prior's plus corrections.
//!
//! (About 540 lines: the networks, their two passes and the tests that hold them
//! against elbo-math belong together.)

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

pub use super::cells::LadderArch;
use super::cells::{self, Residual};
use super::{HvaeArch, check_latent_dims, draw, layer_name, log_density_of_draw, repeat_batch};
use crate::error::{Error, Result};
use crate::models::ElboStep;
use crate::models::{Capabilities, ElboModel, ElboTerms, Hierarchical, Latents, ModelConfig};
use crate::nn::gaussian;
use crate::nn::likelihood::Likelihood;
use crate::train::TrainStep;
use crate::train::aids::TrainingAids;

/// A ladder HVAE's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LadderConfig {
    /// Image shape (channels, height, width).
    pub image: [i64; 3],
    /// Sizes of `z_1` (bottom) to `z_L` (top): units for the MLP, channels per position
    /// for the convolutional ladder.
    pub latent_dims: Vec<i64>,
    /// The networks.
    pub arch: LadderArch,
    /// The decoder likelihood.
    pub likelihood: Likelihood,
}

impl LadderConfig {
    /// `arch` `mlp` (default width 256 units) or `conv` (default 64 channels).
    pub fn new(
        image: [i64; 3],
        latent_dims: Vec<i64>,
        arch: HvaeArch,
        width: Option<i64>,
        likelihood: Likelihood,
    ) -> Result<LadderConfig> {
        let arch = match arch {
            HvaeArch::Mlp => LadderArch::Mlp {
                width: width.unwrap_or(256),
            },
            HvaeArch::Conv => LadderArch::Conv {
                channels: width.unwrap_or(64),
            },
        };
        let config = LadderConfig {
            image,
            latent_dims,
            arch,
            likelihood,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the networks can be built for the image shape.
    pub fn validate(&self) -> Result<()> {
        check_latent_dims(&self.latent_dims)?;
        let [c, h, w] = self.image;
        let width = self.arch.width();
        if c <= 0 || h <= 0 || w <= 0 || width <= 0 {
            return Err(Error::Config {
                detail: format!("image {:?} and width {width} must be positive", self.image),
            });
        }
        if matches!(self.arch, LadderArch::Conv { .. }) && (h % 4 != 0 || w % 4 != 0) {
            return Err(Error::Config {
                detail: format!(
                    "the convolutional ladder needs image sides divisible by 4, found {h}x{w}"
                ),
            });
        }
        Ok(())
    }
}

/// One latent layer's networks.
struct Layer {
    /// The prior's cell and head (mean and log-variance); `None` at the top.
    prior: Option<(Residual, Box<dyn Module>)>,
    /// `[h, e_l]` to the width, a cell, and the head of the posterior's corrections.
    merge: Box<dyn Module>,
    posterior: Residual,
    posterior_head: Box<dyn Module>,
    /// `z_l` into the state, and the cell after it.
    project: Box<dyn Module>,
    cell: Residual,
}

/// The ladder HVAE on a [`nn::VarStore`].
pub struct LadderHvae {
    config: LadderConfig,
    stem: nn::Sequential,
    up: Vec<Residual>,
    start: Tensor,
    /// Bottom (`z_1`) first.
    layers: Vec<Layer>,
    out_cell: Residual,
    output: nn::Sequential,
}

/// Whether a layer's latent is drawn or set to the mean of its distribution.
#[derive(Clone, Copy, PartialEq)]
enum Pick {
    Draw,
    Mean,
}

/// What the top-down pass did at one layer.
struct Step {
    z: Tensor,
    eps: Tensor,
    /// The posterior (absent when drawing from the prior).
    q: Option<(Tensor, Tensor)>,
    /// The prior (absent at the top, where it is `N(0, I)`).
    p: Option<(Tensor, Tensor)>,
}

/// The initial scale of the Gaussian heads' weights (see `cells`).
const HEAD: f64 = 0.1;

fn halves(t: &Tensor) -> (Tensor, Tensor) {
    let parts = t.chunk(2, 1);
    (parts[0].shallow_clone(), parts[1].shallow_clone())
}

impl LadderHvae {
    /// Builds the networks under `path`.
    pub fn new(path: &nn::Path<'_>, config: LadderConfig) -> Result<LadderHvae> {
        config.validate()?;
        let arch = &config.arch;
        let width = arch.width();
        let n_layers = config.latent_dims.len();
        let scale = 1.0 / ((4 * n_layers + 1) as f64).sqrt();
        let up = (0..n_layers)
            .map(|l| cells::residual(&(path / format!("up{}", l + 1)), arch, scale))
            .collect();
        let layers = config
            .latent_dims
            .iter()
            .enumerate()
            .map(|(l, &d)| {
                let p = path / format!("layer{}", l + 1);
                Layer {
                    prior: (l + 1 < n_layers).then(|| {
                        (
                            cells::residual(&(&p / "prior"), arch, scale),
                            cells::pointwise(&(&p / "prior_head"), arch, width, 2 * d, HEAD),
                        )
                    }),
                    merge: cells::pointwise(&(&p / "merge"), arch, 2 * width, width, 1.0),
                    posterior: cells::residual(&(&p / "posterior"), arch, scale),
                    posterior_head: cells::pointwise(
                        &(&p / "posterior_head"),
                        arch,
                        width,
                        2 * d,
                        HEAD,
                    ),
                    project: cells::pointwise(&(&p / "project"), arch, d, width, scale),
                    cell: cells::residual(&(&p / "cell"), arch, scale),
                }
            })
            .collect();
        let mut start_shape = vec![1];
        start_shape.extend(arch.state_shape(config.image));
        let out_channels = config.image[0] * config.likelihood.params_per_channel();
        Ok(LadderHvae {
            stem: cells::stem(path, arch, config.image),
            up,
            start: path.zeros("start", &start_shape),
            layers,
            out_cell: cells::residual(&(path / "out_cell"), arch, scale),
            output: cells::output(path, arch, config.image, out_channels),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LadderConfig {
        &self.config
    }

    /// The bottom-up features `e_1..e_L` of `x`.
    fn bottom_up(&self, x: &Tensor) -> Vec<Tensor> {
        let mut e = self.stem.forward(x);
        self.up
            .iter()
            .map(|cell| {
                e = cell.forward(&e);
                e.shallow_clone()
            })
            .collect()
    }

    /// The initial top-down state for `n` examples.
    fn start(&self, n: i64) -> Tensor {
        let mut size = self.start.size();
        size[0] = n;
        self.start.expand(size, false)
    }

    /// One layer (`l`, 0-based) of the top-down pass from state `h`, from the posterior
    /// when `feature` (its `e_l`) is given, else from the prior.
    fn step(&self, l: usize, h: &Tensor, feature: Option<&Tensor>, pick: Pick) -> (Tensor, Step) {
        let layer = &self.layers[l];
        let p = layer
            .prior
            .as_ref()
            .map(|(cell, head)| halves(&head.forward(&cell.forward(h))));
        let q = feature.map(|e| {
            let u = layer
                .posterior
                .forward(&layer.merge.forward(&Tensor::cat(&[h, e], 1)));
            let (d_mean, d_log_var) = halves(&layer.posterior_head.forward(&u));
            match &p {
                Some((mean, log_var)) => (mean + d_mean, log_var + d_log_var),
                None => (d_mean, d_log_var),
            }
        });
        let (z, eps) = match (&q, &p) {
            (Some((mean, log_var)), _) | (None, Some((mean, log_var))) => match pick {
                Pick::Draw => draw(mean, log_var),
                Pick::Mean => (mean.shallow_clone(), mean.zeros_like()),
            },
            (None, None) => {
                let mut size = h.size();
                size[1] = self.config.latent_dims[l];
                let eps = Tensor::randn(size, (Kind::Float, h.device()));
                match pick {
                    Pick::Draw => (eps.shallow_clone(), eps),
                    Pick::Mean => (eps.zeros_like(), eps.zeros_like()),
                }
            }
        };
        let h = layer.cell.forward(&(h + layer.project.forward(&z)));
        (h, Step { z, eps, q, p })
    }

    /// Runs layers `from` down to `to` (0-based, inclusive) from state `h`; returns the
    /// state and the steps, top first.
    fn descend(
        &self,
        mut h: Tensor,
        from: usize,
        to: usize,
        features: Option<&[Tensor]>,
        pick: Pick,
    ) -> (Tensor, Vec<Step>) {
        let mut steps = Vec::new();
        for l in (to..=from).rev() {
            let (next, step) = self.step(l, &h, features.map(|f| &f[l]), pick);
            h = next;
            steps.push(step);
        }
        (h, steps)
    }

    fn decode(&self, h: &Tensor) -> Tensor {
        self.output.forward(&self.out_cell.forward(h))
    }

    fn top(&self) -> usize {
        self.layers.len() - 1
    }

    /// The posterior pass over `x`: the final state and the steps, top first.
    fn infer(&self, x: &Tensor, pick: Pick) -> (Tensor, Vec<Step>) {
        let features = self.bottom_up(x);
        let h = self.start(x.size()[0]);
        self.descend(h, self.top(), 0, Some(&features), pick)
    }
    /// The ELBO terms of `x` from one top-down pass ([`Self::infer`]): `h` the final
    /// state, `steps` the layers, top first.
    fn terms_of_pass(&self, x: &Tensor, h: &Tensor, steps: &[Step]) -> ElboTerms {
        let reconstruction = self.config.likelihood.log_prob(&self.decode(h), x);
        let mut prior_matching = None;
        let mut layers = Vec::new();
        // Steps are top first; the layers are listed bottom first.
        for (j, step) in steps.iter().enumerate().rev() {
            let l = self.top() - j;
            let Some((q_mean, q_log_var)) = &step.q else {
                continue;
            };
            match &step.p {
                Some((p_mean, p_log_var)) => layers.push((
                    format!("kl_layer_{}", l + 1),
                    gaussian::kl_divergence(q_mean, q_log_var, p_mean, p_log_var),
                )),
                None => {
                    prior_matching = Some(gaussian::kl_to_standard_normal(q_mean, q_log_var));
                }
            }
        }
        ElboTerms {
            prior_matching: prior_matching.unwrap_or_else(|| reconstruction.zeros_like()),
            reconstruction,
            layers,
        }
    }
}

impl ElboModel for LadderHvae {
    fn config(&self) -> ModelConfig {
        ModelConfig::Hvae(super::HvaeConfig::Ladder(self.config.clone()))
    }

    fn likelihood(&self) -> Likelihood {
        self.config.likelihood
    }

    fn elbo_terms(&self, x: &Tensor) -> ElboTerms {
        let (h, steps) = self.infer(x, Pick::Draw);
        self.terms_of_pass(x, &h, &steps)
    }

    fn log_importance_weights(&self, x: &Tensor, k: i64) -> Result<Tensor> {
        let batch = x.size()[0];
        let features: Vec<Tensor> = self
            .bottom_up(x)
            .iter()
            .map(|e| repeat_batch(e, k))
            .collect();
        let h = self.start(k * batch);
        let (h, steps) = self.descend(h, self.top(), 0, Some(&features), Pick::Draw);
        let mut log_w = self
            .config
            .likelihood
            .log_prob(&self.decode(&h), &repeat_batch(x, k));
        for step in &steps {
            if let Some((_, q_log_var)) = &step.q {
                log_w -= log_density_of_draw(&step.eps, q_log_var);
            }
            log_w += match &step.p {
                Some((p_mean, p_log_var)) => gaussian::log_density(&step.z, p_mean, p_log_var),
                None => gaussian::log_density_standard(&step.z),
            };
        }
        Ok(log_w.reshape([k, batch]))
    }

    fn sample(&self, n: i64) -> Result<Tensor> {
        let (h, _) = self.descend(self.start(n), self.top(), 0, None, Pick::Draw);
        Ok(self.config.likelihood.mean(&self.decode(&h)))
    }

    fn reconstruct(&self, x: &Tensor) -> Tensor {
        let (h, _) = self.infer(x, Pick::Mean);
        self.config.likelihood.mean(&self.decode(&h))
    }

    fn train_step(&self) -> Result<Box<dyn TrainStep + '_>> {
        ElboStep::boxed(self, &TrainingAids::default())
    }

    fn capabilities(&self) -> Capabilities<'_> {
        Capabilities::hierarchical(self)
    }
}

impl Latents for LadderHvae {
    fn latent_layers(&self) -> usize {
        self.layers.len()
    }

    fn posterior_means(&self, x: &Tensor) -> Vec<(String, Tensor)> {
        let (_, steps) = self.infer(x, Pick::Draw);
        let top = self.top();
        let mut means: Vec<(String, Tensor)> = steps
            .into_iter()
            .enumerate()
            .filter_map(|(j, step)| {
                step.q
                    .map(|(mean, _)| (layer_name(top - j + 1), mean.flatten(1, -1)))
            })
            .collect();
        means.reverse();
        means
    }
}

impl Hierarchical for LadderHvae {
    fn fixed_top_samples(&self, fixed: usize, rows: i64, columns: i64) -> Result<Tensor> {
        let layers = self.layers.len();
        super::check_fixed_top(fixed, layers, rows, columns)?;
        let top = self.top();
        let (h, _) = self.descend(self.start(rows), top, layers - fixed, None, Pick::Draw);
        let h = h.repeat_interleave_self_int(columns, 0, None);
        let (h, _) = self.descend(h, layers - fixed - 1, 0, None, Pick::Draw);
        Ok(self.config.likelihood.mean(&self.decode(&h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gaussian::tests::values;
    use tch::nn::VarStore;

    fn model(arch: HvaeArch, dims: Vec<i64>) -> (VarStore, LadderHvae) {
        tch::manual_seed(2);
        let vs = VarStore::new(tch::Device::Cpu);
        let config =
            LadderConfig::new([1, 28, 28], dims, arch, Some(16), Likelihood::Bernoulli).unwrap();
        let m = LadderHvae::new(&vs.root(), config).unwrap();
        (vs, m)
    }

    #[test]
    fn shapes_and_names_for_both_archs() {
        let _generator = crate::testing::generator_lock();
        for (arch, latent_numel) in [
            (HvaeArch::Mlp, [6, 4, 2]),
            (HvaeArch::Conv, [6 * 49, 4 * 49, 2 * 49]),
        ] {
            let (_vs, m) = model(arch, vec![6, 4, 2]);
            let x = Tensor::rand([5, 1, 28, 28], (Kind::Float, tch::Device::Cpu)).round();
            let terms = m.elbo_terms(&x);
            let names: Vec<&str> = terms.layers.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["kl_layer_1", "kl_layer_2"], "{arch}");
            assert_eq!(terms.reconstruction.size(), [5]);
            assert_eq!(terms.prior_matching.size(), [5]);
            assert_eq!(m.log_importance_weights(&x, 3).unwrap().size(), [3, 5]);
            assert_eq!(m.sample(4).unwrap().size(), [4, 1, 28, 28]);
            assert_eq!(m.reconstruct(&x).size(), [5, 1, 28, 28]);
            let means = m.posterior_means(&x);
            let got: Vec<(String, i64)> = means
                .iter()
                .map(|(n, t)| (n.clone(), t.size()[1]))
                .collect();
            let want: Vec<(String, i64)> = (0..3)
                .map(|l| (format!("z_{}", l + 1), latent_numel[l]))
                .collect();
            assert_eq!(got, want, "{arch}");
            assert_eq!(m.fixed_top_samples(1, 2, 3).unwrap().size(), [6, 1, 28, 28]);
            assert!(m.fixed_top_samples(3, 2, 3).is_err());
        }
    }

    /// Each layer's KL is elbo-math's closed form between the posterior and the prior
    /// the top-down pass produced (same draws, by re-seeding).
    #[test]
    fn layer_kls_are_the_closed_form_of_elbo_math() {
        let _generator = crate::testing::generator_lock();
        let (_vs, m) = model(HvaeArch::Mlp, vec![3, 2]);
        let x = Tensor::rand([1, 1, 28, 28], (Kind::Float, tch::Device::Cpu)).round();
        // One pass serves both sides (no re-seeding of libtorch's global generator,
        // which other test threads draw from).
        let (h, steps) = m.infer(&x, Pick::Draw);
        let terms = m.terms_of_pass(&x, &h, &steps);
        // steps[0] is the top (z_2, against N(0, I)), steps[1] is z_1.
        let kl = |q: &(Tensor, Tensor), p: Option<&(Tensor, Tensor)>| -> f64 {
            let (qm, qv) = (values(&q.0), values(&q.1));
            let (pm, pv) = p.map_or((vec![0.0; qm.len()], vec![0.0; qm.len()]), |p| {
                (values(&p.0), values(&p.1))
            });
            (0..qm.len())
                .map(|i| elbo_math::gaussian::kl_divergence(qm[i], qv[i], pm[i], pv[i]))
                .sum()
        };
        let top = steps[0].q.as_ref().unwrap();
        let bottom = steps[1].q.as_ref().unwrap();
        let want_top = kl(top, None);
        let want_bottom = kl(bottom, steps[1].p.as_ref());
        let got_top = values(&terms.prior_matching)[0];
        let got_bottom = values(&terms.layers[0].1)[0];
        // f32 tensors, a few terms of size ~1: 1e-5 relative.
        for (got, want) in [(got_top, want_top), (got_bottom, want_bottom)] {
            assert!(
                (got - want).abs() < 1e-5 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn bad_configurations_are_refused() {
        let _generator = crate::testing::generator_lock();
        let err = LadderConfig::new(
            [1, 30, 30],
            vec![4],
            HvaeArch::Conv,
            None,
            Likelihood::Bernoulli,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("divisible by 4, found 30x30"), "{err}");
        let err = LadderConfig::new(
            [1, 28, 28],
            vec![4],
            HvaeArch::Mlp,
            Some(0),
            Likelihood::Bernoulli,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("width 0"), "{err}");
        let err = LadderConfig::new(
            [1, 28, 28],
            vec![],
            HvaeArch::Mlp,
            None,
            Likelihood::Bernoulli,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("at least one"), "{err}");
    }
}
