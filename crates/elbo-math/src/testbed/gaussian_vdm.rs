//! The variational diffusion model ([`crate::vdm`]) on Gaussian data `x ~ N(mu, s^2)`
//! (per dimension) with the optimal denoiser, the posterior mean `E[x | z_t]`: every term
//! of its bound in closed form.
//!
//! With `z_t / alpha = x + eps / sqrt(v)` at SNR `v`, the optimal denoiser is
//! `x_hat = (mu a + v z_t / alpha) / (a + v)` with `a = 1 / s^2`, and for a given x its
//! expected squared error is `E_eps (x - x_hat)^2 = (d + v) / (a + v)^2` with
//! `d = (x - mu)^2 / s^4`. The continuous-time diffusion loss `-1/2 int SNR'(t) E(x -
//! x_hat)^2 dt = 1/2 int_{v_min}^{v_max} (d + v) / (a + v)^2 dv` is then
//!
//! `L_inf(x) = 1/2 [ln((a + v_max) / (a + v_min)) + (d - a) (1 / (a + v_min) - 1 / (a +
//! v_max))]`,
//!
//! whatever the schedule between `v_max = SNR(gamma_min)` and `v_min = SNR(gamma_max)`.
//! With a Gaussian decoder `p(x | z_0) = N(z_0 / alpha_0, 1 / v_max)` and the prior
//! `p(z_1) = N(0, 1)`, the whole bound is closed-form, and averaged over the data it
//! tends to the data's entropy `1/2 ln(2 pi e s^2)` as `gamma_min -> -inf`, `gamma_max
//! -> inf`: in continuous time, with the optimal denoiser, only the endpoints leave a gap.

use crate::error::Result;
use crate::gaussian;
use crate::validate;
use crate::vdm::{alpha_squared, sigma_squared, snr};

/// Gaussian data for the VDM's closed forms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianDataVdm {
    mean: f64,
    variance: f64,
}

/// Minus the ELBO of one value, term by term (nats).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VdmLoss {
    /// `-E log p(x | z_0)`.
    pub reconstruction: f64,
    /// `KL(q(z_1 | x) || N(0, 1))`.
    pub prior: f64,
    /// The continuous-time diffusion loss.
    pub diffusion: f64,
}

impl VdmLoss {
    /// Their sum: minus the ELBO.
    pub fn total(&self) -> f64 {
        self.reconstruction + self.prior + self.diffusion
    }
}

impl GaussianDataVdm {
    /// Data `N(mean, variance)`.
    pub fn new(mean: f64, variance: f64) -> Result<GaussianDataVdm> {
        validate::finite("data mean", mean)?;
        validate::positive("data variance", variance)?;
        Ok(GaussianDataVdm { mean, variance })
    }

    /// `a = 1 / s^2` and `d = (x - mu)^2 / s^4`.
    fn a_d(&self, x: f64) -> (f64, f64) {
        let a = 1.0 / self.variance;
        (a, (x - self.mean).powi(2) * a * a)
    }

    /// The optimal denoiser's prediction of x from `z` at `gamma`: `E[x | z_t = z]`.
    pub fn optimal_x(&self, z: f64, gamma: f64) -> f64 {
        let (a, v) = (1.0 / self.variance, snr(gamma));
        (self.mean * a + v * z / alpha_squared(gamma).sqrt()) / (a + v)
    }

    /// `E_eps (x - x_hat)^2` of the optimal denoiser for the value `x` at `gamma`.
    pub fn x_error(&self, x: f64, gamma: f64) -> f64 {
        let ((a, d), v) = (self.a_d(x), snr(gamma));
        (d + v) / (a + v).powi(2)
    }

    /// The same averaged over the data: the posterior variance `1 / (a + v)`.
    pub fn mean_x_error(&self, gamma: f64) -> f64 {
        1.0 / (1.0 / self.variance + snr(gamma))
    }

