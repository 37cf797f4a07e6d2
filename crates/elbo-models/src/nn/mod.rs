//! Layers and tensor formulas the models share: convolutions and the fused GroupNorm
//! (their kernels picked by shape and device), PyTorch's default initialisation, the
//! UNet, and the tensor twins of elbo-math's Gaussians and likelihoods.

pub(crate) mod conv;
pub mod gaussian;
pub mod init;
pub mod likelihood;
pub(crate) mod norm;
pub mod unet;

/// Whether `x` is a 4-d tensor laid out channels-last (NHWC in memory: a position's
/// channels next to each other) and not also contiguous (with one channel, or one
/// position, the two layouts are the same).
pub(crate) fn is_channels_last(x: &tch::Tensor) -> bool {
    let (size, stride) = (x.size(), x.stride());
    size.len() == 4
        && !x.is_contiguous()
        && stride[1] == 1
        && stride[3] == size[1]
        && stride[2] == size[1] * size[3]
        && stride[0] == size[1] * size[2] * size[3]
}

/// `x` (N, C, H, W) with the same values, laid out channels-last (PyTorch's
/// `x.contiguous(memory_format=torch.channels_last)`; tch has no memory formats, so a
/// permuted copy). Differentiable.
pub(crate) fn to_channels_last(x: &tch::Tensor) -> tch::Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn channels_last_keeps_the_values_and_changes_only_the_layout() {
        let _generator = crate::testing::generator_lock();
        tch::manual_seed(0);
        let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
        assert!(!is_channels_last(&x));
        let y = to_channels_last(&x);
        assert!(is_channels_last(&y));
        assert_eq!(y.size(), x.size());
        assert_eq!(y.stride(), [60, 1, 15, 3]);
        assert!(y.equal(&x));
        // One channel: both layouts are the same memory, and it counts as contiguous.
        let one = to_channels_last(&Tensor::randn([2, 1, 4, 5], (Kind::Float, Device::Cpu)));
        assert!(!is_channels_last(&one));
        assert!(!is_channels_last(&Tensor::zeros(
            [3, 4],
            (Kind::Float, Device::Cpu)
        )));
    }
}
