//! `elbo train edm`'s job.

use super::{Job, Plan};
use crate::error::Result;
use crate::models::ModelConfig;
use crate::models::ddpm::RecipeName;
use crate::models::edm::{EdmConfig, EdmPreset};
use crate::session::options::TrainOptions;

/// `elbo train edm`: EDM's preconditioned denoiser (a preset's UNet) with the options
/// the job gives; the recipe gives the training settings the options do not.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct EdmJob {
    /// The network (default `edm-mnist`).
    pub preset: EdmPreset,
    /// The training settings.
    pub recipe: RecipeName,
    /// σ_data (default 0.5).
    pub sigma_data: Option<f64>,
    /// The training distribution of ln σ, mean and standard deviation (default -1.2,
    /// 1.2).
    pub p_mean: Option<f64>,
    /// See `p_mean`.
    pub p_std: Option<f64>,
    /// The grid's noise levels (default 1000).
    pub levels: Option<usize>,
    /// Dropout in the residual blocks (default the preset's).
    pub dropout: Option<f64>,
    /// Test images of the final evaluation of the grid's bound.
    pub final_examples: usize,
    /// The run.
    pub train: TrainOptions,
}

impl EdmJob {
    /// The preset for `image` with the job's changes.
    pub fn config(&self, image: [i64; 3]) -> Result<EdmConfig> {
        let mut config = EdmConfig::preset(self.preset, image)?;
        if let Some(v) = self.sigma_data {
            config.sigma_data = v;
        }
        if let Some(v) = self.p_mean {
            config.p_mean = v;
        }
        if let Some(v) = self.p_std {
            config.p_std = v;
        }
        if let Some(v) = self.levels {
            config.levels = v;
        }
        if let Some(v) = self.dropout {
            config.unet.dropout = v;
        }
        config.validate()?;
        Ok(config)
    }
}

impl Job for EdmJob {
    fn label(&self) -> String {
        self.preset.to_string()
    }
    fn model(&self, image: [i64; 3], _classes: usize) -> Result<ModelConfig> {
        Ok(ModelConfig::Edm(self.config(image)?))
    }
    fn plan(&self) -> Plan<'_> {
        Plan::diffusion(self.recipe, self.final_examples, &self.train)
    }
}
