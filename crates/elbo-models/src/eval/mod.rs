//! Test-set evaluation: the ELBO with its terms, and the importance-weighted bound
//! (IWAE, Burda et al.) `log (1/K) sum_k p(x, z_k) / q(z_k | x)`, which is at least the
//! ELBO in expectation and tightens towards `log p(x)` as K grows.

pub mod classifier;
pub mod fid;
pub mod frechet;
mod hooks;
pub mod image;
pub mod inception;

pub use hooks::{Pictures, TestElbo, mean_elbo};

use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::models::ElboModel;

/// Results in nats per example (ELBO and bounds are log-likelihood bounds: negative).
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    /// Examples evaluated.
    pub examples: i64,
    /// Dimensions of one example (for bits per dimension).
    pub dims: i64,
    /// Mean of each ELBO term (reconstruction, prior matching, the layers), one sample
    /// per example (every term evaluated, for models with an [`crate::models::ExactBound`]).
    pub terms: Vec<(String, f64)>,
    /// The mean ELBO: the reconstruction minus every other term.
    pub elbo: f64,
    /// The IWAE bound and its K, when asked for.
    pub iwae: Option<(i64, f64)>,
    /// Active units per latent layer, bottom first (empty for models without latents).
    pub active_units: Vec<ActiveUnits>,
}

impl EvalReport {
    /// A bound in nats per example as bits per dimension of the negative log-likelihood.
    pub fn bits_per_dim(&self, nats: f64) -> f64 {
        -nats / (self.dims as f64 * std::f64::consts::LN_2)
    }
}

/// Evaluates `model` on `x` in batches of `batch` examples: the ELBO terms, and the IWAE
/// bound with `iw_k` samples when given.
/// An error if asked for an IWAE bound that the model does not have (the VDM's).
pub fn evaluate(
    model: &dyn ElboModel,
    x: &Tensor,
    iw_k: Option<i64>,
    batch: i64,
) -> Result<EvalReport> {
    let never = AtomicBool::new(false);
    Ok(
        evaluate_until(model, x, iw_k, batch, &never)?
            .expect("an evaluation nobody stops finishes"),
    )
}

/// [`evaluate`], given up between two batches as soon as `stop` is raised (a Ctrl-C):
/// `Ok(None)` then.
pub fn evaluate_until(
    model: &dyn ElboModel,
    x: &Tensor,
    iw_k: Option<i64>,
    batch: i64,
    stop: &AtomicBool,
) -> Result<Option<EvalReport>> {
    let stopped = || stop.load(Ordering::SeqCst);
    tch::no_grad(|| {
        let size = x.size();
        let examples = size[0];
        let dims: i64 = size[1..].iter().product();
        let mut sums: Vec<(String, f64)> = Vec::new();
        for chunk in x.split(batch.max(1), 0) {
            if stopped() {
                return Ok(None);
            }
            let n = chunk.size()[0] as f64;
            let terms = match model.capabilities().exact_bound {
                Some(exact) => exact.exact_bound(&chunk),
                None => model.elbo_terms(&chunk),
            };
            for (i, (name, mean)) in terms.means().into_iter().enumerate() {
                match sums.get_mut(i) {
                    Some((_, total)) => *total += mean * n,
                    None => sums.push((name, mean * n)),
                }
            }
        }
        let mut terms: Vec<(String, f64)> = sums
            .into_iter()
            .map(|(name, total)| (name, total / examples as f64))
            .collect();
        // `ElboTerms::means` ends with the ELBO itself.
        let elbo = terms.pop().map_or(f64::NAN, |(_, v)| v);
        let iwae = match iw_k {
            Some(k) => match iwae_bound_until(model, x, k, batch, stop)? {
                Some(bound) => Some((k, bound)),
                None => return Ok(None),
            },
            None => None,
        };
        if stopped() {
            return Ok(None);
        }
        Ok(Some(EvalReport {
            examples,
            dims,
            terms,
            elbo,
            iwae,
            active_units: active_units(model, x, batch),
        }))
    })
}

