//! The DDPM end to end: the presets' parameter counts (Ho et al.'s 35.7 M for CIFAR-10),
//! a short learning run on the bundled MNIST sample, resume through checkpoints, the full
//! bound through `elbo eval`'s code, and both samplers.

use std::sync::atomic::AtomicBool;

use elbo_models::fit::{self, TrainData};
use elbo_models::models::ddpm::{
    Ddpm, DdpmConfig, DdpmPreset, Guided, LossKind, Objective, VarianceKind, drop_labels,
};
use elbo_models::models::{ElboModel, ModelConfig, SteppedSampling, draw_samples, trajectory};
use elbo_models::sample::{
    self as sample, Classes, ClipX0, Denoiser, Guidance, NoiseProcess, SamplerSpec, SamplingOptions,
};
use elbo_models::train::{self, Control, RunDir, TrainConfig};
use elbo_models::{data, eval, session};
use tch::{Device, nn::VarStore};

use crate::common::{exclusive, subset};

/// The README's preset table and `benches/reference/ddpm_unet.py`'s PARAMS.
const DDPM_MNIST_PARAMETERS: i64 = 1_623_169;

fn parameters(vs: &VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

#[test]
fn preset_parameter_counts() {
    // Building draws initial weights from libtorch's global generator.
    let _guard = exclusive();
    let vs = VarStore::new(Device::Cpu);
    Ddpm::new(
        &vs.root(),
        DdpmConfig::preset(DdpmPreset::Mnist, [1, 28, 28]).unwrap(),
    )
    .unwrap();
    assert_eq!(parameters(&vs), DDPM_MNIST_PARAMETERS);
    let vs = VarStore::new(Device::Cpu);
    Ddpm::new(
        &vs.root(),
        DdpmConfig::preset(DdpmPreset::Cifar10, [3, 32, 32]).unwrap(),
    )
    .unwrap();
    let count = parameters(&vs);
    // Ho et al. (2020), table 1 / appendix B: 35.7 million parameters.
    assert!(
        (count - 35_700_000).abs() <= 50_000,
        "ddpm-cifar10 has {count} parameters"
    );
    let err = "ddpm-imagenet"
        .parse::<DdpmPreset>()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected one of ddpm-mnist, ddpm-cifar10, ddpm-64"),
        "{err}"
    );
    // improved DDPM's 64x64 UNet, with fixed variances: its count, stated in the
    // preset's documentation and the README.
    let vs = VarStore::new(Device::Cpu);
    Ddpm::new(
        &vs.root(),
        DdpmConfig::preset(DdpmPreset::Ddpm64, [3, 64, 64]).unwrap(),
    )
    .unwrap();
    assert_eq!(parameters(&vs), 115_938_691);
    let err = DdpmConfig::preset(DdpmPreset::Mnist, [1, 28, 30])
        .unwrap_err()
        .to_string();
    assert!(err.contains("square images, found 28x30"), "{err}");
}

/// A small DDPM for fast tests: 8 base channels, two levels, T = 100.
fn tiny_model(vs: &VarStore, objective: Objective, loss: LossKind) -> Ddpm {
    // The epoch-end sample grids with 5 DDIM steps instead of 50.
    Ddpm::new(&vs.root(), tiny(objective, loss))
        .unwrap()
        .with_sampling(ddim(5))
        .unwrap()
}

fn ddim(steps: usize) -> SamplingOptions {
    SamplingOptions {
        sampler: format!("ddim-{steps}").parse().unwrap(),
        clip_x0: elbo_models::sample::ClipX0::Static,
        guidance: None,
    }
}

fn tiny(objective: Objective, loss: LossKind) -> DdpmConfig {
    let mut config = crate::common::tiny_ddpm();
    config.objective = objective;
    config.loss = loss;
    config
}

fn quick_config(steps: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 32,
        lr: 2e-3,
        warmup_steps: 5.min(steps),
        clip_grad_norm: Some(1.0),
        ema_decay: Some(0.9),
        cadence: train::Cadence {
            eval_examples: 16,
            checkpoint_every: 20,
            log_every: 5,
            ..train::Cadence::default()
        },
        ..TrainConfig::default()
    }
}

