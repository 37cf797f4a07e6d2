//! The feature classifier and the Fréchet distance built on it: learning on a subset of
//! the bundled MNIST sample, the checkpoint round trip, refusal of the wrong family both
//! ways, and the distance's two anchors (a set against itself, digits against noise).

use elbo_data::Splits;
use elbo_models::eval::classifier::{
    self, Classifier, ClassifierConfig, ClassifierTrainConfig, RestoredClassifier,
};
use elbo_models::eval::frechet::{self, FrechetConfig};
use elbo_models::models::vae::{Vae, VaeConfig, VaePreset};
use elbo_models::nn::likelihood::Likelihood;
use elbo_models::train::checkpoint::{self, CheckpointMeta};
use elbo_models::train::{self, RunDir};
use elbo_models::{data, session};
use tch::{Device, Kind, Tensor};

use crate::common::{exclusive, subset};

/// A narrow network (8 and 16 channels, 32 features) so the test takes seconds.
fn small_config() -> ClassifierConfig {
    ClassifierConfig {
        channels: [8, 16],
        features: 32,
        ..ClassifierConfig::new([1, 28, 28], 10)
    }
}

/// Trains the small classifier on 2,000 training images for 2 epochs into `dir`.
fn trained(dir: &std::path::Path, splits: &Splits) -> (classifier::ClassifierReport, Classifier) {
    let mut vs = train::var_store(3, Device::Cpu);
    let model = Classifier::new(&vs.root(), small_config()).unwrap();
    let config = ClassifierTrainConfig {
        epochs: 2,
        batch_size: 64,
        lr: 2e-3,
        seed: 3,
        ..ClassifierTrainConfig::default()
    };
    let mut epochs = Vec::new();
    let report = classifier::train_classifier(
        &model,
        &mut vs,
        &splits.train,
        &splits.test,
        &config,
        &RunDir::new(dir),
        &mut |e| epochs.push(e.clone()),
    )
    .unwrap();
    assert_eq!(epochs.len(), 2);
    assert_eq!(epochs[1], report.last);
    (report, model)
}

