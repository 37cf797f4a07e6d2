//! EDM (Karras, Aittala, Aila & Laine 2022, "Elucidating the design space of
//! diffusion-based generative models"), in f64: the σ-parameterisation
//! `x = y + σ n` (`y` the data, `n ~ N(0, I)`), the denoiser's preconditioning, the
//! log-normal training distribution of σ and its loss weight, the ρ-grid of σ for
//! sampling, and the samplers of the paper's Algorithm 1 (deterministic Euler or Heun)
//! and Algorithm 2 (with the stochastic "churn"), written out as the paper gives them.
//! The tensor samplers of elbo-models are tested against these.
//!
//! A variance-preserving model (`x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps`) is the same
//! process seen through `σ = sqrt((1 - abar) / abar)` and `x = x_t / sqrt(abar)`: its
//! prediction of `x_0` at `x_t` is the denoiser `D(x; σ)` ([`sigma_of_alpha_bar`]).
//!
//! ```
//! use elbo_math::edm::{Churn, Preconditioning, Solver, sample, sigma_steps};
//! use ndarray::array;
//!
//! // Gaussian data N(0.3, 0.5^2): the exact denoiser is a shrinkage towards the mean.
//! let (mu, s2) = (0.3, 0.25);
//! let denoise = |x: f64, sigma: f64| mu + s2 / (s2 + sigma * sigma) * (x - mu);
//! let sigmas = sigma_steps(18, 0.002, 80.0, 7.0)?;
//! let x_t = array![80.0 * 1.5];
//! let denoiser = |x: &ndarray::Array1<f64>, sigma: f64| Ok(x.mapv(|v| denoise(v, sigma)));
//! let out = sample(&x_t, &sigmas, Solver::Heun, &Churn::none(), denoiser, |s| s, |_| array![0.0])?;
//! // The exact flow keeps (x - mu) / sqrt(s^2 + sigma^2): Heun's 35 calls land 0.041
//! // from it, closer than Euler's 35 steps (0.060).
//! let exact = mu + (x_t[0] - mu) * ((s2 + 0.002f64.powi(2)) / (s2 + 6400.0)).sqrt();
//! assert!((out[0] - exact).abs() < 0.045);
//! let euler = sample(&x_t, &sigma_steps(35, 0.002, 80.0, 7.0)?, Solver::Euler, &Churn::none(), denoiser, |s| s, |_| array![0.0])?;
//! assert!((euler[0] - exact).abs() > 0.055);
//! let p = Preconditioning::new(0.5)?;
//! assert!((p.c_skip(0.5) - 0.5).abs() < 1e-15);
//! # Ok::<(), elbo_math::MathError>(())
//! ```

use ndarray::Array1;

use crate::error::{MathError, Result};

/// The preconditioning of EDM's denoiser (Table 1, "Ours"):
/// `D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ))`, which keeps the
/// network's input and target at unit variance for data of standard deviation
/// `sigma_data`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preconditioning {
    sigma_data: f64,
}

impl Preconditioning {
    /// The preconditioning for data of standard deviation `sigma_data` (EDM: 0.5 for
    /// images in [-1, 1]); it must be positive and finite.
    pub fn new(sigma_data: f64) -> Result<Preconditioning> {
        if !(sigma_data.is_finite() && sigma_data > 0.0) {
            return Err(MathError::NotPositive {
                what: "sigma_data",
                found: sigma_data,
                index: None,
            });
        }
        Ok(Preconditioning { sigma_data })
    }

    /// `σ_data`.
    pub fn sigma_data(&self) -> f64 {
        self.sigma_data
    }

    /// `c_skip = σ_data² / (σ² + σ_data²)`.
    pub fn c_skip(&self, sigma: f64) -> f64 {
        let sd2 = self.sigma_data * self.sigma_data;
        sd2 / (sigma * sigma + sd2)
    }