fn losses(dir: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "step")
        .filter_map(|v| v["l_simple"].as_f64())
        .collect()
}

/// Learning: 60 steps of 32 images take L_simple from about 1 (a zero-initialised output
/// layer predicts eps = 0, whose squared error is E[eps^2] = 1) to below 0.5.
#[test]
fn l_simple_falls_in_a_short_run_and_resume_is_exact() {
    let _guard = exclusive();
    let (train_set, test_set) = subset(512, 64);
    let data = TrainData {
        train: &train_set,
        test: &test_set,
    };
    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let control = |resume| Control {
        resume,
        stop: &stop,
        allow_changes: false,
    };
    let mut vs = train::var_store(0, Device::Cpu);
    let model = tiny_model(&vs, Objective::Eps, LossKind::Simple);
    let config = quick_config(60);
    fit::train(
        &model,
        &mut vs,
        &data,
        &config,
        &RunDir::new(dir.path()),
        control(false),
        &mut (),
    )
    .unwrap();
    let curve = losses(dir.path());
    assert!(curve.len() >= 10, "{curve:?}");
    // Noise of one batch of 32 at a random t: the first logged loss (step 5) is ~1, the
    // mean of the last three logged below 0.5 (measured ~0.2; unlearned stays ~1).
    assert!(curve[0] > 0.7, "{curve:?}");
    let tail = curve[curve.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(tail < 0.5, "L_simple did not fall: {curve:?}");

    // Resume: 40 steps, then 20 more from the step-40 checkpoint, equals the 60-step run.
    let dir2 = tempfile::tempdir().unwrap();
    let mut vs2 = train::var_store(0, Device::Cpu);
    let model2 = tiny_model(&vs2, Objective::Eps, LossKind::Simple);
    fit::train(
        &model2,
        &mut vs2,
        &data,
        &quick_config(40),
        &RunDir::new(dir2.path()),
        control(false),
        &mut (),
    )
    .unwrap();
    let mut vs3 = train::var_store(0, Device::Cpu);
    let model3 = tiny_model(&vs3, Objective::Eps, LossKind::Simple);
    fit::train(
        &model3,
        &mut vs3,
        &data,
        &config,
        &RunDir::new(dir2.path()),
        control(true),
        &mut (),
    )
    .unwrap();
    let a = vs.variables();
    for (name, b) in vs3.variables() {
        assert!(a[&name].equal(&b), "{name} differs after resume");
    }

    // The run folder restores as a DDPM, and `elbo eval`'s code gives the full bound
    // term by term: L_T, the grouped denoising terms, L_0.
    let restored = session::restore(dir.path(), Device::Cpu, true).unwrap();
    assert_eq!(restored.meta.model, "ddpm");
    // One importance sample costs T network calls: no IWAE bound unless asked.
    assert!(restored.model.capabilities().exact_bound.is_some());
    let x =
        data::fixed_tensor(&test_set, restored.model.likelihood(), Some(4), Device::Cpu).unwrap();
    let report = eval::evaluate(restored.model.as_ref(), &x, None, 4).unwrap();
    let names: Vec<&str> = report.terms.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "reconstruction",
            "prior_matching",
            "denoising_matching t=2..10",
            "denoising_matching t=11..100",
        ]
    );
    let sum: f64 = report.terms[0].1 - report.terms[1..4].iter().map(|(_, v)| v).sum::<f64>();
    assert!((sum - report.elbo).abs() < 1e-3 * report.elbo.abs());
    // A trained model's bound is far better than 8 bits/dim (a uniform 8-bit coder)
    // and every KL term is non-negative.
    let bpd = report.bits_per_dim(report.elbo);
    assert!(bpd > 0.0 && bpd < 8.0, "{bpd} bits/dim");
    assert!(
        report.terms[1..4].iter().all(|(_, v)| *v >= 0.0),
        "{:?}",
        report.terms
    );
}

