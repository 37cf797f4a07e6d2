//! Inception FID and KID of a model's samples against a data set, computed as
//! pytorch-fid and torch-fidelity compute them, in the features of the FID Inception
//! ([`crate::eval::inception`]).
//!
//! - Samples are mapped to `[0, 1]` and quantised to 8 bits (`round(255 x) / 255`), what
//!   a PNG export read back by pytorch-fid would hold; data images are 8-bit already.
//! - Statistics are float64: the mean and the unbiased covariance of the 2048-d
//!   features (numpy's `np.cov`). The distance is elbo-math's
//!   [`frechet_distance`]: `Tr((S_1^{1/2} S_2 S_1^{1/2})^{1/2})` by symmetric
//!   eigendecompositions, equal in exact arithmetic to pytorch-fid's
//!   `Tr(sqrtm(S_1 S_2))` (scipy's Schur method); with fewer samples than 2048 both
//!   covariances are singular and the two roundings differ in the last digits.
//! - The reference statistics (`mu`, `sigma`: the `.npz` layout of pytorch-fid's
//!   `--save-stats`, so either tool can read the other's) are computed once per data
//!   split and weights and cached under `<data folder>/fid-stats/`, named by a digest
//!   of the images and of the weights file; KID also caches the reference features.
//! - KID is torch-fidelity's: 100 subsets of at most 1000, the cubic polynomial kernel
//!   ([`elbo_math::kid`]).

use std::path::{Path, PathBuf};

use elbo_data::Dataset;
use elbo_data::npy::{self, Array as NpyArray};
use elbo_math::frechet::{GaussianFit, frechet_distance_from_samples};
use elbo_math::kid::{Kid, KidConfig, kernel_inception_distance};
use ndarray::{Array1, Array2};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::eval::classifier::unit_images;
use crate::eval::frechet::unit_samples;
use crate::eval::inception::FidInception;
use crate::models::ElboModel;
use crate::sample::SamplingOptions;
use crate::train::checkpoint::{sha256_of, write_atomically};

/// How FID (and KID) are measured.
#[derive(Clone, Debug, PartialEq)]
pub struct InceptionConfig {
    /// Generated images.
    pub samples: usize,
    /// Images generated, and images through the Inception, per batch.
    pub batch: i64,
    /// The seed of the generator's draws.
    pub seed: u64,
    /// The sampler of a model that samples in steps (`None`: its default).
    pub sampling: Option<SamplingOptions>,
    /// Also KID.
    pub kid: bool,
    /// The folder the reference statistics are cached in.
    pub cache: PathBuf,
}

/// What was measured.
#[derive(Clone, Debug, PartialEq)]
pub struct InceptionReport {
    /// Generated images.
    pub samples: usize,
    /// Reference images.
    pub reference_images: usize,
    /// FID.
    pub fid: f64,
    /// KID (mean and spread over subsets), when asked for.
    pub kid: Option<Kid>,
    /// The cached reference statistics (pytorch-fid's `.npz` layout).
    pub reference_stats: PathBuf,
}

/// `images` in `[0, 1]` quantised to 8 bits, as a PNG would hold them.
pub fn quantise(images: &Tensor) -> Tensor {
    (images.clamp(0.0, 1.0) * 255.0).round() / 255.0
}

/// Features (N, 2048) as float64 rows.
fn to_rows(features: &Tensor) -> Result<Array2<f64>> {
    let (n, d) = (features.size()[0] as usize, features.size()[1] as usize);
    let values: Vec<f64> = Vec::<f64>::try_from(
        features
            .to_kind(Kind::Double)
            .to_device(Device::Cpu)
            .flatten(0, -1),
    )
    .map_err(|e| Error::Config {
        detail: format!("features: {e}"),
    })?;
    Array2::from_shape_vec((n, d), values).map_err(|e| Error::Config {
        detail: format!("features: {e}"),
    })
}

