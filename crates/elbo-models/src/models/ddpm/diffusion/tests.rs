//! Tests of the coefficients, predictions, KL terms and learned variances against elbo-math.

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
        let d = Diffusion::new(schedule, objective, VarianceKind::FixedSmall, Device::Cpu).unwrap();
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
        let weights =
            denoising_matching::denoising_matching_weights(d.schedule(), t, ReverseVariance::Beta)
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
    let bed =
        GaussianDataDiffusion::new(m, s2, schedule.clone(), ReverseStepVariance::Exact).unwrap();
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
    let v = Tensor::zeros([big_t as i64 + 1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
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