    /// `E_eps |eps - eps_hat|^2 = SNR E (x - x_hat)^2` for the value `x`.
    pub fn eps_error(&self, x: f64, gamma: f64) -> f64 {
        snr(gamma) * self.x_error(x, gamma)
    }

    /// The continuous-time diffusion loss of `x` between `gamma_min` and `gamma_max`
    /// (closed form; the same for every schedule with those endpoints).
    pub fn diffusion_loss(&self, x: f64, gamma_min: f64, gamma_max: f64) -> f64 {
        let (a, d) = self.a_d(x);
        let (v_max, v_min) = (snr(gamma_min), snr(gamma_max));
        0.5 * (((a + v_max) / (a + v_min)).ln() + (d - a) * (1.0 / (a + v_min) - 1.0 / (a + v_max)))
    }

    /// `KL(q(z_1 | x) || N(0, 1))` with `q(z_1 | x) = N(alpha_1 x, sigma_1^2)` at
    /// `gamma_max`.
    pub fn prior_loss(&self, x: f64, gamma_max: f64) -> f64 {
        gaussian::kl_to_standard_normal(
            alpha_squared(gamma_max).sqrt() * x,
            sigma_squared(gamma_max).ln(),
        )
    }

    /// `-E log N(x; z_0 / alpha_0, 1 / SNR(gamma_min))`: `z_0 / alpha_0 - x` has variance
    /// `1 / SNR`, so the expected squared error term is 1/2 whatever x.
    pub fn reconstruction_loss(&self, gamma_min: f64) -> f64 {
        0.5 * (2.0 * std::f64::consts::PI / snr(gamma_min)).ln() + 0.5
    }

    /// Minus the ELBO of `x`, term by term.
    pub fn loss(&self, x: f64, gamma_min: f64, gamma_max: f64) -> VdmLoss {
        VdmLoss {
            reconstruction: self.reconstruction_loss(gamma_min),
            prior: self.prior_loss(x, gamma_max),
            diffusion: self.diffusion_loss(x, gamma_min, gamma_max),
        }
    }

    /// Minus the ELBO averaged over the data.
    pub fn mean_loss(&self, gamma_min: f64, gamma_max: f64) -> f64 {
        let (a2, s2) = (alpha_squared(gamma_max), sigma_squared(gamma_max));
        let second_moment = self.mean * self.mean + self.variance;
        let prior = 0.5 * (a2 * second_moment + s2 - 1.0 - s2.ln());
        let (a, v_max, v_min) = (1.0 / self.variance, snr(gamma_min), snr(gamma_max));
        let diffusion = 0.5 * ((a + v_max) / (a + v_min)).ln();
        self.reconstruction_loss(gamma_min) + prior + diffusion
    }