/// The Inception features of every image of `dataset`, in batches of `batch`.
pub fn dataset_features(
    inception: &FidInception,
    dataset: &Dataset,
    batch: i64,
    device: Device,
) -> Result<Tensor> {
    let n = dataset.len();
    let step = batch.max(1) as usize;
    let mut parts = Vec::new();
    for start in (0..n).step_by(step) {
        let indices: Vec<usize> = (start..(start + step).min(n)).collect();
        let images = unit_images(dataset, &indices, device)?;
        parts.push(inception.features(&images, batch).to_device(Device::Cpu));
    }
    if parts.is_empty() {
        return Err(Error::Config {
            detail: "FID needs reference images, and the data split is empty".into(),
        });
    }
    Ok(Tensor::cat(&parts, 0))
}

/// A digest of a data set's pixels (shape, then bytes) for the cache's file names.
fn dataset_digest(dataset: &Dataset) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let [c, h, w] = dataset.image_shape();
    for d in [dataset.len(), c, h, w] {
        hasher.update((d as u64).to_le_bytes());
    }
    let images = dataset.images();
    match images.as_slice() {
        Some(bytes) => hasher.update(bytes),
        None => images.iter().for_each(|b| hasher.update([*b])),
    }
    elbo_data::hex(&hasher.finalize()[..8])
}

/// Reference statistics: the fit, and the features when KID needs them.
pub struct Reference {
    /// The Gaussian of the reference features.
    pub fit: GaussianFit,
    /// The features (N, 2048), when asked for.
    pub features: Option<Array2<f64>>,
    /// The statistics file.
    pub stats: PathBuf,
    /// How many images.
    pub images: usize,
}

/// Reads pytorch-fid's statistics file (`mu`, `sigma`).
pub fn read_stats(path: &Path) -> Result<GaussianFit> {
    let arrays = npy::read_npz(path).map_err(|e| Error::Data {
        detail: e.to_string(),
    })?;
    let get = |name: &str| {
        arrays
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, a)| Some((a.shape.clone(), a.to_f64()?)))
            .ok_or_else(|| Error::Data {
                detail: format!(
                    "{}: expected FID statistics (float arrays mu and sigma, as pytorch-fid's \
                     --save-stats writes), found no float array {name}",
                    path.display()
                ),
            })
    };
    let (mu_shape, mu) = get("mu")?;
    let (sigma_shape, sigma) = get("sigma")?;
    let d = mu.len();
    if mu_shape.len() != 1 || sigma_shape != [d, d] {
        return Err(Error::Data {
            detail: format!(
                "{}: expected mu of shape (d,) and sigma (d, d), found {mu_shape:?} and \
                 {sigma_shape:?}",
                path.display()
            ),
        });
    }
    let sigma = Array2::from_shape_vec((d, d), sigma).map_err(|e| Error::Data {
        detail: format!("{}: {e}", path.display()),
    })?;
    Ok(GaussianFit::new(Array1::from(mu), sigma)?)
}

/// The reference statistics of `dataset` under the weights file `weights` (digested
/// for the cache's name): read from the cache under `cache` when there, else computed
/// and written there (whole or not at all).
pub fn reference(
    inception: &FidInception,
    weights: &Path,
    dataset: &Dataset,
    cache: &Path,
    features_too: bool,
    batch: i64,
    device: Device,
) -> Result<Reference> {
    let weights_digest: String = sha256_of(weights)?.chars().take(16).collect();
    let stem = format!("{}-{weights_digest}", dataset_digest(dataset));
    let stats = cache.join(format!("{stem}.npz"));
    let features_file = cache.join(format!("{stem}-features.npy"));
    let images = dataset.len();
    if stats.is_file() && (!features_too || features_file.is_file()) {
        let fit = read_stats(&stats)?;
        let features = if features_too {
            let bytes = std::fs::read(&features_file)
                .map_err(|e| Error::file("read", &features_file, e))?;
            let array =
                npy::from_npy(&features_file.display().to_string(), &bytes).map_err(|e| {
                    Error::Data {
                        detail: e.to_string(),
                    }
                })?;
            let values = array.to_f64().unwrap_or_default();
            let d = fit.dims();
            Some(
                Array2::from_shape_vec((values.len() / d.max(1), d), values).map_err(|e| {
                    Error::Data {
                        detail: format!("{}: {e}", features_file.display()),
                    }
                })?,
            )
        } else {
            None
        };
        return Ok(Reference {
            fit,
            features,
            stats,
            images,
        });
    }
    let features = to_rows(&dataset_features(inception, dataset, batch, device)?)?;
    let fit = GaussianFit::from_samples(&features)?;
    std::fs::create_dir_all(cache).map_err(|e| Error::file("create", cache, e))?;
    let d = fit.dims();
    let mu = NpyArray::f64(vec![d], fit.mean().as_slice().unwrap_or_default());
    let sigma_values: Vec<f64> = fit.covariance().iter().copied().collect();
    let sigma = NpyArray::f64(vec![d, d], &sigma_values);
    write_atomically(&stats, |temp| {
        let file = std::fs::File::create(temp)?;
        npy::write_npz(
            std::io::BufWriter::new(file),
            &[("mu", &mu), ("sigma", &sigma)],
        )?;
        Ok(())
    })?;
    if features_too {
        let as_f32: Vec<u8> = features
            .iter()
            .flat_map(|v| (*v as f32).to_le_bytes())
            .collect();
        let array = NpyArray {
            dtype: npy::Dtype::F32,
            shape: vec![features.nrows(), d],
            data: as_f32,
        };
        write_atomically(&features_file, |temp| {
            Ok(std::fs::write(temp, npy::to_npy(&array))?)
        })?;
    }
    Ok(Reference {
        fit,
        features: features_too.then_some(features),
        stats,
        images,
    })
}

