//! Models of the evidence lower bound on libtorch (through `tch`): the VAE, the
//! hierarchical VAE and the DDPM ([`ddpm`]), with the machinery they share.
//!
//! Every coefficient and closed form comes from [`elbo_math`], which is also the oracle
//! the tensor code here is tested against.
//!
//! Choosing where tensors live:
//!
//! ```
//! use elbo_models::DeviceSpec;
//!
//! let spec: DeviceSpec = "auto".parse().unwrap();
//! let device = spec.resolve().unwrap(); // CPU on a machine without CUDA
//! let x = tch::Tensor::ones([2, 3], (tch::Kind::Float, device));
//! assert_eq!(x.sum(tch::Kind::Float).double_value(&[]), 6.0);
//! ```

#![warn(missing_docs)]

pub mod data;
mod error;
pub mod eval;
pub mod models;
pub mod nn;
pub mod sample;
pub mod session;
pub mod sys;
pub mod train;

pub use error::{Error, Result};
pub use models::{ElboModel, ElboTerms, ddpm, hvae, vae};
pub use sys::{DeviceSpec, RuntimeInfo, ffi, retain_freed_memory};

/// What the unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Mutex, MutexGuard};

    static GENERATOR: Mutex<()> = Mutex::new(());

    /// libtorch's random generator (and its allocator and thread settings) are
    /// process-wide, and the test harness runs tests on parallel threads: every unit test
    /// holds this lock, so a test that seeds the generator sees exactly the draws that
    /// follow, whatever else runs. (A test that panicked holding it does not poison it.)
    pub(crate) fn generator_lock() -> MutexGuard<'static, ()> {
        GENERATOR
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
