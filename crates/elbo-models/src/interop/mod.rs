//! Models in and out of elbo in the formats other tools use: diffusers' `UNet2DModel`
//! folders ([`diffusers`]) for DDPMs.

pub mod diffusers;
