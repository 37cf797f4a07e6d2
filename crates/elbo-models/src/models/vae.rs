//! The variational autoencoder: a Gaussian encoder `q(z | x) = N(mu(x), diag exp(logvar(x)))`,
//! a standard normal prior, and a decoder likelihood `p(x | z)`:
//!
//! ```text
//! ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z))
//!         = reconstruction    - prior matching
//! ```
//!
//! The reconstruction is estimated with one reparameterised draw `z = mu + sigma * eps`;
//! the prior matching is in closed form.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::models::ElboStep;
use crate::models::names::named_option;
use crate::models::{Capabilities, ElboModel, ElboTerms, Interpolating, Latents, ModelConfig};
use crate::nn::conv::Conv;
use crate::nn::gaussian;
use crate::nn::init::torch_linear;
use crate::nn::likelihood::Likelihood;
use crate::train::TrainStep;
use crate::train::aids::TrainingAids;

/// The network shapes of a VAE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum VaeArch {
    /// Fully connected: input, ReLU hidden layers, then mean and log-variance heads; the
    /// decoder mirrors it.
    Mlp {
        /// Widths of the hidden layers (encoder order).
        hidden: Vec<i64>,
    },
    /// Convolutional: stride-2 4x4 convolutions (each halves height and width), a linear
    /// layer to the latent; the decoder mirrors it with transposed convolutions.
    Conv {
        /// Channels of each convolution (encoder order).
        channels: Vec<i64>,
    },
}

/// The VAE presets (see [`VaeConfig::preset`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum VaePreset {
    /// `vae-mlp`: pytorch/examples' VAE.
    #[default]
    #[serde(rename = "vae-mlp")]
    Mlp,
    /// `vae-conv`: a convolutional VAE.
    #[serde(rename = "vae-conv")]
    Conv,
}

named_option!(VaePreset => "VAE preset");

/// A VAE's configuration: everything that fixes the shapes of its weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    /// Image shape (channels, height, width).
    pub image: [i64; 3],
    /// Latent dimensions.
    pub latent_dim: i64,
    /// The networks.
    pub arch: VaeArch,
    /// The decoder likelihood.
    pub likelihood: Likelihood,
}

