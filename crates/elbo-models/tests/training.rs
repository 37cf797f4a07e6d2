//! The shared training loop on the VAE and the bundled MNIST sample: learning, exact
//! resume, interruption, refusal of foreign checkpoints, and NaN handling.

use std::sync::atomic::AtomicBool;

use elbo_data::Dataset;
use elbo_models::models::vae::{Vae, VaeConfig, VaePreset};
use elbo_models::nn::likelihood::Likelihood;
use elbo_models::train::checkpoint;
use elbo_models::train::{self, Control, Finished, RunDir, TrainConfig, TrainData};
use elbo_models::{data, eval};
use tch::{Device, nn::VarStore};

mod common;
use common::{exclusive, subset};

fn config(steps: u64, seed: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 32,
        seed,
        checkpoint_every: 1000,
        log_every: 5,
        eval_examples: 64,
        ..TrainConfig::default()
    }
}

/// Trains with no progress observer, into the run folder `dir`.
fn fit(
    model: &Vae,
    vs: &mut VarStore,
    data: &TrainData<'_>,
    config: &TrainConfig,
    dir: &std::path::Path,
    control: Control<'_>,
) -> elbo_models::Result<train::TrainReport> {
    train::train(model, vs, data, config, &RunDir::new(dir), control, &mut ())
}

fn vae(seed: u64) -> (VarStore, Vae) {
    let vs = train::var_store(seed, Device::Cpu);
    let config = VaeConfig::preset(VaePreset::Mlp, [1, 28, 28], Likelihood::Bernoulli).unwrap();
    let vae = Vae::new(&vs.root(), config).unwrap();
    (vs, vae)
}

fn run(
    steps: u64,
    dir: &std::path::Path,
    resume: bool,
    train: &Dataset,
    test: &Dataset,
) -> (VarStore, train::TrainReport) {
    let (mut vs, model) = vae(5);
    let data = TrainData { train, test };
    let report = fit(
        &model,
        &mut vs,
        &data,
        &config(steps, 5),
        dir,
        Control {
            resume,
            stop: &AtomicBool::new(false),
            allow_changes: false,
        },
    )
    .unwrap();
    (vs, report)
}

/// Training 2n steps equals training n, stopping, resuming and training n more, bit for
/// bit: data order, transforms and model noise are functions of (seed, step), and the
/// optimiser's moments are restored.
#[test]
fn resume_is_bit_exact() {
    let _generator = exclusive();
    let (train_set, test_set) = subset(200, 64);
    let straight = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();
    // 200 examples in batches of 32: 7 steps an epoch, so step 9 stops mid-epoch.
    let (vs_a, _) = run(18, straight.path(), false, &train_set, &test_set);
    run(9, split.path(), false, &train_set, &test_set);
    let resumed = {
        let (mut vs, model) = vae(5);
        let data = TrainData {
            train: &train_set,
            test: &test_set,
        };
        let report = fit(
            &model,
            &mut vs,
            &data,
            &config(18, 5),
            split.path(),
            Control {
                resume: true,
                stop: &AtomicBool::new(false),
                allow_changes: false,
            },
        )
        .unwrap();
        assert_eq!(report.steps_taken, 9);
        vs
    };
    let a = vs_a.variables();
    let b = resumed.variables();
    assert_eq!(a.len(), b.len());
    for (name, tensor) in &a {
        assert!(tensor.equal(&b[name]), "{name} differs after resume");
    }
    // The metrics of both runs end at the same step.
    let last_step = |dir: &std::path::Path| {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        last["step"].as_u64().unwrap()
    };
    assert_eq!(last_step(straight.path()), 18);
    assert_eq!(last_step(split.path()), 18);
}