/// Other objectives, the bound as the loss, and learned variances (improved DDPM's
/// hybrid loss, and the bound) train; a learned-variance model's bound and respaced
/// ancestral sampling run.
#[test]
fn other_objectives_and_the_vlb_loss_train() {
    let _guard = exclusive();
    let (train_set, test_set) = subset(256, 32);
    let data = TrainData {
        train: &train_set,
        test: &test_set,
    };
    let stop = AtomicBool::new(false);
    for (objective, loss) in [
        (Objective::X0, LossKind::Simple),
        (Objective::V, LossKind::Simple),
        (Objective::Eps, LossKind::Vlb),
        (Objective::Eps, LossKind::Hybrid),
        (Objective::V, LossKind::Vlb),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut vs = train::var_store(1, Device::Cpu);
        let learned =
            loss == LossKind::Hybrid || (objective, loss) == (Objective::V, LossKind::Vlb);
        let config = tiny(objective, loss).with_variance(if learned {
            VarianceKind::LearnedRange
        } else {
            VarianceKind::FixedSmall
        });
        let model = Ddpm::new(&vs.root(), config)
            .unwrap()
            .with_sampling(ddim(5))
            .unwrap();
        let report = fit::train(
            &model,
            &mut vs,
            &data,
            &quick_config(10),
            &RunDir::new(dir.path()),
            Control {
                resume: false,
                stop: &stop,
                allow_changes: false,
            },
            &mut (),
        )
        .unwrap();
        assert_eq!(report.steps_taken, 10, "{objective:?} {loss:?}");
        let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let keys: &[&str] = match loss {
            LossKind::Simple => &["l_simple"],
            LossKind::Vlb => &["vlb_term_per_dim"],
            LossKind::Hybrid => &["l_simple", "vlb_term_per_dim"],
        };
        for key in keys {
            assert!(metrics.contains(key), "{objective:?} {loss:?}: {metrics}");
        }
        if learned {
            // The bound and the samplers with the learned variance: finite.
            let x = tch::Tensor::rand([2, 1, 28, 28], (tch::Kind::Float, Device::Cpu)) * 2.0 - 1.0;
            let terms = model.elbo_terms(&x);
            let elbo = terms.elbo().double_value(&[0]);
            assert!(elbo.is_finite(), "{objective:?} {loss:?}: {elbo}");
            for sampler in ["ancestral-5", "ancestral-4-karras"] {
                let options = SamplingOptions::clipped(sampler.parse().unwrap());
                let (x, _) = model.sample_with(2, &options, 0).unwrap();
                assert_eq!(x.isfinite().all().int64_value(&[]), 1, "{sampler}");
            }
        }
    }
}

#[test]
fn bf16_autocast_is_refused_on_the_cpu() {
    let _guard = exclusive();
    let (train_set, test_set) = subset(32, 8);
    let dir = tempfile::tempdir().unwrap();
    let mut vs = train::var_store(0, Device::Cpu);
    let model = tiny_model(&vs, Objective::Eps, LossKind::Simple);
    let config = TrainConfig {
        autocast_bf16: true,
        ..quick_config(1)
    };
    let stop = AtomicBool::new(false);
    let err = fit::train(
        &model,
        &mut vs,
        &TrainData {
            train: &train_set,
            test: &test_set,
        },
        &config,
        &RunDir::new(dir.path()),
        Control {
            resume: false,
            stop: &stop,
            allow_changes: false,
        },
        &mut (),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("bf16 autocast runs on CUDA only"), "{err}");
    assert!(!dir.path().join("checkpoints").exists());
}

