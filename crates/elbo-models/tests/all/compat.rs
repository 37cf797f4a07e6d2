//! Checkpoints written before the redesign still load and resume. The fixture
//! `fixtures/format-1/vae-mlp-step-3.json` is a checkpoint's JSON written by elbo at
//! commit 49388fa (`elbo train vae --steps 3`), and `vae-mlp-step-3.tensors.txt` lists
//! the name, dtype and shape of every tensor of the safetensors file beside it (7.8 MB,
//! not kept). Today's code must read that JSON, write exactly those tensors, and restore,
//! evaluate and resume such a checkpoint.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use elbo_models::fit::{self, TrainData};
use elbo_models::models::ModelConfig;
use elbo_models::train::optim::Adam;
use elbo_models::train::{self, Control, RunDir, TrainConfig, checkpoint};
use elbo_models::{data, eval, session};
use tch::{Device, Tensor};

use crate::common::{exclusive, subset};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/format-1")
        .join(name)
}

#[test]
fn a_checkpoint_of_the_format_before_the_redesign_loads_and_resumes() {
    let _guard = exclusive();
    let json = std::fs::read_to_string(fixture("vae-mlp-step-3.json")).unwrap();
    let meta: checkpoint::CheckpointMeta = serde_json::from_str(&json).unwrap();
    assert_eq!((meta.format, meta.step, meta.model.as_str()), (1, 3, "vae"));
    let config = ModelConfig::from_record(&meta.model, &meta.model_config).unwrap();
    let train_config: TrainConfig = serde_json::from_value(meta.train_config.clone()).unwrap();
    assert_eq!(train_config.data, data::DataSpec::Bundled);
    assert_eq!((train_config.steps, train_config.batch_size), (3, 128));

    // The tensors today's code writes for that model are the old file's, name for name.
    let mut vs = train::var_store(meta.seed, Device::Cpu);
    let model = config.build(&vs.root()).unwrap();
    let adam = Adam::new(&vs, train_config.adam);
    let tensors = train::state_tensors(&vs, &adam, None);
    let mut written: Vec<String> = tensors
        .iter()
        .map(|(name, t)| format!("{name} {:?} {:?}", t.kind(), t.size()))
        .collect();
    written.sort();
    let expected: Vec<String> = std::fs::read_to_string(fixture("vae-mlp-step-3.tensors.txt"))
        .unwrap()
        .lines()
        .map(|line| line.replace(" F32 ", " Float "))
        .collect();
    assert_eq!(written, expected);

    // Such a checkpoint restores, evaluates and resumes.
    let run = tempfile::tempdir().unwrap();
    let folder = RunDir::new(run.path());
    std::fs::create_dir_all(folder.checkpoints()).unwrap();
    std::fs::write(folder.checkpoints().join("step-000000003.json"), &json).unwrap();
    Tensor::write_safetensors(
        &tensors,
        folder.checkpoints().join("step-000000003.safetensors"),
    )
    .unwrap();
    let restored = session::restore(run.path(), Device::Cpu, true).unwrap();
    assert_eq!(restored.config, config);
    assert_eq!(restored.trained_on(), data::DataSpec::Bundled);
    let (train_set, test_set) = subset(256, 16);
    let x = data::fixed_tensor(&test_set, model.likelihood(), None, Device::Cpu).unwrap();
    let report = eval::evaluate(restored.model.as_ref(), &x, None, 16).unwrap();
    assert!(
        report.elbo.is_finite() && report.elbo < 0.0,
        "{}",
        report.elbo
    );
    let resumed = TrainConfig {
        steps: 5,
        cadence: train::Cadence {
            eval_examples: 0,
            ..train::Cadence::default()
        },
        ..train_config
    };
    let report = fit::train(
        model.as_ref(),
        &mut vs,
        &TrainData {
            train: &train_set,
            test: &test_set,
        },
        &resumed,
        &folder,
        Control {
            resume: true,
            stop: &AtomicBool::new(false),
            allow_changes: false,
        },
        &mut (),
    )
    .unwrap();
    assert_eq!(report.steps_taken, 2);
}
