//! Criterion benches for the elbo workspace. The bench targets live in `benches/benches/`,
//! one file per crate area; this library only holds helpers they share.
//!
//! ```
//! assert_eq!(elbo_benches::elements_label(1_000_000), "1e6");
//! ```

use elbo_models::models::ElboModel;
use elbo_models::models::ddpm::{Ddpm, DdpmConfig, DdpmPreset};
use elbo_models::models::hvae::{HvaeConfig, HvaeVariant};
use elbo_models::models::vae::{Vae, VaeConfig, VaePreset};
use elbo_models::nn::likelihood::Likelihood;
use elbo_models::sample::{SamplerSpec, SamplingOptions, Spacing};
use elbo_models::train::Batch;
use tch::nn;
use tch::{Device, Kind, Tensor};

/// The models the benches time, by the names the PyTorch comparison uses:
/// `vae-mlp` and `hvae-ladder` (the ladder HVAE's defaults) with a Bernoulli likelihood,
/// and `ddpm-mnist` (the DDPM preset), for 1x28x28 images, and `ddpm-cifar10` (Ho et
/// al.'s 35.7 M network) for 3x32x32, built under `path`.
pub fn preset_model(name: &str, path: &nn::Path<'_>) -> Result<Box<dyn ElboModel>, String> {
    let image = [1, 28, 28];
    let likelihood = Likelihood::Bernoulli;
    let model: Box<dyn ElboModel> = match name {
        "vae-mlp" => VaeConfig::preset(VaePreset::Mlp, image, likelihood)
            .and_then(|config| Vae::new(path, config))
            .map(|vae| Box::new(vae) as Box<dyn ElboModel>)
            .map_err(|e| e.to_string())?,
        "hvae-ladder" => {
            HvaeConfig::new(HvaeVariant::Ladder, image, 2, None, None, None, likelihood)
                .and_then(|config| config.build(path))
                .map_err(|e| e.to_string())?
        }
        "ddpm-mnist" => DdpmConfig::preset(DdpmPreset::Mnist, image)
            .and_then(|config| Ddpm::new(path, config))
            .map(|ddpm| Box::new(ddpm) as Box<dyn ElboModel>)
            .map_err(|e| e.to_string())?,
        "ddpm-cifar10" => DdpmConfig::preset(DdpmPreset::Cifar10, [3, 32, 32])
            .and_then(|config| Ddpm::new(path, config))
            .map(|ddpm| Box::new(ddpm) as Box<dyn ElboModel>)
            .map_err(|e| e.to_string())?,
        other => {
            return Err(format!(
                "unknown model {other:?}: expected vae-mlp, hvae-ladder, ddpm-mnist or \
                 ddpm-cifar10"
            ));
        }
    };
    Ok(model)
}

/// The first `batch` training images of the bundled MNIST sample as a float tensor of
/// shape (batch, 1, 28, 28) in `model`'s data scale (with zero labels), as `benches/reference/steptime.py`
/// prepares them (a batch whose preparation is not part of a timing): binarised at a
/// fixed threshold (pixel >= 128 is 1) for the Bernoulli models, `(2 p - 255) / 255` for
/// the discretized Gaussian (the DDPM). A model of other images (`ddpm-cifar10`: CIFAR-10
/// is not bundled) gets synthetic ones: uniform pixels 0..=255 from libtorch's generator
/// seeded 0, scaled the same way (a step's time does not depend on what they show).
pub fn training_batch(
    model: &dyn ElboModel,
    batch: usize,
    device: Device,
) -> Result<Batch, String> {
    let image = model.config().image();
    if image != [1, 28, 28] {
        if batch == 0 {
            return Err("the batch is empty".into());
        }
        let n = batch as i64;
        tch::manual_seed(0);
        let pixels = Tensor::randint(
            256,
            [n, image[0], image[1], image[2]],
            (Kind::Float, device),
        );
        return Ok(Batch {
            x: scale(model, &pixels),
            labels: Tensor::zeros([n], (Kind::Int64, device)),
        });
    }
    let splits = elbo_data::load_bundled().map_err(|e| e.to_string())?;
    let images = splits.train.images();
    let n = batch.min(images.shape()[0]);
    if n == 0 {
        return Err("the batch is empty".into());
    }
    let pixels = images.slice_axis(ndarray::Axis(0), (0..n).into());
    let flat: Vec<u8> = pixels.iter().copied().collect();
    let (h, w) = (
        images.shape()[images.ndim() - 2],
        images.shape()[images.ndim() - 1],
    );
    let pixels = Tensor::from_slice(&flat).reshape([n as i64, 1, h as i64, w as i64]);
    Ok(Batch {
        x: scale(model, &pixels.to_kind(Kind::Float)).to_device(device),
        labels: Tensor::zeros([n as i64], (Kind::Int64, device)),
    })
}

/// Pixels 0..=255 (float) in `model`'s data scale.
fn scale(model: &dyn ElboModel, pixels: &Tensor) -> Tensor {
    match model.likelihood() {
        Likelihood::DiscretizedGaussian => (pixels * 2.0 - 255.0) / 255.0,
        Likelihood::Bernoulli | Likelihood::ContinuousBce => pixels.ge(128).to_kind(Kind::Float),
    }
}

/// DDIM with `steps` uniform steps, `eta = 0`, `x_0` clipped: what `elbo sample` does by
/// default (with 50 steps).
pub fn ddim(steps: usize) -> SamplingOptions {
    SamplingOptions {
        sampler: SamplerSpec::Ddim(elbo_models::sample::ddim::Ddim {
            steps,
            eta: 0.0,
            spacing: Spacing::Uniform,
        }),
        clip_x0: elbo_models::sample::ClipX0::Static,
        guidance: None,
    }
}

/// A short label for an element count, used in bench names (`1000000` -> `"1e6"`).
pub fn elements_label(n: usize) -> String {
    let mut mantissa = n;
    let mut exponent = 0;
    while mantissa >= 10 && mantissa.is_multiple_of(10) {
        mantissa /= 10;
        exponent += 1;
    }
    if mantissa == 1 && exponent > 0 {
        format!("1e{exponent}")
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_powers_of_ten_compactly_and_others_in_full() {
        assert_eq!(elements_label(1_000_000), "1e6");
        assert_eq!(elements_label(10), "1e1");
        assert_eq!(elements_label(9_000), "9000");
        assert_eq!(elements_label(7), "7");
    }
}
