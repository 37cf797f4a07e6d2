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
pub use plot::{Weighting, plot_run, plot_schedule, plot_weighting, weighting_of};
pub use restore::{Restored, restore};
pub use sample::{SampleRequest, clipped, sample_checkpoint, write_samples};

pub use jobs::{
    DdpmJob, EdmJob, ElboTraining, FinalEval, HvaeJob, Job, JobReport, Plan, VaeJob, VdmJob,
    run_folder, train, train_in, utc_stamp,
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
pub use crate::models::edm::EdmPreset;
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
    use crate::models::ModelConfig;
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
        let err = plot_weighting(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("has no checkpoint yet"), "{err}");
    }

    /// The weightings of a DDPM's objectives: L_simple on eps is not monotone, on v with
    /// the cosine schedule it is; the bound with the posterior's variance is the ELBO's
    /// 1 to within its steps; a VAE has none.
    #[test]
    fn a_ddpms_objectives_as_weightings() {
        use crate::models::ddpm::{
            DdpmConfig, DdpmPreset, LossKind, Objective, ScheduleKind, VarianceKind,
        };
        let base = DdpmConfig::preset(DdpmPreset::Mnist, [1, 28, 28]).unwrap();
        let of = |f: &dyn Fn(&mut DdpmConfig)| {
            let mut c = base.clone();
            f(&mut c);
            weighting_of(&ModelConfig::Ddpm(c)).unwrap()
        };
        let eps = of(&|_| {});
        assert!(
            !eps.monotone && eps.points.len() == 1000,
            "{}",
            eps.objective
        );
        let v = of(&|c| {
            c.objective = Objective::V;
            c.schedule = ScheduleKind::Cosine;
        });
        assert!(v.monotone, "{}", v.objective);
        let vlb = of(&|c| {
            c.loss = LossKind::Vlb;
            c.variance = VarianceKind::FixedSmall;
        });
        // From t = 50 on (before it, log-SNR falls fast: 0.79 in the first step) within
        // 5% of 1.
        let worst = vlb.points[48..]
            .iter()
            .map(|&(_, w)| (w - 1.0).abs())
            .fold(0.0, f64::max);
        assert!(worst < 0.05, "{worst}");
        let vae = crate::models::vae::VaeConfig::preset(
            crate::models::vae::VaePreset::default(),
            [1, 28, 28],
            crate::nn::likelihood::Likelihood::Bernoulli,
        )
        .unwrap();
        let err = weighting_of(&ModelConfig::Vae(vae))
            .unwrap_err()
            .to_string();
        assert!(err.contains("this run is a vae"), "{err}");
    }
}