    /// `c_out = σ σ_data / sqrt(σ² + σ_data²)`.
    pub fn c_out(&self, sigma: f64) -> f64 {
        sigma * self.sigma_data / (sigma * sigma + self.sigma_data * self.sigma_data).sqrt()
    }

    /// `c_in = 1 / sqrt(σ² + σ_data²)`.
    pub fn c_in(&self, sigma: f64) -> f64 {
        1.0 / (sigma * sigma + self.sigma_data * self.sigma_data).sqrt()
    }

    /// `c_noise = ln(σ) / 4`.
    pub fn c_noise(&self, sigma: f64) -> f64 {
        sigma.ln() / 4.0
    }

    /// The loss weight `λ(σ) = (σ² + σ_data²) / (σ σ_data)²`, which makes the effective
    /// weight of the network's own error `λ c_out² = 1` at every σ.
    pub fn loss_weight(&self, sigma: f64) -> f64 {
        let sd = self.sigma_data;
        (sigma * sigma + sd * sd) / (sigma * sd).powi(2)
    }
}

/// EDM's training distribution of σ: `ln σ ~ N(p_mean, p_std²)` (the paper's
/// `P_mean = -1.2`, `P_std = 1.2`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogNormalSigma {
    /// The mean of `ln σ`.
    pub p_mean: f64,
    /// The standard deviation of `ln σ` (positive).
    pub p_std: f64,
}

impl LogNormalSigma {
    /// The paper's values, `P_mean = -1.2`, `P_std = 1.2`.
    pub const EDM: LogNormalSigma = LogNormalSigma {
        p_mean: -1.2,
        p_std: 1.2,
    };

    /// Checks the values: a finite mean and a positive finite standard deviation.
    pub fn validate(&self) -> Result<()> {
        if !self.p_mean.is_finite() {
            return Err(MathError::NotFinite {
                what: "p_mean (the mean of ln sigma)",
                found: self.p_mean,
                index: None,
            });
        }
        if !(self.p_std.is_finite() && self.p_std > 0.0) {
            return Err(MathError::NotPositive {
                what: "p_std (the standard deviation of ln sigma)",
                found: self.p_std,
                index: None,
            });
        }
        Ok(())
    }

    /// The σ of a standard normal draw `n`: `exp(p_mean + p_std n)`.
    pub fn sigma(&self, n: f64) -> f64 {
        (self.p_mean + self.p_std * n).exp()
    }

    /// The density of the log-SNR `λ = -2 ln σ` this induces: `N(λ; -2 p_mean, (2 p_std)²)`.
    pub fn log_snr_density(&self, lambda: f64) -> f64 {
        let (mean, std) = (-2.0 * self.p_mean, 2.0 * self.p_std);
        let z = (lambda - mean) / std;
        (-0.5 * z * z).exp() / (std * (2.0 * std::f64::consts::PI).sqrt())
    }
}

