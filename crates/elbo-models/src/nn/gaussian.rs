//! Diagonal Gaussians on tensors, in log-variance form: the tensor twins of
//! `elbo_math::gaussian`, tested against it.
//!
//! "Per example" means summed over every dimension but the first (the batch).

use tch::{Kind, Tensor};

const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// Sums every dimension but the first: one number per example.
pub fn sum_per_example(t: &Tensor) -> Tensor {
    if t.dim() <= 1 {
        return t.shallow_clone();
    }
    t.flatten(1, -1).sum_dim_intlist(1, false, None::<Kind>)
}

/// `log N(x; mean, exp(log_var))`, summed per example.
pub fn log_density(x: &Tensor, mean: &Tensor, log_var: &Tensor) -> Tensor {
    let z2 = (x - mean).square() * (-log_var).exp();
    sum_per_example(&((z2 + log_var + LN_2PI) * -0.5))
}

/// `log N(x; 0, I)`, summed per example.
pub fn log_density_standard(x: &Tensor) -> Tensor {
    sum_per_example(&((x.square() + LN_2PI) * -0.5))
}

/// `KL(N(mean, exp(log_var)) || N(0, I))`, summed per example: the VAE's prior matching,
/// `(exp(log_var) - 1 - log_var + mean^2) / 2` per dimension.
pub fn kl_to_standard_normal(mean: &Tensor, log_var: &Tensor) -> Tensor {
    let per_dim = (log_var.exp() - 1.0 - log_var + mean.square()) * 0.5;
    sum_per_example(&per_dim)
}

/// `KL(N(mean_q, exp(log_var_q)) || N(mean_p, exp(log_var_p)))`, summed per example.
pub fn kl_divergence(
    mean_q: &Tensor,
    log_var_q: &Tensor,
    mean_p: &Tensor,
    log_var_p: &Tensor,
) -> Tensor {
    let d = log_var_q - log_var_p;
    let z2 = (mean_q - mean_p).square() * (-log_var_p).exp();
    sum_per_example(&((d.exp() - 1.0 - &d + z2) * 0.5))
}

/// `mean + exp(log_var / 2) * eps` with `eps ~ N(0, I)` from libtorch's generator.
pub fn reparameterise(mean: &Tensor, log_var: &Tensor) -> Tensor {
    let eps = mean.randn_like();
    mean + (log_var * 0.5).exp() * eps
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use elbo_math::gaussian as exact;

    /// Values in f64 of a tensor.
    pub(crate) fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    fn grid() -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mean = vec![-3.0, -0.5, 0.0, 0.25, 2.0, 7.0];
        let log_var = vec![-20.0, -2.0, 0.0, 0.5, 3.0, 10.0];
        let x = vec![0.1, -1.0, 2.5, 0.25, -4.0, 1.0];
        (mean, log_var, x)
    }

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_slice(v).reshape([2, 3])
    }

    // Tolerances: the tensor code runs in f64 here (to compare formulas, not rounding):
    // a few operations per element and a 3-term sum, so 1e-12 relative to the magnitude.
    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= 1e-12 * want.abs().max(1.0)
    }

    #[test]
    fn log_density_matches_elbo_math() {
        let _generator = crate::testing::generator_lock();
        let (mean, log_var, x) = grid();
        let got = values(&log_density(&t(&x), &t(&mean), &t(&log_var)));
        for (row, &value) in got.iter().enumerate() {
            let want: f64 = (3 * row..3 * row + 3)
                .map(|i| exact::log_density(x[i], mean[i], log_var[i]))
                .sum();
            assert!(close(value, want), "row {row}: {value} vs {want}");
        }
        let zeros = vec![0.0; 6];
        let got = values(&log_density_standard(&t(&x)));
        let want: f64 = (0..3).map(|i| exact::log_density(x[i], 0.0, 0.0)).sum();
        assert!(close(got[0], want));
        let via_general = values(&log_density(&t(&x), &t(&zeros), &t(&zeros)));
        assert!(close(got[1], via_general[1]));
    }

    #[test]
    fn kl_matches_elbo_math_both_ways_and_the_standard_normal_case() {
        let _generator = crate::testing::generator_lock();
        let (mean_q, log_var_q, _) = grid();
        let mean_p: Vec<f64> = mean_q.iter().rev().copied().collect();
        let log_var_p: Vec<f64> = log_var_q.iter().map(|v| -v / 2.0).collect();
        let qp = values(&kl_divergence(
            &t(&mean_q),
            &t(&log_var_q),
            &t(&mean_p),
            &t(&log_var_p),
        ));
        let pq = values(&kl_divergence(
            &t(&mean_p),
            &t(&log_var_p),
            &t(&mean_q),
            &t(&log_var_q),
        ));
        let std = values(&kl_to_standard_normal(&t(&mean_q), &t(&log_var_q)));
        for row in 0..2 {
            let idx = 3 * row..3 * row + 3;
            let want_qp: f64 = idx
                .clone()
                .map(|i| exact::kl_divergence(mean_q[i], log_var_q[i], mean_p[i], log_var_p[i]))
                .sum();
            let want_pq: f64 = idx
                .clone()
                .map(|i| exact::kl_divergence(mean_p[i], log_var_p[i], mean_q[i], log_var_q[i]))
                .sum();
            let want_std: f64 = idx
                .map(|i| exact::kl_to_standard_normal(mean_q[i], log_var_q[i]))
                .sum();
            // The tensor form exp(d) - 1 - d loses digits for tiny d where elbo-math uses
            // a series; at these magnitudes (KL >= 1) 1e-12 relative still holds.
            assert!(close(qp[row], want_qp), "{} vs {want_qp}", qp[row]);
            assert!(close(pq[row], want_pq), "{} vs {want_pq}", pq[row]);
            assert!(close(std[row], want_std), "{} vs {want_std}", std[row]);
        }
    }

    #[test]
    fn reparameterised_draws_have_the_asked_moments() {
        let _generator = crate::testing::generator_lock();
        tch::manual_seed(7);
        let n = 200_000;
        let mean = Tensor::full([n], 1.5, (Kind::Double, tch::Device::Cpu));
        let log_var = Tensor::full([n], (0.25f64).ln(), (Kind::Double, tch::Device::Cpu));
        let z = reparameterise(&mean, &log_var);
        let m = z.mean(Kind::Double).double_value(&[]);
        let v = z.var(true).double_value(&[]);
        // Standard error of the mean: sqrt(0.25 / n) = 1.1e-3; of the variance:
        // 0.25 sqrt(2 / n) = 7.9e-4. Four standard errors each.
        assert!((m - 1.5).abs() < 4.0 * 1.2e-3, "{m}");
        assert!((v - 0.25).abs() < 4.0 * 8.0e-4, "{v}");
    }
}