/// The IWAE bound with `k` samples, averaged over the examples of `x`. The `k` samples
/// are drawn in chunks that keep each decoder call near 2^19 output values, and combined
/// with a log-sum-exp, so any K fits in memory. (On one CPU thread, calls of 2^24 values
/// ran 1.2 (vae-mlp) to 2.5 (convolutional ladder, whose inner activations are 4 times
/// its output) times slower per sample than calls of 2^19: out of cache.)
///
/// An error if the model has no importance weights (the VDM).
pub fn iwae_bound(model: &dyn ElboModel, x: &Tensor, k: i64, batch: i64) -> Result<f64> {
    let never = AtomicBool::new(false);
    Ok(iwae_bound_until(model, x, k, batch, &never)?.expect("a bound nobody stops finishes"))
}

/// [`iwae_bound`], given up between two model calls as soon as `stop` is raised.
fn iwae_bound_until(
    model: &dyn ElboModel,
    x: &Tensor,
    k: i64,
    batch: i64,
    stop: &AtomicBool,
) -> Result<Option<f64>> {
    tch::no_grad(|| {
        let size = x.size();
        let dims: i64 = size[1..].iter().product::<i64>().max(1);
        let mut total = 0.0;
        for chunk in x.split(batch.max(1), 0) {
            let b = chunk.size()[0];
            let per_call = ((1i64 << 19) / (b * dims)).clamp(1, k);
            let mut parts = Vec::new();
            let mut done = 0;
            while done < k {
                if stop.load(Ordering::SeqCst) {
                    return Ok(None);
                }
                let now = per_call.min(k - done);
                parts.push(model.log_importance_weights(&chunk, now)?);
                done += now;
            }
            let log_w = Tensor::cat(&parts, 0).to_kind(Kind::Double);
            let bound = log_w.logsumexp([0], false) - (k as f64).ln();
            total += bound.sum(Kind::Double).double_value(&[]);
        }
        Ok(Some(total / size[0] as f64))
    })
}

/// The variance over the data above which a latent dimension counts as active (Burda et
/// al. 2016, "Importance weighted autoencoders", section 5.2).
pub const ACTIVE_UNIT_THRESHOLD: f64 = 0.01;

/// Draws of the layers above over which [`active_units`] averages a layer's conditional
/// posterior mean. Averaging estimates `E_q[z_l | x]`; what is left of the draws' spread
/// adds its variance divided by this number to the variance over the data, so a unit
/// whose mean moves with the draws but not with `x` is counted active only if that
/// movement has variance above `10 * 0.01 = 0.1`.
pub const ACTIVE_UNIT_DRAWS: i64 = 10;

/// How many dimensions of one latent layer are active.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveUnits {
    /// The layer (`z_1` is the bottom, next to the data).
    pub layer: String,
    /// Dimensions whose posterior mean has variance over the data above
    /// [`ACTIVE_UNIT_THRESHOLD`].
    pub active: i64,
    /// Dimensions of the layer.
    pub dims: i64,
}

/// Active units per latent layer on the examples `x` (batches of `batch`): a dimension
/// `u` of layer `l` is active when `Var_x(E_q[z_l,u | x]) > 0.01`, the posterior mean
/// estimated by averaging [`crate::models::Latents::posterior_means`] over
/// [`ACTIVE_UNIT_DRAWS`] draws. A posterior-collapsed layer has (nearly) none; a model
/// without latents has no layers.
pub fn active_units(model: &dyn ElboModel, x: &Tensor, batch: i64) -> Vec<ActiveUnits> {
    let Some(latents) = model.capabilities().latents else {
        return Vec::new();
    };
    tch::no_grad(|| {
        let mut per_layer: Vec<(String, Vec<Tensor>)> = Vec::new();
        for chunk in x.split(batch.max(1), 0) {
            let mut sums: Vec<(String, Tensor)> = Vec::new();
            for _ in 0..ACTIVE_UNIT_DRAWS {
                for (i, (name, mean)) in latents.posterior_means(&chunk).into_iter().enumerate() {
                    let mean = mean.to_kind(Kind::Double);
                    match sums.get_mut(i) {
                        Some((_, total)) => *total += mean,
                        None => sums.push((name, mean)),
                    }
                }
            }
            for (i, (name, total)) in sums.into_iter().enumerate() {
                let mean = total / ACTIVE_UNIT_DRAWS as f64;
                match per_layer.get_mut(i) {
                    Some((_, parts)) => parts.push(mean),
                    None => per_layer.push((name, vec![mean])),
                }
            }
        }
        per_layer
            .into_iter()
            .map(|(layer, parts)| {
                let means = Tensor::cat(&parts, 0).flatten(1, -1);
                let variance = means.var_dim([0i64].as_slice(), false, false);
                ActiveUnits {
                    layer,
                    active: variance
                        .gt(ACTIVE_UNIT_THRESHOLD)
                        .sum(Kind::Int64)
                        .int64_value(&[]),
                    dims: means.size()[1],
                }
            })
            .collect()
    })
}

