//! GPU tests: compiled always (clippy checks them with `--all-features`), run only with
//! `cargo test -p elbo-models --features cuda-tests` on a machine with a CUDA device and
//! a CUDA libtorch (`cargo xtask setup --cuda`).
#![cfg(feature = "cuda-tests")]

use elbo_models::DeviceSpec;
use elbo_models::models::ElboModel;
use elbo_models::models::vae::{Vae, VaeConfig, VaePreset};
use elbo_models::nn::gaussian;
use elbo_models::nn::likelihood::Likelihood;
use elbo_models::train::optim::{Adam, AdamConfig};
use tch::{Device, Kind, Tensor, nn::VarStore};

#[test]
fn cuda_is_visible_and_resolvable() {
    assert!(
        tch::Cuda::is_available(),
        "the cuda-tests feature needs a CUDA device and a CUDA libtorch"
    );
    assert_eq!(DeviceSpec::Auto.resolve().unwrap(), Device::Cuda(0));
}

/// The tensor formulas give the same numbers on the GPU as on the CPU (f32: 1e-5
/// relative, the accumulated rounding of different reduction orders).
#[test]
fn kl_on_cuda_matches_cpu() {
    let mean = Tensor::randn([64, 20], (Kind::Float, Device::Cpu));
    let log_var = Tensor::randn([64, 20], (Kind::Float, Device::Cpu));
    let cpu = gaussian::kl_to_standard_normal(&mean, &log_var);
    let gpu =
        gaussian::kl_to_standard_normal(&mean.to(Device::Cuda(0)), &log_var.to(Device::Cuda(0)));
    let diff = (cpu - gpu.to(Device::Cpu)).abs().max().double_value(&[]);
    assert!(diff < 1e-3, "{diff}");
}

#[test]
fn a_vae_trains_on_cuda() {
    let vs = VarStore::new(Device::Cuda(0));
    let config = VaeConfig::preset(VaePreset::Mlp, [1, 28, 28], Likelihood::Bernoulli).unwrap();
    let vae = Vae::new(&vs.root(), config).unwrap();
    let mut adam = Adam::new(&vs, AdamConfig::default());
    let x = Tensor::rand([128, 1, 28, 28], (Kind::Float, Device::Cuda(0))).round();
    let mut losses = Vec::new();
    for _ in 0..20 {
        let loss = -vae.elbo_terms(&x).elbo().mean(Kind::Float);
        adam.zero_grad();
        loss.backward();
        adam.step(1e-3);
        losses.push(loss.double_value(&[]));
    }
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[19] < losses[0], "{losses:?}");
}

/// A DDPM training step under bf16 CUDA autocast: the loss is finite and the weights
/// move (the forward runs in bf16, the update in fp32).
#[test]
fn a_ddpm_step_runs_under_bf16_autocast() {
    use elbo_models::models::ddpm::{Ddpm, DdpmConfig, DdpmPreset};
    use elbo_models::train::{self, Batch, TrainConfig};
    let vs = VarStore::new(Device::Cuda(0));
    let mut config = DdpmConfig::preset(DdpmPreset::Mnist, [1, 28, 28]).unwrap();
    config.unet.base_channels = 8;
    config.unet.norm_groups = 4;
    let model = Ddpm::new(&vs.root(), config).unwrap();
    elbo_models::sys::ffi::set_cuda_autocast_bf16().unwrap();
    let train_config = TrainConfig {
        autocast_bf16: true,
        ..TrainConfig::default()
    };
    let mut adam = Adam::new(&vs, train_config.adam);
    let batch = Batch {
        x: Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cuda(0))) * 2.0 - 1.0,
        labels: Tensor::zeros([8], (Kind::Int64, Device::Cuda(0))),
    };
    let before = vs.variables()["unet.input.weight"].copy();
    let step = model.train_step().unwrap();
    let mut guard = train::Guard::new(Device::Cuda(0));
    let outcome = train::optimise(
        step.as_ref(),
        &mut adam,
        &batch,
        &train_config,
        0,
        &elbo_models::dist::Replica::alone(),
        &mut guard,
    )
    .unwrap();
    assert!(outcome.loss.double_value(&[]).is_finite());
    assert_eq!(guard.check(), Ok(()));
    assert!(!before.equal(&vs.variables()["unet.input.weight"]));
}

/// The caching allocator's peak as the benches read it (`steptime --device cuda`): a
/// 256 MiB tensor made after a reset is in the peak, and a reset after freeing it starts
/// below it (other tests of this binary may allocate meanwhile, but not 256 MiB more).
#[test]
fn the_device_memory_peak_sees_an_allocation_and_starts_again_after_a_reset() {
    let mib = 1i64 << 20;
    elbo_models::ffi::reset_cuda_memory_peaks(0).unwrap();
    let big = Tensor::zeros([64, 1024, 1024], (Kind::Float, Device::Cuda(0)));
    let (allocated, reserved) = elbo_models::ffi::cuda_memory_peaks(0).unwrap();
    assert!(allocated >= 256 * mib, "peak {allocated} bytes");
    assert!(
        reserved >= allocated,
        "reserved {reserved} < allocated {allocated}"
    );
    drop(big);
    elbo_models::ffi::reset_cuda_memory_peaks(0).unwrap();
    let (after, _) = elbo_models::ffi::cuda_memory_peaks(0).unwrap();
    assert!(
        after < allocated,
        "peak after the reset {after} >= {allocated}"
    );
}

/// TF32 as the benches state it: both flags set, then cleared.
#[test]
fn tf32_can_be_allowed_and_disallowed_on_cuda() {
    elbo_models::ffi::set_cuda_tf32(true, true).unwrap();
    assert_eq!(elbo_models::ffi::cuda_tf32().unwrap(), (true, true));
    elbo_models::ffi::set_cuda_tf32(false, true).unwrap();
    assert_eq!(elbo_models::ffi::cuda_tf32().unwrap(), (false, true));
}
