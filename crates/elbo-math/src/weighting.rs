//! Every diffusion objective as a weighted ELBO (Kingma & Gao 2023, "Understanding
//! diffusion objectives as the ELBO with simple data augmentation").
//!
//! With `λ = log(α² / σ²)` the log-SNR of a noise level and `ε̂` the network's noise
//! prediction (whatever it outputs, converted), every objective in the field is
//!
//! `L_w(x) = ½ E_{λ ~ p(λ)} [ w(λ) / p(λ) ||ε̂ − ε||² ]`
//!
//! for a weighting `w(λ)`, `p(λ)` being the density at which training draws noise levels.
//! The ELBO (its diffusion term, in continuous time) is `w = 1`, whatever the schedule:
//! the schedule only decides where the Monte Carlo samples fall. Any other objective puts
//! `w(λ)` on the levels; when `w` does not increase with `λ` (it is monotone in the noise
//! level), Kingma & Gao show that the objective is the ELBO of data augmented with
//! Gaussian noise of a random level, so it still is a likelihood bound of a kind.
//!
//! This module gives `w(λ)` for each objective elbo trains with: `L_simple` with an ε-,
//! x₀- or v-target on a discrete schedule ([`simple`]), the T-step bound `L_vlb` with a
//! fixed reverse variance ([`vlb`]), the VDM's continuous bound ([`elbo`]: 1) and EDM's
//! loss with its log-normal σ ([`edm`]); improved DDPM's hybrid loss `L_simple + c L_vlb`
//! stops the gradient of `L_vlb` through the mean, so its weighting of `ε̂` is
//! `L_simple`'s. Scales are those of the formula above (the ELBO is 1).
//!
//! ```
//! use elbo_math::weighting::{edm, is_monotone};
//! use elbo_math::edm::LogNormalSigma;
//!
//! // EDM's weighting peaks at moderate noise and falls on both sides: not monotone.
//! let w: Vec<(f64, f64)> = (-100..=100).map(|i| {
//!     let lambda = i as f64 / 10.0;
//!     (lambda, edm(lambda, &LogNormalSigma::EDM, 0.5))
//! }).collect();
//! assert!(!is_monotone(&w));
//! # Ok::<(), elbo_math::MathError>(())
//! ```

use crate::edm::{LogNormalSigma, Preconditioning};
use crate::error::Result;
use crate::parameterisation::Prediction;
use crate::schedule::NoiseSchedule;

/// `||target error||² / ||ε error||²` at log-SNR `λ` for a variance-preserving process:
/// 1 for ε, `e^{-λ}` for x₀ (`x̂₀ − x₀ = −(σ/α)(ε̂ − ε)`), `1 + e^{-λ}` for v
/// (`v̂ − v = (ε̂ − ε)/α`), `1 + e^{λ}` for the score (`(ε̂ − ε)/σ`).
pub fn target_factor(target: Prediction, lambda: f64) -> f64 {
    match target {
        Prediction::Eps => 1.0,
        Prediction::X0 => (-lambda).exp(),
        Prediction::V => 1.0 + (-lambda).exp(),
        Prediction::Score => 1.0 + lambda.exp(),
    }
}

/// The density `p(λ_t)` of the log-SNR when `t` is drawn uniformly from `1..=T` of
/// `schedule`: `1 / (T |dλ/dt|)`, the derivative by central differences (one-sided at
/// the ends). Returns `(λ_t, p(λ_t))` for `t = 1..=T`, λ falling.
pub fn schedule_density(schedule: &NoiseSchedule) -> Result<Vec<(f64, f64)>> {
    let big_t = schedule.num_steps();
    let lambda: Vec<f64> = (1..=big_t)
        .map(|t| schedule.log_snr(t))
        .collect::<Result<_>>()?;
    Ok((0..big_t)
        .map(|i| {
            let (lo, hi) = (i.saturating_sub(1), (i + 1).min(big_t - 1));
            let slope = if hi > lo {
                (lambda[lo] - lambda[hi]) / (hi - lo) as f64
            } else {
                f64::INFINITY
            };
            (lambda[i], 1.0 / (big_t as f64 * slope))
        })
        .collect())
}

