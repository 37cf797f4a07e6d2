//! Benches for `elbo-math`: the KL divergence between diagonal Gaussians and the Gaussian
//! log-density over 1e6 elements on the CPU, each against a plain `for` loop over slices
//! with the textbook formula (the baseline), so the cost of the crate's validation,
//! ndarray `Zip` and numerically careful kernels is visible.
//!
//! Run: `cargo bench -p elbo-benches --bench math -- --warm-up-time 1 --measurement-time 3`.

use criterion::{Criterion, Throughput, criterion_main};
use elbo_benches::elements_label;
use elbo_math::gaussian;
use ndarray::Array1;
use std::hint::black_box;

const N: usize = 1_000_000;

/// Deterministic inputs spread over a range (a fixed 64-bit LCG; no RNG dependency).
fn inputs(seed: u64, lo: f64, hi: f64) -> Array1<f64> {
    let mut state = seed;
    Array1::from_shape_fn(N, |_| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        lo + (hi - lo) * ((state >> 11) as f64 / (1u64 << 53) as f64)
    })
}

/// The textbook KL, summed in a plain loop over slices.
fn kl_plain_loop(mq: &[f64], lq: &[f64], mp: &[f64], lp: &[f64]) -> f64 {
    let mut total = 0.0;
    for i in 0..mq.len() {
        let d = mq[i] - mp[i];
        total += 0.5 * (lp[i] - lq[i] + (lq[i] - lp[i]).exp() + d * d * (-lp[i]).exp() - 1.0);
    }
    total
}

/// The textbook log-density, summed in a plain loop over slices.
fn log_density_plain_loop(x: &[f64], mean: &[f64], log_var: &[f64]) -> f64 {
    const LN_2PI: f64 = 1.837_877_066_409_345_5;
    let mut total = 0.0;
    for i in 0..x.len() {
        let d = x[i] - mean[i];
        total += -0.5 * (LN_2PI + log_var[i] + d * d * (-log_var[i]).exp());
    }
    total
}

fn bench_kl(c: &mut Criterion) {
    let (mq, lq) = (inputs(1, -3.0, 3.0), inputs(2, -6.0, 3.0));
    let (mp, lp) = (inputs(3, -3.0, 3.0), inputs(4, -6.0, 3.0));
    let (smq, slq, smp, slp) = (
        mq.as_slice().unwrap(),
        lq.as_slice().unwrap(),
        mp.as_slice().unwrap(),
        lp.as_slice().unwrap(),
    );
    let mut group = c.benchmark_group(format!("kl_diag_gaussian/cpu/{}", elements_label(N)));
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("elbo_math::kl_divergence_sum", |b| {
        b.iter(|| gaussian::kl_divergence_sum(black_box(&mq), &lq, &mp, &lp).unwrap())
    });
    group.bench_function("scalar_kernel_loop", |b| {
        b.iter(|| {
            let mut total = 0.0;
            for i in 0..N {
                total += gaussian::kl_divergence(black_box(smq[i]), slq[i], smp[i], slp[i]);
            }
            total
        })
    });
    group.bench_function("plain_for_loop_baseline", |b| {
        b.iter(|| kl_plain_loop(black_box(smq), slq, smp, slp))
    });
    group.finish();
}

fn bench_log_density(c: &mut Criterion) {
    let (x, mean, log_var) = (
        inputs(5, -4.0, 4.0),
        inputs(6, -3.0, 3.0),
        inputs(7, -6.0, 3.0),
    );
    let (sx, sm, sl) = (
        x.as_slice().unwrap(),
        mean.as_slice().unwrap(),
        log_var.as_slice().unwrap(),
    );
    let mut group = c.benchmark_group(format!("gaussian_log_density/cpu/{}", elements_label(N)));
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("elbo_math::log_density_sum", |b| {
        b.iter(|| gaussian::log_density_sum(black_box(&x), &mean, &log_var).unwrap())
    });
    group.bench_function("scalar_kernel_loop", |b| {
        b.iter(|| {
            let mut total = 0.0;
            for i in 0..N {
                total += gaussian::log_density(black_box(sx[i]), sm[i], sl[i]);
            }
            total
        })
    });
    group.bench_function("plain_for_loop_baseline", |b| {
        b.iter(|| log_density_plain_loop(black_box(sx), sm, sl))
    });
    group.finish();
}

/// The math benches, configured from the command line (what `criterion_group!` would
/// generate, written out so that it carries a doc comment).
pub fn benches() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_kl(&mut criterion);
    bench_log_density(&mut criterion);
}

criterion_main!(benches);