#[test]
fn samplers_give_images_in_range_and_a_trajectory() {
    let _guard = exclusive();
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let model = tiny_model(&vs, Objective::Eps, LossKind::Simple);
    for sampler in [
        "ancestral",
        "ddim-10",
        "ddim-10-eta=1-quadratic",
        "dpm++2m-6",
        "dpm++3m-6-karras",
        "dpm++1-4-logsnr",
        "unipc-6",
    ] {
        let options = SamplingOptions {
            sampler: sampler.parse().unwrap(),
            clip_x0: elbo_models::sample::ClipX0::Static,
            guidance: None,
        };
        let x = tch::no_grad(|| draw_samples(&model, 3, Some(&options))).unwrap();
        assert_eq!(x.size(), [3, 1, 28, 28], "{sampler}");
        let (lo, hi) = (x.min().double_value(&[]), x.max().double_value(&[]));
        assert!(
            (-1.0..=1.0).contains(&lo) && (-1.0..=1.0).contains(&hi),
            "{sampler}"
        );
    }
    // DDIM with eta = 0 is deterministic given x_T: the same seed twice, same images.
    let model = model
        .with_sampling(SamplingOptions {
            sampler: SamplerSpec::default(),
            clip_x0: elbo_models::sample::ClipX0::Static,
            guidance: None,
        })
        .unwrap();
    tch::manual_seed(5);
    let a = tch::no_grad(|| model.sample(2)).unwrap();
    tch::manual_seed(5);
    let b = tch::no_grad(|| model.sample(2)).unwrap();
    assert!(a.equal(&b));
    let strip = trajectory(&model, &model.default_sampling(), 2, 5).unwrap();
    assert_eq!(strip.size(), [10, 1, 28, 28]);
    let err = model.with_sampling(ddim(500)).err().unwrap().to_string();
    assert!(err.contains("between 1 and T = 100"), "{err}");
    assert!(strip.isfinite().all().int64_value(&[]) == 1);
}

/// A class-conditional tiny DDPM with every weight redrawn (the zero-initialised output
/// convolution would otherwise make its output independent of the label).
fn tiny_conditional(vs: &VarStore, cond_drop: f64) -> Ddpm {
    let config = crate::common::tiny_ddpm()
        .conditional(10, cond_drop)
        .unwrap();
    let model = Ddpm::new(&vs.root(), config).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            let fresh = v.randn_like() * 0.2;
            v.copy_(&fresh);
        }
    });
    model
}

fn guided(classes: Classes, scale: f64) -> SamplingOptions {
    SamplingOptions {
        sampler: "ddim-4".parse().unwrap(),
        clip_x0: ClipX0::Static,
        guidance: Some(Guidance { classes, scale }),
    }
}

fn max_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The network as a test sees it: `labels` given explicitly, whatever the sampler asks.
struct Labelled<'a> {
    model: &'a Ddpm,
    label: i64,
}

impl Denoiser for Labelled<'_> {
    fn process(&self) -> &dyn NoiseProcess {
        Denoiser::process(self.model)
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn predict(&self, x_t: &tch::Tensor, t: usize, clip_x0: ClipX0) -> (tch::Tensor, tch::Tensor) {
        let n = x_t.size()[0];
        let t = tch::Tensor::full([n], t as i64, (tch::Kind::Int64, Device::Cpu));
        let labels = tch::Tensor::full([n], self.label, (tch::Kind::Int64, Device::Cpu));
        let output = self
            .model
            .unet()
            .forward_labelled(x_t, &t, Some(&labels), false);
        self.model
            .diffusion()
            .predictions(&output, x_t, &t, clip_x0)
    }
    fn ancestral_step(
        &self,
        x_t: &tch::Tensor,
        t: usize,
        prev: usize,
        clip_x0: ClipX0,
    ) -> elbo_models::Result<(tch::Tensor, tch::Tensor)> {
        let n = x_t.size()[0];
        let steps = tch::Tensor::full([n], t as i64, (tch::Kind::Int64, Device::Cpu));
        let labels = tch::Tensor::full([n], self.label, (tch::Kind::Int64, Device::Cpu));
        let output = self
            .model
            .unet()
            .forward_labelled(x_t, &steps, Some(&labels), false);
        self.model
            .diffusion()
            .ancestral_step(&output, x_t, t, prev, clip_x0)
    }
}