    /// The data's entropy `1/2 ln(2 pi e s^2)`: the mean loss's lower limit.
    pub fn entropy(&self) -> f64 {
        0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * self.variance).ln()
    }

    /// `log N(x; mu, s^2)`.
    pub fn log_density(&self, x: f64) -> f64 {
        gaussian::log_density(x, self.mean, self.variance.ln())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parameterisation::Prediction;
    use crate::vdm::{
        GammaSchedule, LinearGamma, continuous_loss, discrete_loss, eps_error_weight, integrate,
        marginal,
    };
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    /// A schedule with the same endpoints as `LinearGamma` but another path:
    /// `gamma_min + (gamma_max - gamma_min) t^p`.
    struct PowerGamma {
        min: f64,
        max: f64,
        p: f64,
    }

    impl GammaSchedule for PowerGamma {
        fn gamma(&self, t: f64) -> f64 {
            self.min + (self.max - self.min) * t.powf(self.p)
        }
        fn gamma_derivative(&self, t: f64) -> f64 {
            (self.max - self.min) * self.p * t.powf(self.p - 1.0)
        }
    }

    /// Another: `gamma_min + (gamma_max - gamma_min) (t + 0.8 sin(2 pi t) / (2 pi))`,
    /// fast and slow by turns (its derivative is `1 + 0.8 cos(2 pi t) > 0`).
    struct WavyGamma {
        min: f64,
        max: f64,
    }

    impl GammaSchedule for WavyGamma {
        fn gamma(&self, t: f64) -> f64 {
            let turn = 2.0 * std::f64::consts::PI * t;
            self.min + (self.max - self.min) * (t + 0.8 * turn.sin() / (2.0 * std::f64::consts::PI))
        }
        fn gamma_derivative(&self, t: f64) -> f64 {
            (self.max - self.min) * (1.0 + 0.8 * (2.0 * std::f64::consts::PI * t).cos())
        }
    }

    fn data() -> GaussianDataVdm {
        GaussianDataVdm::new(0.3, 0.49).unwrap()
    }

    #[test]
    fn the_discrete_loss_tends_to_the_continuous_one_at_order_one() {
        let d = data();
        let (min, max) = LinearGamma::KINGMA;
        let schedule = LinearGamma::new(min, max).unwrap();
        // The data-averaged eps error: SNR / (a + SNR), rising in t.
        let mean_error = |t: f64| snr(schedule.gamma(t)) * d.mean_x_error(schedule.gamma(t));
        let exact = 0.5 * ((1.0 / 0.49 + snr(min)) / (1.0 / 0.49 + snr(max))).ln();
        let losses: Vec<f64> = (0..7)
            .map(|k| discrete_loss(&schedule, 10 << k, &mean_error).unwrap())
            .collect();
        // Each step's weight takes the error at its noisier end, where the
        // data-averaged x error is largest: every T is above the limit, and doubling T
        // lowers the loss (Kingma et al.'s "more steps, better bound").
        for pair in losses.windows(2) {
            assert!(
                pair[0] > pair[1] && pair[1] > exact,
                "{losses:?} vs {exact}"
            );
        }
        // Order one: the gap halves as T doubles (ratio 2 up to O(1/T)).
        let gaps: Vec<f64> = losses.iter().map(|l| l - exact).collect();
        let ratio = gaps[5] / gaps[6];
        assert!((ratio - 2.0).abs() < 0.05, "{gaps:?}");
        // One value of x too (its error need not be monotone in t): still converges.
        let x = 0.3 + 1.7 * 0.7;
        let at_x = |t: f64| d.eps_error(x, schedule.gamma(t));
        let limit = d.diffusion_loss(x, min, max);
        let gap = |steps| (discrete_loss(&schedule, steps, &at_x).unwrap() - limit).abs();
        assert!(
            gap(10_000) < 1e-2 * gap(100),
            "{} {}",
            gap(100),
            gap(10_000)
        );
    }

    #[test]
    fn the_continuous_loss_depends_on_the_schedule_only_through_its_endpoints() {
        let d = data();
        let (min, max) = (-10.0, 6.0);
        let schedules: Vec<Box<dyn GammaSchedule>> = vec![
            Box::new(LinearGamma::new(min, max).unwrap()),
            Box::new(PowerGamma { min, max, p: 2.0 }),
            Box::new(PowerGamma { min, max, p: 3.0 }),
            Box::new(WavyGamma { min, max }),
        ];
        for x in [-1.2, 0.3, 2.0] {
            let closed = d.diffusion_loss(x, min, max);
            for schedule in &schedules {
                let error = |t: f64| d.eps_error(x, schedule.gamma(t));
                let got = continuous_loss(schedule.as_ref(), &error, 400).unwrap();
                assert!((got - closed).abs() < 1e-9, "x {x}: {got} vs {closed}");
            }
        }
    }

    #[test]
    fn the_loss_is_the_same_written_in_eps_x_and_v() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for _ in 0..200 {
            let gamma = rng.random_range(-12.0..8.0);
            let m = marginal(gamma).unwrap();
            let x: f64 = rng.sample(StandardNormal);
            let eps: f64 = rng.sample(StandardNormal);
            let eps_hat = eps + 0.3 * rng.sample::<f64, _>(StandardNormal);
            let z = m.sample(x, eps);
            let err = |kind: Prediction| {
                let truth = Prediction::Eps.convert(&m, z, eps, kind);
                let guess = Prediction::Eps.convert(&m, z, eps_hat, kind);
                eps_error_weight(kind, gamma) * (truth - guess).powi(2)
            };
            let eps_err = (eps - eps_hat).powi(2);
            for kind in [Prediction::X0, Prediction::V, Prediction::Score] {
                let e = err(kind);
                assert!(
                    (e - eps_err).abs() <= 1e-9 * eps_err.max(1e-12),
                    "{kind:?} at gamma {gamma}: {e} vs {eps_err}"
                );
            }
        }
        // And the continuous loss by the x form, -1/2 int SNR'(t) E(x - x_hat)^2 dt,
        // equals the eps form.
        let d = data();
        let schedule = LinearGamma::new(-10.0, 6.0).unwrap();
        let x = 1.1;
        let x_form = integrate(
            &|t: f64| {
                let g = schedule.gamma(t);
                let snr_derivative = -schedule.gamma_derivative(t) * snr(g);
                -0.5 * snr_derivative * d.x_error(x, g)
            },
            400,
        )
        .unwrap();
        let eps_form =
            continuous_loss(&schedule, &|t| d.eps_error(x, schedule.gamma(t)), 400).unwrap();
        assert!((x_form - eps_form).abs() < 1e-12 * eps_form.abs());
    }

    #[test]
    fn the_optimal_denoisers_error_is_its_posterior_variance() {
        // Monte Carlo over eps at one x: mean of (x - x_hat)^2 within 4 standard errors
        // of the closed form (the squared error's sd estimated from the same draws).
        let d = data();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (x, gamma) = (1.4, -1.5);
        let m = marginal(gamma).unwrap();
        let n = 200_000;
        let errors: Vec<f64> = (0..n)
            .map(|_| {
                let z = m.sample(x, rng.sample(StandardNormal));
                (x - d.optimal_x(z, gamma)).powi(2)
            })
            .collect();
        let mean = errors.iter().sum::<f64>() / n as f64;
        let var = errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let se = (var / n as f64).sqrt();
        assert!(
            (mean - d.x_error(x, gamma)).abs() < 4.0 * se,
            "{mean} vs {}",
            d.x_error(x, gamma)
        );
    }

    #[test]
    fn averaged_over_the_data_the_bound_tends_to_the_entropy() {
        let d = data();
        let mut previous = f64::INFINITY;
        for (min, max) in [
            (-3.0, 3.0),
            (-8.0, 5.0),
            (-13.3, 5.0),
            (-20.0, 10.0),
            (-30.0, 15.0),
        ] {
            let loss = d.mean_loss(min, max);
            // A bound: never below the entropy (cross-entropy >= entropy), and falling
            // towards it as the endpoints widen.
            assert!(
                loss >= d.entropy() && loss < previous,
                "({min}, {max}): {loss}"
            );
            previous = loss;
        }
        assert!(previous - d.entropy() < 1e-5, "{}", previous - d.entropy());
        // The mean loss is the data average of the per-value loss (Gauss-Hermite would
        // do; a fine Riemann sum over +-8 sd is enough here).
        let (min, max) = LinearGamma::KINGMA;
        let s = 0.7;
        let h = 16.0 * s / 20_000.0;
        let averaged: f64 = (0..20_000)
            .map(|i| {
                let x = 0.3 - 8.0 * s + (i as f64 + 0.5) * h;
                d.log_density(x).exp() * d.loss(x, min, max).total() * h
            })
            .sum();
        assert!((averaged - d.mean_loss(min, max)).abs() < 1e-6);
    }
}
