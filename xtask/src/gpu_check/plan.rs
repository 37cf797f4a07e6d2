//! The GPU check's plan: its steps in order, how long each should take, and when each
//! is stopped (`--quick` keeps what matters most).

use std::time::Duration;

use super::GpuCheckArgs;

/// The steps of the check, with how long each should take (seconds; the full check on
/// a machine where nothing is cached yet, `--quick` on one where the set-up is done:
/// libtorch installed, the venv made) and the limit after which it is stopped.
pub fn plan(args: &GpuCheckArgs) -> Vec<Planned> {
    let minutes = |m: u64| Duration::from_secs(60 * m);
    let quick = args.quick;
    let pick = |quick_s: u64, full_s: u64| if quick { quick_s } else { full_s };
    let mut steps = vec![
        Planned::new(SETUP, pick(20, 240), minutes(20)),
        Planned::new(BUILD, pick(180, 420), minutes(25)),
    ];
    if !quick {
        steps.push(Planned::new(CIFAR, 60, minutes(10)));
    }
    steps.push(Planned::new(CUDA_TESTS, pick(90, 240), minutes(20)));
    steps.push(Planned::new(TRAIN, pick(45, 180), minutes(20)));
    steps.push(Planned::new(RESUME, pick(75, 180), minutes(20)));
    if !quick {
        steps.push(Planned::new(NCCL, 90, minutes(10)));
        steps.push(Planned::new(DDIM, 60, minutes(10)));
    }
    if !args.no_pytorch {
        steps.push(Planned::new(BENCH, pick(180, 900), minutes(pick(15, 45))));
    }
    steps
}

/// A step of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// Its name in the report.
    pub name: &'static str,
    /// How long it should take.
    pub estimate: Duration,
    /// When it is stopped.
    pub limit: Duration,
}

impl Planned {
    pub(super) fn new(name: &'static str, estimate_s: u64, limit: Duration) -> Planned {
        Planned {
            name,
            estimate: Duration::from_secs(estimate_s),
            limit,
        }
    }
}

pub(super) const SETUP: &str = "CUDA libtorch (cargo xtask setup --cuda)";
pub(super) const BUILD: &str = "build (release: elbo, steptime, the cuda tests)";
pub(super) const CIFAR: &str = "CIFAR-10 (cargo xtask data cifar10)";
pub(super) const CUDA_TESTS: &str = "cuda-tests suite";
pub(super) const TRAIN: &str = "train ddpm-cifar10 under bf16 autocast";
pub(super) const RESUME: &str = "resume (broken at half) vs unbroken, tensor by tensor";
pub(super) const NCCL: &str = "data parallel on NCCL (elbo train ddpm --nproc 2), ranks compared";
pub(super) const DDIM: &str = "DDIM-50 sampling";
pub(super) const BENCH: &str = "CUDA bench against PyTorch (bf16 autocast)";