/// Classifier-free guidance: both predictions from one call on the doubled batch equal
/// the two separate calls; w = 0 is the conditional network; w = 2 is 3 cond - 2 uncond;
/// and the label changes the output (so none of this holds by accident).
#[test]
fn guidance_combines_the_conditional_and_the_null_label_from_one_call() {
    let _guard = exclusive();
    tch::manual_seed(1);
    let vs = VarStore::new(Device::Cpu);
    let model = tiny_conditional(&vs, 0.1);
    let x = tch::Tensor::randn([4, 1, 28, 28], (tch::Kind::Float, Device::Cpu));
    let t = tch::Tensor::from_slice(&[1i64, 30, 60, 100]);
    let three = tch::Tensor::full([4], 3, (tch::Kind::Int64, Device::Cpu));
    tch::no_grad(|| {
        let unet = model.unet();
        let cond = unet.forward_labelled(&x, &t, Some(&three), false);
        let uncond = unet.forward(&x, &t, false);
        let null = tch::Tensor::full([4], 10, (tch::Kind::Int64, Device::Cpu));
        // The null-label path: no labels is the null label, exactly.
        assert!(uncond.equal(&unet.forward_labelled(&x, &t, Some(&null), false)));
        assert!(max_diff(&cond, &uncond) > 1e-2, "the label does not matter");
        let at = |w: f64| {
            Guided::new(
                &model,
                &Guidance {
                    classes: Classes::One(3),
                    scale: w,
                },
                4,
            )
            .unwrap()
        };
        let (c, u) = at(2.0).both(&x, &t);
        // Outputs are O(1) in f32; a batch of 8 instead of 4 may change the order of
        // the convolutions' sums, nothing more: 1e-5.
        assert!(max_diff(&c, &cond) < 1e-5 && max_diff(&u, &uncond) < 1e-5);
        assert!(at(0.0).output(&x, &t).equal(&cond));
        let expected = &cond * 3.0 - &uncond * 2.0;
        assert!(max_diff(&at(2.0).output(&x, &t), &expected) < 1e-4);
    });
}

/// Sampling: guidance w = 0 is the conditional model's own sample (the same draws
/// through a test-side denoiser that hands the network the label), an unguided draw of
/// a conditional model is its null label's, w > 0 changes the samples, and `all` draws
/// the classes in turn.
#[test]
fn guided_samples_follow_the_label_and_w_0_is_the_conditional_model() {
    let _guard = exclusive();
    let vs = VarStore::new(Device::Cpu);
    let model = tiny_conditional(&vs, 0.1);
    let draw = |options: &SamplingOptions, n: i64, seed: i64| {
        tch::manual_seed(seed);
        tch::no_grad(|| model.sample_with(n, options, 0)).unwrap().0
    };
    let by_hand = |label: i64, n: i64, seed: i64| {
        tch::manual_seed(seed);
        let options = SamplingOptions {
            guidance: None,
            ..guided(Classes::All, 0.0)
        };
        let denoiser = Labelled {
            model: &model,
            label,
        };
        tch::no_grad(|| sample::sample(&denoiser, &[n, 1, 28, 28], &options, 0))
            .unwrap()
            .0
    };
    let w0 = draw(&guided(Classes::One(3), 0.0), 3, 7);
    assert!(w0.equal(&by_hand(3, 3, 7)));
    let unguided = draw(
        &SamplingOptions {
            guidance: None,
            ..guided(Classes::All, 0.0)
        },
        3,
        7,
    );
    assert!(unguided.equal(&by_hand(10, 3, 7)));
    assert!(max_diff(&w0, &unguided) > 1e-3);
    let w2 = draw(&guided(Classes::One(3), 2.0), 3, 7);
    assert!(max_diff(&w0, &w2) > 1e-3);
    // `all`: n / 10 of each class, in class order, as if drawn class by class.
    let all = draw(&guided(Classes::All, 1.0), 20, 9);
    tch::manual_seed(9);
    let parts: Vec<_> = (0..10)
        .map(|k| {
            tch::no_grad(|| model.sample_with(2, &guided(Classes::One(k), 1.0), 0))
                .unwrap()
                .0
        })
        .collect();
    assert!(all.equal(&tch::Tensor::cat(&parts, 0)));
}

