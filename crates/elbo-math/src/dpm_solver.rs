//! DPM-Solver++ (Lu et al., 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
//! Diffusion Probabilistic Models"), multistep, in data-prediction form: the weights of
//! one step of the probability-flow ODE, in f64, for the samplers of `elbo-models`.
//!
//! With `x_t = alpha_t x_0 + sigma_t eps` and the half log-SNR `lambda_t = ln(alpha_t /
//! sigma_t)`, the exact solution from `t` to `s` is
//! `x_s = (sigma_s / sigma_t) x_t + sigma_s * integral_{lambda_t}^{lambda_s} e^lambda
//! x0_hat(lambda) d lambda`. The solver expands the data prediction `x0_hat` in `lambda`
//! around the newest point with the predictions of the last `k` points (order `k`):
//!
//! - order 1 (DDIM): `x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^-h) D_0`, with
//!   `h = lambda_s - lambda_t`;
//! - order 2 (2M): `D = (1 + 1 / 2r) D_0 - (1 / 2r) D_1`, `r = h_prev / h`, in the same
//!   formula;
//! - order 3 (3M): the second-order divided differences too, with the weights
//!   `phi_2 = alpha_s ((e^-h - 1) / h + 1)` and `phi_3 = alpha_s ((e^-h - 1 + h) / h^2 -
//!   1/2)` of the paper. The second difference `D2 = (D1_0 - D1_1) / (r0 + r1)`
//!   estimates `h^2 x0_hat'' / 2`, so the exact solution's term is `-2 phi_3 D2`; the
//!   published multistep update (and diffusers', k-diffusion's) subtracts `phi_3 D2`,
//!   which on Gaussian data converges at order 2, not 3 (the tests measure both).
//!
//! A step that ends at the data (`sigma_s = 0`, `lambda_s = infinity`) is first order,
//! `x_s = alpha_s D_0`: the higher-order weights have no limit there (the paper's
//! lower-order final step).

use crate::error::{MathError, Result};

/// A point of the diffusion: the scales of the data and of the noise in `x_t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// `alpha_t`, the signal's scale (positive).
    pub alpha: f64,
    /// `sigma_t`, the noise's scale (zero at the data).
    pub sigma: f64,
}

impl Point {
    /// The point of a variance-preserving process with `alpha_bar` in `(0, 1]`:
    /// `alpha = sqrt(alpha_bar)`, `sigma = sqrt(1 - alpha_bar)`.
    pub fn from_alpha_bar(alpha_bar: f64) -> Result<Point> {
        if !(alpha_bar > 0.0 && alpha_bar <= 1.0) {
            return Err(MathError::OutOfRange {
                what: "alpha_bar of a solver point",
                expected: "(0, 1]",
                found: alpha_bar,
                index: None,
            });
        }
        Ok(Point {
            alpha: alpha_bar.sqrt(),
            sigma: (1.0 - alpha_bar).max(0.0).sqrt(),
        })
    }

    /// The variance-preserving point at half log-SNR `lambda`: `alpha^2 = 1 / (1 +
    /// e^-2 lambda)`, `sigma^2 = 1 / (1 + e^2 lambda)`.
    pub fn from_lambda(lambda: f64) -> Point {
        Point {
            alpha: (1.0 / (1.0 + (-2.0 * lambda).exp())).sqrt(),
            sigma: (1.0 / (1.0 + (2.0 * lambda).exp())).sqrt(),
        }
    }

    /// `lambda = ln(alpha / sigma)`, half the log signal-to-noise ratio (infinite at the
    /// data).
    pub fn lambda(&self) -> f64 {
        self.alpha.ln() - self.sigma.ln()
    }
}

/// The weights of one step: `x_next = x * x_weight + sum_j data[j] * D_j`, where `D_0` is
/// the data prediction at the newest point, `D_1` at the one before, and so on.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The weight of the current state.
    pub x_weight: f64,
    /// The weights of the data predictions, newest first (as many as the step's order).
    pub data: Vec<f64>,
}