#[test]
fn learns_digits_round_trips_and_anchors_the_frechet_distance() {
    let _lock = exclusive();
    let (train_set, test_set) = subset(2000, 500);
    let splits = Splits {
        train: train_set,
        test: test_set,
    };
    let dir = tempfile::tempdir().unwrap();
    let (report, model) = trained(dir.path(), &splits);

    eprintln!("test accuracy {}", report.last.test_accuracy);
    // 2 epochs of 2,000 digits: chance is 0.1; measured 0.862 (seed 3).
    assert!(
        report.last.test_accuracy > 0.8,
        "test accuracy {}",
        report.last.test_accuracy
    );
    assert_eq!(report.test_examples, 500);
    assert_eq!(report.last.step, 2 * 2000_u64.div_ceil(64));
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    // One epoch line per epoch, each with the test accuracy (and step lines between).
    let epoch_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.contains("\"kind\":\"epoch\""))
        .collect();
    assert_eq!(epoch_lines.len(), 2, "{metrics}");
    assert!(
        epoch_lines.iter().all(|l| l.contains("test_accuracy")),
        "{metrics}"
    );
    assert!(dir.path().join("curves.png").exists());
    assert!(dir.path().join("config.json").exists());

    // The checkpoint brings back the same features.
    let RestoredClassifier {
        model: restored,
        meta,
        ..
    } = classifier::restore(dir.path(), Device::Cpu).unwrap();
    assert_eq!(meta.model, classifier::FAMILY);
    assert_eq!(restored.config(), &small_config());
    let all: Vec<usize> = (0..splits.test.len()).collect();
    let test_images = classifier::unit_images(&splits.test, &all, Device::Cpu).unwrap();
    let a = model.features(&test_images.narrow(0, 0, 50));
    let b = restored.features(&test_images.narrow(0, 0, 50));
    assert!(a.equal(&b));

    // A run folder is never overwritten.
    let mut vs = train::var_store(3, Device::Cpu);
    let again = Classifier::new(&vs.root(), small_config()).unwrap();
    let err = classifier::train_classifier(
        &again,
        &mut vs,
        &splits.train,
        &splits.test,
        &ClassifierTrainConfig::default(),
        &RunDir::new(dir.path()),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("already holds a run"), "{err}");

    // The test set against itself: zero up to rounding of f32 features.
    let config = FrechetConfig {
        samples: 500,
        batch: 250,
        seed: 1,
        sampling: None,
    };
    let itself =
        frechet::frechet_of_images(&model, &test_images, &splits, &config, Device::Cpu).unwrap();
    assert!(itself.distance.abs() < 1e-6, "{}", itself.distance);
    assert_eq!(
        (itself.samples, itself.test_images, itself.features),
        (500, 500, 32)
    );
    // 500 other real digits: the floor, small but not zero.
    assert!(itself.train_floor > 0.0);

    // Uniform noise images: far away, many times the floor.
    tch::manual_seed(0);
    let noise = Tensor::rand([500, 1, 28, 28], (Kind::Float, Device::Cpu));
    let far = frechet::frechet_of_images(&model, &noise, &splits, &config, Device::Cpu).unwrap();
    eprintln!(
        "self {} floor {} noise {}",
        itself.distance, itself.train_floor, far.distance
    );
    assert!(
        far.distance > 20.0 * far.train_floor,
        "noise {} vs floor {}",
        far.distance,
        far.train_floor
    );
    assert_eq!(far.train_floor, itself.train_floor, "the floor is seeded");

    // A model's samples go through the same path: an untrained VAE draws blurry blobs,
    // far from digits.
    let vs = train::var_store(0, Device::Cpu);
    let vae = Vae::new(
        &vs.root(),
        VaeConfig::preset(VaePreset::Mlp, [1, 28, 28], Likelihood::Bernoulli).unwrap(),
    )
    .unwrap();
    let untrained = frechet::frechet_of_model(
        &vae,
        &model,
        &splits,
        &FrechetConfig {
            samples: 300,
            ..config
        },
        Device::Cpu,
    )
    .unwrap();
    eprintln!("untrained vae {untrained:?}");
    assert_eq!(untrained.samples, 300);
    assert!(
        untrained.distance > 5.0 * untrained.train_floor,
        "{untrained:?}"
    );
    let samples = frechet::unit_samples(&vae, 7, 3, 9, None).unwrap();
    assert_eq!(samples.size(), [7, 1, 28, 28]);
    assert!(
        samples.equal(&frechet::unit_samples(&vae, 7, 3, 9, None).unwrap()),
        "seeded"
    );
    // A VAE has one sampler: asking for another is refused, not ignored.
    let ddim = elbo_models::sample::SamplingOptions::default();
    let err = frechet::unit_samples(&vae, 7, 3, 9, Some(&ddim))
        .unwrap_err()
        .to_string();
    assert!(err.contains("a vae model has a single sampler"), "{err}");

    // A sweep over samplers: refused for the VAE; for a (small, untrained) DDPM one point
    // per sampler, at its network calls, grouped by family in the chart with the floor.
    let samplers: Vec<elbo_models::sample::SamplerSpec> = ["ddim-2", "ddim-3", "dpm++2m-2"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let small = FrechetConfig {
        samples: 20,
        batch: 10,
        ..config
    };
    let err = frechet::sweep(
        &vae,
        &model,
        &splits,
        &small,
        &samplers,
        Device::Cpu,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("samples in steps"), "{err}");
    let ddpm =
        elbo_models::models::ddpm::Ddpm::new(&(vs.root() / "ddpm"), crate::common::tiny_ddpm())
            .unwrap();
    // A grid with a sampler the model cannot run (more steps than its T) is refused
    // before the first point, naming the sampler.
    let too_long: Vec<elbo_models::sample::SamplerSpec> = ["ddim-2", "ddim-100000"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let mut seen = 0;
    let err = frechet::sweep(
        &ddpm,
        &model,
        &splits,
        &small,
        &too_long,
        Device::Cpu,
        &mut |_| seen += 1,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("the sweep's sampler ddim-100000") && err.contains("no point was computed"),
        "{err}"
    );
    assert_eq!(seen, 0);
    let (points, floor) = frechet::sweep(
        &ddpm,
        &model,
        &splits,
        &small,
        &samplers,
        Device::Cpu,
        &mut |_| seen += 1,
    )
    .unwrap();
    assert_eq!(seen, 3);
    let calls: Vec<usize> = points.iter().map(|p| p.network_calls).collect();
    assert_eq!(calls, [2, 3, 2]);
    assert!(
        points
            .iter()
            .all(|p| p.distance.is_finite() && p.distance > floor)
    );
    let figure = frechet::sweep_figure(&points, floor, "sweep");
    let names: Vec<&str> = figure.panels[0]
        .series
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["ddim", "dpm++2m", "floor (training images)"]);
    assert_eq!(figure.panels[0].series[0].points.len(), 2);
}

