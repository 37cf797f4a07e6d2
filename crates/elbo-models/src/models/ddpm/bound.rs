//! The full variational bound of a diffusion model, term by term:
//!
//! ```text
//! ELBO(x_0) = E_q[log p(x_0 | x_1)]                              reconstruction  (L_0)
//!           - KL(q(x_T | x_0) || p(x_T))                          prior matching  (L_T)
//!           - sum_{t=2..T} E_q KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))
//!                                                                 denoising matching
//! ```
//!
//! Each expectation over `x_t ~ q(x_t | x_0)` is estimated with one draw per example
//! and step; the KL terms themselves are exact Gaussian KLs. The denoising terms are
//! reported in groups of timesteps (2..=10, 11..=100, 101..=1000, ...) so that a
//! reader sees where the bits go.

use tch::{Kind, Tensor};

use super::diffusion::{Decoder, Diffusion};
use crate::models::ElboTerms;
use crate::sample::{ClipX0, Network};

/// The groups of timesteps the denoising terms are reported in: `2..=10`, then each
/// decade up to T.
pub fn term_groups(big_t: usize) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    let (mut lo, mut hi) = (2usize, 10usize);
    while lo <= big_t {
        groups.push((lo, hi.min(big_t)));
        lo = hi + 1;
        hi *= 10;
    }
    groups
}

/// The bound of every example of `x0` (in [-1, 1]) under `network`, with `decoder` for
/// `L_0`: T network evaluations of the whole batch.
pub fn bound_terms(
    diffusion: &Diffusion,
    network: &Network<'_>,
    x0: &Tensor,
    decoder: Decoder,
) -> ElboTerms {
    let big_t = diffusion.timesteps();
    let b = x0.size()[0];
    let device = x0.device();
    let mut layers = Vec::new();
    for (lo, hi) in term_groups(big_t) {
        let mut total = Tensor::zeros([b], (Kind::Float, device));
        for t in lo..=hi {
            let tt = Tensor::full([b], t as i64, (Kind::Int64, device));
            let (x_t, x0_hat, log_var) = draw(diffusion, network, x0, &tt);
            total += diffusion.denoising_matching(x0, &x_t, &tt, &x0_hat, &log_var);
        }
        layers.push((format!("denoising_matching t={lo}..{hi}"), total));
    }
    with_ends(diffusion, network, x0, decoder, layers)
}

/// The bound's term of each example at its own timestep `t` (nats): the
/// denoising-matching KL for t >= 2, the decoder's negative log-likelihood `-L_0` at
/// t = 1, from `x_t`, the prediction `x0_hat` there and the model's reverse
/// log-variance `log_var`. What `--loss vlb` trains on.
pub fn term(
    diffusion: &Diffusion,
    x0: &Tensor,
    x_t: &Tensor,
    t: &Tensor,
    x0_hat: &Tensor,
    log_var: &Tensor,
    decoder: Decoder,
) -> Tensor {
    let kl = diffusion.denoising_matching(x0, x_t, t, x0_hat, log_var);
    let nll = -diffusion.reconstruction(x0, x_t, t, x0_hat, log_var, decoder);
    kl.where_self(&t.gt(1), &nll)
}

/// [`term`] at the timesteps `t` (one per example), with one draw of `x_t`: one
/// network call. The table of these over every t is what the variance of a one-sample
/// estimate of the bound is computed from.
pub fn terms_at(
    diffusion: &Diffusion,
    network: &Network<'_>,
    x0: &Tensor,
    t: &Tensor,
    decoder: Decoder,
) -> Tensor {
    let (x_t, x0_hat, log_var) = draw(diffusion, network, x0, t);
    term(diffusion, x0, &x_t, t, &x0_hat, &log_var, decoder)
}

