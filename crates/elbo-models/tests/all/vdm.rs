//! The variational diffusion model: its schedule (ends, monotonicity, derivative, the
//! variance-minimising gradient of its shape), its loss against the closed forms of the
//! Gaussian test bed with the optimal denoiser (continuous and T-step, within 4 standard
//! errors), its prior and decoder terms against elbo-math, and a short training run
//! (the bound falls, the schedule moves, resume is exact, evaluation and samplers work).

use std::sync::atomic::AtomicBool;

use elbo_math::testbed::gaussian_vdm::GaussianDataVdm;
use elbo_models::fit::{self, TrainData};
use elbo_models::models::draw_samples;
use elbo_models::models::vdm::{GammaKind, GammaNet, Vdm, VdmConfig, VdmPreset};
use elbo_models::sample::{NoiseProcess, SamplerSpec, SamplingOptions};
use elbo_models::train::{self, Control, RunDir, TrainConfig};
use elbo_models::{data, eval, session};
use tch::{Device, Kind, Tensor, nn::VarStore};

use crate::common::{exclusive, subset};

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// vdm-mnist with ddpm-mnist's tiny test network and a grid of 20 steps.
fn tiny(kind: GammaKind) -> VdmConfig {
    let mut config = VdmConfig::preset(VdmPreset::Mnist, [1, 28, 28]).unwrap();
    let small = crate::common::tiny_ddpm().unet;
    config.unet = elbo_models::models::vdm::UnetConfig {
        extra_inputs: config.unet.extra_inputs,
        ..small
    };
    config.gamma = kind;
    config.gamma_features = 64;
    config.sampling_steps = 20;
    config.validate().unwrap();
    config
}

fn mean_and_se(d: &[f64]) -> (f64, f64) {
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

#[test]
fn a_learned_schedule_runs_between_its_endpoints_and_increases() {
    let _guard = exclusive();
    tch::manual_seed(1);
    let vs = VarStore::new(Device::Cpu);
    let gamma = GammaNet::new(&vs.root(), GammaKind::Monotone, (-13.3, 5.0), 64, 50).unwrap();
    let t = Tensor::linspace(0.0, 1.0, 101, (Kind::Float, Device::Cpu));
    let at = gamma.at(&t);
    let g = values(&at.gamma);
    assert!(
        (g[0] + 13.3).abs() < 1e-4 && (g[100] - 5.0).abs() < 1e-4,
        "{g:?}"
    );
    assert!(g.windows(2).all(|w| w[1] > w[0]), "not increasing: {g:?}");
    // The derivative against central differences (h = 1e-3: error O(h^2 gamma''')).
    let h = 1e-3;
    let inner = Tensor::linspace(0.05, 0.95, 19, (Kind::Double, Device::Cpu));
    let up = values(&gamma.at(&(&inner + h).to_kind(Kind::Float)).gamma);
    let down = values(&gamma.at(&(&inner - h).to_kind(Kind::Float)).gamma);
    let dg = values(&gamma.at(&inner.to_kind(Kind::Float)).derivative);
    for i in 0..19 {
        let fd = (up[i] - down[i]) / (2.0 * h);
        // f32 gamma values of size ~10 carry 1e-6 absolute error, 5e-4 in fd.
        assert!(
            (fd - dg[i]).abs() < 1e-3 * dg[i].abs() + 5e-3,
            "{i}: {fd} vs {}",
            dg[i]
        );
    }
    // The same schedule on the samplers' grid of 50 steps.
    let schedule = gamma.discretized().unwrap();
    assert_eq!(NoiseProcess::timesteps(&gamma), 50);
    for i in [1, 25, 50] {
        let direct = NoiseProcess::log_snr(&gamma, i).unwrap();
        assert!((schedule.log_snr(i).unwrap() - direct).abs() < 1e-5 * direct.abs().max(1.0));
        let expected = elbo_math::vdm::alpha_squared(gamma.gamma_at_step(i));
        assert!((NoiseProcess::alpha_bar(&gamma, i).unwrap() - expected).abs() < 1e-12);
    }
    assert!(NoiseProcess::alpha_bar(&gamma, 51).is_err());
    let err = GammaNet::new(&vs.root(), GammaKind::Fixed, (5.0, -13.3), 8, 50)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("found 5 and -13.3"), "{err}");
}