#[test]
fn each_restore_refuses_the_other_family() {
    let _lock = exclusive();
    let dir = tempfile::tempdir().unwrap();
    // A classifier checkpoint, untrained.
    let vs = train::var_store(0, Device::Cpu);
    let _model = Classifier::new(&vs.root(), small_config()).unwrap();
    let tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (format!("model.{n}"), t.detach()))
        .collect();
    let meta = |model: &str, config: serde_json::Value| CheckpointMeta {
        format: checkpoint::FORMAT,
        elbo_version: "test".into(),
        model: model.into(),
        model_config: config,
        train_config: serde_json::json!({}),
        step: 1,
        seed: 0,
        tensors: String::new(),
        tensors_sha256: None,
        world_size: None,
    };
    let classifier_dir = dir.path().join("classifier");
    checkpoint::save(
        &classifier_dir,
        meta("classifier", serde_json::to_value(small_config()).unwrap()),
        &tensors,
        1,
    )
    .unwrap();
    assert!(classifier::restore(&classifier_dir, Device::Cpu).is_ok());
    let err = session::restore(&classifier_dir, Device::Cpu, true)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("holds a classifier") && err.contains("expected a generative model"),
        "{err}"
    );

    // A VAE checkpoint where a classifier is expected.
    let vae_dir = dir.path().join("vae");
    let config = VaeConfig::preset(VaePreset::Mlp, [1, 28, 28], Likelihood::Bernoulli).unwrap();
    checkpoint::save(
        &vae_dir,
        meta("vae", serde_json::to_value(config).unwrap()),
        &[(
            "model.w".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        )],
        1,
    )
    .unwrap();
    let err = classifier::restore(&vae_dir, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("holds a vae model, expected a classifier"),
        "{err}"
    );

    // Images of another shape are refused by name.
    let model = classifier::restore(&classifier_dir, Device::Cpu)
        .unwrap()
        .model;
    let cifar_like = Tensor::zeros([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let err = frechet::feature_fit(&model, &cifar_like, 2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[1, 28, 28]") && err.contains("[3, 32, 32]"),
        "{err}"
    );
    // And the generated images in [-1, 1] of a discretized-Gaussian model map to [0, 1].
    let symmetric = Tensor::from_slice(&[-1.0f32, 0.0, 1.0]);
    let unit = data::to_unit_range(Likelihood::DiscretizedGaussian, &symmetric);
    assert_eq!(Vec::<f32>::try_from(unit).unwrap(), [0.0, 0.5, 1.0]);
}

/// `session::frechet_sweep` on a DDPM run folder: the chart and its JSON, and the same
/// in the run's TensorBoard (the chart as the image `sweep/frechet-sweep`, the points as
/// text, at the checkpoint's step).
#[test]
fn a_sweep_of_a_run_goes_into_its_tensorboard() {
    use elbo_board::proto::{Kind as BoardKind, What};
    let _lock = exclusive();
    let dir = tempfile::tempdir().unwrap();
    // An untrained small classifier and a tiny DDPM, each as a checkpoint.
    let meta = |model: &str, config: serde_json::Value, step| CheckpointMeta {
        format: checkpoint::FORMAT,
        elbo_version: "test".into(),
        model: model.into(),
        model_config: config,
        train_config: serde_json::json!({}),
        step,
        seed: 0,
        tensors: String::new(),
        tensors_sha256: None,
        world_size: None,
    };
    let named = |vs: &tch::nn::VarStore| -> Vec<(String, Tensor)> {
        vs.variables()
            .into_iter()
            .map(|(n, t)| (format!("model.{n}"), t.detach()))
            .collect()
    };
    let vs = train::var_store(0, Device::Cpu);
    Classifier::new(&vs.root(), small_config()).unwrap();
    let classifier_dir = dir.path().join("classifier");
    let config = serde_json::to_value(small_config()).unwrap();
    checkpoint::save(
        &classifier_dir,
        meta("classifier", config, 1),
        &named(&vs),
        1,
    )
    .unwrap();
    let vs = train::var_store(0, Device::Cpu);
    let ddpm_config = crate::common::tiny_ddpm();
    elbo_models::models::ddpm::Ddpm::new(&vs.root(), ddpm_config.clone()).unwrap();
    let run = RunDir::new(dir.path().join("ddpm"));
    let ddpm_meta = meta("ddpm", serde_json::to_value(&ddpm_config).unwrap(), 7);
    checkpoint::save(&run.checkpoints(), ddpm_meta.clone(), &named(&vs), 1).unwrap();
    checkpoint::write_run_config(&run.config(), &ddpm_meta).unwrap();
    let samplers: Vec<elbo_models::sample::SamplerSpec> = ["ddim-2", "ddim-3"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let config = FrechetConfig {
        samples: 20,
        batch: 10,
        ..FrechetConfig::default()
    };
    let (_, report) = session::frechet_sweep(
        &run.root,
        &classifier_dir,
        None,
        &config,
        &samplers,
        Device::Cpu,
        None,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(report.points.len(), 2);
    let png = std::fs::read(&report.plot).unwrap();
    let files = elbo_board::event_files(&run.root);
    assert_eq!(files.len(), 1);
    let mut found = (false, false);
    for event in elbo_board::read_events(&files[0]).unwrap() {
        let Some(What::Summary(summary)) = event.what else {
            continue;
        };
        assert_eq!(event.step, 7);
        for value in summary.value {
            assert_eq!(value.tag, "sweep/frechet-sweep");
            match value.kind {
                Some(BoardKind::Image(image)) => {
                    found.0 = image.encoded_image_string == png;
                }
                Some(BoardKind::Tensor(text)) => {
                    found.1 = String::from_utf8_lossy(&text.string_val[0]).contains("ddim-3");
                }
                _ => {}
            }
        }
    }
    assert_eq!(found, (true, true));
}
