//! Layers and tensor formulas the models share: convolutions and the fused GroupNorm
//! (their kernels picked by shape and device), PyTorch's default initialisation, the
//! UNet, and the tensor twins of elbo-math's Gaussians and likelihoods.

pub(crate) mod conv;
pub mod gaussian;
pub mod init;
pub mod likelihood;
pub(crate) mod norm;
pub mod unet;
