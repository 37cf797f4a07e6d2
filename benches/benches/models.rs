//! Benches for `elbo-models`: one training step of each preset (forward, loss,
//! backward, Adam: the training loop's own `train::optimise`) on one fixed batch of the
//! bundled MNIST sample, on the CPU with 1 and 2 libtorch threads. On the CPU the work
//! is synchronous, so the timed closure ends when the step has finished.
//!
//! The DDPM's step and its DDIM-50 sampling are timed in their own group.
//!
//! Run: `cargo bench -p elbo-benches --bench models -- --warm-up-time 2 --measurement-time 5`.

use criterion::{Criterion, Throughput, criterion_main};
use elbo_models::dist::Replica;
use elbo_models::models::draw_samples;
use elbo_models::train::optim::Adam;
use elbo_models::train::{self, TrainConfig};
use tch::Device;

const BATCH: usize = 128;

fn training_steps(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step");
    group.throughput(Throughput::Elements(BATCH as u64));
    for model_name in ["vae-mlp", "hvae-ladder"] {
        for threads in [1, 2] {
            tch::set_num_threads(threads);
            let vs = train::var_store(0, Device::Cpu);
            let model = elbo_benches::preset_model(model_name, &vs.root()).expect("a preset");
            let batch = elbo_benches::training_batch(model.as_ref(), BATCH, Device::Cpu)
                .expect("the bundled sample loads");
            let config = TrainConfig::default();
            let mut adam = Adam::new(&vs, config.adam);
            let loss = model.train_step().expect("a training step");
            let mut guard = train::Guard::new(Device::Cpu);
            let mut step = 0u64;
            group.bench_function(
                format!("{model_name}/batch{BATCH}/cpu/threads{threads}"),
                |b| {
                    b.iter(|| {
                        train::optimise(
                            loss.as_ref(),
                            &mut adam,
                            &batch,
                            &config,
                            step,
                            &Replica::alone(),
                            &mut guard,
                        )
                        .expect("a step");
                        step += 1;
                    })
                },
            );
        }
    }
    group.finish();
}

/// The DDPM: one training step of ddpm-mnist at batch 64 (1.6 M parameters, a UNet
/// forward of 0.55 GFLOP per image), and one DDIM-50 sampling of 64 images. Ten samples
/// each: a sampling takes seconds.
fn ddpm(c: &mut Criterion) {
    const DDPM_BATCH: usize = 64;
    let mut group = c.benchmark_group("ddpm_mnist");
    group.sample_size(10);
    group.throughput(Throughput::Elements(DDPM_BATCH as u64));
    for threads in [1, 2] {
        tch::set_num_threads(threads);
        let vs = train::var_store(0, Device::Cpu);
        let model = elbo_benches::preset_model("ddpm-mnist", &vs.root()).expect("a preset");
        let batch = elbo_benches::training_batch(model.as_ref(), DDPM_BATCH, Device::Cpu)
            .expect("the bundled sample loads");
        let config = TrainConfig::default();
        let mut adam = Adam::new(&vs, config.adam);
        let loss = model.train_step().expect("a training step");
        let mut guard = train::Guard::new(Device::Cpu);
        let mut step = 0u64;
        group.bench_function(
            format!("train_step/batch{DDPM_BATCH}/cpu/threads{threads}"),
            |b| {
                b.iter(|| {
                    train::optimise(
                        loss.as_ref(),
                        &mut adam,
                        &batch,
                        &config,
                        step,
                        &Replica::alone(),
                        &mut guard,
                    )
                    .expect("a step");
                    step += 1;
                })
            },
        );
        let ddim50 = elbo_benches::ddim(50);
        group.bench_function(
            format!("ddim50/batch{DDPM_BATCH}/cpu/threads{threads}"),
            |b| {
                b.iter(|| {
                    tch::no_grad(|| draw_samples(model.as_ref(), DDPM_BATCH as i64, Some(&ddim50)))
                        .expect("DDIM-50 fits T = 1000")
                })
            },
        );
    }
    group.finish();
}

fn benches() {
    // As the `elbo` CLI and `steptime` run: freed tensor memory reused without page faults.
    elbo_models::retain_freed_memory().expect("glibc malloc takes the settings");
    let mut criterion = Criterion::default().configure_from_args();
    training_steps(&mut criterion);
    ddpm(&mut criterion);
}

criterion_main!(benches);
