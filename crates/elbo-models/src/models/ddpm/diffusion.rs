//! The forward process and the reverse-step coefficients as tensors, every value taken
//! from elbo-math's f64 [`NoiseSchedule`] and [`elbo_math::diffusion::posterior`].
//!
//! Entry `t` of each coefficient tensor belongs to timestep `t` (entry 0: no noise), so a
//! batch of timesteps indexes them directly.

use elbo_math::NoiseSchedule;
use elbo_math::diffusion;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::nn::gaussian::{kl_divergence, kl_to_standard_normal, log_density};
use crate::nn::likelihood::discretized_gaussian_log_prob;
use crate::sample::ClipX0;

/// The noise schedule family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Ho et al.: beta from 1e-4 to 0.02 over T = 1000 (both scaled by 1000 / T, so any T
    /// spans the same noise levels).
    Linear,
    /// Nichol & Dhariwal's cosine schedule (s = 0.008, betas clipped at 0.999).
    Cosine,
    /// Jabri et al.'s sigmoid schedule (start -3, end 3, tau 1).
    Sigmoid,
}

impl ScheduleKind {
    /// The schedule with `timesteps` steps.
    pub fn build(self, timesteps: usize) -> Result<NoiseSchedule> {
        let schedule = match self {
            ScheduleKind::Linear => {
                let scale = 1000.0 / timesteps.max(1) as f64;
                NoiseSchedule::linear(timesteps, 1e-4 * scale, (0.02 * scale).min(0.999))
            }
            ScheduleKind::Cosine => NoiseSchedule::cosine(timesteps, 0.008, 0.999),
            ScheduleKind::Sigmoid => NoiseSchedule::sigmoid(timesteps, -3.0, 3.0, 1.0),
        };
        schedule.map_err(|e| Error::Config {
            detail: format!("{self:?} schedule with {timesteps} steps: {e}"),
        })
    }
}

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// The noise `eps` (Ho et al.'s default).
    Eps,
    /// The clean image `x_0`.
    X0,
    /// `v = sqrt(abar) eps - sqrt(1 - abar) x_0` (Salimans & Ho).
    V,
}

/// The variance of the reverse steps `p(x_{t-1} | x_t)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VarianceKind {
    /// `beta_t` (Ho et al.'s "fixed large"; their CIFAR-10 choice).
    FixedLarge,
    /// `beta_tilde_t`, the posterior variance ("fixed small").
    FixedSmall,
}

/// The decoder `p(x_0 | x_1)` of the bound's `L_0` term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    /// Ho et al.'s discretized Gaussian for 8-bit data in [-1, 1] (a likelihood of the
    /// pixels).
    Discretized,
    /// The continuous Gaussian density (for continuous data, as in elbo-math's test bed).
    Continuous,
}

/// A schedule with its coefficient tensors on a device.
#[derive(Debug)]
pub struct Diffusion {
    schedule: NoiseSchedule,
    objective: Objective,
    signal: Tensor,
    noise: Tensor,
    coef_x0: Tensor,
    coef_xt: Tensor,
    posterior_log_var: Tensor,
    model_log_var: Tensor,
    model_variance: Vec<f64>,
}

impl Diffusion {
    /// The coefficients of `schedule` on `device`. At t = 1, where the posterior variance
    /// is 0, both variance choices use `beta_tilde_2` (Ho et al.'s clipping; `beta_1` when
    /// T = 1).
    pub fn new(
        schedule: NoiseSchedule,
        objective: Objective,
        variance: VarianceKind,
        device: Device,
    ) -> Result<Diffusion> {
        let big_t = schedule.num_steps();
        let math = |e: elbo_math::MathError| Error::MathIn {
            what: "diffusion coefficients".to_string(),
            source: e,
        };
        let mut signal = vec![1.0];
        let mut noise = vec![0.0];
        let mut coef_x0 = vec![1.0];
        let mut coef_xt = vec![0.0];
        let mut posterior_var = vec![1.0];
        let mut model_var = vec![1.0];
        let floor = if big_t >= 2 {
            schedule.posterior_variance(2).map_err(math)?
        } else {
            schedule.beta(1).map_err(math)?
        };
        for t in 1..=big_t {
            let marginal = diffusion::forward_marginal(&schedule, t).map_err(math)?;
            signal.push(marginal.signal());
            noise.push(marginal.noise());
            let post = diffusion::posterior(&schedule, t).map_err(math)?;
            coef_x0.push(post.coef_x0());
            coef_xt.push(post.coef_xt());
            let tilde = if t == 1 { floor } else { post.variance() };
            posterior_var.push(tilde);
            model_var.push(match (variance, t) {
                (_, 1) => floor,
                (VarianceKind::FixedLarge, _) => post.beta(),
                (VarianceKind::FixedSmall, _) => tilde,
            });
        }
        let tensor = |v: &[f64]| Tensor::from_slice(v).to_kind(Kind::Float).to_device(device);
        let ln = |v: &[f64]| v.iter().map(|x| x.ln()).collect::<Vec<_>>();
        Ok(Diffusion {
            objective,
            signal: tensor(&signal),
            noise: tensor(&noise),
            coef_x0: tensor(&coef_x0),
            coef_xt: tensor(&coef_xt),
            posterior_log_var: tensor(&ln(&posterior_var)),
            model_log_var: tensor(&ln(&model_var)),
            model_variance: model_var,
            schedule,
        })
    }

