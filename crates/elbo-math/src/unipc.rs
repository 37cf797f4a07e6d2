//! UniPC (Zhao et al., 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast
//! Sampling of Diffusion Models"), variant `bh2` (`B(h) = e^-h - 1`), order 2, in
//! data-prediction form: the weights of its predictor and its corrector, in f64.
//!
//! The predictor UniP-2 with `bh2` is DPM-Solver++ 2M (the same weights: this module
//! uses [`crate::dpm_solver::multistep`] for it). The corrector UniC costs no network
//! call: once the model has been evaluated at the predicted state `x_t` (as the next
//! step needs anyway), the step from `s` to `t` is taken again with that prediction
//! `m_t` as one more point of the expansion, and the corrected `x_t` replaces the
//! predicted one. With `hh = -h`, `phi_1 = e^hh - 1`, the corrector of order `c` solves
//! `R rho = b` with `R[i][k] = r_k^i` (the older points' `r_k = (lambda_k - lambda_s) /
//! h`, then 1 for `t`) and `b_i = i! phi_{i+1}(hh) / B(h)`, where
//! `phi_{k+1} = phi_k / hh - 1 / k!`; order 1 takes `rho = 1/2`. The update is
//! `x_t = (sigma_t / sigma_s) x_s - alpha_t phi_1 m_s - alpha_t B(h) (sum_k rho_k (m_k -
//! m_s) / r_k + rho_c (m_t - m_s))`.

use crate::dpm_solver::Point;
use crate::error::{MathError, Result};

/// The weights of one correction: `x_t = x_weight * x_s + sum_j data[j] * m_j +
/// at_t * m_t`, with `m_0` the prediction at `s` (the step's start), `m_1` the one before
/// it, and `m_t` the prediction at the predicted `x_t`.
#[derive(Clone, Debug, PartialEq)]
pub struct Correction {
    /// The weight of the state at the step's start.
    pub x_weight: f64,
    /// The weights of the predictions at the step's start and before, newest first.
    pub data: Vec<f64>,
    /// The weight of the prediction at the predicted state.
    pub at_t: f64,
}

