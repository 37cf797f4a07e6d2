//! `elbo data inspect` and `elbo data pack`: what a data set holds, before training on
//! it, and a folder of images packed ahead of time.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::data::DataSpec;
use crate::error::Result;

/// What a data set holds.
#[derive(Clone, Debug, PartialEq)]
pub struct DataReport {
    /// The data, as named.
    pub data: String,
    /// Training and test images.
    pub counts: (usize, usize),
    /// Channels, height, width.
    pub shape: [usize; 3],
    /// The classes (names where the source has them, else numbers) and how many
    /// training images each has.
    pub classes: Vec<(String, usize)>,
    /// The training pixels' mean and standard deviation per channel, in [0, 1].
    pub pixel_mean_std: Vec<(f64, f64)>,
    /// Files a folder's `skip-bad` left out, with why.
    pub skipped: Vec<(PathBuf, String)>,
    /// The grid of random training images written.
    pub grid: PathBuf,
}

/// Loads `data` (packing a folder of images on first use; `packing` is told images
/// done, of all) and reports what it holds; writes 64 training images drawn with
/// `seed` as a grid at `grid`.
pub fn inspect_data(
    data: &DataSpec,
    grid: &Path,
    seed: u64,
    packing: &mut dyn FnMut(usize, usize),
) -> Result<DataReport> {
    let loaded = data.load_all_with(packing)?;
    let train = &loaded.splits.train;
    let shape = train.image_shape();
    let labels = train.labels();
    let classes = loaded
        .classes
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let n = labels.iter().filter(|&&l| usize::from(l) == k).count();
            (name.clone(), n)
        })
        .collect();
    // Per channel over every training pixel, in f64.
    let images = train.images();
    let pixel_mean_std = (0..shape[0])
        .map(|c| {
            let plane = images.index_axis(ndarray::Axis(1), c);
            let n = plane.len() as f64;
            let sum: f64 = plane.iter().map(|&v| f64::from(v) / 255.0).sum();
            let mean = sum / n;
            let var = plane
                .iter()
                .map(|&v| (f64::from(v) / 255.0 - mean).powi(2))
                .sum::<f64>()
                / n;
            (mean, var.sqrt())
        })
        .collect();
    let chosen =
        elbo_data::EpochOrder::shuffled(train.len(), elbo_data::EpochSeed { seed, epoch: 0 });
    let picks: Vec<usize> = chosen.indices().iter().take(64).copied().collect();
    let mut pixels = Vec::with_capacity(picks.len() * shape.iter().product::<usize>());
    for &i in &picks {
        pixels.extend(images.index_axis(ndarray::Axis(0), i).iter().copied());
    }
    let size: Vec<i64> = [picks.len(), shape[0], shape[1], shape[2]]
        .iter()
        .map(|&d| d as i64)
        .collect();
    let tensor = Tensor::from_slice(&pixels)
        .reshape(size)
        .to_kind(Kind::Float)
        / 255.0;
    crate::eval::image::save_grid(&tensor, 8, grid)?;
    Ok(DataReport {
        data: data.to_string(),
        counts: (train.len(), loaded.splits.test.len()),
        shape,
        classes,
        pixel_mean_std,
        skipped: loaded.skipped,
        grid: grid.to_path_buf(),
    })
}

/// Packs the folder of images or parquet shards `data` names ahead of time (`packing`
/// told images done, of all); returns the pack folder and whether it was packed now
/// (`false`: found).
pub fn pack_data(
    data: &DataSpec,
    packing: &mut dyn FnMut(usize, usize),
) -> Result<elbo_data::PackInfo> {
    let packs = elbo_data::default_data_dir()
        .map_err(|e| crate::error::Error::Data {
            detail: e.to_string(),
        })?
        .join(crate::data::PACKS);
    let packed = match data {
        DataSpec::Folder(spec) => {
            elbo_data::load_folder_packed(&spec.path, &spec.options, &packs, packing)
        }
        DataSpec::Parquet(spec) => elbo_data::load_parquet_packed(
            &spec.path,
            &spec.columns,
            &spec.options,
            &packs,
            packing,
        ),
        _ => {
            return Err(crate::error::Error::Config {
                detail: format!(
                    "only a folder of images (folder:PATH) or parquet shards (parquet:PATH) are \
                     packed; {data} is read as it is"
                ),
            });
        }
    };
    packed
        .map(|(_, info)| info)
        .map_err(|e| crate::error::Error::Data {
            detail: e.to_string(),
        })
}