    /// The f64 schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// T.
    pub fn timesteps(&self) -> usize {
        self.schedule.num_steps()
    }

    /// Where the coefficient tensors live.
    pub fn device(&self) -> Device {
        self.signal.device()
    }

    /// What the network predicts.
    pub fn objective(&self) -> Objective {
        self.objective
    }

    /// The reverse-step variance `sigma_t^2` at t in `1..=T`.
    pub fn model_variance(&self, t: usize) -> f64 {
        self.model_variance[t.min(self.model_variance.len() - 1)]
    }

    /// `coef[t]` for a batch of timesteps, shaped to broadcast against `like`.
    fn at(coef: &Tensor, t: &Tensor, like: &Tensor) -> Tensor {
        let mut shape = vec![-1i64];
        shape.resize(like.dim(), 1);
        coef.index_select(0, t).reshape(shape.as_slice())
    }

    /// `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps` (the forward marginal).
    pub fn q_sample(&self, x0: &Tensor, t: &Tensor, eps: &Tensor) -> Tensor {
        Self::at(&self.signal, t, x0) * x0 + Self::at(&self.noise, t, x0) * eps
    }

    /// What the network should output at `t` for the draw `x_t = q_sample(x0, t, eps)`.
    pub fn target(&self, x0: &Tensor, t: &Tensor, eps: &Tensor) -> Tensor {
        match self.objective {
            Objective::Eps => eps.shallow_clone(),
            Objective::X0 => x0.shallow_clone(),
            Objective::V => Self::at(&self.signal, t, x0) * eps - Self::at(&self.noise, t, x0) * x0,
        }
    }

    /// The network's output at `(x_t, t)` as predictions of `x_0` and of `eps`, `x_0`
    /// as `clip_x0` says (and `eps` then recomputed from it).
    pub fn predictions(
        &self,
        output: &Tensor,
        x_t: &Tensor,
        t: &Tensor,
        clip_x0: ClipX0,
    ) -> (Tensor, Tensor) {
        let s = Self::at(&self.signal, t, x_t);
        let n = Self::at(&self.noise, t, x_t);
        let (x0, eps) = match self.objective {
            Objective::Eps => ((x_t - &n * output) / &s, output.shallow_clone()),
            Objective::X0 => (output.shallow_clone(), (x_t - &s * output) / &n),
            Objective::V => (&s * x_t - &n * output, &n * x_t + &s * output),
        };
        if clip_x0 == ClipX0::None {
            (x0, eps)
        } else {
            let x0 = clip_x0.apply(&x0);
            let eps = (x_t - &s * &x0) / &n;
            (x0, eps)
        }
    }

    /// The reverse mean `mu_theta(x_t, t)`: the posterior mean of `q(x_{t-1} | x_t, x_0)`
    /// at the predicted `x_0` (for the eps objective, the seeds' eq. 34).
    pub fn reverse_mean(&self, x0_hat: &Tensor, x_t: &Tensor, t: &Tensor) -> Tensor {
        Self::at(&self.coef_x0, t, x_t) * x0_hat + Self::at(&self.coef_xt, t, x_t) * x_t
    }

    /// `ln sigma_t^2` shaped like `like`.
    pub fn model_log_var(&self, t: &Tensor, like: &Tensor) -> Tensor {
        Self::at(&self.model_log_var, t, like).expand_as(like)
    }

    /// The prior matching `L_T = KL(q(x_T | x_0) || N(0, I))` per example.
    pub fn prior_matching(&self, x0: &Tensor) -> Tensor {
        let big_t = self.timesteps() as i64;
        let signal = self.signal.get(big_t);
        let log_var = self.noise.get(big_t).square().log().expand_as(x0);
        kl_to_standard_normal(&(x0 * signal), &log_var)
    }

    /// The denoising-matching term `KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))` per
    /// example, for t >= 2, given the model's prediction of `x_0`.
    pub fn denoising_matching(
        &self,
        x0: &Tensor,
        x_t: &Tensor,
        t: &Tensor,
        x0_hat: &Tensor,
    ) -> Tensor {
        let mean_q = self.reverse_mean(x0, x_t, t);
        let mean_p = self.reverse_mean(x0_hat, x_t, t);
        let log_var_q = Self::at(&self.posterior_log_var, t, x_t).expand_as(x_t);
        kl_divergence(&mean_q, &log_var_q, &mean_p, &self.model_log_var(t, x_t))
    }

