//! The epoch-end hooks of a model's training run: the test ELBO (and active units) on
//! fixed test images, and the pictures (samples, reconstructions) in the run folder.

use serde_json::Value;
use tch::Tensor;

use super::image;
use crate::data;
use crate::error::Result;
use crate::models::ElboModel;
use crate::train::{EpochEnd, Hook};

/// The mean ELBO per example of `x`, in batches of `batch`.
pub fn mean_elbo(model: &dyn ElboModel, x: &Tensor, batch: i64) -> f64 {
    let n = x.size()[0];
    let mut total = 0.0;
    for chunk in x.split(batch, 0) {
        total += model
            .elbo_terms(&chunk)
            .elbo()
            .sum(tch::Kind::Double)
            .double_value(&[]);
    }
    total / n as f64
}

/// The test ELBO (one sample per image, `test_elbo`) and, for models with latents, the
/// active units (`active_units`) on fixed test images.
pub struct TestElbo<'a> {
    model: &'a dyn ElboModel,
    test: Tensor,
}

impl<'a> TestElbo<'a> {
    /// Evaluates `model` on `test` (images in the model's data scale).
    pub fn new(model: &'a dyn ElboModel, test: Tensor) -> TestElbo<'a> {
        TestElbo { model, test }
    }
}

impl Hook for TestElbo<'_> {
    fn epoch_end(&mut self, _at: &EpochEnd<'_>) -> Result<Vec<(String, Value)>> {
        let value = tch::no_grad(|| mean_elbo(self.model, &self.test, 500));
        let mut out = vec![("test_elbo".to_string(), value.into())];
        let active = super::active_units(self.model, &self.test, 500);
        if !active.is_empty() {
            out.push(("active_units".into(), super::active_units_json(&active)));
        }
        Ok(out)
    }
}

/// A grid of 64 samples and, given test images, rows of up to 8 inputs each followed by
/// a row of their reconstructions, into the run's `samples/` folder.
pub struct Pictures<'a> {
    model: &'a dyn ElboModel,
    /// Up to 32 test images, in whole rows.
    inputs: Option<Tensor>,
    /// Images per row.
    columns: i64,
}

impl<'a> Pictures<'a> {
    /// Pictures of `model`, with reconstructions of the first images of `test` if given.
    pub fn new(model: &'a dyn ElboModel, test: Option<&Tensor>) -> Pictures<'a> {
        // Any number of test images: rows of 8 when there are 8 or more, else one row.
        let available = test.map_or(0, |t| t.size()[0].min(32));
        let columns = available.clamp(1, 8);
        let inputs = test.and_then(|t| {
            let whole_rows = available / columns * columns;
            (whole_rows > 0).then(|| t.narrow(0, 0, whole_rows))
        });
        Pictures {
            model,
            inputs,
            columns,
        }
    }
}

impl Hook for Pictures<'_> {
    fn epoch_end(&mut self, at: &EpochEnd<'_>) -> Result<Vec<(String, Value)>> {
        let likelihood = self.model.likelihood();
        let unit = |t: &Tensor| data::to_unit_range(likelihood, t);
        let samples = tch::no_grad(|| self.model.sample(64))?;
        image::save_grid(&unit(&samples), 8, &at.run.epoch_samples(at.epoch))?;
        if let Some(inputs) = &self.inputs {
            let recon = tch::no_grad(|| self.model.reconstruct(inputs));
            let size = inputs.size();
            let (c, h, w) = (size[1], size[2], size[3]);
            // Rows of inputs, each followed by a row of their reconstructions.
            let k = self.columns;
            let pairs = Tensor::stack(
                &[
                    unit(inputs).reshape([-1, k, c, h, w]),
                    unit(&recon).reshape([-1, k, c, h, w]),
                ],
                1,
            )
            .flatten(0, 2);
            image::save_grid(&pairs, k, &at.run.epoch_reconstructions(at.epoch))?;
        }
        Ok(Vec::new())
    }
}