/// Active units as a JSON object for metrics: `{"z_1": [active, dims], ...}`.
pub fn active_units_json(units: &[ActiveUnits]) -> serde_json::Value {
    units
        .iter()
        .map(|u| (u.layer.clone(), serde_json::json!([u.active, u.dims])))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::vae::VaePreset;
    use crate::models::vae::{Vae, VaeConfig};
    use crate::nn::likelihood::Likelihood;
    use tch::nn::VarStore;

    /// Averaged over examples, the IWAE bound is at least the ELBO and grows with K
    /// (Burda et al., theorem 1). On an untrained model the gaps are tens of nats, far
    /// above the Monte Carlo noise of 200 examples, so the ordering is a firm check.
    #[test]
    fn iwae_is_at_least_the_elbo_and_grows_with_k() {
        let _generator = crate::testing::generator_lock();
        tch::manual_seed(3);
        let vs = VarStore::new(tch::Device::Cpu);
        let config = VaeConfig::preset(VaePreset::Mlp, [1, 28, 28], Likelihood::Bernoulli).unwrap();
        let vae = Vae::new(&vs.root(), config).unwrap();
        let x = Tensor::rand([200, 1, 28, 28], (Kind::Float, tch::Device::Cpu)).round();
        let report = evaluate(&vae, &x, Some(10), 64).unwrap();
        let elbo = report.elbo;
        let iw10 = report.iwae.unwrap().1;
        let iw100 = iwae_bound(&vae, &x, 100, 64).unwrap();
        let iw1000 = iwae_bound(&vae, &x, 1000, 64).unwrap();
        // (K = 1 is the ELBO's own estimator: vae::tests checks that with a tolerance
        // from its variance.)
        eprintln!("elbo {elbo}, k=10 {iw10}, k=100 {iw100}, k=1000 {iw1000}");
        assert!(
            iw10 > elbo && iw100 > iw10 && iw1000 > iw100,
            "elbo {elbo}, k=10 {iw10}, k=100 {iw100}, k=1000 {iw1000}"
        );
        assert_eq!(report.dims, 784);
        let bpd = report.bits_per_dim(elbo);
        assert!((bpd - (-elbo / (784.0 * std::f64::consts::LN_2))).abs() < 1e-12);
        let names: Vec<&str> = report.terms.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["reconstruction", "prior_matching"]);
    }

    /// A VAE whose mean head ignores the input in 5 of its 20 dimensions (zero weights)
    /// has exactly 15 active units; the other 15 are made to vary strongly (weights times
    /// 20, so the variance over the data is far above 0.01).
    #[test]
    fn active_units_count_the_dimensions_whose_mean_varies_with_x() {
        let _generator = crate::testing::generator_lock();
        tch::manual_seed(4);
        let vs = VarStore::new(tch::Device::Cpu);
        let config = VaeConfig::preset(VaePreset::Mlp, [1, 28, 28], Likelihood::Bernoulli).unwrap();
        let vae = Vae::new(&vs.root(), config).unwrap();
        tch::no_grad(|| {
            let mut weight = vs.variables()["mean.weight"].shallow_clone();
            let _ = weight.g_mul_scalar_(20.0);
            let _ = weight.narrow(0, 0, 5).zero_();
        });
        let x = Tensor::rand([300, 1, 28, 28], (Kind::Float, tch::Device::Cpu)).round();
        let units = active_units(&vae, &x, 128);
        assert_eq!(
            units,
            [ActiveUnits {
                layer: "z_1".into(),
                active: 15,
                dims: 20
            }]
        );
        assert_eq!(
            active_units_json(&units)["z_1"],
            serde_json::json!([15, 20])
        );
    }
}
