//! The registry of model families: [`ModelConfig`] has one variant per family, and is
//! what training writes into checkpoints and what restoring reads back. Adding a model
//! family is one variant here and its arms below.

use serde_json::Value;
use tch::nn;

use super::ElboModel;
use super::ddpm::{self, Ddpm, DdpmConfig};
use super::edm::{self, Edm, EdmConfig};
use super::hvae::{self, HvaeConfig};
use super::vae::{Vae, VaeConfig};
use super::vdm::{self, Vdm, VdmConfig};
use crate::error::{Error, Result};

/// The configuration of a model of any family: everything that fixes its weights' shapes.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    /// A VAE (`vae`).
    Vae(VaeConfig),
    /// A hierarchical VAE (`hvae`), Markov or ladder.
    Hvae(HvaeConfig),
    /// A DDPM (`ddpm`).
    Ddpm(DdpmConfig),
    /// A variational diffusion model (`vdm`).
    Vdm(VdmConfig),
    /// EDM (`edm`): Karras et al.'s preconditioned denoiser in the σ-parameterisation.
    Edm(EdmConfig),
}

/// The family name of the classifier's checkpoints (not a generative model).
pub const CLASSIFIER: &str = "classifier";

impl ModelConfig {
    /// The family, as recorded in checkpoints.
    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Vae(_) => "vae",
            ModelConfig::Hvae(_) => hvae::FAMILY,
            ModelConfig::Ddpm(_) => ddpm::FAMILY,
            ModelConfig::Vdm(_) => vdm::FAMILY,
            ModelConfig::Edm(_) => edm::FAMILY,
        }
    }

    /// The configuration as recorded in checkpoints (`model_config`).
    pub fn to_json(&self) -> Value {
        let value = match self {
            ModelConfig::Vae(c) => serde_json::to_value(c),
            ModelConfig::Hvae(c) => serde_json::to_value(c),
            ModelConfig::Ddpm(c) => serde_json::to_value(c),
            ModelConfig::Vdm(c) => serde_json::to_value(c),
            ModelConfig::Edm(c) => serde_json::to_value(c),
        };
        value.unwrap_or(Value::Null)
    }

    /// Reads back what a checkpoint records: its family and configuration (whose image
    /// shape must be one a model can be built for: at most 64 channels and 4096 pixels a
    /// side, so that a damaged record cannot ask for terabytes).
    pub fn from_record(family: &str, config: &Value) -> Result<ModelConfig> {
        let config = Self::parse_record(family, config)?;
        let [c, h, w] = config.image();
        if !(1..=64).contains(&c) || !(1..=4096).contains(&h) || !(1..=4096).contains(&w) {
            return Err(Error::Checkpoint {
                detail: format!(
                    "its image shape {:?} is out of range: expected 1 to 64 channels and 1 to \
                     4096 pixels a side",
                    config.image()
                ),
            });
        }
        Ok(config)
    }

    fn parse_record(family: &str, config: &Value) -> Result<ModelConfig> {
        fn parse<T: serde::de::DeserializeOwned>(family: &str, config: &Value) -> Result<T> {
            serde_json::from_value(config.clone()).map_err(|e| Error::Checkpoint {
                detail: format!("its {family} configuration does not parse: {e}"),
            })
        }
        Ok(match family {
            "vae" => ModelConfig::Vae(parse(family, config)?),
            hvae::FAMILY => ModelConfig::Hvae(parse(family, config)?),
            ddpm::FAMILY => ModelConfig::Ddpm(parse(family, config)?),
            vdm::FAMILY => ModelConfig::Vdm(parse(family, config)?),
            edm::FAMILY => ModelConfig::Edm(parse(family, config)?),
            CLASSIFIER => {
                return Err(Error::Checkpoint {
                    detail: "it holds a classifier (from `elbo train classifier`), expected a \
                             generative model; a classifier is passed to `elbo eval` as \
                             --classifier"
                        .into(),
                });
            }
            other => {
                return Err(Error::Checkpoint {
                    detail: format!(
                        "it holds a {other:?} model, which this elbo does not know (it knows \
                         vae, hvae, ddpm, vdm and edm)"
                    ),
                });
            }
        })
    }

    /// The shape (channels, height, width) of the images it models.
    pub fn image(&self) -> [i64; 3] {
        match self {
            ModelConfig::Vae(c) => c.image,
            ModelConfig::Hvae(HvaeConfig::Markov(c)) => c.image,
            ModelConfig::Hvae(HvaeConfig::Ladder(c)) => c.image,
            ModelConfig::Ddpm(c) => [c.unet.in_channels, c.unet.image_size, c.unet.image_size],
            ModelConfig::Vdm(c) => [c.unet.in_channels, c.unet.image_size, c.unet.image_size],
            ModelConfig::Edm(c) => [c.unet.in_channels, c.unet.image_size, c.unet.image_size],
        }
    }

    /// Checks that images of `shape` (channels, height, width) are what it models.
    pub fn check_images(&self, shape: [i64; 3], what: &str) -> Result<()> {
        if shape == self.image() {
            return Ok(());
        }
        Err(Error::Config {
            detail: format!(
                "{what} has images of shape {shape:?}, the model takes {:?}",
                self.image()
            ),
        })
    }

    /// This configuration with the fields no training option sets taken from
    /// `recorded`, the run being resumed: a UNet's GroupNorm epsilon, stride-2 padding
    /// and time offset, which only an imported network (`elbo import diffusers`) has
    /// otherwise. The rest must still match, field by field.
    pub fn adopting_fixed_fields(mut self, recorded: &ModelConfig) -> ModelConfig {
        let unets = match (&mut self, recorded) {
            (ModelConfig::Ddpm(c), ModelConfig::Ddpm(r)) => Some((&mut c.unet, &r.unet)),
            (ModelConfig::Vdm(c), ModelConfig::Vdm(r)) => Some((&mut c.unet, &r.unet)),
            (ModelConfig::Edm(c), ModelConfig::Edm(r)) => Some((&mut c.unet, &r.unet)),
            _ => None,
        };
        if let Some((ours, theirs)) = unets {
            ours.norm_eps = theirs.norm_eps;
            ours.downsample_padding = theirs.downsample_padding;
            ours.time_offset = theirs.time_offset;
        }
        self
    }

    /// Builds the model under `path`, with fresh weights.
    pub fn build(&self, path: &nn::Path<'_>) -> Result<Box<dyn ElboModel>> {
        Ok(match self {
            ModelConfig::Vae(c) => Box::new(Vae::new(path, c.clone())?),
            ModelConfig::Hvae(c) => c.build(path)?,
            ModelConfig::Ddpm(c) => Box::new(Ddpm::new(path, c.clone())?),
            ModelConfig::Vdm(c) => Box::new(Vdm::new(path, c.clone())?),
            ModelConfig::Edm(c) => Box::new(Edm::new(path, c.clone())?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ddpm::DdpmPreset;
    use crate::models::vae::VaePreset;
    use crate::nn::likelihood::Likelihood;

    #[test]
    fn configurations_round_trip_through_their_record() {
        let _generator = crate::testing::generator_lock();
        let vae = ModelConfig::Vae(
            VaeConfig::preset(VaePreset::Mlp, [1, 28, 28], Likelihood::Bernoulli).unwrap(),
        );
        let ddpm = ModelConfig::Ddpm(DdpmConfig::preset(DdpmPreset::Mnist, [1, 28, 28]).unwrap());
        for config in [vae, ddpm] {
            let back = ModelConfig::from_record(config.family(), &config.to_json()).unwrap();
            assert_eq!(back, config);
        }
        let err = ModelConfig::from_record("classifier", &Value::Null)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds a classifier"), "{err}");
        let err = ModelConfig::from_record("gan", &Value::Null)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"gan\" model"), "{err}");
        let vae = ModelConfig::from_record(
            "vae",
            &serde_json::json!({
                "image": [1, 28, 28], "latent_dim": 20, "likelihood": "bernoulli",
                "arch": {"kind": "mlp", "hidden": [400]}
            }),
        )
        .unwrap();
        vae.check_images([1, 28, 28], "data mnist").unwrap();
        let err = vae
            .check_images([3, 32, 32], "data cifar10")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "data cifar10 has images of shape [3, 32, 32], the model takes [1, 28, 28]"
            ),
            "{err}"
        );
        let huge = serde_json::json!({
            "image": [1, 100000, 100000], "latent_dim": 20, "likelihood": "bernoulli",
            "arch": {"kind": "mlp", "hidden": [400]}
        });
        let err = ModelConfig::from_record("vae", &huge)
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of range"), "{err}");
        let err = ModelConfig::from_record("vae", &serde_json::json!({"latent": 3}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vae configuration does not parse"), "{err}");
    }
}