/// `L_simple` with `target` on `schedule` (t uniform): the mean squared error of the
/// target, unweighted, is `w(λ) = 2 p(λ) f(λ)` with `f` the [`target_factor`].
pub fn simple(schedule: &NoiseSchedule, target: Prediction) -> Result<Vec<(f64, f64)>> {
    Ok(schedule_density(schedule)?
        .into_iter()
        .map(|(lambda, p)| (lambda, 2.0 * p * target_factor(target, lambda)))
        .collect())
}

/// The T-step bound's denoising terms (`t = 2..=T`, t uniform) with the reverse
/// variance `σ_t²` given per step (`variance(t)`): the KL at step t weighs `||ε̂ − ε||²`
/// by `c_t = β_t² / (2 σ_t² α_t (1 − ᾱ_t))`, and the sum over t is `T E_t`, so
/// `w(λ_t) = 2 T c_t p(λ_t)`. With `σ_t² = β̃_t` this is `(e^{Δλ} − 1) / Δλ`, which tends
/// to the ELBO's 1 as the steps shrink.
pub fn vlb(
    schedule: &NoiseSchedule,
    variance: impl Fn(usize) -> Result<f64>,
) -> Result<Vec<(f64, f64)>> {
    let density = schedule_density(schedule)?;
    let big_t = schedule.num_steps() as f64;
    (2..=schedule.num_steps())
        .map(|t| {
            let beta = schedule.beta(t)?;
            let c = beta * beta
                / (2.0 * variance(t)? * schedule.alpha(t)? * schedule.one_minus_alpha_bar(t)?);
            let (lambda, p) = density[t - 1];
            Ok((lambda, 2.0 * big_t * c * p))
        })
        .collect()
}

/// The ELBO (the VDM's continuous-time bound, on any schedule): `w = 1`.
pub fn elbo(_lambda: f64) -> f64 {
    1.0
}

/// EDM's loss `E_σ [λ(σ) ||D(y + σ n; σ) − y||²]` with `ln σ ~ N(p_mean, p_std²)` and
/// data of standard deviation `sigma_data`: with `λ = −2 ln σ` and `||D − y||² =
/// σ² ||ε̂ − ε||²`, `w(λ) = 2 p(λ) (σ² + σ_data²) / σ_data²`, `p` the normal density
/// of λ (Kingma & Gao's `N(λ; 2.4, 2.4²)(e^{−λ} + 0.25)/0.25`, times 2 here).
pub fn edm(lambda: f64, sigma: &LogNormalSigma, sigma_data: f64) -> f64 {
    let s2 = (-lambda).exp();
    let weight = Preconditioning::new(sigma_data).map_or(f64::NAN, |p| p.loss_weight(s2.sqrt()));
    2.0 * sigma.log_snr_density(lambda) * weight * s2
}