/// The corrector of order `history.len()` (1 or 2) for the step from `history[0]` to
/// `t`: `history` holds the step's start and the point before it (for order 2), newest
/// first, `lambda` rising towards `t`, which must be noisy (`sigma > 0`; the step to the
/// data is not corrected: its result is the prediction of `x_0` itself).
pub fn corrector(history: &[Point], t: Point) -> Result<Correction> {
    let order = history.len();
    if !(1..=2).contains(&order) {
        return Err(MathError::OutOfRange {
            what: "UniC order (points of history)",
            expected: "1..=2",
            found: order as f64,
            index: None,
        });
    }
    if t.sigma <= 0.0 {
        return Err(MathError::NotPositive {
            what: "sigma of the corrected point",
            found: t.sigma,
            index: None,
        });
    }
    // The checks of the points and of rising lambda are the predictor's.
    crate::dpm_solver::multistep(history, t)?;
    let s = history[0];
    let h = t.lambda() - s.lambda();
    let hh = -h;
    let phi1 = hh.exp_m1();
    let b_h = hh.exp_m1();
    let phi2 = phi1 / hh - 1.0;
    let phi3 = phi2 / hh - 0.5;
    let (b1, b2) = (phi2 / b_h, 2.0 * phi3 / b_h);
    let scale = t.alpha * b_h;
    let x_weight = t.sigma / s.sigma;
    let base = -t.alpha * phi1;
    Ok(match order {
        1 => Correction {
            x_weight,
            data: vec![base + 0.5 * scale],
            at_t: -0.5 * scale,
        },
        _ => {
            // R = [[1, 1], [r1, 1]], b = [b1, b2].
            let r1 = (history[1].lambda() - s.lambda()) / h;
            let det = 1.0 - r1;
            let rho0 = (b1 - b2) / det;
            let rho1 = (b2 - r1 * b1) / det;
            Correction {
                x_weight,
                data: vec![base + scale * (rho0 / r1 + rho1), -scale * rho0 / r1],
                at_t: -scale * rho1,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dpm_solver::multistep;

    fn gaussian_x0(x: f64, p: Point) -> f64 {
        let (mu, s) = (0.7, 0.5);
        let spread2 = p.alpha * p.alpha * s * s + p.sigma * p.sigma;
        mu + p.alpha * s * s / spread2 * (x - p.alpha * mu)
    }

    fn exact(z: f64, p: Point) -> f64 {
        let (mu, s) = (0.7f64, 0.5f64);
        p.alpha * mu + (p.alpha * p.alpha * s * s + p.sigma * p.sigma).sqrt() * z
    }

    /// UniPC-2 (bh2) from lambda = -4 to 3 in `n` equal steps, a first-order first step
    /// included, with or without its corrector (applied after every step, the last one
    /// too, which a sampler cannot do for free: here it measures the corrector's order):
    /// the error at the end on Gaussian data.
    fn error(n: usize, correct: bool) -> f64 {
        let z = 1.3;
        let point = |i: usize| Point::from_lambda(-4.0 + 7.0 * i as f64 / n as f64);
        let mut x = exact(z, point(0));
        let mut m = gaussian_x0(x, point(0));
        // (point, prediction there), newest first; the state the last step started from.
        let mut history: Vec<(Point, f64)> = vec![(point(0), m)];
        let mut previous: Option<(f64, usize)> = None;
        for i in 0..=n {
            if let (true, Some((x_start, order))) = (correct, previous) {
                // Correct x at point(i) with the prediction m made there.
                let points: Vec<Point> = history[1..=order].iter().map(|(p, _)| *p).collect();
                let c = corrector(&points, point(i)).unwrap();
                x = c.x_weight * x_start
                    + c.data
                        .iter()
                        .zip(&history[1..])
                        .map(|(w, (_, d))| w * d)
                        .sum::<f64>()
                    + c.at_t * m;
            }
            if i == n {
                break;
            }
            // First order first, second order after (no lower-order last step here).
            let order = (i + 1).min(2).min(history.len());
            let points: Vec<Point> = history[..order].iter().map(|(p, _)| *p).collect();
            let step = multistep(&points, point(i + 1)).unwrap();
            previous = Some((x, order));
            x = step.x_weight * x
                + step
                    .data
                    .iter()
                    .zip(&history)
                    .map(|(w, (_, d))| w * d)
                    .sum::<f64>();
            m = gaussian_x0(x, point(i + 1));
            history.insert(0, (point(i + 1), m));
            history.truncate(3);
        }
        (x - exact(z, point(n))).abs()
    }

    #[test]
    fn the_corrector_raises_the_order_of_the_predictor() {
        let slopes = |correct| -> Vec<f64> {
            let errors: Vec<f64> = [20, 40, 80, 160]
                .iter()
                .map(|&n| error(n, correct))
                .collect();
            errors.windows(2).map(|w| (w[0] / w[1]).log2()).collect()
        };
        let (plain, corrected) = (slopes(false), slopes(true));
        println!("UniP-2 slopes {plain:?}, UniPC-2 slopes {corrected:?}");
        // The predictor alone is DPM-Solver++ 2M: order 2. With UniC: order 3.
        let (p, c) = (*plain.last().unwrap(), *corrected.last().unwrap());
        assert!((p - 2.0).abs() < 0.3, "predictor: {plain:?}");
        assert!(
            (c - 3.0).abs() < 0.3,
            "corrected {corrected:?} vs predictor {plain:?}"
        );
        // And it is closer at every step count.
        for n in [10, 20, 40] {
            assert!(error(n, true) < error(n, false), "{n} steps");
        }
    }

    #[test]
    fn a_constant_prediction_is_left_as_the_first_order_step() {
        let (s, t) = (
            Point::from_alpha_bar(0.3).unwrap(),
            Point::from_alpha_bar(0.6).unwrap(),
        );
        let older = Point::from_alpha_bar(0.1).unwrap();
        let first = multistep(&[s], t).unwrap().data[0];
        for history in [vec![s], vec![s, older]] {
            let c = corrector(&history, t).unwrap();
            let total: f64 = c.data.iter().sum::<f64>() + c.at_t;
            assert!((total - first).abs() < 1e-14, "{c:?}");
        }
        assert!(corrector(&[s], Point::from_alpha_bar(1.0).unwrap()).is_err());
        assert!(corrector(&[s, older, older], t).is_err());
        assert!(
            corrector(&[older, s], t).is_err(),
            "the history must be older"
        );
    }
}
