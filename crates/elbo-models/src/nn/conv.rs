//! Convolutions that run as batched matrix products on the CPU where libtorch's oneDNN
//! kernels are slow for the shape: 1x1 convolutions of thin or large maps, convolutions
//! of one-channel images whose weight gradient is wanted, transposed convolutions to one
//! channel.
//!
//! A convolution is a matrix product once its input is unfolded into columns
//! (`im2col`); a 1x1 convolution needs no unfolding; a transposed convolution is a
//! product whose columns are folded back (`col2im`, which sums overlaps). On the CPU,
//! libtorch sends all of them to oneDNN, whose kernels for the shapes below are slower
//! than the product. Measured forward + backward at 1 thread (ms, oneDNN / product),
//! PyTorch 2.13's libtorch on a 2-core AMD EPYC, each the best of 8:
//!
//! | kind, B, C_in -> C_out, side in, kernel/stride    | oneDNN | product |
//! |---------------------------------------------------|--------|---------|
//! | 1x1, 64, 96 -> 32, 28                             | 36.0   | 23.1    |
//! | 1x1, 64, 64 -> 32, 28                             | 22.8   | 18.5    |
//! | 1x1, 64, 128 -> 64, 14                            | 23.5   | 20.1    |
//! | 1x1, 128, 64 -> 16, 7                             | 2.47   | 1.85    |
//! | 1x1, 128, 16 -> 64, 7                             | 2.89   | 1.70    |
//! | 1x1, 128, 128 -> 64, 7 (stays oneDNN)             | 9.82   | 10.57   |
//! | 1x1, 128, 64 -> 128, 7 (stays oneDNN)             | 8.35   | 10.57   |
//! | conv, 64, 1 -> 32, 28, 3/1, input without grad    | 11.80  | 6.65    |
//! | the same, forward only (no_grad: stays oneDNN)    | 1.71   | 2.99    |
//! | conv, 128, 1 -> 32, 28, 4/2, input without grad   | 6.21   | 4.64    |
//! | the same, forward only (no_grad: stays oneDNN)    | 0.77   | 1.94    |
//! | conv, 64, 32 -> 1, 28, 3/1 (stays oneDNN)         | 25.4   | 151.9   |
//! | conv, 64, 3 -> 32, 32, 3/1 (stays oneDNN)         | 9.11   | 15.58   |
//! | transposed, 128, 32 -> 1, 14, 4/2                 | 21.1   | 9.0     |
//! | transposed, 128, 32 -> 3, 16, 4/2 (stays oneDNN)  | 17.0   | 18.2    |
//!
//! hence the rules in `Conv::as_product`. A channels-last input (the UNet's on the CPU)
//! makes a 1x1 product one (B h w, C_in) x (C_in, C_out) matrix product, its output
//! channels-last again. Both ways compute the same function; they
//! differ by float rounding. On other devices (cuDNN) libtorch's kernels always run. The
//! variables are those of tch's `nn::conv2d` / `nn::conv_transpose2d` (`weight`, `bias`),
//! so checkpoints do not change.

use tch::nn::{self, Module};
use tch::{Device, Tensor};

/// Positions from which a 1x1 product beats oneDNN whatever the channels.
const GEMM_MIN_POSITIONS: i64 = 14 * 14;
/// Channels (in or out) up to which a 1x1 product beats oneDNN on any map.
const GEMM_MAX_THIN_CHANNELS: i64 = 32;

/// A square-kernel 2-D convolution or transposed convolution without dilation, groups
/// or output padding (see the module docs).
#[derive(Debug)]
pub(crate) struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    padding: i64,
    transposed: bool,
    /// Input and output channels and the kernel side, read off the weight once.
    c_in: i64,
    c_out: i64,
    kernel: i64,
}

impl Conv {
    /// `conv` (built by `nn::conv2d` with this stride and padding).
    pub(crate) fn new(conv: nn::Conv2D, stride: i64, padding: i64) -> Conv {
        Conv::from_parts(conv.ws, conv.bs, stride, padding, false)
    }

    /// `conv` (built by `nn::conv_transpose2d` with this stride and padding).
    pub(crate) fn transposed(conv: nn::ConvTranspose2D, stride: i64, padding: i64) -> Conv {
        Conv::from_parts(conv.ws, conv.bs, stride, padding, true)
    }

