//! A VDM's configuration ([`VdmConfig`]): the network and its Fourier features, the
//! schedule and its range, continuous or discrete time, the sampling grid; and its named
//! presets ([`VdmPreset`]), the DDPM presets' networks.

use serde::{Deserialize, Serialize};

use super::schedule::GammaKind;
use crate::error::{Error, Result};
use crate::models::ddpm::{DdpmConfig, DdpmPreset};
use crate::models::names::named_option;
use crate::nn::unet::UnetConfig;

/// The VDM presets: the DDPM presets' networks with Fourier features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum VdmPreset {
    /// `vdm-mnist`: `ddpm-mnist`'s UNet.
    #[default]
    #[serde(rename = "vdm-mnist")]
    Mnist,
    /// `vdm-cifar10`: `ddpm-cifar10`'s UNet (Ho et al.'s 35.7 M network).
    #[serde(rename = "vdm-cifar10")]
    Cifar10,
}

named_option!(
    VdmPreset => "VDM preset",
    GammaKind => "VDM noise schedule",
);

/// Kingma et al.'s width of the monotone schedule network.
fn default_features() -> i64 {
    1024
}

/// A VDM's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VdmConfig {
    /// The noise-prediction network; its `extra_inputs` are the Fourier features.
    pub unet: UnetConfig,
    /// The schedule.
    pub gamma: GammaKind,
    /// `gamma(0)` (fixed, or where a learned one starts); also where the network's time
    /// input is 0.
    pub gamma_min: f64,
    /// `gamma(1)` (fixed, or where a learned one starts); the network's time input is
    /// 1000 there.
    pub gamma_max: f64,
    /// Units of the monotone schedule network.
    #[serde(default = "default_features")]
    pub gamma_features: i64,
    /// The exponents n of the Fourier features `sin(2^n pi z)`, `cos(2^n pi z)` (none:
    /// the network sees `z_t` only).
    pub fourier_exponents: Vec<i64>,
    /// `None`: the continuous-time bound; `Some(T)`: the T-step one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timesteps: Option<usize>,
    /// The grid the samplers run on, and the number of times at which the exact
    /// evaluation takes the diffusion loss (in discrete time: T).
    pub sampling_steps: usize,
    /// The learning-rate multiplier of the schedule's parameters (`gamma.*`), a
    /// parameter group of their own as reimplementations give them (`None`, and absent
    /// from checkpoints: 1, the network's rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_lr: Option<f64>,
}

/// The most steps of a discrete-time VDM: float32 times resolve `2^24` steps (the
/// T-step weights themselves are computed in float64, exact far beyond).
pub const MAX_TIMESTEPS: usize = 1 << 24;

impl VdmConfig {
    /// A preset for images of shape `image`: the DDPM preset's network (`vdm-mnist`:
    /// `ddpm-mnist`'s), Fourier features with n = 6 and 7, the monotone schedule from
    /// Kingma et al.'s -13.3 to 5, continuous time, a grid of 1000 steps.
    pub fn preset(preset: VdmPreset, image: [i64; 3]) -> Result<VdmConfig> {
        let ddpm = match preset {
            VdmPreset::Mnist => DdpmPreset::Mnist,
            VdmPreset::Cifar10 => DdpmPreset::Cifar10,
        };
        let mut unet = DdpmConfig::preset(ddpm, image)?.unet;
        let fourier_exponents = vec![6, 7];
        unet.extra_inputs = Self::fourier_channels(image[0], &fourier_exponents);
        let (gamma_min, gamma_max) = elbo_math::vdm::LinearGamma::KINGMA;
        let config = VdmConfig {
            unet,
            gamma: GammaKind::Monotone,
            gamma_min,
            gamma_max,
            gamma_features: default_features(),
            fourier_exponents,
            timesteps: None,
            sampling_steps: 1000,
            schedule_lr: None,
        };
        config.validate()?;
        Ok(config)
    }

    /// The network's extra input channels for `channels` image channels.
    pub fn fourier_channels(channels: i64, exponents: &[i64]) -> i64 {
        2 * channels * exponents.len() as i64
    }

    /// The configuration with other Fourier exponents (the network's inputs follow).
    pub fn with_fourier(mut self, exponents: Vec<i64>) -> Result<VdmConfig> {
        self.unet.extra_inputs = Self::fourier_channels(self.unet.in_channels, &exponents);
        self.fourier_exponents = exponents;
        self.validate()?;
        Ok(self)
    }

    /// Checks that the model can be built.
    pub fn validate(&self) -> Result<()> {
        self.unet.validate()?;
        let bad = |detail: String| Err(Error::Config { detail });
        if self.unet.num_classes.is_some() {
            return bad("the VDM is unconditional; its network has no classes".into());
        }
        if let Some(m) = self.schedule_lr {
            if !(m.is_finite() && m > 0.0) {
                return bad(format!(
                    "the schedule's learning-rate multiplier must be positive, found {m}"
                ));
            }
            if self.gamma == GammaKind::Fixed {
                return bad(format!(
                    "--schedule-lr {m} scales the learning rate of a learned schedule; this \
                     one is fixed (--gamma learned-endpoints or monotone learn it)"
                ));
            }
        }
        if let Some(&n) = self
            .fourier_exponents
            .iter()
            .find(|n| !(0..=16).contains(*n))
        {
            return bad(format!(
                "Fourier feature exponents must be in 0..=16, found {n}"
            ));
        }
        let expected = Self::fourier_channels(self.unet.in_channels, &self.fourier_exponents);
        if self.unet.extra_inputs != expected {
            return bad(format!(
                "the network takes {} extra input channels, the Fourier features {:?} of {} \
                 image channels make {expected}",
                self.unet.extra_inputs, self.fourier_exponents, self.unet.in_channels
            ));
        }
        if !(self.gamma_min.is_finite() && self.gamma_max.is_finite())
            || self.gamma_min >= self.gamma_max
        {
            return bad(format!(
                "the schedule runs from gamma_min to a larger gamma_max, both finite; found \
                 {} and {}",
                self.gamma_min, self.gamma_max
            ));
        }
        if self.timesteps == Some(0) {
            return bad("a discrete-time VDM needs at least 1 step, found 0".into());
        }
        if let Some(t) = self.timesteps.filter(|&t| t > MAX_TIMESTEPS) {
            return bad(format!(
                "a discrete-time VDM has at most {MAX_TIMESTEPS} (2^24) steps, found {t}: its \
                 training times are drawn in float32, which tells 2^24 steps apart, and far \
                 below that the T-step bound equals the continuous-time one (leave \
                 --timesteps out for it)"
            ));
        }
        if !(1..=100_000).contains(&self.sampling_steps) {
            return bad(format!(
                "the sampling grid needs 1 to 100000 steps, found {}",
                self.sampling_steps
            ));
        }
        Ok(())
    }
}