    /// The reconstruction `log p(x_0 | x_1)` per example (`t` all ones), the decoder a
    /// Gaussian at the reverse mean with the reverse variance of step 1.
    pub fn reconstruction(
        &self,
        x0: &Tensor,
        x_1: &Tensor,
        t: &Tensor,
        x0_hat: &Tensor,
        decoder: Decoder,
    ) -> Tensor {
        let mean = self.reverse_mean(x0_hat, x_1, t);
        let log_var = self.model_log_var(t, x_1);
        match decoder {
            Decoder::Discretized => discretized_gaussian_log_prob(x0, &mean, &(log_var * 0.5)),
            Decoder::Continuous => log_density(x0, &mean, &log_var),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gaussian::tests::values;
    use elbo_math::Prediction;
    use elbo_math::denoising_matching::{self, ReverseVariance};

    fn small() -> Diffusion {
        let schedule = ScheduleKind::Linear.build(50).unwrap();
        Diffusion::new(
            schedule,
            Objective::Eps,
            VarianceKind::FixedLarge,
            Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn coefficients_match_elbo_math() {
        let _generator = crate::testing::generator_lock();
        let d = small();
        for t in [1usize, 2, 17, 50] {
            let m = diffusion::forward_marginal(d.schedule(), t).unwrap();
            assert!((d.signal.double_value(&[t as i64]) - m.signal()).abs() < 1e-7);
            assert!((d.noise.double_value(&[t as i64]) - m.noise()).abs() < 1e-7);
        }
        // Fixed large: beta_t from t = 2 on, beta_tilde_2 at t = 1.
        let beta = d.schedule().beta(30).unwrap();
        assert!((d.model_variance(30) - beta).abs() < 1e-15);
        let tilde2 = d.schedule().posterior_variance(2).unwrap();
        assert!((d.model_variance(1) - tilde2).abs() < 1e-15);
    }

    #[test]
    fn predictions_recover_x0_and_eps_for_every_objective() {
        let _generator = crate::testing::generator_lock();
        let x0 = Tensor::from_slice(&[0.5f32, -0.25, 0.9, -1.0]).reshape([2, 1, 1, 2]);
        let eps = Tensor::from_slice(&[0.1f32, -1.3, 2.0, 0.7]).reshape([2, 1, 1, 2]);
        let t = Tensor::from_slice(&[3i64, 40]);
        for objective in [Objective::Eps, Objective::X0, Objective::V] {
            let schedule = ScheduleKind::Cosine.build(50).unwrap();
            let d =
                Diffusion::new(schedule, objective, VarianceKind::FixedSmall, Device::Cpu).unwrap();
            let x_t = d.q_sample(&x0, &t, &eps);
            let (x0_hat, eps_hat) = d.predictions(&d.target(&x0, &t, &eps), &x_t, &t, ClipX0::None);
            // f32 arithmetic on O(1) values; at t = 3 x0 from eps divides by sqrt(abar)~1
            // and eps from x0 by sqrt(1 - abar)~0.02, which amplifies rounding 50-fold.
            let err = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
            assert!(err(&x0_hat, &x0) < 1e-5, "{objective:?} x0");
            assert!(err(&eps_hat, &eps) < 1e-3, "{objective:?} eps");
        }
    }

    #[test]
    fn the_denoising_term_is_elbo_maths_kl_in_every_parameterisation() {
        let _generator = crate::testing::generator_lock();
        let d = small();
        let x0 = Tensor::from_slice(&[0.3f32, -0.8, 0.05]).reshape([1, 3]);
        let eps = Tensor::from_slice(&[1.1f32, -0.4, 0.2]).reshape([1, 3]);
        let eps_hat = Tensor::from_slice(&[0.9f32, -0.1, 0.6]).reshape([1, 3]);
        for t in [2usize, 10, 49] {
            let tt = Tensor::from_slice(&[t as i64]);
            let x_t = d.q_sample(&x0, &tt, &eps);
            let (x0_hat, _) = d.predictions(&eps_hat, &x_t, &tt, ClipX0::None);
            let got = values(&d.denoising_matching(&x0, &x_t, &tt, &x0_hat))[0];
            let weights = denoising_matching::denoising_matching_weights(
                d.schedule(),
                t,
                ReverseVariance::Beta,
            )
            .unwrap();
            let want: f64 = (0..3)
                .map(|i| {
                    let e = eps.double_value(&[0, i]);
                    let p = eps_hat.double_value(&[0, i]);
                    weights.kl(Prediction::Eps, e, p)
                })
                .sum();
            // f32 tensors; relative 1e-3 covers the rounding of mean differences.
            assert!(
                (got - want).abs() <= 1e-3 * want.abs() + 1e-6,
                "t {t}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn prior_matching_is_the_closed_form() {
        let _generator = crate::testing::generator_lock();
        let d = small();
        let x0 = Tensor::from_slice(&[0.7f32, -0.2]).reshape([1, 2]);
        let got = values(&d.prior_matching(&x0))[0];
        let m = diffusion::forward_marginal(d.schedule(), 50).unwrap();
        let want: f64 = [0.7f64, -0.2]
            .iter()
            .map(|x| elbo_math::gaussian::kl_to_standard_normal(m.signal() * x, m.variance().ln()))
            .sum();
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1e-3),
            "{got} vs {want}"
        );
    }
}
