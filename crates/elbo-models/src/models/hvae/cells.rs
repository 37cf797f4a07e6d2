//! The ladder HVAE's building blocks, on vectors (MLP) or on feature maps (convolutions),
//! so that the top-down logic in `ladder.rs` is written once for both.
//!
//! - The state (bottom-up features, top-down `h`) is (batch, width) for the MLP and
//!   (batch, channels, H/4, W/4) for the convolutional ladder.
//! - A residual cell is `u + f(u)` with a pre-activation branch (SiLU before every
//!   layer): two width-to-width linear layers for the MLP; VDVAE's bottleneck block
//!   (1x1 to a quarter of the channels, two 3x3, 1x1 back) for convolutions. The
//!   branch's last layer starts scaled by `1 / sqrt(number of cells)` so that the
//!   stacked cells start near the identity.
//! - A "pointwise" map changes the width: a linear layer, or a 1x1 convolution. The
//!   heads that give a Gaussian's mean and log-variance start scaled by 0.1, so that at
//!   initialisation every prior is near `N(0, I)` and every posterior near its prior
//!   (with the default He initialisation, log-variances of several units made the first
//!   steps overflow).

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::{self, Module};

use crate::nn::conv::Conv;

/// The networks of a ladder HVAE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LadderArch {
    /// Residual MLP cells on vectors of `width` units (any image size: it is flattened).
    Mlp {
        /// Units of the deterministic paths.
        width: i64,
    },
    /// Residual convolutional cells on `channels` feature maps at a quarter of the image
    /// resolution (7x7 for MNIST), reached by two stride-2 4x4 convolutions and left by
    /// two transposed ones; latents are `latent_dims[l]` channels per position.
    Conv {
        /// Channels of the deterministic paths.
        channels: i64,
    },
}

impl LadderArch {
    /// The width of the state: units or channels.
    pub fn width(&self) -> i64 {
        match self {
            LadderArch::Mlp { width } => *width,
            LadderArch::Conv { channels } => *channels,
        }
    }

    /// The shape of one example's state for images `[c, h, w]`.
    pub(crate) fn state_shape(&self, image: [i64; 3]) -> Vec<i64> {
        match self {
            LadderArch::Mlp { width } => vec![*width],
            LadderArch::Conv { channels } => vec![*channels, image[1] / 4, image[2] / 4],
        }
    }
}

/// `u + branch(u)`.
#[derive(Debug)]
pub(crate) struct Residual {
    branch: nn::Sequential,
}

impl Module for Residual {
    fn forward(&self, u: &Tensor) -> Tensor {
        u + self.branch.forward(u)
    }
}

fn scaled_linear(path: nn::Path<'_>, input: i64, output: i64, scale: f64) -> nn::Linear {
    let layer = nn::linear(path, input, output, Default::default());
    tch::no_grad(|| {
        let _ = layer.ws.shallow_clone().g_mul_scalar_(scale);
    });
    layer
}

fn conv(path: nn::Path<'_>, input: i64, output: i64, kernel: i64, scale: f64) -> Conv {
    let config = nn::ConvConfig {
        padding: kernel / 2,
        ..Default::default()
    };
    let layer = nn::conv2d(path, input, output, kernel, config);
    tch::no_grad(|| {
        let _ = layer.ws.shallow_clone().g_mul_scalar_(scale);
    });
    Conv::new(layer, 1, kernel / 2)
}

/// A residual cell whose branch ends scaled by `scale`.
pub(crate) fn residual(path: &nn::Path<'_>, arch: &LadderArch, scale: f64) -> Residual {
    let width = arch.width();
    let branch = match arch {
        LadderArch::Mlp { .. } => nn::seq()
            .add_fn(Tensor::silu)
            .add(scaled_linear(path / "fc0", width, width, 1.0))
            .add_fn(Tensor::silu)
            .add(scaled_linear(path / "fc1", width, width, scale)),
        LadderArch::Conv { .. } => {
            let mid = (width / 4).max(1);
            nn::seq()
                .add_fn(Tensor::silu)
                .add(conv(path / "in", width, mid, 1, 1.0))
                .add_fn(Tensor::silu)
                .add(conv(path / "mid0", mid, mid, 3, 1.0))
                .add_fn(Tensor::silu)
                .add(conv(path / "mid1", mid, mid, 3, 1.0))
                .add_fn(Tensor::silu)
                .add(conv(path / "out", mid, width, 1, scale))
        }
    };
    Residual { branch }
}

/// A width-changing map, a linear layer or a 1x1 convolution, its initial weights
/// scaled by `scale`.
pub(crate) fn pointwise(
    path: &nn::Path<'_>,
    arch: &LadderArch,
    input: i64,
    output: i64,
    scale: f64,
) -> Box<dyn Module> {
    match arch {
        LadderArch::Mlp { .. } => Box::new(scaled_linear(path / "map", input, output, scale)),
        LadderArch::Conv { .. } => Box::new(conv(path / "map", input, output, 1, scale)),
    }
}

/// From images to the state: a linear layer on the flattened image, or two stride-2
/// convolutions.
pub(crate) fn stem(path: &nn::Path<'_>, arch: &LadderArch, image: [i64; 3]) -> nn::Sequential {
    let [c, h, w] = image;
    match arch {
        LadderArch::Mlp { width } => nn::seq().add_fn(|x| x.flatten(1, -1)).add(nn::linear(
            path / "stem",
            c * h * w,
            *width,
            Default::default(),
        )),
        LadderArch::Conv { channels } => {
            let down = nn::ConvConfig {
                stride: 2,
                padding: 1,
                ..Default::default()
            };
            let half = (channels / 2).max(1);
            nn::seq()
                .add(Conv::new(
                    nn::conv2d(path / "stem0", c, half, 4, down),
                    2,
                    1,
                ))
                .add_fn(Tensor::silu)
                .add(Conv::new(
                    nn::conv2d(path / "stem1", half, *channels, 4, down),
                    2,
                    1,
                ))
        }
    }
}

/// From the final top-down state to the decoder's output (`out_channels` per pixel).
pub(crate) fn output(
    path: &nn::Path<'_>,
    arch: &LadderArch,
    image: [i64; 3],
    out_channels: i64,
) -> nn::Sequential {
    let [_, h, w] = image;
    match arch {
        LadderArch::Mlp { width } => nn::seq()
            .add_fn(Tensor::silu)
            .add(nn::linear(
                path / "out",
                *width,
                out_channels * h * w,
                Default::default(),
            ))
            .add_fn(move |x| x.reshape([-1, out_channels, h, w])),
        LadderArch::Conv { channels } => {
            let up = nn::ConvTransposeConfig {
                stride: 2,
                padding: 1,
                ..Default::default()
            };
            let half = (channels / 2).max(1);
            nn::seq()
                .add_fn(Tensor::silu)
                .add(Conv::transposed(
                    nn::conv_transpose2d(path / "out0", *channels, half, 4, up),
                    2,
                    1,
                ))
                .add_fn(Tensor::silu)
                .add(Conv::transposed(
                    nn::conv_transpose2d(path / "out1", half, out_channels, 4, up),
                    2,
                    1,
                ))
        }
    }
}