/// The split: the loss's backward pass gives the endpoints their ordinary gradient and
/// the shape, through `shape_backward` with scale 2 L_i, the gradient of mean(L_i^2).
#[test]
fn the_shape_takes_the_gradient_of_the_second_moment() {
    let _guard = exclusive();
    tch::manual_seed(2);
    let vs = VarStore::new(Device::Cpu);
    let gamma = GammaNet::new(&vs.root(), GammaKind::Monotone, (-13.3, 5.0), 16, 50).unwrap();
    let t = Tensor::from_slice(&[0.1f32, 0.35, 0.6, 0.9]);
    let c = Tensor::from_slice(&[1.0f32, 0.5, 2.0, 0.25]);
    // Any differentiable per-example loss of gamma and gamma'.
    let per_example = |g: &Tensor, d: &Tensor| d * &c * 0.01 + (g * 0.1).sin();
    let grads = |vs: &VarStore| -> Vec<(String, Vec<f64>)> {
        let mut named: Vec<_> = vs
            .variables()
            .into_iter()
            .map(|(n, v)| (n, values(&v.grad())))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    };
    // Split: loss = mean(L), then the shape's correction.
    let at = gamma.at_split(&t);
    let l = per_example(&at.gamma, &at.derivative);
    l.mean(Kind::Float).backward();
    GammaNet::shape_backward(at.split.as_ref().unwrap(), &(&l * 2.0).detach());
    let split = grads(&vs);
    // Direct: the endpoints' gradient of mean(L), the shape's of mean(L^2).
    for (_, v) in vs.variables() {
        let _ = v.grad().zero_();
    }
    let at = gamma.at(&t);
    per_example(&at.gamma, &at.derivative)
        .mean(Kind::Float)
        .backward();
    let of_mean = grads(&vs);
    for (_, v) in vs.variables() {
        let _ = v.grad().zero_();
    }
    let at = gamma.at(&t);
    per_example(&at.gamma, &at.derivative)
        .square()
        .mean(Kind::Float)
        .backward();
    let of_square = grads(&vs);
    for ((name, got), ((_, mean), (_, square))) in split.iter().zip(of_mean.iter().zip(&of_square))
    {
        let want = if name == "min" || name == "max" {
            mean
        } else {
            square
        };
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() < 1e-5 * (1.0 + w.abs()),
                "{name}: {got:?} vs {want:?}"
            );
        }
        // The check has power: the two gradients differ for the shape's parameters.
        if name.starts_with("l") {
            let differ = mean.iter().zip(square).any(|(a, b)| (a - b).abs() > 1e-4);
            assert!(
                differ,
                "{name}: mean and square gradients agree by accident"
            );
        }
    }
}

/// Gaussian data N(0.3, 0.5^2) in 4 dimensions and the exact optimal denoiser: the
/// model's one-sample diffusion loss, averaged over 20,000 draws of (x, t, eps), equals
/// the closed form of each x within 4 standard errors (the SE from the draws' own
/// spread), for a fixed linear and an (untrained, bent) monotone schedule: the same
/// value, as the continuous-time bound depends on the endpoints only. In discrete time
/// (T = 8) it equals elbo-math's T-step sum of the exact eps errors.
#[test]
fn the_loss_with_the_optimal_denoiser_is_the_closed_form() {
    let _guard = exclusive();
    let (mu, s) = (0.3, 0.5);
    let bed = GaussianDataVdm::new(mu, s * s).unwrap();
    let n = 20_000;
    let optimal = |z: &Tensor, g: &Tensor| {
        let g = g.to_kind(Kind::Double).reshape([-1, 1, 1, 1]);
        let (a, v) = (1.0 / (s * s), (-&g).exp());
        let (alpha, sigma) = ((-&g).sigmoid().sqrt(), g.sigmoid().sqrt());
        let x_hat = (&v * z / &alpha + mu * a) / (&v + a);
        (z - alpha * x_hat) / sigma
    };
    for (kind, steps) in [
        (GammaKind::Fixed, None),
        (GammaKind::Monotone, None),
        (GammaKind::Fixed, Some(8)),
    ] {
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let mut config = tiny(kind);
        config.timesteps = steps;
        let model = Vdm::new(&vs.root(), config).unwrap();
        let x = Tensor::randn([n, 1, 2, 2], (Kind::Double, Device::Cpu)) * s + mu;
        let t = Tensor::rand([n], (Kind::Float, Device::Cpu));
        let eps = x.randn_like();
        let (loss, _) = tch::no_grad(|| model.diffusion_terms(&x, &t, &eps, &optimal, false));
        let (g0, g1) = model.schedule().endpoint_values();
        let xs = values(&x);
        let exact: Vec<f64> = xs
            .chunks(4)
            .map(|px| {
                px.iter()
                    .map(|&v| match steps {
                        None => bed.diffusion_loss(v, g0, g1),
                        Some(big_t) => {
                            let linear = elbo_math::vdm::LinearGamma::new(g0, g1).unwrap();
                            elbo_math::vdm::discrete_loss(&linear, big_t, &|t| {
                                bed.eps_error(v, elbo_math::vdm::GammaSchedule::gamma(&linear, t))
                            })
                            .unwrap()
                        }
                    })
                    .sum()
            })
            .collect();
        let d: Vec<f64> = values(&loss)
            .iter()
            .zip(&exact)
            .map(|(l, e)| l - e)
            .collect();
        let (mean, se) = mean_and_se(&d);
        let level = exact.iter().sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 4.0 * se,
            "{kind:?} {steps:?}: loss - closed form = {mean} +- {se} (closed form {level})"
        );
        // Power: the SE is a small fraction of the loss (~20 nats here).
        assert!(se < 0.02 * level, "{kind:?}: se {se} vs {level}");
    }
}