#[test]
fn a_run_folder_is_not_overwritten_and_foreign_checkpoints_are_refused() {
    let _generator = exclusive();
    let (train_set, test_set) = subset(64, 32);
    let dir = tempfile::tempdir().unwrap();
    run(2, dir.path(), false, &train_set, &test_set);
    let data = TrainData {
        train: &train_set,
        test: &test_set,
    };
    let stop = AtomicBool::new(false);

    let (mut vs, model) = vae(5);
    let err = fit(
        &model,
        &mut vs,
        &data,
        &config(4, 5),
        dir.path(),
        Control {
            resume: false,
            stop: &stop,
            allow_changes: false,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("already holds a run") && err.contains("--resume"),
        "{err}"
    );

    let vs2 = train::var_store(5, Device::Cpu);
    let other = VaeConfig::preset(VaePreset::Conv, [1, 28, 28], Likelihood::Bernoulli).unwrap();
    let conv = Vae::new(&vs2.root(), other).unwrap();
    let mut vs2 = vs2;
    let err = fit(
        &conv,
        &mut vs2,
        &data,
        &config(4, 5),
        dir.path(),
        Control {
            resume: true,
            stop: &stop,
            allow_changes: false,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("another vae configuration") && err.contains("arch"),
        "{err}"
    );

    let err = fit(
        &model,
        &mut vs,
        &data,
        &config(4, 6),
        dir.path(),
        Control {
            resume: true,
            stop: &stop,
            allow_changes: false,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("seed 5") && err.contains("seed 6"), "{err}");
}

#[test]
fn raising_the_stop_flag_checkpoints_and_reports_the_step() {
    let _generator = exclusive();
    let (train_set, test_set) = subset(64, 32);
    let dir = tempfile::tempdir().unwrap();
    let (mut vs, model) = vae(5);
    let data = TrainData {
        train: &train_set,
        test: &test_set,
    };
    let stop = AtomicBool::new(true);
    let report = fit(
        &model,
        &mut vs,
        &data,
        &config(10, 5),
        dir.path(),
        Control {
            resume: false,
            stop: &stop,
            allow_changes: false,
        },
    )
    .unwrap();
    assert_eq!(report.finished, Finished::Interrupted { step: 1 });
    let loaded = checkpoint::load(&report.checkpoint).unwrap();
    assert_eq!(loaded.meta.step, 1);
    assert!(loaded.tensors.contains_key("adam.m.enc0.weight"));
}

#[test]
fn a_nan_loss_stops_the_run_naming_the_step_and_keeping_the_last_checkpoint() {
    let _generator = exclusive();
    let (train_set, test_set) = subset(64, 32);
    let dir = tempfile::tempdir().unwrap();
    let (mut vs, model) = vae(5);
    let data = TrainData {
        train: &train_set,
        test: &test_set,
    };
    let mut cfg = config(6, 5);
    cfg.checkpoint_every = 2;
    // A learning rate this large blows the weights up within a few steps.
    cfg.lr = 1e30;
    let err = fit(
        &model,
        &mut vs,
        &data,
        &cfg,
        dir.path(),
        Control {
            resume: false,
            stop: &AtomicBool::new(false),
            allow_changes: false,
        },
    )
    .unwrap_err();
    let text = err.to_string();
    match err {
        elbo_models::Error::NonFiniteLoss { step, .. } => {
            assert!((2..=6).contains(&step), "{text}");
            let kept = checkpoint::list(&RunDir::new(dir.path()).checkpoints()).unwrap();
            for json in kept {
                let meta = checkpoint::load(&json).unwrap().meta;
                assert!(
                    meta.step < step,
                    "checkpoint {} is not before the bad step {step}",
                    meta.step
                );
            }
        }
        other => panic!("expected NonFiniteLoss, got {other}"),
    }
    assert!(text.contains("loss at step"), "{text}");
}

/// A learning test, not a timing test: 150 steps of batch 64 on 2,000 images must raise
/// the test ELBO of vae-mlp by at least 150 nats from its initial value (measured:
/// about -545 at initialisation, about -205 after these steps; the margin leaves
/// room for seeds and libtorch versions).
#[test]
fn vae_mlp_learns_on_the_bundled_sample() {
    let _generator = exclusive();
    let (train_set, test_set) = subset(2000, 200);
    let dir = tempfile::tempdir().unwrap();
    let (mut vs, model) = vae(11);
    let test = data::fixed_tensor(&test_set, Likelihood::Bernoulli, None, Device::Cpu).unwrap();
    let before = eval::evaluate(&model, &test, None, 200).elbo;
    let data = TrainData {
        train: &train_set,
        test: &test_set,
    };
    let mut cfg = config(150, 11);
    cfg.batch_size = 64;
    fit(
        &model,
        &mut vs,
        &data,
        &cfg,
        dir.path(),
        Control {
            resume: false,
            stop: &AtomicBool::new(false),
            allow_changes: false,
        },
    )
    .unwrap();
    let after = eval::evaluate(&model, &test, None, 200).elbo;
    assert!(
        after - before > 150.0,
        "test ELBO {before:.1} -> {after:.1}"
    );
    assert!(dir.path().join("samples/epoch-001.png").is_file());
    assert!(
        dir.path()
            .join("samples/reconstructions-epoch-001.png")
            .is_file()
    );
}