/// `x_t ~ q(x_t | x_0)` at the timesteps `t`, the network's prediction of `x_0` there
/// and the model's reverse log-variance.
fn draw(
    diffusion: &Diffusion,
    network: &Network<'_>,
    x0: &Tensor,
    t: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let x_t = diffusion.q_sample(x0, t, &x0.randn_like());
    let output = network(&x_t, t);
    let (x0_hat, _) = diffusion.predictions(&output, &x_t, t, ClipX0::None);
    let log_var = diffusion.model_log_var(t, &x_t, &output);
    (x_t, x0_hat, log_var)
}

/// The bound's terms from the denoising `layers`, with `L_0` (one draw of `x_1`) and the
/// exact `L_T` added.
fn with_ends(
    diffusion: &Diffusion,
    network: &Network<'_>,
    x0: &Tensor,
    decoder: Decoder,
    layers: Vec<(String, Tensor)>,
) -> ElboTerms {
    let one = Tensor::ones([x0.size()[0]], (Kind::Int64, x0.device()));
    let (x_1, x0_hat, log_var) = draw(diffusion, network, x0, &one);
    ElboTerms {
        reconstruction: diffusion.reconstruction(x0, &x_1, &one, &x0_hat, &log_var, decoder),
        prior_matching: diffusion.prior_matching(x0),
        layers,
    }
}

/// One-sample unbiased estimate of the bound per example, at two network evaluations:
/// `L_0` at t = 1, `L_T` exactly, and `(T - 1)` times the denoising term at one uniform
/// `t` in `2..=T` (named `denoising_matching`). What training logs and epoch-end
/// evaluations use; [`bound_terms`] is the full evaluation.
pub fn sampled_terms(
    diffusion: &Diffusion,
    network: &Network<'_>,
    x0: &Tensor,
    decoder: Decoder,
) -> ElboTerms {
    let big_t = diffusion.timesteps() as i64;
    let mut layers = Vec::new();
    if big_t >= 2 {
        let t = Tensor::randint_low(2, big_t + 1, [x0.size()[0]], (Kind::Int64, x0.device()));
        let (x_t, x0_hat, log_var) = draw(diffusion, network, x0, &t);
        let kl = diffusion.denoising_matching(x0, &x_t, &t, &x0_hat, &log_var) * (big_t - 1) as f64;
        layers.push(("denoising_matching".to_string(), kl));
    }
    with_ends(diffusion, network, x0, decoder, layers)
}