    fn from_parts(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: i64,
        padding: i64,
        transposed: bool,
    ) -> Conv {
        // conv2d weights are (C_out, C_in, k, k), transposed ones (C_in, C_out, k, k).
        let size = weight.size();
        let (c_in, c_out) = if transposed {
            (size[0], size[1])
        } else {
            (size[1], size[0])
        };
        Conv {
            weight,
            bias,
            stride,
            padding,
            transposed,
            c_in,
            c_out,
            kernel: size[2],
        }
    }

    /// A 1x1 convolution.
    pub(crate) fn pointwise(conv: nn::Conv2D) -> Conv {
        Conv::new(conv, 1, 0)
    }

    /// Whether this layer runs as a product on `x` (the rules of the module docs).
    fn as_product(&self, x: &Tensor) -> bool {
        let size = x.size();
        if x.device() != Device::Cpu || size.len() != 4 {
            return false;
        }
        let (c_in, c_out) = (self.c_in, self.c_out);
        let pointwise = self.kernel == 1 && self.stride == 1 && self.padding == 0;
        if self.transposed {
            c_out == 1
        } else if pointwise {
            size[2] * size[3] >= GEMM_MIN_POSITIONS || c_in.min(c_out) <= GEMM_MAX_THIN_CHANNELS
        } else {
            // The gain is in the weight's gradient (the forward alone is faster in
            // oneDNN): only when a backward pass can follow and needs no input gradient.
            c_in == 1
                && !x.requires_grad()
                && self.weight.requires_grad()
                && crate::sys::ffi::grad_enabled()
        }
    }

    /// The product: the weight times the columns of `x` (B, C_in k k, positions), or
    /// for a transposed convolution the weight's transpose times `x`, folded.
    fn product(&self, x: &Tensor) -> Tensor {
        let (b, h, w) = (x.size()[0], x.size()[2], x.size()[3]);
        let (c_in, c_out) = (self.c_in, self.c_out);
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let bias = self.bias.as_ref().map(|bias| bias.view([1, c_out, 1]));
        if self.transposed {
            // weight (C_in, C_out, k, k); columns = weight^T (C_out k k, C_in) x (C_in, h w).
            let rows = c_out * k * k;
            let weight_t = self
                .weight
                .view([1, c_in, rows])
                .transpose(1, 2)
                .expand([b, rows, c_in], false);
            let columns = weight_t.bmm(&x.reshape([b, c_in, h * w]));
            let (ho, wo) = ((h - 1) * s - 2 * p + k, (w - 1) * s - 2 * p + k);
            let out = columns.col2im([ho, wo], [k, k], [1, 1], [p, p], [s, s]);
            return match bias {
                Some(bias) => out + bias.unsqueeze(-1),
                None => out,
            };
        }
        if k == 1 && s == 1 && p == 0 && super::is_channels_last(x) {
            // Channels-last: the positions are the rows of one (B h w, C_in) matrix
            // already, and the output (B h w, C_out) is channels-last again.
            let rows = x.permute([0, 2, 3, 1]).reshape([b * h * w, c_in]);
            let weight = self.weight.view([c_out, c_in]).tr();
            let out = match &self.bias {
                Some(bias) => bias.addmm(&rows, &weight),
                None => rows.mm(&weight),
            };
            return out.view([b, h, w, c_out]).permute([0, 3, 1, 2]);
        }
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let columns = if k == 1 && s == 1 && p == 0 {
            x.reshape([b, c_in, h * w])
        } else {
            x.im2col([k, k], [1, 1], [p, p], [s, s])
        };
        let weight = self
            .weight
            .view([1, c_out, c_in * k * k])
            .expand([b, c_out, c_in * k * k], false);
        let out = match bias {
            Some(bias) => bias.baddbmm(&weight, &columns, 1.0, 1.0),
            None => weight.bmm(&columns),
        };
        out.view([b, c_out, ho, wo])
    }
}