/// Draws `config.samples` images from `model` and measures FID (and KID) against
/// `dataset` in the features of `inception` (whose weights file is `weights`).
pub fn inception_scores(
    model: &dyn ElboModel,
    inception: &FidInception,
    weights: &Path,
    dataset: &Dataset,
    config: &InceptionConfig,
    device: Device,
) -> Result<InceptionReport> {
    if config.samples < 2 {
        return Err(Error::Config {
            detail: format!("FID needs at least 2 samples, found {}", config.samples),
        });
    }
    let [c, ..] = dataset.image_shape();
    if c != 1 && c != 3 {
        return Err(Error::Config {
            detail: format!(
                "the FID Inception reads grey or RGB images, the data has {c} channels"
            ),
        });
    }
    let reference = reference(
        inception,
        weights,
        dataset,
        &config.cache,
        config.kid,
        config.batch,
        device,
    )?;
    let images = unit_samples(
        model,
        config.samples,
        config.batch,
        config.seed,
        config.sampling.as_ref(),
    )?;
    let generated = to_rows(&inception.features(&quantise(&images), config.batch))?;
    let fid = frechet_distance_from_samples(&generated, &reference.fit)?;
    let kid = match (&reference.features, config.kid) {
        (Some(real), true) => Some(kernel_inception_distance(
            &generated,
            real,
            &KidConfig::default(),
        )?),
        _ => None,
    };
    Ok(InceptionReport {
        samples: config.samples,
        reference_images: reference.images,
        fid,
        kid,
        reference_stats: reference.stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantising_rounds_to_the_nearest_of_256_levels() {
        let _generator = crate::testing::generator_lock();
        let x = Tensor::from_slice(&[-0.5f32, 0.0, 0.5 / 255.0 - 1e-4, 0.31, 1.2]);
        let q = Vec::<f32>::try_from(quantise(&x)).unwrap();
        assert_eq!(q[0], 0.0);
        assert_eq!(q[2], 0.0);
        assert!((q[3] - 79.0 / 255.0).abs() < 1e-7);
        assert_eq!(q[4], 1.0);
    }

    #[test]
    fn statistics_files_round_trip_and_wrong_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.npz");
        let mu = NpyArray::f64(vec![2], &[1.0, 2.0]);
        let sigma = NpyArray::f64(vec![2, 2], &[2.0, 0.5, 0.5, 1.0]);
        npy::write_npz(
            std::fs::File::create(&path).unwrap(),
            &[("mu", &mu), ("sigma", &sigma)],
        )
        .unwrap();
        let fit = read_stats(&path).unwrap();
        assert_eq!(fit.mean().to_vec(), [1.0, 2.0]);
        assert_eq!(fit.covariance()[[0, 1]], 0.5);
        npy::write_npz(std::fs::File::create(&path).unwrap(), &[("mu", &mu)]).unwrap();
        let err = read_stats(&path).unwrap_err().to_string();
        assert!(
            err.contains("sigma") && err.contains("--save-stats"),
            "{err}"
        );
    }
}