/// EDM's σ-grid (eq. 5): `σ_i = (σ_max^(1/ρ) + i / (N - 1) (σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ`
/// for `i = 0..N`, then `σ_N = 0`: `N + 1` values, falling. `N >= 1` (with `N = 1` the
/// grid is `σ_max, 0`), `0 < σ_min <= σ_max`, `ρ > 0`.
pub fn sigma_steps(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Result<Vec<f64>> {
    if n == 0 {
        return Err(MathError::OutOfRange {
            what: "the number of steps N",
            expected: "[1, inf)",
            found: 0.0,
            index: None,
        });
    }
    if !(sigma_min.is_finite() && sigma_min > 0.0) {
        return Err(MathError::NotPositive {
            what: "sigma_min",
            found: sigma_min,
            index: None,
        });
    }
    if !(sigma_max.is_finite() && sigma_max >= sigma_min) {
        return Err(MathError::OutOfRange {
            what: "sigma_max",
            expected: "[sigma_min, inf)",
            found: sigma_max,
            index: None,
        });
    }
    if !(rho.is_finite() && rho > 0.0) {
        return Err(MathError::NotPositive {
            what: "rho",
            found: rho,
            index: None,
        });
    }
    let (hi, lo) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
    let mut out: Vec<f64> = (0..n)
        .map(|i| {
            let f = if n == 1 {
                0.0
            } else {
                i as f64 / (n - 1) as f64
            };
            (hi + f * (lo - hi)).powf(rho)
        })
        .collect();
    out.push(0.0);
    Ok(out)
}

/// `σ = sqrt((1 - abar) / abar)`: the EDM noise level of a variance-preserving model's
/// `alpha_bar` (in (0, 1]).
pub fn sigma_of_alpha_bar(alpha_bar: f64) -> f64 {
    ((1.0 - alpha_bar) / alpha_bar).sqrt()
}

/// The stochastic part of Algorithm 2: at a step from `σ_i` with `S_tmin <= σ_i <= S_tmax`
/// the noise level is first raised to `σ̂ = σ_i (1 + γ)`, `γ = min(S_churn / N, √2 - 1)`,
/// by adding fresh noise of scale `S_noise sqrt(σ̂² - σ_i²)`. [`Churn::none`] is
/// Algorithm 1 (deterministic).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Churn {
    /// `S_churn` (0: deterministic).
    pub s_churn: f64,
    /// `S_tmin`: no churn below this σ.
    pub s_tmin: f64,
    /// `S_tmax`: no churn above this σ.
    pub s_tmax: f64,
    /// `S_noise`: the scale of the added noise (slightly above 1 in the paper).
    pub s_noise: f64,
}

impl Churn {
    /// No churn: Algorithm 1.
    pub fn none() -> Churn {
        Churn {
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
        }
    }

    /// Whether it adds noise at all.
    pub fn is_stochastic(&self) -> bool {
        self.s_churn > 0.0
    }

    /// Checks the values: `S_churn >= 0`, `0 <= S_tmin <= S_tmax`, `S_noise >= 0`, none NaN.
    pub fn validate(&self) -> Result<()> {
        let checks = [
            (
                "S_churn",
                "[0, inf)",
                self.s_churn,
                self.s_churn.is_finite() && self.s_churn >= 0.0,
            ),
            (
                "S_tmin",
                "[0, inf)",
                self.s_tmin,
                self.s_tmin.is_finite() && self.s_tmin >= 0.0,
            ),
            (
                "S_tmax",
                "[S_tmin, inf]",
                self.s_tmax,
                self.s_tmax >= self.s_tmin,
            ),
            (
                "S_noise",
                "[0, inf)",
                self.s_noise,
                self.s_noise.is_finite() && self.s_noise >= 0.0,
            ),
        ];
        for (what, expected, found, ok) in checks {
            if !ok {
                return Err(MathError::OutOfRange {
                    what,
                    expected,
                    found,
                    index: None,
                });
            }
        }
        Ok(())
    }

    /// `γ_i` of a step from `sigma` on a grid of `n` steps.
    pub fn gamma(&self, sigma: f64, n: usize) -> f64 {
        if self.s_churn > 0.0 && (self.s_tmin..=self.s_tmax).contains(&sigma) {
            (self.s_churn / n as f64).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        }
    }
}

/// The ODE solver of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Solver {
    /// Euler's method: one denoiser call per step (first order; DDIM).
    Euler,
    /// Heun's method (EDM's choice): an Euler step corrected by the slope at its end,
    /// except on the last step to σ = 0; `2N - 1` calls (second order).
    Heun,
}

/// Denoiser calls of `solver` over a grid of `n` steps (`sigmas.len() - 1`).
pub fn network_calls(solver: Solver, n: usize) -> usize {
    match solver {
        Solver::Euler => n,
        Solver::Heun => (2 * n).saturating_sub(1),
    }
}