impl Conv {
    /// libtorch's own kernel for this layer (oneDNN on the CPU, cuDNN on CUDA).
    fn libtorch(&self, x: &Tensor) -> Tensor {
        let (s, p) = ([self.stride; 2], [self.padding; 2]);
        if self.transposed {
            x.conv_transpose2d(&self.weight, self.bias.as_ref(), s, p, [0, 0], 1, [1, 1])
        } else {
            x.conv2d(&self.weight, self.bias.as_ref(), s, p, [1, 1], 1)
        }
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Tensor {
        if self.as_product(x) {
            self.product(x)
        } else {
            self.libtorch(x)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// One layer both ways: libtorch's kernel and `Conv::product`, with the values and
    /// the gradients of the input (when it takes one), weight and bias.
    fn compare(conv: &Conv, x: &Tensor) {
        let bias = conv.bias.as_ref().unwrap();
        let run = |y: Tensor| {
            let g = y.ones_like()
                + Tensor::arange(y.numel() as i64, (Kind::Float, Device::Cpu))
                    .reshape(y.size())
                    .sin();
            (&y * &g).sum(Kind::Float).backward();
            let mut out = vec![y.detach(), conv.weight.grad().copy(), bias.grad().copy()];
            if x.requires_grad() {
                out.push(x.grad().copy());
            }
            crate::sys::ffi::clear_grads(&[
                x.shallow_clone(),
                conv.weight.shallow_clone(),
                bias.shallow_clone(),
            ])
            .unwrap();
            out
        };
        let ours = run(conv.product(x));
        let theirs = run(conv.libtorch(x));
        for (name, a, b) in ["output", "grad weight", "grad bias", "grad input"]
            .iter()
            .zip(&ours)
            .zip(&theirs)
            .map(|((n, a), b)| (n, a, b))
        {
            assert_eq!(a.size(), b.size(), "{name}");
            // Sums of up to a few thousand products of O(1) terms in f32: rounding of
            // ~1e-6 relative to the largest magnitude.
            let gap = (a - b).abs().max().double_value(&[]);
            let scale = b.abs().max().double_value(&[]).max(1.0);
            assert!(gap < 1e-5 * scale, "{name}: gap {gap} at scale {scale}");
        }
    }

    /// Each rule picks the path the module docs give, and every layer the product
    /// serves computes what libtorch's kernel computes, gradients included.
    #[test]
    fn products_match_libtorch_and_the_rules_pick_them() {
        let _generator = crate::testing::generator_lock();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let randn = |shape: &[i64], grad: bool| {
            Tensor::randn(shape, (Kind::Float, Device::Cpu)).set_requires_grad(grad)
        };
        let s2 = nn::ConvConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        let t2 = nn::ConvTransposeConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        let p1 = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        // (layer, input, whether the rules take the product)
        let cases = [
            (
                Conv::pointwise(nn::conv2d(&root / "a", 5, 7, 1, Default::default())),
                randn(&[3, 5, 14, 14], true),
                true,
            ),
            (
                Conv::pointwise(nn::conv2d(&root / "b", 64, 16, 1, Default::default())),
                randn(&[2, 64, 7, 7], true),
                true,
            ),
            (
                Conv::pointwise(nn::conv2d(&root / "c", 64, 64, 1, Default::default())),
                randn(&[2, 64, 7, 7], true),
                false,
            ),
            (
                Conv::new(nn::conv2d(&root / "d", 1, 8, 4, s2), 2, 1),
                randn(&[3, 1, 28, 28], false),
                true,
            ),
            (
                Conv::new(nn::conv2d(&root / "e", 1, 8, 3, p1), 1, 1),
                randn(&[3, 1, 9, 9], false),
                true,
            ),
            (
                Conv::new(nn::conv2d(&root / "f", 1, 8, 3, p1), 1, 1),
                randn(&[3, 1, 9, 9], true),
                false,
            ),
            (
                Conv::new(nn::conv2d(&root / "g", 4, 1, 3, p1), 1, 1),
                randn(&[3, 4, 9, 9], true),
                false,
            ),
            (
                Conv::transposed(nn::conv_transpose2d(&root / "h", 6, 1, 4, t2), 2, 1),
                randn(&[3, 6, 7, 7], true),
                true,
            ),
            (
                Conv::transposed(nn::conv_transpose2d(&root / "i", 6, 3, 4, t2), 2, 1),
                randn(&[3, 6, 7, 7], true),
                false,
            ),
        ];
        for (i, (conv, x, product)) in cases.iter().enumerate() {
            assert_eq!(conv.as_product(x), *product, "case {i}");
            compare(conv, x);
        }
        // Sampling (no backward pass) keeps a one-channel input on oneDNN.
        let (stem, image, _) = &cases[3];
        assert!(!tch::no_grad(|| stem.as_product(image)));
        // A channels-last input (the UNet's on the CPU): the 1x1 product runs as one
        // (B h w, C_in) x (C_in, C_out) product and its output stays channels-last.
        let (pointwise, _, _) = &cases[0];
        let x =
            super::super::to_channels_last(&randn(&[3, 5, 14, 14], false)).set_requires_grad(true);
        assert!(super::super::is_channels_last(&x));
        assert!(pointwise.as_product(&x));
        assert!(super::super::is_channels_last(&pointwise.product(&x)));
        compare(pointwise, &x);
    }
}