/// At T = 2^24 steps (the most a VDM takes) the T-step weight `T expm1(gamma(t_i) -
/// gamma(t_{i-1}))` of the learned schedule equals the continuous weight `gamma'(t)`
/// to the discretisation's O(1/T) (here a few 1e-7 relative, plus float32's rounding of
/// the result): the difference of two gammas is taken in float64. In float32 it was off
/// by tens of percent at this T (float32 resolves gamma near 10 to 1e-6, the step is
/// 1.1e-6), and at T = 1e8 the bound collapsed to 0.03 bits/dim.
#[test]
fn the_t_step_weights_hold_at_the_largest_t() {
    let _guard = exclusive();
    let weights = |steps: Option<usize>| {
        tch::manual_seed(5);
        let vs = VarStore::new(Device::Cpu);
        let mut config = tiny(GammaKind::Monotone);
        config.timesteps = steps;
        let model = Vdm::new(&vs.root(), config).unwrap();
        let x = Tensor::zeros([64, 1, 2, 2], (Kind::Float, Device::Cpu));
        let t = Tensor::linspace(0.01, 0.99, 64, (Kind::Float, Device::Cpu));
        let zero = |z: &Tensor, _: &Tensor| z.zeros_like();
        let (_, at) = tch::no_grad(|| model.diffusion_terms(&x, &t, &x, &zero, false));
        values(&at.derivative)
    };
    let limit = elbo_models::models::vdm::MAX_TIMESTEPS;
    let (continuous, discrete) = (weights(None), weights(Some(limit)));
    for (c, d) in continuous.iter().zip(&discrete) {
        assert!(
            (d - c).abs() < 1e-5 * c.abs(),
            "T-step {d} vs continuous {c}"
        );
    }
    let mut over = tiny(GammaKind::Monotone);
    over.timesteps = Some(limit + 1);
    let err = over.validate().unwrap_err().to_string();
    assert!(err.contains("at most 16777216 (2^24) steps"), "{err}");
}

/// The prior term is elbo-math's closed form; the decoder term is elbo-math's
/// discretized Gaussian at `z_0 / alpha_0` with scale `exp(gamma_0 / 2)` for the same
/// draw of eps.
#[test]
fn prior_and_decoder_terms_are_elbo_maths() {
    let _guard = exclusive();
    tch::manual_seed(4);
    let vs = VarStore::new(Device::Cpu);
    let model = Vdm::new(&vs.root(), tiny(GammaKind::LearnedEndpoints)).unwrap();
    let (g0, g1) = model.schedule().endpoint_values();
    let k: Vec<u8> = vec![0, 1, 37, 128, 200, 254, 255, 12];
    let x = Tensor::from_slice(
        &k.iter()
            .map(|&k| k as f64 * 2.0 / 255.0 - 1.0)
            .collect::<Vec<_>>(),
    )
    .to_kind(Kind::Float)
    .reshape([2, 1, 2, 2]);
    let bed = GaussianDataVdm::new(0.0, 1.0).unwrap();
    let prior = values(&model.prior_term(&x));
    for (e, px) in values(&x).chunks(4).enumerate() {
        let want: f64 = px.iter().map(|&v| bed.prior_loss(v, g1)).sum();
        assert!(
            (prior[e] - want).abs() < 1e-4 * want.abs().max(1e-3),
            "{prior:?} vs {want}"
        );
    }
    tch::manual_seed(5);
    let got = values(&model.reconstruction_term(&x));
    tch::manual_seed(5);
    let eps = values(&x.randn_like());
    let (a, sd) = (
        elbo_math::vdm::alpha_squared(g0).sqrt(),
        elbo_math::vdm::sigma_squared(g0).sqrt(),
    );
    for e in 0..2 {
        let want: f64 = (0..4)
            .map(|i| {
                let j = 4 * e + i;
                let xv = k[j] as f64 * 2.0 / 255.0 - 1.0;
                let mean = (a * xv + sd * eps[j]) / a;
                elbo_math::discretized::discretized_gaussian_log_prob(k[j], mean, 0.5 * g0)
            })
            .sum();
        assert!((got[e] - want).abs() < 1e-3, "{got:?} vs {want}");
    }
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
            eval_examples: 8,
            checkpoint_every: 15,
            log_every: 5,
            ..train::Cadence::default()
        },
        ..TrainConfig::default()
    }
}

