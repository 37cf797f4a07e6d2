//! Models of the evidence lower bound on libtorch (through `tch`): the VAE, the
//! hierarchical VAE and the DDPM, with the machinery they share: a training loop that
//! resumes bit-exactly, checkpoints, evaluation of the bound term by term, samplers.
//!
//! Every coefficient and closed form comes from [`elbo_math`], which is also the oracle
//! the tensor code here is tested against.
//!
//! A model from its typed configuration, trained a few steps on the bundled MNIST sample
//! through the public trainer, then its bound evaluated and samples drawn:
//!
//! ```
//! use std::sync::atomic::AtomicBool;
//!
//! use elbo_models::models::ModelConfig;
//! use elbo_models::models::vae::{VaeConfig, VaePreset};
//! use elbo_models::nn::likelihood::Likelihood;
//! use elbo_models::train::{self, Control, RunDir, TrainConfig};
//! use elbo_models::{data, eval, fit, models};
//!
//! # fn main() -> elbo_models::Result<()> {
//! let splits = elbo_data::load_bundled().expect("the bundled MNIST sample");
//! let device = elbo_models::DeviceSpec::Auto.resolve()?;
//! let config = ModelConfig::Vae(VaeConfig::preset(
//!     VaePreset::Mlp,
//!     [1, 28, 28],
//!     Likelihood::Bernoulli,
//! )?);
//! // Initial weights are a function of the seed.
//! let mut vs = train::var_store(0, device);
//! let model = config.build(&vs.root())?;
//!
//! let run = tempfile::tempdir()?;
//! let settings = TrainConfig {
//!     steps: 5,
//!     batch_size: 32,
//!     cadence: train::Cadence { eval_examples: 0, ..train::Cadence::default() },
//!     ..TrainConfig::default()
//! };
//! let step = models::step_for(model.as_ref(), &settings.aids)?;
//! let report = fit::trainer(model.as_ref(), settings, RunDir::new(run.path()), "vae-mlp", None)
//!     .fit(
//!         step.as_ref(),
//!         &mut vs,
//!         &splits.train,
//!         Control { resume: false, stop: &AtomicBool::new(false), allow_changes: false },
//!         &mut (),
//!     )?;
//! assert_eq!(report.steps_taken, 5);
//! assert!(report.checkpoint.exists());
//!
//! // The bound on 100 test images, term by term, with the IWAE bound of 10 samples.
//! let test = data::fixed_tensor(&splits.test, model.likelihood(), Some(100), device)?;
//! let bound = eval::evaluate(model.as_ref(), &test, Some(10), 100)?;
//! // Ten importance samples tighten a barely trained VAE's bound by nats per image.
//! assert!(bound.elbo < 0.0 && bound.iwae.unwrap().1 > bound.elbo);
//!
//! let samples = model.sample(4)?;
//! assert_eq!(samples.size(), [4, 1, 28, 28]);
//! # Ok(())
//! # }
//! ```
//!
//! The crate's front door, [`session`], does the same as library calls that name a model
//! by its preset (`session::train(&session::VaeJob::default(), ...)`), and is what the
//! `elbo` command calls.

#![warn(missing_docs)]

pub mod data;
pub mod dist;
mod error;
pub mod eval;
pub mod fit;
pub mod interop;
pub mod models;
pub mod nn;
pub mod sample;
pub mod session;
pub mod sys;
mod terms;
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

    /// A file every write to which fails as on a full disk: the kernel's `/dev/full`
    /// (`None`, said on stderr, where the machine has no such device: some containers
    /// replace it with a plain file).
    pub(crate) fn full_disk() -> Option<&'static std::path::Path> {
        use std::os::unix::fs::FileTypeExt;
        let path = std::path::Path::new("/dev/full");
        let device = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device());
        if !device {
            eprintln!("not run: /dev/full is not the kernel's full device here");
        }
        device.then_some(path)
    }
}