/// `(e^-h - 1) / h + 1`, accurate for small `h` too.
fn phi2_unscaled(h: f64) -> f64 {
    if h.abs() < 1e-3 {
        h / 2.0 - h * h / 6.0 + h * h * h / 24.0
    } else {
        (-h).exp_m1() / h + 1.0
    }
}

/// `(e^-h - 1 + h) / h^2 - 1/2`, accurate for small `h` too.
fn phi3_unscaled(h: f64) -> f64 {
    if h.abs() < 1e-2 {
        -h / 6.0 + h * h / 24.0 - h * h * h / 120.0 + h.powi(4) / 720.0
    } else {
        ((-h).exp_m1() + h) / (h * h) - 0.5
    }
}

/// The order of each of `steps` steps of a multistep solver of order `order` (1 to 3):
/// `min(order, i + 1, steps - i)` for step `i` (from 0): lower orders while the history
/// fills, and towards the end, the last step first order (the paper's warm-up and
/// lower-order final steps).
pub fn step_orders(steps: usize, order: usize) -> Vec<usize> {
    (0..steps)
        .map(|i| order.min(i + 1).min(steps - i).max(1))
        .collect()
}

/// One DPM-Solver++ step from `history[0]` (the current point) to `next`, of order
/// `history.len()` (1 to 3): `history` holds the current point and the points of the
/// data predictions before it, newest first, with `lambda` rising from the oldest to the
/// current one and on to `next`. A step to the data (`next.sigma == 0`) is first order
/// whatever the history.
pub fn multistep(history: &[Point], next: Point) -> Result<Step> {
    multistep_weighing_d2(history, next, 1.0)
}