/// `log p(x_{0:T}) - log q(x_{1:T} | x_0)` along `k` forward trajectories per example,
/// shape (k, batch): each draw costs T network evaluations. Its mean is the ELBO; its
/// log-mean-exp over draws is the importance-weighted bound.
pub fn log_weights(
    diffusion: &Diffusion,
    network: &Network<'_>,
    x0: &Tensor,
    k: i64,
    decoder: Decoder,
) -> Tensor {
    let size = x0.size();
    let b = size[0];
    let device = x0.device();
    let mut expanded = vec![k];
    expanded.extend_from_slice(&size);
    let x0k = x0
        .unsqueeze(0)
        .expand(expanded.as_slice(), false)
        .flatten(0, 1);
    let schedule = diffusion.schedule();
    let mut x_prev = x0k.shallow_clone();
    let mut log_w = Tensor::zeros([k * b], (Kind::Float, device));
    for t in 1..=diffusion.timesteps() {
        let beta = schedule.beta(t).unwrap_or(1.0);
        let mean_q = &x_prev * (1.0 - beta).sqrt();
        let log_var_q = Tensor::full_like(&x_prev, beta.ln());
        let x_t = &mean_q + x_prev.randn_like() * beta.sqrt();
        log_w -= crate::nn::gaussian::log_density(&x_t, &mean_q, &log_var_q);
        let tt = Tensor::full([k * b], t as i64, (Kind::Int64, device));
        let output = network(&x_t, &tt);
        let (x0_hat, _) = diffusion.predictions(&output, &x_t, &tt, ClipX0::None);
        let log_var = diffusion.model_log_var(&tt, &x_t, &output);
        log_w += if t == 1 {
            diffusion.reconstruction(&x0k, &x_t, &tt, &x0_hat, &log_var, decoder)
        } else {
            let mean_p = diffusion.reverse_mean(&x0_hat, &x_t, &tt);
            crate::nn::gaussian::log_density(&x_prev, &mean_p, &log_var)
        };
        x_prev = x_t;
    }
    log_w += crate::nn::gaussian::log_density_standard(&x_prev);
    log_w.reshape([k, b])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ddpm::diffusion::{Objective, ScheduleKind, VarianceKind};
    use crate::nn::gaussian::tests::values;
    use elbo_math::testbed::gaussian_diffusion::{GaussianDataDiffusion, ReverseStepVariance};
    use tch::Device;

    #[test]
    fn groups_cover_two_to_t_once() {
        let _generator = crate::testing::generator_lock();
        assert_eq!(term_groups(1000), [(2, 10), (11, 100), (101, 1000)]);
        assert_eq!(term_groups(50), [(2, 10), (11, 50)]);
        assert_eq!(term_groups(1), []);
        let covered: usize = term_groups(4000).iter().map(|(a, b)| b - a + 1).sum();
        assert_eq!(covered, 3999);
    }

    /// The chain test of issue 7: on Gaussian data a "network" that returns the exact
    /// optimal noise prediction must give, through `bound_terms`, elbo-math's
    /// closed-form ELBO.
    #[test]
    fn the_optimal_predictor_gives_the_closed_form_elbo_on_gaussian_data() {
        let _generator = crate::testing::generator_lock();
        tch::manual_seed(7);
        let (m, s2) = (0.3, 0.25);
        let big_t = 100;
        let schedule = ScheduleKind::Linear.build(big_t).unwrap();
        let testbed =
            GaussianDataDiffusion::new(m, s2, schedule.clone(), ReverseStepVariance::Posterior)
                .unwrap();
        let diffusion = Diffusion::new(
            schedule,
            Objective::Eps,
            VarianceKind::FixedSmall,
            Device::Cpu,
        )
        .unwrap();
        // E[x_0 | x_t] is linear in x_t: a_t x_t + b_t.
        let lines: Vec<(f64, f64)> = (0..=big_t)
            .map(|t| {
                if t == 0 {
                    return (1.0, 0.0);
                }
                let b = testbed.optimal_x0(t, 0.0).unwrap();
                (testbed.optimal_x0(t, 1.0).unwrap() - b, b)
            })
            .collect();
        let slope = Tensor::from_slice(&lines.iter().map(|l| l.0).collect::<Vec<_>>());
        let offset = Tensor::from_slice(&lines.iter().map(|l| l.1).collect::<Vec<_>>());
        let optimal_eps = |x_t: &Tensor, t: &Tensor| -> Tensor {
            let a = slope
                .index_select(0, t)
                .to_kind(Kind::Float)
                .reshape([-1, 1]);
            let c = offset
                .index_select(0, t)
                .to_kind(Kind::Float)
                .reshape([-1, 1]);
            let x0 = a * x_t + c;
            let (signal, noise) = (
                Tensor::from_slice(
                    &(0..=big_t)
                        .map(|t| testbed.schedule().alpha_bar(t).unwrap().sqrt())
                        .collect::<Vec<_>>(),
                ),
                Tensor::from_slice(
                    &(0..=big_t)
                        .map(|t| testbed.schedule().one_minus_alpha_bar(t).unwrap().sqrt())
                        .collect::<Vec<_>>(),
                ),
            );
            let sg = signal
                .index_select(0, t)
                .to_kind(Kind::Float)
                .reshape([-1, 1]);
            let nz = noise
                .index_select(0, t)
                .to_kind(Kind::Float)
                .reshape([-1, 1]);
            (x_t - sg * x0) / nz
        };
        let (n, d) = (2048i64, 4i64);
        let x0 = Tensor::randn([n, d], (Kind::Float, Device::Cpu)) * s2.sqrt() + m;
        let terms = bound_terms(&diffusion, &optimal_eps, &x0, Decoder::Continuous);
        let got = values(&terms.elbo());
        let want: Vec<f64> = (0..n)
            .map(|i| {
                (0..d)
                    .map(|j| testbed.elbo(x0.double_value(&[i, j])).unwrap().elbo())
                    .sum()
            })
            .collect();
        let diffs: Vec<f64> = got.iter().zip(&want).map(|(g, w)| g - w).collect();
        let mean = diffs.iter().sum::<f64>() / n as f64;
        let var = diffs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let se = (var / n as f64).sqrt();
        // The estimate is unbiased (one draw of x_t per step and example); 4 standard
        // errors of the mean difference, plus 1e-3 nats for f32 rounding over 100 steps.
        assert!(
            mean.abs() < 4.0 * se + 1e-3,
            "mean difference {mean} nats, standard error {se}"
        );
        // With 2048 examples the standard error is about 0.11 nats (per-example sd about
        // 5 nats, mostly from the one draw of x_1 in L_0), so a bias of half a nat fails.
        assert!(
            se < 0.15,
            "the estimate should be tight: standard error {se}"
        );
        // The prior matching is exact, example by example.
        let prior = values(&terms.prior_matching);
        for i in 0..4 {
            let want: f64 = (0..d)
                .map(|j| {
                    testbed
                        .elbo(x0.double_value(&[i, j]))
                        .unwrap()
                        .prior_matching()
                })
                .sum();
            assert!(
                (prior[i as usize] - want).abs() < 1e-4,
                "{} vs {want}",
                prior[i as usize]
            );
        }
        // And the bound is below the exact evidence on average (Jensen).
        let evidence: f64 = (0..n)
            .map(|i| {
                (0..d)
                    .map(|j| testbed.log_evidence(x0.double_value(&[i, j])).unwrap())
                    .sum::<f64>()
            })
            .sum::<f64>()
            / n as f64;
        let elbo_mean = got.iter().sum::<f64>() / n as f64;
        assert!(elbo_mean <= evidence + 4.0 * se, "{elbo_mean} > {evidence}");
    }

    #[test]
    fn trajectory_log_weights_average_to_the_bound() {
        let _generator = crate::testing::generator_lock();
        tch::manual_seed(3);
        let big_t = 8;
        let schedule = ScheduleKind::Linear.build(big_t).unwrap();
        let diffusion = Diffusion::new(
            schedule,
            Objective::Eps,
            VarianceKind::FixedLarge,
            Device::Cpu,
        )
        .unwrap();
        // A fixed, imperfect "network": eps_hat = 0.5 x_t.
        let network = |x_t: &Tensor, _t: &Tensor| x_t * 0.5;
        let x0 = Tensor::from_slice(&[0.2f32, -0.6, 0.9]).reshape([1, 3]);
        let k = 20_000;
        let w = values(&log_weights(
            &diffusion,
            &network,
            &x0,
            k,
            Decoder::Continuous,
        ));
        let mean = w.iter().sum::<f64>() / k as f64;
        let sd = (w.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt();
        let x0k = x0.expand([k, 3], false);
        let bound = values(&bound_terms(&diffusion, &network, &x0k, Decoder::Continuous).elbo());
        let b_mean = bound.iter().sum::<f64>() / k as f64;
        let b_sd =
            (bound.iter().map(|v| (v - b_mean).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt();
        // Two independent unbiased estimates of the same ELBO: their difference has
        // standard error sqrt(sd^2 + b_sd^2) / sqrt(k); allow 4 of them.
        let se = ((sd * sd + b_sd * b_sd) / k as f64).sqrt();
        assert!(
            (mean - b_mean).abs() < 4.0 * se,
            "{mean} vs {b_mean} (se {se})"
        );
    }
}
