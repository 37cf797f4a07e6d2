//! The shared training loop on the VAE and the bundled MNIST sample: learning, exact
//! resume, interruption, refusal of foreign checkpoints, and NaN handling.

use std::sync::atomic::AtomicBool;

use elbo_data::Dataset;
use elbo_models::fit::{self, TrainData};
use elbo_models::models::vae::{Vae, VaeConfig, VaePreset};
use elbo_models::nn::likelihood::Likelihood;
use elbo_models::train::checkpoint;
use elbo_models::train::{self, Control, Finished, RunDir, TrainConfig};
use elbo_models::{data, eval};
use tch::{Device, nn::VarStore};

use crate::common::{exclusive, subset};

fn config(steps: u64, seed: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 32,
        seed,
        cadence: train::Cadence {
            checkpoint_every: 1000,
            log_every: 5,
            eval_examples: 64,
            ..train::Cadence::default()
        },
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
    fit::train(model, vs, data, config, &RunDir::new(dir), control, &mut ())
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

/// The run's TensorBoard event files, read back as TensorBoard reads them (a session
/// start drops the earlier files' events from its step on): every number of
/// metrics.jsonl under its tag at its step, the epochs' pictures byte for byte, the
/// configuration as text; a resume adds a file whose session starts after the
/// checkpoint's step. Without `tensorboard`, no event file.
#[test]
fn tensorboard_holds_what_metrics_jsonl_holds_across_a_resume() {
    use elbo_board::proto::{Kind, What};
    let _generator = exclusive();
    let (train_set, test_set) = subset(200, 64);
    let dir = tempfile::tempdir().unwrap();
    run(9, dir.path(), false, &train_set, &test_set);
    run(18, dir.path(), true, &train_set, &test_set);
    let files = elbo_board::event_files(dir.path());
    assert_eq!(files.len(), 2, "one file per process start: {files:?}");
    let mut scalars: Vec<(String, i64, f32)> = Vec::new();
    let mut images: Vec<(String, i64, Vec<u8>)> = Vec::new();
    let mut texts = Vec::new();
    let mut starts = Vec::new();
    for file in &files {
        for event in elbo_board::read_events(file).unwrap() {
            match event.what {
                Some(What::SessionLog(_)) => {
                    starts.push(event.step);
                    scalars.retain(|s| s.1 < event.step);
                    images.retain(|i| i.1 < event.step);
                }
                Some(What::Summary(summary)) => {
                    for value in summary.value {
                        match value.kind {
                            Some(Kind::SimpleValue(v)) => scalars.push((value.tag, event.step, v)),
                            Some(Kind::Image(i)) => {
                                images.push((value.tag, event.step, i.encoded_image_string))
                            }
                            Some(Kind::Tensor(t)) => texts.push(t.string_val[0].clone()),
                            None => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    assert_eq!(starts, [10], "the resume from step 9 starts at 10");
    // Throughput, at every logged step, is TensorBoard's alone.
    let (perf, scalars): (Vec<_>, Vec<_>) = scalars
        .into_iter()
        .partition(|s| s.0 == "perf/images_per_s");
    assert!(
        perf.iter().all(|p| p.2.is_finite() && p.2 > 0.0),
        "{perf:?}"
    );
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let mut expected = Vec::new();
    for line in text.lines() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        for (tag, value) in train::board::tags_of(&line) {
            expected.push((tag, line["step"].as_i64().unwrap(), value as f32));
        }
    }
    assert!(expected.iter().any(|e| e.0 == "test/elbo"), "{expected:?}");
    assert!(expected.iter().any(|e| e.0 == "train/loss"), "{expected:?}");
    assert_eq!(scalars, expected);
    let logged: Vec<i64> = expected
        .iter()
        .filter(|e| e.0 == "train/loss")
        .map(|e| e.1)
        .collect();
    assert_eq!(perf.iter().map(|p| p.1).collect::<Vec<_>>(), logged);
    // 7 steps an epoch: pictures at the ends of epochs 1 and 2 (steps 7 and 14).
    let run_dir = RunDir::new(dir.path());
    for (epoch, step) in [(1, 7), (2, 14)] {
        let png = std::fs::read(run_dir.epoch_samples(epoch)).unwrap();
        assert!(
            images.contains(&("samples".to_string(), step, png)),
            "epoch {epoch}"
        );
    }
    let recorded = std::fs::read_to_string(run_dir.config()).unwrap();
    assert_eq!(texts.len(), 2);
    assert!(
        texts
            .iter()
            .all(|t| *t == format!("```json\n{recorded}\n```").into_bytes())
    );

    // Off: no event file.
    let off = tempfile::tempdir().unwrap();
    let (mut vs, model) = vae(5);
    let mut quiet = config(3, 5);
    quiet.cadence.tensorboard = false;
    fit(
        &model,
        &mut vs,
        &TrainData {
            train: &train_set,
            test: &test_set,
        },
        &quiet,
        off.path(),
        Control {
            resume: false,
            stop: &AtomicBool::new(false),
            allow_changes: false,
        },
    )
    .unwrap();
    assert!(elbo_board::event_files(off.path()).is_empty());
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
    cfg.cadence.checkpoint_every = 2;
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
    let before = eval::evaluate(&model, &test, None, 200).unwrap().elbo;
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
    let after = eval::evaluate(&model, &test, None, 200).unwrap().elbo;
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

/// A test split smaller than the picture grid (5 images) loses nothing: the checkpoint is
/// written, and the reconstructions come in one row of 5.
#[test]
fn a_tiny_test_split_still_gives_pictures_and_a_checkpoint() {
    let _generator = exclusive();
    let (train_set, test_set) = subset(64, 5);
    let dir = tempfile::tempdir().unwrap();
    let (_vs, report) = run(2, dir.path(), false, &train_set, &test_set);
    assert!(report.checkpoint.exists());
    let reconstructions = dir.path().join("samples/reconstructions-epoch-001.png");
    assert!(reconstructions.exists());
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&reconstructions).unwrap(),
    ));
    let info = decoder.read_info().unwrap().info().clone();
    // Two rows (inputs, reconstructions) of five 28-pixel images.
    assert!(info.width > info.height, "{}x{}", info.width, info.height);
}

/// With a learning rate of 1e10 the weights overflow: the run stops with an error that
/// names a checkpoint whose every tensor is finite, or none, never a damaged one.
#[test]
fn a_diverging_run_never_checkpoints_a_non_finite_state() {
    let _generator = exclusive();
    let (train_set, test_set) = subset(64, 8);
    let dir = tempfile::tempdir().unwrap();
    let (mut vs, model) = vae(5);
    let settings = TrainConfig {
        lr: 1e10,
        cadence: train::Cadence {
            checkpoint_every: 1,
            ..train::Cadence::default()
        },
        ..config(50, 5)
    };
    let err = fit(
        &model,
        &mut vs,
        &TrainData {
            train: &train_set,
            test: &test_set,
        },
        &settings,
        dir.path(),
        Control {
            resume: false,
            stop: &AtomicBool::new(false),
            allow_changes: false,
        },
    )
    .expect_err("the run diverges");
    let named = match &err {
        elbo_models::Error::NonFiniteLoss {
            last_checkpoint, ..
        }
        | elbo_models::Error::NonFiniteState {
            last_checkpoint, ..
        } => last_checkpoint.clone(),
        other => panic!("expected a non-finite stop, found {other}"),
    };
    for json in checkpoint::list(&dir.path().join("checkpoints")).unwrap() {
        let loaded = checkpoint::load(&json).unwrap();
        for (name, t) in &loaded.tensors {
            assert_eq!(t.isfinite().all().int64_value(&[]), 1, "{name} in {json:?}");
        }
    }
    if let Some(named) = named {
        assert!(named.exists(), "{err}");
    }
}

/// Resuming with another learning rate or batch size is refused, naming each change;
/// with `allow_changes` it goes on and `metrics.jsonl` records the change.
#[test]
fn resume_with_changed_options_is_refused_unless_allowed() {
    let _generator = exclusive();
    let (train_set, test_set) = subset(64, 8);
    let dir = tempfile::tempdir().unwrap();
    run(4, dir.path(), false, &train_set, &test_set);
    let data = TrainData {
        train: &train_set,
        test: &test_set,
    };
    let changed = TrainConfig {
        lr: 0.01,
        batch_size: 16,
        ..config(8, 5)
    };
    let attempt = |allow_changes| {
        let (mut vs, model) = vae(5);
        fit(
            &model,
            &mut vs,
            &data,
            &changed,
            dir.path(),
            Control {
                resume: true,
                stop: &AtomicBool::new(false),
                allow_changes,
            },
        )
    };
    let err = attempt(false).err().unwrap().to_string();
    assert!(err.contains("batch_size was 32, now 16"), "{err}");
    assert!(err.contains("lr was 0.001, now 0.01"), "{err}");
    assert!(err.contains("--allow-changes"), "{err}");
    let report = attempt(true).unwrap();
    assert_eq!(report.steps_taken, 4);
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let resume_line = metrics
        .lines()
        .find(|l| l.contains("\"kind\":\"resume\""))
        .expect("a resume line");
    assert!(resume_line.contains("\"lr\":[0.001,0.01]"), "{resume_line}");

    // Resuming with fewer steps than the run has taken: nothing to train, said so.
    let (mut vs, model) = vae(5);
    let fewer = fit(
        &model,
        &mut vs,
        &data,
        &config(3, 5),
        dir.path(),
        Control {
            resume: true,
            stop: &AtomicBool::new(false),
            allow_changes: true,
        },
    );
    let err = fewer.err().unwrap().to_string();
    assert!(
        err.contains("is at step 8, past the 3 steps this run asks for: nothing to train"),
        "{err}"
    );
}

/// A run killed before its first checkpoint leaves `config.json` and `metrics.jsonl`
/// behind; running again (with or without --resume) starts afresh instead of appending
/// to them, so no step is logged twice.
#[test]
fn a_folder_without_a_checkpoint_restarts_cleanly() {
    let _generator = exclusive();
    let (train_set, test_set) = subset(64, 8);
    for resume in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            "{\"kind\":\"step\",\"step\":5,\"epoch\":0,\"loss\":1.0}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        run(6, dir.path(), resume, &train_set, &test_set);
        let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> = metrics
            .lines()
            .filter(|l| l.contains("\"kind\":\"step\""))
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        // Epochs of 2 steps, a line every 5 steps and at each epoch's end; the stale line
        // (step 5, loss 1.0) is gone.
        assert_eq!(steps, [2, 4, 5, 6], "resume {resume}: {metrics}");
        assert!(!metrics.contains("\"loss\":1.0}"), "{metrics}");
    }
}