/// Samples that overflow (a guidance scale of 1e300 is infinite in float32, and gives
/// inf - inf) are an error naming the sampler and the scale, never a grid of black
/// pixels.
#[test]
fn samples_that_are_not_finite_are_an_error_not_a_black_grid() {
    let _guard = exclusive();
    let vs = VarStore::new(Device::Cpu);
    let model = tiny_conditional(&vs, 0.1);
    tch::manual_seed(3);
    let err = tch::no_grad(|| model.sample_with(2, &guided(Classes::One(3), 1e300), 0))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("not finite") && err.contains("guidance scale 1e300"),
        "{err}"
    );
    tch::manual_seed(3);
    assert!(tch::no_grad(|| model.sample_with(2, &guided(Classes::One(3), 2.0), 0)).is_ok());
}

/// What guidance refuses, each with what it expected and found.
#[test]
fn guidance_errors_say_what_was_expected() {
    let _guard = exclusive();
    let vs = VarStore::new(Device::Cpu);
    let conditional = tiny_conditional(&vs, 0.1);
    let vs0 = VarStore::new(Device::Cpu);
    let undropped = tiny_conditional(&vs0, 0.0);
    let vs1 = VarStore::new(Device::Cpu);
    let unconditional = Ddpm::new(&vs1.root(), crate::common::tiny_ddpm()).unwrap();
    let err = |model: &Ddpm, options: SamplingOptions, n: i64| {
        tch::no_grad(|| model.sample_with(n, &options, 0))
            .err()
            .unwrap()
            .to_string()
    };
    for (model, options, n, expected) in [
        (
            &unconditional,
            guided(Classes::One(1), 0.0),
            2,
            "found an unconditional one",
        ),
        (
            &conditional,
            guided(Classes::One(10), 0.0),
            2,
            "a class between 0 and 9 (the model has 10), found 10",
        ),
        (
            &conditional,
            guided(Classes::One(1), -1.0),
            2,
            "finite w >= 0, found -1",
        ),
        (
            &conditional,
            guided(Classes::One(1), f64::NAN),
            2,
            "found NaN",
        ),
        (&undropped, guided(Classes::One(1), 1.0), 2, "--cond-drop 0"),
        (
            &conditional,
            guided(Classes::All, 1.0),
            7,
            "multiple of 10, found 7",
        ),
        (
            &conditional,
            SamplingOptions {
                clip_x0: ClipX0::Dynamic { percentile: 1.5 },
                ..guided(Classes::One(1), 1.0)
            },
            2,
            "percentile must be in (0, 1], found 1.5",
        ),
    ] {
        let message = err(model, options, n);
        assert!(message.contains(expected), "{message}");
    }
    // w = 0 needs no null label.
    assert!(tch::no_grad(|| undropped.sample_with(2, &guided(Classes::One(1), 0.0), 0)).is_ok());
    assert!(
        DdpmConfig {
            cond_drop: 0.1,
            ..crate::common::tiny_ddpm()
        }
        .validate()
        .unwrap_err()
        .to_string()
        .contains("needs a class-conditional network")
    );
}

/// Label dropout replaces each label by the null label with probability p and leaves
/// the others; p = 0 draws nothing.
#[test]
fn label_dropout_replaces_a_fraction_p_with_the_null_label() {
    let _guard = exclusive();
    tch::manual_seed(3);
    let n = 100_000i64;
    let labels = tch::Tensor::arange(n, (tch::Kind::Int64, Device::Cpu)).remainder(10);
    let dropped = drop_labels(&labels, 10, 0.1);
    let nulls = dropped.eq(10).sum(tch::Kind::Int64).int64_value(&[]) as f64 / n as f64;
    // Binomial: sd sqrt(p (1 - p) / n) = 0.00095; 4 sd.
    assert!(
        (nulls - 0.1).abs() < 4.0 * (0.1f64 * 0.9 / n as f64).sqrt(),
        "{nulls}"
    );
    let kept = dropped.ne(10);
    assert!(
        dropped
            .masked_select(&kept)
            .equal(&labels.masked_select(&kept))
    );
    tch::manual_seed(4);
    assert!(drop_labels(&labels, 10, 0.0).equal(&labels));
    let after = tch::Tensor::rand([1], (tch::Kind::Float, Device::Cpu));
    tch::manual_seed(4);
    assert!(after.equal(&tch::Tensor::rand([1], (tch::Kind::Float, Device::Cpu))));
}

