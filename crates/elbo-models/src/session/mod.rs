//! The front door: what the `elbo` commands do, as library calls. Each command of the
//! CLI is one call here: [`jobs::train`] (and [`eval::classifier::run_job`]) for
//! `train`, [`evaluate_checkpoint`] and [`frechet_of_checkpoint`] for `eval`,
//! [`write_samples`] for `sample`, [`plot_run`] for `plot`.
//!
//! [`eval::classifier::run_job`]: crate::eval::classifier::run_job

mod evaluate;
mod export;
mod inspect;
mod interop;
pub mod jobs;
pub mod options;
mod plot;
mod restore;
mod sample;

pub use crate::sample::seed_draws;
pub use evaluate::{
    FidRequest, SweepReport, evaluate_checkpoint, fid_of_checkpoint, frechet_of_checkpoint,
    frechet_sweep, guidance_sweep, sampling_for,
};
pub use export::{ExportFormat, ExportReport, ExportRequest, export_samples};
pub use inspect::{DataReport, inspect_data, pack_data};
pub use interop::{ImportReport, ImportRequest, export_diffusers, import_diffusers};
pub use plot::{plot_run, plot_schedule};
pub use restore::{Restored, restore};
pub use sample::{SampleRequest, clipped, sample_checkpoint, write_samples};

pub use jobs::{
    DdpmJob, ElboTraining, FinalEval, HvaeJob, Job, JobReport, Plan, VaeJob, VdmJob, run_folder,
    train, train_in, utc_stamp,
};
pub use options::{Length, TrainDefaults, TrainOptions};

// What the front door's callers name: the options of the jobs and what comes back.
pub use crate::data::DataSpec;
pub use crate::dist::{
    AVAILABLE as DATA_PARALLEL, Alone, DEFAULT_TIMEOUT, ENV_VARS, Parallel, Replicas,
    UNAVAILABLE as NO_DATA_PARALLEL, World, waiting_in,
};
pub use crate::eval::classifier::{
    ClassifierJob, ClassifierReport, ClassifierTrainConfig, run_job as train_classifier,
};
pub use crate::eval::fid::InceptionReport;
pub use crate::eval::frechet::{FrechetConfig, FrechetReport, GuidancePoint, SweepPoint};
pub use crate::eval::{ACTIVE_UNIT_THRESHOLD, ActiveUnits, EvalReport};
pub use crate::models::ddpm::{
    DdpmPreset, LossKind, Objective, Recipe, RecipeName, ScheduleKind, TimestepSampling,
    VarianceKind,
};
pub use crate::models::hvae::{HvaeArch, HvaeVariant};
pub use crate::models::vae::VaePreset;
pub use crate::models::vdm::{GammaKind, VdmPreset};
/// Kingma et al.'s endpoints of gamma, where a VDM's schedule starts by default.
pub const KINGMA_GAMMA: (f64, f64) = elbo_math::vdm::LinearGamma::KINGMA;
pub use crate::nn::likelihood::Likelihood;
pub use crate::sample::{Classes, ClipX0, Guidance, SamplerSpec, SamplingOptions};
pub use crate::sys::ffi::{exit_now, set_deterministic as use_deterministic_algorithms};
pub use crate::sys::{DeviceSpec, RuntimeInfo, retain_freed_memory};
pub use crate::train::aids::TrainingAids;
pub use crate::train::{Control, Finished, Observer, Progress, RunStart, check_global_batch};
pub use tch::Device;

use crate::error::{Error, Result};

/// How many CPU threads libtorch may use (a process-wide setting, for executables).
pub fn set_threads(threads: i32) -> Result<()> {
    if !(1..=1024).contains(&threads) {
        return Err(Error::Config {
            detail: format!("--threads must be between 1 and 1024, found {threads}"),
        });
    }
    tch::set_num_threads(threads);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::checkpoint::resolve_checkpoint;

    #[test]
    fn a_folder_without_checkpoints_is_a_clear_error() {
        let _generator = crate::testing::generator_lock();
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_checkpoint(dir.path()).unwrap_err().to_string();
        assert!(err.contains("holds no checkpoint"), "{err}");
        let err = restore(dir.path(), Device::Cpu, false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("holds no checkpoint"), "{err}");
        let err = plot_run(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("has no metrics.jsonl"), "{err}");
    }
}