impl VaeConfig {
    /// A named preset for images of shape `image`:
    /// - `vae-mlp`: pytorch/examples' VAE, 784-400 ReLU encoder to a 20-dimensional mean
    ///   and log-variance, 20-400 ReLU decoder to 784 logits (for any image size: the
    ///   input is flattened).
    /// - `vae-conv`: convolutions with 32 and 64 channels and a 32-dimensional latent, for
    ///   images whose sides are multiples of 4 (MNIST, CIFAR-10).
    pub fn preset(preset: VaePreset, image: [i64; 3], likelihood: Likelihood) -> Result<VaeConfig> {
        let (latent_dim, arch) = match preset {
            VaePreset::Mlp => (20, VaeArch::Mlp { hidden: vec![400] }),
            VaePreset::Conv => (
                32,
                VaeArch::Conv {
                    channels: vec![32, 64],
                },
            ),
        };
        let config = VaeConfig {
            image,
            latent_dim,
            arch,
            likelihood,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the networks can be built for the image shape.
    pub fn validate(&self) -> Result<()> {
        let [c, h, w] = self.image;
        if c <= 0 || h <= 0 || w <= 0 || self.latent_dim <= 0 {
            return Err(Error::Config {
                detail: format!(
                    "image {:?} and latent_dim {} must be positive",
                    self.image, self.latent_dim
                ),
            });
        }
        if let VaeArch::Conv { channels } = &self.arch {
            let factor = 1i64 << channels.len();
            if channels.is_empty() || h % factor != 0 || w % factor != 0 {
                return Err(Error::Config {
                    detail: format!(
                        "vae-conv with {} stride-2 layers needs image sides divisible by \
                         {factor}, found {h}x{w}",
                        channels.len()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A VAE on a [`nn::VarStore`].
pub struct Vae {
    config: VaeConfig,
    encoder: nn::Sequential,
    mean_head: nn::Linear,
    log_var_head: nn::Linear,
    decoder: nn::Sequential,
}

impl Vae {
    /// Builds the networks under `path`.
    pub fn new(path: &nn::Path<'_>, config: VaeConfig) -> Result<Vae> {
        config.validate()?;
        let [c, h, w] = config.image;
        let out_channels = c * config.likelihood.params_per_channel();
        let latent = config.latent_dim;
        let (encoder, features, decoder) = match &config.arch {
            VaeArch::Mlp { hidden } => {
                let mut enc = nn::seq().add_fn(|x| x.flatten(1, -1));
                let mut width = c * h * w;
                for (i, &next) in hidden.iter().enumerate() {
                    enc = enc
                        .add(torch_linear(path / format!("enc{i}"), width, next))
                        .add_fn(Tensor::relu);
                    width = next;
                }
                let mut dec = nn::seq();
                let mut width_in = latent;
                for (i, &next) in hidden.iter().rev().enumerate() {
                    dec = dec
                        .add(torch_linear(path / format!("dec{i}"), width_in, next))
                        .add_fn(Tensor::relu);
                    width_in = next;
                }
                let shape = [-1, out_channels, h, w];
                dec = dec
                    .add(torch_linear(
                        path / "dec_out",
                        width_in,
                        out_channels * h * w,
                    ))
                    .add_fn(move |x| x.reshape(shape));
                (enc, width, dec)
            }
            VaeArch::Conv { channels } => {
                let conv = nn::ConvConfig {
                    stride: 2,
                    padding: 1,
                    ..Default::default()
                };
                let mut enc = nn::seq();
                let mut ch = c;
                for (i, &next) in channels.iter().enumerate() {
                    enc = enc
                        .add(Conv::new(
                            nn::conv2d(path / format!("enc{i}"), ch, next, 4, conv),
                            2,
                            1,
                        ))
                        .add_fn(Tensor::relu);
                    ch = next;
                }
                let factor = 1i64 << channels.len();
                let (fh, fw) = (h / factor, w / factor);
                enc = enc.add_fn(|x| x.flatten(1, -1));
                let features = ch * fh * fw;
                let tconv = nn::ConvTransposeConfig {
                    stride: 2,
                    padding: 1,
                    ..Default::default()
                };
                let mut dec = nn::seq()
                    .add(nn::linear(
                        path / "dec_in",
                        latent,
                        features,
                        Default::default(),
                    ))
                    .add_fn(Tensor::relu)
                    .add_fn(move |x| x.reshape([-1, ch, fh, fw]));
                let mut ch_in = ch;
                for (i, &next) in channels.iter().rev().skip(1).enumerate() {
                    dec = dec
                        .add(Conv::transposed(
                            nn::conv_transpose2d(path / format!("dec{i}"), ch_in, next, 4, tconv),
                            2,
                            1,
                        ))
                        .add_fn(Tensor::relu);
                    ch_in = next;
                }
                dec = dec.add(Conv::transposed(
                    nn::conv_transpose2d(path / "dec_out", ch_in, out_channels, 4, tconv),
                    2,
                    1,
                ));
                (enc, features, dec)
            }
        };
        // The MLP VAE is pytorch/examples' model, initialised as PyTorch initialises it.
        let head = |name: &str| match config.arch {
            VaeArch::Mlp { .. } => torch_linear(path / name, features, latent),
            VaeArch::Conv { .. } => nn::linear(path / name, features, latent, Default::default()),
        };
        Ok(Vae {
            mean_head: head("mean"),
            log_var_head: head("log_var"),
            encoder,
            decoder,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// `q(z | x)`: its mean and log-variance, each (batch, latent).
    pub fn encode(&self, x: &Tensor) -> (Tensor, Tensor) {
        let features = self.encoder.forward(x);
        (
            self.mean_head.forward(&features),
            self.log_var_head.forward(&features),
        )
    }

    /// The decoder's output for latents `z`: the parameters of `p(x | z)`.
    pub fn decode(&self, z: &Tensor) -> Tensor {
        self.decoder.forward(z)
    }

    /// Draws `n` latents from the prior and returns the decoder's mean for each.
    pub fn sample(&self, n: i64) -> Tensor {
        let device = self.mean_head.ws.device();
        let z = Tensor::randn([n, self.config.latent_dim], (Kind::Float, device));
        self.config.likelihood.mean(&self.decode(&z))
    }

    /// Log importance weights `log p(x, z_k) - log q(z_k | x)` for `k` draws per example,
    /// shape (k, batch). Their log-mean-exp is the IWAE bound (Burda et al.).
    pub fn log_importance_weights(&self, x: &Tensor, k: i64) -> Tensor {
        let (mean, log_var) = self.encode(x);
        let batch = mean.size()[0];
        let latent = self.config.latent_dim;
        let eps = Tensor::randn([k, batch, latent], (Kind::Float, mean.device()));
        let z = &mean.unsqueeze(0) + (&log_var * 0.5).exp().unsqueeze(0) * &eps;
        let z_flat = z.reshape([k * batch, latent]);
        let x_rep = x
            .unsqueeze(0)
            .expand([k, -1, -1, -1, -1], false)
            .flatten(0, 1);
        let log_px_z = self
            .config
            .likelihood
            .log_prob(&self.decode(&z_flat), &x_rep)
            .reshape([k, batch]);
        let log_pz = gaussian::log_density_standard(&z_flat).reshape([k, batch]);
        // log q(z | x) with z = mean + sigma eps: -(log 2 pi + log_var + eps^2) / 2.
        let log_qz = ((eps.square() + log_var.unsqueeze(0) + 1.837_877_066_409_345_3) * -0.5)
            .sum_dim_intlist(-1, false, Kind::Float);
        log_px_z + log_pz - log_qz
    }
}

impl ElboModel for Vae {
    fn config(&self) -> ModelConfig {
        ModelConfig::Vae(self.config.clone())
    }

    fn likelihood(&self) -> Likelihood {
        self.config.likelihood
    }

    fn elbo_terms(&self, x: &Tensor) -> ElboTerms {
        let (mean, log_var) = self.encode(x);
        let z = gaussian::reparameterise(&mean, &log_var);
        ElboTerms {
            reconstruction: self.config.likelihood.log_prob(&self.decode(&z), x),
            prior_matching: gaussian::kl_to_standard_normal(&mean, &log_var),
            layers: Vec::new(),
        }
    }

    fn log_importance_weights(&self, x: &Tensor, k: i64) -> Result<Tensor> {
        Ok(Vae::log_importance_weights(self, x, k))
    }

    fn sample(&self, n: i64) -> Result<Tensor> {
        Ok(Vae::sample(self, n))
    }

    fn reconstruct(&self, x: &Tensor) -> Tensor {
        let (mean, _) = self.encode(x);
        self.config.likelihood.mean(&self.decode(&mean))
    }

    fn train_step(&self) -> Result<Box<dyn TrainStep + '_>> {
        ElboStep::boxed(self, &TrainingAids::default())
    }

    fn capabilities(&self) -> Capabilities<'_> {
        Capabilities {
            latents: Some(self),
            interpolation: Some(self),
            ..Capabilities::default()
        }
    }
}

impl Latents for Vae {
    fn latent_layers(&self) -> usize {
        1
    }

    fn posterior_means(&self, x: &Tensor) -> Vec<(String, Tensor)> {
        vec![("z_1".to_string(), self.encode(x).0)]
    }
}

impl Interpolating for Vae {
    fn interpolations(&self, rows: i64, steps: i64) -> Tensor {
        let device = self.mean_head.ws.device();
        let latent = self.config.latent_dim;
        let ends = Tensor::randn([2, rows, 1, latent], (Kind::Float, device));
        let t = Tensor::linspace(0.0, 1.0, steps.max(2), (Kind::Float, device)).reshape([1, -1, 1]);
        let z: Tensor = ends.get(0) * (t.ones_like() - &t) + ends.get(1) * &t;
        self.config
            .likelihood
            .mean(&self.decode(&z.reshape([-1, latent])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp() -> (nn::VarStore, Vae) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let config = VaeConfig::preset(VaePreset::Mlp, [1, 28, 28], Likelihood::Bernoulli).unwrap();
        let vae = Vae::new(&vs.root(), config).unwrap();
        (vs, vae)
    }

    #[test]
    fn vae_mlp_has_pytorch_examples_parameter_count() {
        let _generator = crate::testing::generator_lock();
        let (vs, _) = mlp();
        let count: i64 = vs
            .trainable_variables()
            .iter()
            .map(Tensor::numel)
            .map(|n| n as i64)
            .sum();
        // fc1 784*400+400, fc21 and fc22 400*20+20 each, fc3 20*400+400, fc4 400*784+784.
        let want = 784 * 400 + 400 + 2 * (400 * 20 + 20) + 20 * 400 + 400 + 400 * 784 + 784;
        assert_eq!(count, want);
    }

    #[test]
    fn shapes_of_terms_samples_and_weights() {
        let _generator = crate::testing::generator_lock();
        let (_vs, vae) = mlp();
        let x = Tensor::rand([5, 1, 28, 28], (Kind::Float, tch::Device::Cpu)).round();
        let terms = vae.elbo_terms(&x);
        assert_eq!(terms.reconstruction.size(), [5]);
        assert_eq!(terms.prior_matching.size(), [5]);
        assert_eq!(vae.sample(3).size(), [3, 1, 28, 28]);
        assert_eq!(vae.log_importance_weights(&x, 7).size(), [7, 5]);
    }

    #[test]
    fn conv_preset_builds_for_mnist_and_cifar_and_refuses_odd_sizes() {
        let _generator = crate::testing::generator_lock();
        for image in [[1, 28, 28], [3, 32, 32]] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let config =
                VaeConfig::preset(VaePreset::Conv, image, Likelihood::DiscretizedGaussian).unwrap();
            let vae = Vae::new(&vs.root(), config).unwrap();
            let x = Tensor::zeros(
                [2, image[0], image[1], image[2]],
                (Kind::Float, tch::Device::Cpu),
            );
            let out = vae.decode(&vae.encode(&x).0);
            assert_eq!(out.size(), [2, 2 * image[0], image[1], image[2]]);
        }
        let err = VaeConfig::preset(VaePreset::Conv, [1, 30, 30], Likelihood::Bernoulli)
            .unwrap_err()
            .to_string();
        assert!(err.contains("divisible by 4, found 30x30"), "{err}");
        let err = "vae-big".parse::<VaePreset>().unwrap_err().to_string();
        assert!(err.contains("expected vae-mlp or vae-conv"), "{err}");
        assert_eq!(VaePreset::Conv.to_string(), "vae-conv");
    }

    /// One importance weight is the ELBO's integrand: with k = 1 its mean over many draws
    /// matches the ELBO's mean (same estimator, different noise).
    #[test]
    fn single_importance_weight_estimates_the_elbo() {
        let _generator = crate::testing::generator_lock();
        let (_vs, vae) = mlp();
        let x = Tensor::rand([1, 1, 28, 28], (Kind::Float, tch::Device::Cpu)).round();
        let n = 4000;
        let weights = vae.log_importance_weights(&x, n).squeeze();
        let xs = x.expand([n, -1, -1, -1], false);
        let elbo = vae.elbo_terms(&xs).elbo();
        let (mw, me) = (
            weights.mean(Kind::Float).double_value(&[]),
            elbo.mean(Kind::Float).double_value(&[]),
        );
        let sd = weights.std(true).double_value(&[]);
        // Two independent means of n draws with the same spread: their difference has
        // standard error sd * sqrt(2 / n); allow 4 of them.
        let tolerance = 4.0 * sd * (2.0 / n as f64).sqrt();
        assert!(
            (mw - me).abs() < tolerance,
            "{mw} vs {me} (tolerance {tolerance})"
        );
    }
}