/// An unconditional configuration's JSON has no trace of conditioning (its checkpoints
/// are those of before); a conditional one records both fields.
#[test]
fn unconditional_configs_are_unchanged_and_conditional_ones_record_their_classes() {
    let json = ModelConfig::Ddpm(crate::common::tiny_ddpm())
        .to_json()
        .to_string();
    assert!(
        !json.contains("num_classes") && !json.contains("cond_drop"),
        "{json}"
    );
    let conditional = crate::common::tiny_ddpm().conditional(10, 0.1).unwrap();
    let json = ModelConfig::Ddpm(conditional.clone()).to_json().to_string();
    assert!(
        json.contains("\"num_classes\":10") && json.contains("\"cond_drop\":0.1"),
        "{json}"
    );
}

/// Importance-sampled timesteps (`--loss vlb --t-sampler loss-second-moment`): the
/// sampler warms up (T = 10: every t has 10 losses after a few steps of 32), its loss
/// history is in each checkpoint, and a resume from a warm checkpoint continues the
/// same run bit for bit (the history decides the draws). With `L_simple` it is refused.
#[test]
fn importance_sampled_timesteps_checkpoint_their_history_and_resume_exactly() {
    use elbo_models::models::ddpm::TimestepSampling;
    let _guard = exclusive();
    let (train_set, test_set) = subset(256, 32);
    let data = TrainData {
        train: &train_set,
        test: &test_set,
    };
    let stop = AtomicBool::new(false);
    let control = |resume| Control {
        resume,
        stop: &stop,
        allow_changes: false,
    };
    let config = || {
        let mut c = tiny(Objective::Eps, LossKind::Vlb);
        c.timesteps = 10;
        c.timestep_sampling = TimestepSampling::LossSecondMoment;
        c
    };
    let run = |dir: &std::path::Path, steps: u64, resume: bool| {
        let mut vs = train::var_store(0, Device::Cpu);
        let model = Ddpm::new(&vs.root(), config())
            .unwrap()
            .with_sampling(ddim(5))
            .unwrap();
        fit::train(
            &model,
            &mut vs,
            &data,
            &quick_config(steps),
            &RunDir::new(dir),
            control(resume),
            &mut (),
        )
        .unwrap();
        vs
    };
    let whole = tempfile::tempdir().unwrap();
    let unbroken = run(whole.path(), 16, false);
    let split = tempfile::tempdir().unwrap();
    run(split.path(), 8, false);
    // The step-8 checkpoint holds a warm history: 10 losses at each of the 10 steps.
    let newest = elbo_models::train::checkpoint::list(&split.path().join("checkpoints"))
        .unwrap()
        .pop()
        .unwrap();
    let loaded = elbo_models::train::checkpoint::load(&newest).unwrap();
    let counts = &loaded.tensors["step.timesteps.counts"];
    assert_eq!(Vec::<f64>::try_from(counts).unwrap(), vec![10.0; 10]);
    let resumed = run(split.path(), 16, true);
    let a = unbroken.variables();
    for (name, b) in resumed.variables() {
        assert!(a[&name].equal(&b), "{name} differs after resume");
    }
    let mut simple = config();
    simple.loss = LossKind::Simple;
    let err = simple.validate().unwrap_err().to_string();
    assert!(
        err.contains("need --loss vlb, found --loss simple"),
        "{err}"
    );
}
