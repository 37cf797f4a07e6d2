//! Helpers shared by the integration tests (each test binary uses a subset).
#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};

use elbo_data::Dataset;
use ndarray::{Axis, s};

/// libtorch's random generator is process-global, and the test harness runs tests on
/// parallel threads: every test that seeds it and relies on the draws that follow holds
/// this lock, so that no other test draws from the generator in between.
static GENERATOR: Mutex<()> = Mutex::new(());

/// Holds the generator lock (a test that failed while holding it does not poison it).
pub fn exclusive() -> MutexGuard<'static, ()> {
    GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The first `train_n` training and `test_n` test images of the bundled sample.
pub fn subset(train_n: usize, test_n: usize) -> (Dataset, Dataset) {
    let splits = elbo_data::load_bundled().expect("the bundled MNIST sample loads");
    let cut = |d: &Dataset, n: usize| {
        Dataset::new(
            d.images().slice_axis(Axis(0), (0..n).into()).to_owned(),
            d.labels().slice(s![..n]).to_owned(),
        )
        .unwrap()
    };
    (cut(&splits.train, train_n), cut(&splits.test, test_n))
}

/// ddpm-mnist's configuration with a small UNet (8 base channels, one resolution step,
/// one block each) and 100 timesteps: a DDPM whose steps take milliseconds.
pub fn tiny_ddpm() -> elbo_models::models::ddpm::DdpmConfig {
    use elbo_models::models::ddpm::{DdpmConfig, DdpmPreset};
    let mut config = DdpmConfig::preset(DdpmPreset::Mnist, [1, 28, 28]).unwrap();
    config.unet.base_channels = 8;
    config.unet.channel_mults = vec![1, 2];
    config.unet.res_blocks = 1;
    config.unet.attention_resolutions = vec![14];
    config.unet.norm_groups = 4;
    config.timesteps = 100;
    config
}
