#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented public function"
)]

//! elbo-data: one full epoch of shuffled batching and transforms over the bundled
//! MNIST train split (9,000 images, batches of 128), per transform, on the CPU.
//! Throughput is reported in images per second.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use elbo_data::{Batching, Loader, LoaderConfig, Pixels, Scale, Transform, load_bundled};

fn epoch(c: &mut Criterion) {
    let mnist = load_bundled().expect("the bundled MNIST sample loads");
    let train = &mnist.train;
    let mut group = c.benchmark_group("data/epoch_cpu");
    group.throughput(Throughput::Elements(train.len() as u64));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    let variants = [
        ("scaled_unit", Pixels::Scaled(Scale::Unit), false),
        ("dynamic_binarised", Pixels::DynamicBinarised, false),
        ("thresholded", Pixels::Thresholded(127), false),
        (
            "dequantised_symmetric",
            Pixels::Dequantised(Scale::Symmetric),
            false,
        ),
        ("scaled_flipped", Pixels::Scaled(Scale::Symmetric), true),
    ];
    for (name, pixels, horizontal_flip) in variants {
        let config = LoaderConfig {
            batching: Batching {
                batch_size: NonZeroUsize::new(128).expect("128 is not zero"),
                drop_last: false,
            },
            shuffle: true,
            seed: 1,
            transform: Transform {
                pixels,
                horizontal_flip,
            },
        };
        let loader = Loader::new(train, config);
        let mut next_epoch = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                next_epoch += 1;
                let mut seen = 0usize;
                for batch in loader.epoch(next_epoch) {
                    seen += black_box(batch).labels.len();
                }
                seen
            })
        });
    }
    group.finish();
}

criterion_group!(benches, epoch);
criterion_main!(benches);