/// [`multistep`] with the third-order term weighed by `d2_weight` (1: ours; 1/2: the
/// weight the published multistep formula gives it, which the tests measure).
fn multistep_weighing_d2(history: &[Point], next: Point, d2_weight: f64) -> Result<Step> {
    if history.is_empty() || history.len() > 3 {
        return Err(MathError::OutOfRange {
            what: "DPM-Solver++ order (points of history)",
            expected: "1..=3",
            found: history.len() as f64,
            index: None,
        });
    }
    for (i, p) in history.iter().chain(std::iter::once(&next)).enumerate() {
        if !(p.alpha > 0.0 && p.alpha.is_finite() && p.sigma >= 0.0 && p.sigma.is_finite()) {
            return Err(MathError::NotPositive {
                what: "alpha (and sigma >= 0) of a solver point",
                found: p.alpha.min(p.sigma),
                index: Some(i),
            });
        }
    }
    let current = history[0];
    if current.sigma == 0.0 {
        return Err(MathError::OutOfRange {
            what: "sigma of the current point (a step starts from a noisy state)",
            expected: "(0, 1]",
            found: current.sigma,
            index: Some(0),
        });
    }
    let lambdas: Vec<f64> = history.iter().map(Point::lambda).collect();
    let next_lambda = next.lambda();
    // lambda must rise: oldest < ... < current < next.
    let mut later = next_lambda;
    for (i, &l) in lambdas.iter().enumerate() {
        if l.is_nan() || l >= later {
            return Err(MathError::OutOfRange {
                what: "half log-SNR of the solver's points (it must rise towards the data)",
                expected: "below the next point's",
                found: l,
                index: Some(i),
            });
        }
        later = l;
    }
    if next.sigma == 0.0 {
        return Ok(Step {
            x_weight: 0.0,
            data: vec![next.alpha],
        });
    }
    let h = next_lambda - lambdas[0];
    let x_weight = next.sigma / current.sigma;
    // alpha_s (1 - e^-h), the weight of a constant prediction.
    let phi1 = -next.alpha * (-h).exp_m1();
    let data = match history.len() {
        1 => vec![phi1],
        2 => {
            let r = (lambdas[0] - lambdas[1]) / h;
            vec![phi1 * (1.0 + 0.5 / r), -phi1 * 0.5 / r]
        }
        _ => {
            let (r0, r1) = ((lambdas[0] - lambdas[1]) / h, (lambdas[1] - lambdas[2]) / h);
            let phi2 = next.alpha * phi2_unscaled(h);
            // D1 = a (D_0 - D_1) / r0 - b (D_1 - D_2) / r1 ~ h D' and D2 = c ((D_0 - D_1)
            // / r0 - (D_1 - D_2) / r1) ~ h^2 D'' / 2; the exact solution's D'' term is
            // -phi3 h^2 D'' = -2 phi3 D2. (The published 3M update subtracts phi3 D2 only,
            // which the tests measure as second order; with 2 phi3 D2 it is third.)
            let phi3 = 2.0 * d2_weight * next.alpha * phi3_unscaled(h);
            let b = r0 / (r0 + r1);
            let (a, c) = (1.0 + b, 1.0 / (r0 + r1));
            let on_first = (phi2 * a - phi3 * c) / r0;
            let on_second = (phi2 * b - phi3 * c) / r1;
            vec![phi1 + on_first, -on_first - on_second, on_second]
        }
    };
    Ok(Step { x_weight, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One-dimensional Gaussian data N(mu, s^2): the exact data prediction and the exact
    /// probability-flow ODE solution (the standardised coordinate is constant along it).
    struct GaussianData {
        mu: f64,
        s: f64,
    }

    impl GaussianData {
        fn spread(&self, p: Point) -> f64 {
            (p.alpha * p.alpha * self.s * self.s + p.sigma * p.sigma).sqrt()
        }
        fn x0_hat(&self, x: f64, p: Point) -> f64 {
            let shrink = p.alpha * self.s * self.s / self.spread(p).powi(2);
            self.mu + shrink * (x - p.alpha * self.mu)
        }
        fn exact(&self, z: f64, p: Point) -> f64 {
            p.alpha * self.mu + self.spread(p) * z
        }
    }

    /// Solves from lambda = -4 to 3 in `n` equal lambda steps at `order`, starting from the
    /// exact states of the `order - 1` grid points before the start (a multistep method's
    /// starting values); returns the error at the end. `d2_weight` as in
    /// `multistep_weighing_d2`.
    fn error(order: usize, n: usize, d2_weight: f64) -> f64 {
        let data = GaussianData { mu: 0.7, s: 0.5 };
        let z = 1.3;
        let (start, end) = (-4.0, 3.0);
        let h = (end - start) / n as f64;
        let point = |i: isize| Point::from_lambda(start + h * i as f64);
        let mut x = data.exact(z, point(0));
        // (point, data prediction), newest first.
        let mut history: Vec<(Point, f64)> = (0..order as isize)
            .map(|j| {
                let p = point(-j);
                (p, data.x0_hat(data.exact(z, p), p))
            })
            .collect();
        for i in 0..n as isize {
            let points: Vec<Point> = history.iter().map(|(p, _)| *p).collect();
            let step = multistep_weighing_d2(&points, point(i + 1), d2_weight).unwrap();
            x = step.x_weight * x
                + step
                    .data
                    .iter()
                    .zip(&history)
                    .map(|(w, (_, d))| w * d)
                    .sum::<f64>();
            history.insert(0, (point(i + 1), data.x0_hat(x, point(i + 1))));
            history.truncate(order);
        }
        (x - data.exact(z, point(n as isize))).abs()
    }

    /// log2 of the error ratios as the number of steps doubles from 20 to 320.
    fn slopes(order: usize, d2_weight: f64) -> Vec<f64> {
        let errors: Vec<f64> = [20, 40, 80, 160, 320]
            .iter()
            .map(|&n| error(order, n, d2_weight))
            .collect();
        errors.windows(2).map(|w| (w[0] / w[1]).log2()).collect()
    }

    #[test]
    fn the_error_shrinks_at_the_solvers_order_on_gaussian_data() {
        // Halving the step divides the global error by 2^order, up to the next terms of
        // the expansion, which still show at 160 -> 320 steps for order 3 (seen: slopes
        // 1.00, 2.00 and 3.76, 3.58, 3.38, 3.23 falling towards 3): the last slope is
        // within 0.3 of the order.
        for order in 1..=3 {
            let slopes = slopes(order, 1.0);
            let last = *slopes.last().unwrap();
            assert!(
                (last - order as f64).abs() < 0.3,
                "order {order}: slopes {slopes:?}"
            );
        }
        // The published 3M weight of the second difference: second order (seen 2.14 at
        // 40 -> 80 steps, falling to 2).
        let published = slopes(3, 0.5);
        let last = *published.last().unwrap();
        assert!(
            (last - 2.0).abs() < 0.3,
            "published 3M: slopes {published:?}"
        );
    }

    #[test]
    fn order_1_is_ddim_and_every_order_is_exact_for_a_constant_prediction() {
        let (t, s) = (
            Point::from_alpha_bar(0.3).unwrap(),
            Point::from_alpha_bar(0.6).unwrap(),
        );
        let (x, x0) = (0.8, -0.4);
        let step = multistep(&[t], s).unwrap();
        let dpm = step.x_weight * x + step.data[0] * x0;
        let eps = (x - t.alpha * x0) / t.sigma;
        let ddim = s.alpha * x0 + s.sigma * eps;
        assert!((dpm - ddim).abs() < 1e-15, "{dpm} vs {ddim}");
        // A constant prediction: every order's weights add up to order 1's.
        let older = [
            Point::from_alpha_bar(0.1).unwrap(),
            Point::from_alpha_bar(0.05).unwrap(),
        ];
        for k in 2..=3 {
            let mut history = vec![t];
            history.extend_from_slice(&older[..k - 1]);
            let step = multistep(&history, s).unwrap();
            assert_eq!(step.data.len(), k);
            let total: f64 = step.data.iter().sum();
            assert!((total - multistep(&[t], s).unwrap().data[0]).abs() < 1e-14);
        }
        // The step to the data is x_0's prediction itself.
        let to_data = multistep(&[t, older[0]], Point::from_alpha_bar(1.0).unwrap()).unwrap();
        assert_eq!((to_data.x_weight, to_data.data.clone()), (0.0, vec![1.0]));
    }

    #[test]
    fn the_small_step_series_join_the_closed_forms() {
        for h in [9e-4f64, 1.1e-3, 9e-3, 1.1e-2] {
            let closed2 = (-h).exp_m1() / h + 1.0;
            let closed3 = ((-h).exp_m1() + h) / (h * h) - 0.5;
            assert!((phi2_unscaled(h) - closed2).abs() < 1e-12 * closed2.abs().max(1.0));
            assert!((phi3_unscaled(h) - closed3).abs() < 1e-9, "{h}");
        }
    }

    #[test]
    fn orders_warm_up_and_cool_down_and_bad_histories_are_refused() {
        assert_eq!(step_orders(6, 3), vec![1, 2, 3, 3, 2, 1]);
        assert_eq!(step_orders(5, 2), vec![1, 2, 2, 2, 1]);
        assert_eq!(step_orders(1, 3), vec![1]);
        let (a, b) = (
            Point::from_alpha_bar(0.2).unwrap(),
            Point::from_alpha_bar(0.5).unwrap(),
        );
        let err = multistep(&[b], a).unwrap_err().to_string();
        assert!(err.contains("half log-SNR"), "{err}");
        let err = multistep(&[a, b], Point::from_alpha_bar(0.9).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("half log-SNR"),
            "the history must be older: {err}"
        );
        assert!(multistep(&[], a).is_err());
        assert!(multistep(&[a, a, a, a], b).is_err());
        assert!(Point::from_alpha_bar(0.0).is_err());
    }
}
