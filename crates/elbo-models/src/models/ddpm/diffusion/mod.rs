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
    /// Learned (improved DDPM): the network's extra output `v` in [-1, 1] (per pixel)
    /// interpolates the log-variance between the two fixed choices,
    /// `ln sigma^2 = f ln beta_t + (1 - f) ln beta_tilde_t` with `f = (v + 1) / 2`.
    LearnedRange,
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
    /// `ln beta_t` (the learned range's upper end; index 0 unused).
    beta_log: Tensor,
    variance: VarianceKind,
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
        let mut betas = vec![1.0];
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
            betas.push(post.beta());
            model_var.push(match (variance, t) {
                (_, 1) => floor,
                (VarianceKind::FixedLarge, _) => post.beta(),
                // A learned variance's fixed stand-in (where a caller asks for one number)
                // is the middle of its range, where an untrained head starts.
                (VarianceKind::LearnedRange, _) => (post.beta() * tilde).sqrt(),
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
            beta_log: tensor(&ln(&betas)),
            variance,
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

    /// Whether the network also outputs the reverse variances (a learned range).
    pub fn learns_variance(&self) -> bool {
        self.variance == VarianceKind::LearnedRange
    }

    /// The part of the network's `output` that predicts eps, x_0 or v: all of it, or its
    /// first `x_t` channels when the variance is learned.
    pub fn mean_output(&self, output: &Tensor, x_t: &Tensor) -> Tensor {
        if self.learns_variance() {
            output.narrow(1, 0, x_t.size()[1])
        } else {
            output.shallow_clone()
        }
    }

    /// The fixed reverse-step variance `sigma_t^2` at t in `1..=T` (for a learned one,
    /// the middle of its range, `sqrt(beta_t beta_tilde_t)`).
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
        let output = &self.mean_output(output, x_t);
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

    /// `ln sigma_t^2` of the reverse step at `t`, shaped like `x_t`: the fixed choice,
    /// or the learned one from the second half of the network's `output` there:
    /// `f ln beta_t + (1 - f) ln beta_tilde_t`, `f = (v + 1) / 2` (improved DDPM; at
    /// t = 1 `beta_tilde_2` stands for the posterior's 0, as for the fixed choices).
    pub fn model_log_var(&self, t: &Tensor, x_t: &Tensor, output: &Tensor) -> Tensor {
        if !self.learns_variance() {
            return Self::at(&self.model_log_var, t, x_t).expand_as(x_t);
        }
        let c = x_t.size()[1];
        let frac = (output.narrow(1, c, c) + 1.0) * 0.5;
        let max = Self::at(&self.beta_log, t, x_t);
        let min = Self::at(&self.posterior_log_var, t, x_t);
        &frac * max + (1.0 - &frac) * min
    }

    /// The prior matching `L_T = KL(q(x_T | x_0) || N(0, I))` per example.
    pub fn prior_matching(&self, x0: &Tensor) -> Tensor {
        let big_t = self.timesteps() as i64;
        let signal = self.signal.get(big_t);
        let log_var = self.noise.get(big_t).square().log().expand_as(x0);
        kl_to_standard_normal(&(x0 * signal), &log_var)
    }

    /// The denoising-matching term `KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))` per
    /// example, for t >= 2, given the model's prediction of `x_0` and its reverse
    /// log-variance ([`Diffusion::model_log_var`]).
    pub fn denoising_matching(
        &self,
        x0: &Tensor,
        x_t: &Tensor,
        t: &Tensor,
        x0_hat: &Tensor,
        log_var: &Tensor,
    ) -> Tensor {
        let mean_q = self.reverse_mean(x0, x_t, t);
        let mean_p = self.reverse_mean(x0_hat, x_t, t);
        let log_var_q = Self::at(&self.posterior_log_var, t, x_t).expand_as(x_t);
        kl_divergence(&mean_q, &log_var_q, &mean_p, log_var)
    }

    /// The reconstruction `log p(x_0 | x_1)` per example (`t` all ones), the decoder a
    /// Gaussian at the reverse mean with the model's reverse log-variance of step 1.
    pub fn reconstruction(
        &self,
        x0: &Tensor,
        x_1: &Tensor,
        t: &Tensor,
        x0_hat: &Tensor,
        log_var: &Tensor,
        decoder: Decoder,
    ) -> Tensor {
        let mean = self.reverse_mean(x0_hat, x_1, t);
        match decoder {
            Decoder::Discretized => discretized_gaussian_log_prob(x0, &mean, &(log_var * 0.5)),
            Decoder::Continuous => log_density(x0, &mean, log_var),
        }
    }

    /// The ancestral step from `t` to `prev < t` (`t - 1`, or the previous kept step of a
    /// respaced sampler) at the network's `output` at `(x_t, t)`: the mean of
    /// `p(x_prev | x_t)` (the posterior mean of `q(x_prev | x_t, x_0)` at the predicted
    /// `x_0`) and its variance: the fixed choice of the two-step process `t -> prev`
    /// (`beta' = 1 - abar_t / abar_prev` or its posterior variance `beta_tilde'`), or
    /// the learned interpolation between them (improved DDPM's respacing). At `prev = 0`
    /// the variance is 0: the last step adds no noise.
    pub fn ancestral_step(
        &self,
        output: &Tensor,
        x_t: &Tensor,
        t: usize,
        prev: usize,
        clip_x0: ClipX0,
    ) -> Result<(Tensor, Tensor)> {
        let b = x_t.size()[0];
        let steps = Tensor::full([b], t as i64, (Kind::Int64, x_t.device()));
        let (x0_hat, _) = self.predictions(output, x_t, &steps, clip_x0);
        if prev + 1 == t {
            let mean = self.reverse_mean(&x0_hat, x_t, &steps);
            let variance = if t == 1 {
                Tensor::zeros([], (Kind::Float, x_t.device()))
            } else if self.learns_variance() {
                self.model_log_var(&steps, x_t, output).exp()
            } else {
                Tensor::full([], self.model_variance(t), (Kind::Float, x_t.device()))
            };
            return Ok((mean, variance));
        }
        let math = |e: elbo_math::MathError| Error::MathIn {
            what: "a respaced ancestral step".to_string(),
            source: e,
        };
        let alpha_bar = |s: usize| {
            if s == 0 {
                Ok(1.0)
            } else {
                self.schedule.alpha_bar(s).map_err(math)
            }
        };
        let post = diffusion::posterior_between(alpha_bar(prev)?, alpha_bar(t)?).map_err(math)?;
        let mean = &x0_hat * post.coef_x0() + x_t * post.coef_xt();
        let device = x_t.device();
        let fixed = |v: f64| Tensor::full([], v, (Kind::Float, device));
        let variance = match (prev, self.variance) {
            (0, _) => fixed(0.0),
            (_, VarianceKind::FixedLarge) => fixed(post.beta()),
            (_, VarianceKind::FixedSmall) => fixed(post.variance()),
            (_, VarianceKind::LearnedRange) => {
                let c = x_t.size()[1];
                let frac = (output.narrow(1, c, c) + 1.0) * 0.5;
                let log_var: Tensor =
                    &frac * post.beta().ln() + (1.0 - &frac) * post.variance().ln();
                log_var.exp()
            }
        };
        Ok((mean, variance))
    }
}

#[cfg(test)]
mod tests;