/// Whether `w` does not increase with λ (points in any order of λ; a relative slack of
/// 1e-9 for rounding): Kingma & Gao's condition for the weighted loss to be an ELBO of
/// noise-augmented data.
pub fn is_monotone(points: &[(f64, f64)]) -> bool {
    let mut sorted: Vec<(f64, f64)> = points.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    sorted
        .windows(2)
        .all(|w| w[1].1 <= w[0].1 + 1e-9 * w[0].1.abs().max(w[1].1.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    /// A cosine schedule without offset, `ᾱ(t) = cos²(π t / 2T)` (t = 1..T-1, so that
    /// ᾱ stays in (0, 1)): λ(t) = −2 ln tan(π t / 2T), whose density at uniform t is
    /// `sech(λ/2) / (2π)` in the continuum.
    fn pure_cosine(big_t: usize) -> NoiseSchedule {
        let ab: Vec<f64> = (1..big_t)
            .map(|t| (PI * t as f64 / (2.0 * big_t as f64)).cos().powi(2))
            .collect();
        NoiseSchedule::from_alpha_bar(&ab).unwrap()
    }

    fn sech(x: f64) -> f64 {
        1.0 / x.cosh()
    }

    /// The density of λ, and the ε, x₀ and v weightings of the cosine schedule, against
    /// their closed forms: `sech(λ/2)/(2π)`; ε: `sech(λ/2)/π`; x₀: that times `e^{−λ}`;
    /// v: `2 e^{−λ/2}/π` (Kingma & Gao's table, in this scale). 20,000 steps: the central differences
    /// are within 1e-4 relative for |λ| <= 8 (4.6e-5 seen at 7.5, where λ(t) bends
    /// fastest).
    #[test]
    fn the_cosine_schedule_gives_kingma_and_gaos_closed_forms() {
        let schedule = pure_cosine(20_000);
        let density = schedule_density(&schedule).unwrap();
        let eps = simple(&schedule, Prediction::Eps).unwrap();
        let x0 = simple(&schedule, Prediction::X0).unwrap();
        let v = simple(&schedule, Prediction::V).unwrap();
        let mut checked = 0;
        for i in (1..density.len() - 1).step_by(97) {
            let (lambda, p) = density[i];
            if lambda.abs() > 8.0 {
                continue;
            }
            let close = |got: f64, want: f64, what: &str| {
                assert!(
                    (got / want - 1.0).abs() < 1e-4,
                    "{what} at lambda {lambda}: {got} vs {want}"
                );
            };
            close(p, sech(lambda / 2.0) / (2.0 * PI), "p");
            close(eps[i].1, sech(lambda / 2.0) / PI, "eps");
            close(x0[i].1, sech(lambda / 2.0) / PI * (-lambda).exp(), "x0");
            close(v[i].1, 2.0 * (-lambda / 2.0).exp() / PI, "v");
            checked += 1;
        }
        assert!(checked > 50, "{checked}");
        // eps-MSE on the cosine schedule is not monotone (it peaks at lambda = 0); v and
        // x0 are.
        assert!(!is_monotone(&eps));
        assert!(is_monotone(&v) && is_monotone(&x0));
    }

    /// The bound with the posterior's variance is `(e^{Δλ} − 1)/Δλ` per step: close to
    /// the ELBO's 1 on Ho et al.'s schedule (within the half-step `Δλ/2` of the largest
    /// step), and exactly that expression at each step.
    #[test]
    fn the_t_step_bound_weights_like_the_elbo() {
        let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
        let w = vlb(&schedule, |t| schedule.posterior_variance(t)).unwrap();
        let density = schedule_density(&schedule).unwrap();
        for (k, &(lambda, weight)) in w.iter().enumerate() {
            let t = k + 2;
            let step = schedule.log_snr(t - 1).unwrap() - lambda;
            let expected = 2.0 * 1000.0 * 0.5 * step.exp_m1() * density[t - 1].1;
            assert!((weight / expected - 1.0).abs() < 1e-9, "t {t}");
            // Where the steps are small the weight is the ELBO's 1 to first order in
            // the step (at t = 2, where lambda falls 0.79 in one step, it is 1.87).
            if t >= 20 {
                assert!((weight - 1.0).abs() < step, "t {t}: {weight}, step {step}");
            }
        }
        assert!(elbo(3.0) == 1.0);
        // The fixed large variance beta_t weighs the small-noise end less.
        let large = vlb(&schedule, |t| schedule.beta(t)).unwrap();
        assert!(large[0].1 < w[0].1);
    }

    /// EDM's weighting against Kingma & Gao's closed form (times 2), and not monotone.
    #[test]
    fn edm_weighting_matches_its_closed_form() {
        for lambda in [-6.0, -1.0, 0.0, 2.4, 5.0, 10.0] {
            let normal =
                (-0.5 * ((lambda - 2.4) / 2.4f64).powi(2)).exp() / (2.4 * (2.0 * PI).sqrt());
            let want = 2.0 * normal * ((-lambda).exp() + 0.25) / 0.25;
            let got = edm(lambda, &LogNormalSigma::EDM, 0.5);
            assert!(
                (got / want - 1.0).abs() < 1e-12,
                "{lambda}: {got} vs {want}"
            );
        }
        assert_eq!(target_factor(Prediction::Score, 0.0), 2.0);
    }
}
