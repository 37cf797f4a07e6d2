//! The ELBO term by term: what every model's bound is made of, below both the training
//! loop (which reports it) and the models (which compute it).

use tch::{Kind, Tensor};

/// The terms of a (single-sample) ELBO estimate, each of shape (batch,), in nats:
/// `ELBO = reconstruction - prior_matching - sum of layers`.
pub struct ElboTerms {
    /// `E_q[log p(x | z)]`, estimated.
    pub reconstruction: Tensor,
    /// `KL(q(z_top | x) || p(z_top))`.
    pub prior_matching: Tensor,
    /// Further KL terms by name: a hierarchical VAE's consistency terms, a diffusion
    /// model's denoising-matching terms.
    pub layers: Vec<(String, Tensor)>,
}

impl ElboTerms {
    /// The ELBO per example.
    pub fn elbo(&self) -> Tensor {
        let mut elbo = &self.reconstruction - &self.prior_matching;
        for (_, term) in &self.layers {
            elbo -= term;
        }
        elbo
    }

    /// The batch means of every term, in f64, named as in metrics: `reconstruction`,
    /// `prior_matching`, then the layers, then `elbo`.
    pub fn means(&self) -> Vec<(String, f64)> {
        let mean = |t: &Tensor| t.mean(Kind::Float).double_value(&[]);
        let mut out = vec![
            ("reconstruction".to_string(), mean(&self.reconstruction)),
            ("prior_matching".to_string(), mean(&self.prior_matching)),
        ];
        out.extend(self.layers.iter().map(|(name, t)| (name.clone(), mean(t))));
        out.push(("elbo".to_string(), mean(&self.elbo())));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elbo_subtracts_every_kl_term() {
        let _generator = crate::testing::generator_lock();
        let terms = ElboTerms {
            reconstruction: Tensor::from_slice(&[-10.0f32, -20.0]),
            prior_matching: Tensor::from_slice(&[1.0f32, 2.0]),
            layers: vec![("layer_1".into(), Tensor::from_slice(&[0.5f32, 0.25]))],
        };
        let elbo = Vec::<f32>::try_from(terms.elbo()).unwrap();
        assert_eq!(elbo, [-11.5, -22.25]);
        let means = terms.means();
        let names: Vec<&str> = means.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["reconstruction", "prior_matching", "layer_1", "elbo"]
        );
        assert!((means[3].1 - (-16.875)).abs() < 1e-6);
    }
}