/// Algorithms 1 and 2 of EDM: from `x` at `sigmas[0]` down the falling grid `sigmas`
/// (ending at 0), with `denoise(x, σ)` the denoiser `D(x; σ)`, `round(σ)` the noise
/// level the model has nearest to `σ` (EDM's `round_sigma`: the identity for a model of
/// continuous σ, the nearest step's for a discrete one; used for the churned level
/// `σ̂`) and `noise(i)` a standard normal draw of `x`'s length for step `i` (called once
/// per step that churns, before its denoiser call). The probability-flow ODE is
/// `dx/dσ = (x - D(x; σ)) / σ`.
pub fn sample<D, R, N>(
    x: &Array1<f64>,
    sigmas: &[f64],
    solver: Solver,
    churn: &Churn,
    mut denoise: D,
    round: R,
    mut noise: N,
) -> Result<Array1<f64>>
where
    D: FnMut(&Array1<f64>, f64) -> Result<Array1<f64>>,
    R: Fn(f64) -> f64,
    N: FnMut(usize) -> Array1<f64>,
{
    churn.validate()?;
    if sigmas.len() < 2 {
        return Err(MathError::TooFewSamples {
            what: "a grid of noise levels",
            expected_at_least: 2,
            found: sigmas.len(),
        });
    }
    if let Some(i) = sigmas
        .windows(2)
        .position(|w| w[1].partial_cmp(&w[0]) != Some(std::cmp::Ordering::Less))
    {
        return Err(MathError::OutOfRange {
            what: "a noise level of the grid (it must fall strictly)",
            expected: "[0, the level before it)",
            found: sigmas[i + 1],
            index: Some(i + 1),
        });
    }
    if sigmas[sigmas.len() - 1] != 0.0 {
        return Err(MathError::OutOfRange {
            what: "the last noise level of the grid",
            expected: "[0, 0]",
            found: sigmas[sigmas.len() - 1],
            index: Some(sigmas.len() - 1),
        });
    }
    let n = sigmas.len() - 1;
    let mut x = x.clone();
    for i in 0..n {
        let (sigma, next) = (sigmas[i], sigmas[i + 1]);
        let gamma = churn.gamma(sigma, n);
        let sigma_hat = if gamma > 0.0 {
            round(sigma * (1.0 + gamma)).max(sigma)
        } else {
            sigma
        };
        if sigma_hat > sigma {
            let scale = churn.s_noise * (sigma_hat * sigma_hat - sigma * sigma).sqrt();
            x = x + noise(i) * scale;
        }
        let d = (&x - &denoise(&x, sigma_hat)?) / sigma_hat;
        let euler = &x + &(&d * (next - sigma_hat));
        x = match (solver, next > 0.0) {
            (Solver::Heun, true) => {
                let d_next = (&euler - &denoise(&euler, next)?) / next;
                &x + &((d + d_next) * (0.5 * (next - sigma_hat)))
            }
            _ => euler,
        };
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// Gaussian data N(mu, s2): the exact denoiser, and the exact flow from `x` at
    /// `from` to `to` (`(x - mu) / sqrt(s2 + σ²)` is constant along it).
    struct Gaussian {
        mu: f64,
        s2: f64,
    }

    impl Gaussian {
        fn denoise(&self, x: &Array1<f64>, sigma: f64) -> Result<Array1<f64>> {
            Ok(x.mapv(|v| self.mu + self.s2 / (self.s2 + sigma * sigma) * (v - self.mu)))
        }
        fn flow(&self, x: f64, from: f64, to: f64) -> f64 {
            self.mu + (x - self.mu) * ((self.s2 + to * to) / (self.s2 + from * from)).sqrt()
        }
    }

    fn error(solver: Solver, n: usize) -> f64 {
        let g = Gaussian { mu: 0.3, s2: 0.25 };
        let sigmas = sigma_steps(n, 0.5, 20.0, 7.0).unwrap();
        let x = array![-30.0, 5.0, 41.0];
        let out = sample(
            &x,
            &sigmas,
            solver,
            &Churn::none(),
            |x, s| g.denoise(x, s),
            |s| s,
            |_| unreachable!("no churn"),
        )
        .unwrap();
        // The exact result: the flow down to sigma_min, then the last step's jump to D.
        let exact = |x0: f64| g.denoise(&array![g.flow(x0, 20.0, 0.5)], 0.5).unwrap()[0];
        x.iter()
            .zip(&out)
            .map(|(&x0, &got)| (got - exact(x0)).abs())
            .fold(0.0, f64::max)
    }

    /// On Gaussian data, halving the step halves Euler's error (order 1) and quarters
    /// Heun's (order 2): the ratios at N = 16 -> 32 -> 64 approach 2 and 4.
    #[test]
    fn euler_is_first_order_and_heun_second_order() {
        for (solver, order) in [(Solver::Euler, 1), (Solver::Heun, 2)] {
            let errors: Vec<f64> = [16, 32, 64].iter().map(|&n| error(solver, n)).collect();
            for pair in errors.windows(2) {
                let ratio = pair[0] / pair[1];
                let expected = f64::from(1 << order);
                assert!(
                    (ratio / expected - 1.0).abs() < 0.15,
                    "{solver:?}: errors {errors:?}, ratio {ratio} (expected about {expected})"
                );
            }
        }
        let (heun, euler) = (error(Solver::Heun, 16), error(Solver::Euler, 16));
        assert!(heun < euler / 4.0, "Heun {heun}, Euler {euler}");
    }

    /// The grid of eq. 5 at its ends and in between, and its refusals.
    #[test]
    fn the_rho_grid_runs_from_sigma_max_to_sigma_min_then_zero() {
        let s = sigma_steps(18, 0.002, 80.0, 7.0).unwrap();
        assert_eq!(s.len(), 19);
        assert!((s[0] - 80.0).abs() < 1e-12 && (s[17] - 0.002).abs() < 1e-15);
        assert_eq!(s[18], 0.0);
        assert!(s.windows(2).all(|w| w[1] < w[0]));
        // rho = 1 is a linear grid.
        let linear = sigma_steps(5, 1.0, 5.0, 1.0).unwrap();
        for (a, b) in linear.iter().zip([5.0, 4.0, 3.0, 2.0, 1.0, 0.0]) {
            assert!((a - b).abs() < 1e-12, "{linear:?}");
        }
        let one = sigma_steps(1, 0.1, 2.0, 7.0).unwrap();
        assert!(
            one.len() == 2 && (one[0] - 2.0).abs() < 1e-12 && one[1] == 0.0,
            "{one:?}"
        );
        assert!(sigma_steps(0, 0.1, 1.0, 7.0).is_err());
        assert!(sigma_steps(5, 0.0, 1.0, 7.0).is_err());
        assert!(sigma_steps(5, 2.0, 1.0, 7.0).is_err());
        assert!(sigma_steps(5, 0.1, 1.0, f64::NAN).is_err());
        // The sampler takes only a strictly falling grid that ends at 0.
        let x = array![1.0];
        let run = |grid: &[f64]| {
            sample(
                &x,
                grid,
                Solver::Heun,
                &Churn::none(),
                |x, _| Ok(x.clone()),
                |s| s,
                |_| array![0.0],
            )
        };
        let err = run(&[2.0, 2.0, 0.0]).unwrap_err().to_string();
        assert!(
            err.contains("fall strictly") && err.contains("index 1"),
            "{err}"
        );
        let err = run(&[2.0, 1.0]).unwrap_err().to_string();
        assert!(err.contains("last noise level"), "{err}");
        assert!(run(&[0.0]).is_err());
        assert!(run(&[2.0, 1.0, 0.0]).is_ok());
    }

    /// The preconditioning makes the network's effective target unit-variance and its
    /// loss weight flat: `λ(σ) c_out(σ)² = 1`; `c_in` scales `y + σ n` to unit variance.
    #[test]
    fn preconditioning_follows_table_1() {
        let p = Preconditioning::new(0.5).unwrap();
        for sigma in [0.002, 0.1, 0.5, 1.0, 80.0] {
            assert!((p.loss_weight(sigma) * p.c_out(sigma).powi(2) - 1.0).abs() < 1e-12);
            let var_in = p.c_in(sigma).powi(2) * (0.25 + sigma * sigma);
            assert!((var_in - 1.0).abs() < 1e-12);
            // The ideal target (y - c_skip x) / c_out has unit variance.
            let c = p.c_skip(sigma);
            let var_target =
                ((1.0 - c).powi(2) * 0.25 + c * c * sigma * sigma) / p.c_out(sigma).powi(2);
            assert!(
                (var_target - 1.0).abs() < 1e-12,
                "sigma {sigma}: {var_target}"
            );
            assert!((p.c_noise(sigma) - sigma.ln() / 4.0).abs() < 1e-15);
        }
        assert!(Preconditioning::new(0.0).is_err() && Preconditioning::new(f64::NAN).is_err());
    }

    /// Churn: gamma's cap and window, the noise drawn once per churning step, and a
    /// stochastic run whose mean over many chains lands on the data's mean.
    #[test]
    fn churn_adds_noise_inside_its_window_and_keeps_the_distribution() {
        let churn = Churn {
            s_churn: 40.0,
            s_tmin: 0.05,
            s_tmax: 50.0,
            s_noise: 1.0,
        };
        assert_eq!(churn.gamma(1.0, 18), std::f64::consts::SQRT_2 - 1.0);
        assert_eq!(churn.gamma(1.0, 100), 0.4);
        assert_eq!(churn.gamma(0.01, 18), 0.0);
        assert_eq!(churn.gamma(80.0, 18), 0.0);
        assert!(!Churn::none().is_stochastic() && churn.is_stochastic());
        for bad in [
            Churn {
                s_churn: -1.0,
                ..churn
            },
            Churn {
                s_tmax: 0.01,
                ..churn
            },
            Churn {
                s_noise: f64::NAN,
                ..churn
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        // 4,000 chains of Gaussian data N(0.3, 0.25) from N(0, 20^2 + 0.25): the samples'
        // mean has standard error 0.5 / sqrt(4000) = 0.0079 if the sampler is exact; the
        // bound 0.04 leaves 5 standard errors for the discretisation.
        let g = Gaussian { mu: 0.3, s2: 0.25 };
        let sigmas = sigma_steps(32, 0.002, 20.0, 7.0).unwrap();
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
        let normal = |rng: &mut rand_chacha::ChaCha8Rng, n: usize| -> Array1<f64> {
            use rand_distr::{Distribution, StandardNormal};
            (0..n).map(|_| StandardNormal.sample(rng)).collect()
        };
        let n = 4000;
        let x = normal(&mut rng, n) * (400.25f64).sqrt();
        let mut draws = 0;
        let out = sample(
            &x,
            &sigmas,
            Solver::Heun,
            &churn,
            |x, s| g.denoise(x, s),
            |s| s,
            |_| {
                draws += 1;
                normal(&mut rng, n)
            },
        )
        .unwrap();
        let churning = sigmas[..32]
            .iter()
            .filter(|&&s| churn.gamma(s, 32) > 0.0)
            .count();
        assert_eq!(draws, churning);
        let mean = out.mean().unwrap();
        let var = out.var(1.0);
        assert!((mean - 0.3).abs() < 0.04, "mean {mean}");
        // The sample variance of 4,000 draws has relative standard error sqrt(2/4000) = 2.2%.
        assert!((var / 0.25 - 1.0).abs() < 0.15, "variance {var}");
    }
}
