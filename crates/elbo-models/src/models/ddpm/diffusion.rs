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
            let log_var = d.model_log_var(&tt, &x_t, &eps_hat);
            let got = values(&d.denoising_matching(&x0, &x_t, &tt, &x0_hat, &log_var))[0];
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

    /// The learned range: v = -1 gives the posterior's log-variance, v = 1 ln beta_t,
    /// v = 0 their midpoint; the respaced ancestral step's variance is the same
    /// interpolation between the two-step process's beta' and beta_tilde' (elbo-math's
    /// posterior between the steps), and its mean that posterior's mean.
    #[test]
    fn the_learned_range_interpolates_the_log_variance() {
        let _generator = crate::testing::generator_lock();
        let schedule = ScheduleKind::Linear.build(50).unwrap();
        let d = Diffusion::new(
            schedule.clone(),
            Objective::Eps,
            VarianceKind::LearnedRange,
            Device::Cpu,
        )
        .unwrap();
        assert!(d.learns_variance());
        let x_t = Tensor::from_slice(&[0.3f32, -0.7]).reshape([1, 2, 1, 1]);
        for (v, f) in [(-1.0f32, 0.0), (1.0, 1.0), (0.0, 0.5)] {
            let output = Tensor::from_slice(&[0.1f32, 0.2, v, v]).reshape([1, 4, 1, 1]);
            let t = Tensor::from_slice(&[20i64]);
            let got = d
                .model_log_var(&t, &x_t, &output)
                .double_value(&[0, 1, 0, 0]);
            let (beta, tilde) = (
                schedule.beta(20).unwrap(),
                schedule.posterior_variance(20).unwrap(),
            );
            let want = f * beta.ln() + (1.0 - f) * tilde.ln();
            assert!((got - want).abs() < 1e-5, "v {v}: {got} vs {want}");
        }
        // A respaced step 30 -> 10 at v = 0.4.
        let output = Tensor::from_slice(&[0.1f32, 0.2, 0.4, 0.4]).reshape([1, 4, 1, 1]);
        let (mean, variance) = d
            .ancestral_step(&output, &x_t, 30, 10, ClipX0::None)
            .unwrap();
        let post = diffusion::posterior_between(
            schedule.alpha_bar(10).unwrap(),
            schedule.alpha_bar(30).unwrap(),
        )
        .unwrap();
        let f = 0.7f64;
        let want = (f * post.beta().ln() + (1.0 - f) * post.variance().ln()).exp();
        let got = variance.double_value(&[0, 0, 0, 0]);
        assert!((got / want - 1.0).abs() < 1e-5, "{got} vs {want}");
        let ab = schedule.alpha_bar(30).unwrap();
        let x0_hat = (0.3 - (1.0 - ab).sqrt() * 0.1) / ab.sqrt();
        let want_mean = post.coef_x0() * x0_hat + post.coef_xt() * 0.3;
        assert!((mean.double_value(&[0, 0, 0, 0]) - want_mean).abs() < 1e-5);
        // At prev = 0 the step adds no noise.
        let (_, last) = d
            .ancestral_step(&output, &x_t, 30, 0, ClipX0::None)
            .unwrap();
        assert_eq!(last.double_value(&[]), 0.0);
    }

    /// Training the learned variance on Gaussian data, with the optimal mean, converges
    /// to the optimal (exact) reverse variance `beta_t v_{t-1} / v_t` of elbo-math's test
    /// bed at every step: the bound's KL terms minimised over one v per step by Adam on a
    /// fixed sample of N = 16,384 per step. The sample optimum is `beta_tilde_t` plus the
    /// sample mean of the squared mean error, whose relative standard error is at most
    /// sqrt(2 / N) = 1.1% of the variance: 5% is over 4 standard errors.
    #[test]
    fn a_learned_variance_converges_to_the_optimal_one_on_gaussian_data() {
        use elbo_math::testbed::gaussian_diffusion::{GaussianDataDiffusion, ReverseStepVariance};
        let _generator = crate::testing::generator_lock();
        let big_t = 10usize;
        let schedule = ScheduleKind::Cosine.build(big_t).unwrap();
        let (m, s2) = (0.2, 0.25);
        let bed = GaussianDataDiffusion::new(m, s2, schedule.clone(), ReverseStepVariance::Exact)
            .unwrap();
        let d = Diffusion::new(
            schedule.clone(),
            Objective::Eps,
            VarianceKind::LearnedRange,
            Device::Cpu,
        )
        .unwrap();
        let n = 16_384i64;
        tch::manual_seed(3);
        // One fixed sample per step: x_0 ~ N(m, s2), x_t from it.
        let draws: Vec<(Tensor, Tensor, Tensor, Tensor)> = (2..=big_t)
            .map(|t| {
                let x0 = Tensor::randn([n, 1, 1, 1], (Kind::Float, Device::Cpu)) * s2.sqrt() + m;
                let tt = Tensor::full([n], t as i64, (Kind::Int64, Device::Cpu));
                let x_t = d.q_sample(&x0, &tt, &x0.randn_like());
                // The optimal eps prediction: x_0's posterior mean given x_t.
                let ab = schedule.alpha_bar(t).unwrap();
                let gain = ab.sqrt() * s2 / (ab * s2 + 1.0 - ab);
                let x0_opt = (&x_t - ab.sqrt() * m) * gain + m;
                let eps_opt = (&x_t - &x0_opt * ab.sqrt()) / (1.0 - ab).sqrt();
                (x0, tt, x_t, eps_opt)
            })
            .collect();
        let v =
            Tensor::zeros([big_t as i64 + 1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut m1 = Tensor::zeros_like(&v);
        let mut m2 = Tensor::zeros_like(&v);
        for step in 1..=400 {
            let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
            for (x0, tt, x_t, eps_opt) in &draws {
                let vt = v.index_select(0, tt).reshape([n, 1, 1, 1]);
                let output = Tensor::cat(&[eps_opt.shallow_clone(), vt], 1);
                let (x0_hat, _) = d.predictions(&output, x_t, tt, ClipX0::None);
                let log_var = d.model_log_var(tt, x_t, &output);
                loss += d
                    .denoising_matching(x0, x_t, tt, &x0_hat, &log_var)
                    .mean(Kind::Float);
            }
            let grad = Tensor::run_backward(&[&loss], &[&v], false, false)
                .pop()
                .unwrap();
            // Adam by hand (lr 0.05), on one tensor.
            tch::no_grad(|| {
                m1 = &m1 * 0.9 + &grad * 0.1;
                m2 = &m2 * 0.999 + grad.square() * 0.001;
                let hat1 = &m1 / (1.0 - 0.9f64.powi(step));
                let hat2 = &m2 / (1.0 - 0.999f64.powi(step));
                let update = hat1 / (hat2.sqrt() + 1e-8) * 0.05;
                let _ = v.shallow_clone().g_sub_(&update);
            });
        }
        for t in 2..=big_t {
            let tt = Tensor::from_slice(&[t as i64]);
            let x_t = Tensor::zeros([1, 1, 1, 1], (Kind::Float, Device::Cpu));
            let output = Tensor::cat(
                &[
                    x_t.shallow_clone(),
                    v.detach().get(t as i64).reshape([1, 1, 1, 1]),
                ],
                1,
            );
            let learned = d
                .model_log_var(&tt, &x_t, &output)
                .exp()
                .double_value(&[0, 0, 0, 0]);
            let exact = bed.reverse_step(t).unwrap().variance;
            let (beta, tilde) = (
                schedule.beta(t).unwrap(),
                schedule.posterior_variance(t).unwrap(),
            );
            assert!(
                tilde < exact && exact < beta,
                "t {t}: the optimum is inside the range"
            );
            assert!(
                (learned / exact - 1.0).abs() < 0.05,
                "t {t}: learned {learned}, optimal {exact} (range {tilde} .. {beta})"
            );
        }
    }
}