/// 30 steps of a tiny monotone-schedule VDM on the bundled sample: the bound falls, the
/// schedule's endpoints and shape move, a resume from step 15 is bit-exact, the
/// evaluation reports the terms in time groups that add up to the bound, samplers give
/// images in range, and an IWAE bound is refused.
#[test]
fn a_short_run_learns_its_schedule_and_resumes_exactly() {
    let _guard = exclusive();
    let (train_set, test_set) = subset(256, 16);
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
    let run = |dir: &std::path::Path, steps: u64, resume: bool| {
        let mut vs = train::var_store(0, Device::Cpu);
        let model = Vdm::new(&vs.root(), tiny(GammaKind::Monotone)).unwrap();
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
    let initial = train::var_store(0, Device::Cpu);
    let _fresh = Vdm::new(&initial.root(), tiny(GammaKind::Monotone)).unwrap();
    let whole = tempfile::tempdir().unwrap();
    let unbroken = run(whole.path(), 30, false);
    let split = tempfile::tempdir().unwrap();
    run(split.path(), 15, false);
    let resumed = run(split.path(), 30, true);
    let a = unbroken.variables();
    for (name, b) in resumed.variables() {
        assert!(a[&name].equal(&b), "{name} differs after resume");
    }
    // Every part of the schedule was trained.
    let start = initial.variables();
    for name in [
        "gamma.min",
        "gamma.max",
        "gamma.l2.weight",
        "gamma.l3.weight",
    ] {
        let moved = (&a[name] - &start[name]).abs().max().double_value(&[]);
        assert!(moved > 1e-6, "{name} did not move");
    }
    let bpd: Vec<f64> = std::fs::read_to_string(whole.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["bpd"].as_f64())
        .collect();
    // From ~13 bits/dim at the start (a zero output layer: eps_hat = 0), falling by
    // about a bit every 8 steps (measured: 13.2 to 10.8 in 30 steps; each value is a
    // batch of 32 at spread-out times, whose noise is a tenth of a bit).
    let tail = bpd[bpd.len() - 2..].iter().sum::<f64>() / 2.0;
    assert!(bpd[0] > 12.0 && tail < bpd[0] - 1.5, "{bpd:?}");

    let restored = session::restore(whole.path(), Device::Cpu, true).unwrap();
    assert_eq!(restored.meta.model, "vdm");
    // `elbo plot`'s chart of the schedule at the start and now.
    let png = session::plot_schedule(whole.path(), None).unwrap().unwrap();
    assert!(png.is_file() && png.ends_with("gamma.png"));
    let x =
        data::fixed_tensor(&test_set, restored.model.likelihood(), Some(4), Device::Cpu).unwrap();
    let report = eval::evaluate(restored.model.as_ref(), &x, None, 4).unwrap();
    let names: Vec<&str> = report.terms.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 12, "{names:?}");
    assert_eq!(names[2], "diffusion t=0.0..0.1");
    let sum = report.terms[0].1 - report.terms[1..].iter().map(|(_, v)| v).sum::<f64>();
    assert!((sum - report.elbo).abs() < 1e-3 * report.elbo.abs());
    let err = eval::evaluate(restored.model.as_ref(), &x, Some(5), 4)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no importance-weighted (IWAE) bound"), "{err}");
    for spec in ["ancestral", "ddim-5", "dpm++2m-5"] {
        let sampler: SamplerSpec = spec.parse().unwrap();
        let images = draw_samples(
            restored.model.as_ref(),
            3,
            Some(&SamplingOptions::clipped(sampler)),
        )
        .unwrap();
        assert_eq!(images.size(), [3, 1, 28, 28]);
        let v = values(&images);
        assert!(
            v.iter().all(|p| p.is_finite() && (-1.0..=1.0).contains(p)),
            "{spec}"
        );
    }
}
