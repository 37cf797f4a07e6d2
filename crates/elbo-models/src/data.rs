//! Data sets as users name them ([`DataSpec`]), and from elbo-data's arrays to tensors,
//! with the transform each likelihood needs.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use elbo_data::{Dataset, DatasetKind, EpochSeed, FolderOptions, Pixels, Scale, Splits, Transform};
use ndarray::Array4;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::nn::likelihood::Likelihood;

/// The seed of the one fixed binarisation of a test set (so every evaluation of every
/// run sees the same binary test images).
pub const TEST_BINARISATION_SEED: u64 = 0x7e57_b1a5;

/// What the pixels become for a likelihood: dynamic binarisation for Bernoulli, grey
/// levels in [0, 1] for pytorch/examples' continuous BCE, [-1, 1] for the discretized
/// Gaussian.
pub fn transform_for(likelihood: Likelihood, horizontal_flip: bool) -> Transform {
    let pixels = match likelihood {
        Likelihood::Bernoulli => Pixels::DynamicBinarised,
        Likelihood::ContinuousBce => Pixels::Scaled(Scale::Unit),
        Likelihood::DiscretizedGaussian => Pixels::Scaled(Scale::Symmetric),
    };
    Transform {
        pixels,
        horizontal_flip,
    }
}

/// Maps model-scale images to [0, 1] for pictures.
pub fn to_unit_range(likelihood: Likelihood, images: &Tensor) -> Tensor {
    match likelihood {
        Likelihood::DiscretizedGaussian => (images + 1.0) * 0.5,
        Likelihood::Bernoulli | Likelihood::ContinuousBce => images.shallow_clone(),
    }
}

/// A (B, C, H, W) `f32` array as a tensor on `device`.
pub fn to_tensor(images: &Array4<f32>, device: Device) -> Tensor {
    let shape: Vec<i64> = images.shape().iter().map(|&d| d as i64).collect();
    let contiguous = images.as_standard_layout();
    let flat = contiguous.as_slice().unwrap_or(&[]);
    upload(Tensor::from_slice(flat).reshape(shape), device)
}

/// `t` (on the CPU) on `device`. To a GPU through pinned memory and a non-blocking
/// copy, as PyTorch's `DataLoader(pin_memory=True)` with `.to(device, non_blocking=True)`:
/// a copy from pageable memory first waits for the device's queue to drain, one from
/// pinned memory is queued behind the work already there (libtorch's pinned-memory
/// allocator keeps the buffer until the copy has run).
pub fn upload(t: Tensor, device: Device) -> Tensor {
    if device.is_cuda()
        && let Ok(pinned) = t.f_pin_memory(device)
    {
        return pinned.to_device_(device, pinned.kind(), true, false);
    }
    t.to_device(device)
}

/// The whole `dataset` (or its first `limit` examples), transformed once with a fixed
/// seed, as a tensor: the evaluation set.
pub fn fixed_tensor(
    dataset: &Dataset,
    likelihood: Likelihood,
    limit: Option<usize>,
    device: Device,
) -> Result<Tensor> {
    let n = limit.map_or(dataset.len(), |l| l.min(dataset.len()));
    if n == 0 {
        return Err(Error::Config {
            detail: "the evaluation set is empty".to_string(),
        });
    }
    let indices: Vec<usize> = (0..n).collect();
    let key = EpochSeed {
        seed: TEST_BINARISATION_SEED,
        epoch: 0,
    };
    let images = transform_for(likelihood, false)
        .apply(dataset, &indices, key)
        .map_err(|e| Error::Data {
            detail: format!("evaluation data: {e}"),
        })?;
    Ok(to_tensor(&images, device))
}

/// A data set as a user names it.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSpec {
    /// The MNIST sample bundled with elbo (the default).
    Bundled,
    /// A data set fetched with `cargo xtask data`, in the default data folder.
    Named(DatasetKind),
    /// A folder of MNIST-layout IDX files, or a CIFAR-10 folder or archive.
    Path(PathBuf),
    /// A folder of images (`folder:PATH`), read as [`elbo_data::load_folder`] reads it.
    Folder(FolderSpec),
    /// Hugging Face datasets' parquet shards (`parquet:PATH`, a file or a folder), read
    /// as [`elbo_data::load_parquet`] reads them.
    Parquet(FolderSpec),
}

/// A folder of images and how it is read; named `folder:PATH`, followed by the
/// options that differ from the defaults (`?image-size=64&channels=3`), which is how
/// a run records it.
#[derive(Clone, Debug, PartialEq)]
pub struct FolderSpec {
    /// The folder (or, for parquet, a file or a folder of shards).
    pub path: PathBuf,
    /// Size, channels, the held-out share, bad files.
    pub options: FolderOptions,
    /// Parquet's image and label columns (`None`: found; unused for a folder).
    pub columns: elbo_data::ParquetColumns,
}

/// The sub-folder of the data folder that holds packed folders of images.
pub const PACKS: &str = "packed";

/// The prefix of a folder of images' name.
pub const FOLDER_PREFIX: &str = "folder:";
/// The prefix of parquet shards' name.
pub const PARQUET_PREFIX: &str = "parquet:";

impl FolderSpec {
    /// The options part of the name (`?key=value&...`, empty for the defaults).
    fn query(&self) -> String {
        let o = &self.options;
        let d = FolderOptions::default();
        let mut parts = Vec::new();
        if let Some(s) = o.image_size {
            parts.push(format!("image-size={s}"));
        }
        if let Some(c) = o.channels {
            parts.push(format!("channels={c}"));
        }
        if o.test_fraction != d.test_fraction {
            parts.push(format!("test-fraction={}", o.test_fraction));
        }
        if o.seed != d.seed {
            parts.push(format!("split-seed={}", o.seed));
        }
        if o.skip_bad {
            parts.push("skip-bad".to_string());
        }
        if let Some(c) = &self.columns.image {
            parts.push(format!("image-column={c}"));
        }
        if let Some(c) = &self.columns.label {
            parts.push(format!("label-column={c}"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }

    /// Reads `PATH[?options]` (what follows `folder:`).
    fn parse(text: &str) -> std::result::Result<FolderSpec, String> {
        let mut options = FolderOptions::default();
        let mut columns = elbo_data::ParquetColumns::default();
        let (path, query) = text.rsplit_once('?').unwrap_or((text, ""));
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let bad = || format!("{part:?} in data folder:{text}");
            match key {
                "image-size" => options.image_size = Some(value.parse().map_err(|_| bad())?),
                "channels" => options.channels = Some(value.parse().map_err(|_| bad())?),
                "test-fraction" => options.test_fraction = value.parse().map_err(|_| bad())?,
                "split-seed" => options.seed = value.parse().map_err(|_| bad())?,
                "skip-bad" if value.is_empty() => options.skip_bad = true,
                "image-column" if !value.is_empty() => columns.image = Some(value.into()),
                "label-column" if !value.is_empty() => columns.label = Some(value.into()),
                _ => {
                    return Err(format!(
                        "{} (expected image-size=S, channels=1|3, test-fraction=F, \
                         split-seed=N, skip-bad, image-column=NAME or label-column=NAME)",
                        bad()
                    ));
                }
            }
        }
        if path.is_empty() {
            return Err("data folder: names no folder (expected folder:PATH)".to_string());
        }
        Ok(FolderSpec {
            path: PathBuf::from(path),
            options,
            columns,
        })
    }
}

impl DataSpec {
    /// What `text` names, without checking that a path exists (for names read back
    /// from a run's configuration). A `folder:` name whose options do not parse is
    /// taken as a path, which loading then refuses.
    pub fn named(text: &str) -> DataSpec {
        if text == "mnist-sample" {
            return DataSpec::Bundled;
        }
        if let Some(rest) = text.strip_prefix(FOLDER_PREFIX) {
            return match FolderSpec::parse(rest) {
                Ok(folder) => DataSpec::Folder(folder),
                Err(_) => DataSpec::Path(PathBuf::from(text)),
            };
        }
        if let Some(rest) = text.strip_prefix(PARQUET_PREFIX) {
            return match FolderSpec::parse(rest) {
                Ok(shards) => DataSpec::Parquet(shards),
                Err(_) => DataSpec::Path(PathBuf::from(text)),
            };
        }
        match text.parse::<DatasetKind>() {
            Ok(kind) => DataSpec::Named(kind),
            Err(_) => DataSpec::Path(PathBuf::from(text)),
        }
    }
}

/// A data set loaded, with what its source says besides the images.
#[derive(Debug, Clone)]
pub struct LoadedData {
    /// The train and test splits.
    pub splits: Splits,
    /// The classes its labels count, by name (the named data sets' 10 by number; a
    /// folder's class folders; none for an unlabelled folder).
    pub classes: Vec<String>,
    /// Files a folder's `skip-bad` left out, with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Recorded in configurations as the name a user typed.
impl Serialize for DataSpec {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DataSpec {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(DataSpec::named(&text))
    }
}

impl FromStr for DataSpec {
    type Err = Error;

    /// A name, a folder of images (`folder:PATH`), or a folder or file that exists.
    fn from_str(text: &str) -> Result<Self> {
        for (prefix, parquet) in [(FOLDER_PREFIX, false), (PARQUET_PREFIX, true)] {
            let Some(rest) = text.strip_prefix(prefix) else {
                continue;
            };
            let mut spec = FolderSpec::parse(rest).map_err(|detail| Error::Config { detail })?;
            let exists = if parquet {
                spec.path.exists()
            } else {
                spec.path.is_dir()
            };
            if !exists {
                return Err(Error::Config {
                    detail: format!(
                        "data {text:?}: {} is not there (expected {})",
                        spec.path.display(),
                        if parquet {
                            "a parquet file or a folder of *.parquet shards"
                        } else {
                            "a folder of images"
                        }
                    ),
                });
            }
            if !parquet && spec.columns != elbo_data::ParquetColumns::default() {
                return Err(Error::Config {
                    detail: format!(
                        "data {text:?}: image-column and label-column are parquet's; a folder's \
                         labels are its sub-folders"
                    ),
                });
            }
            // Recorded whole, so that the run reads it again from anywhere.
            spec.path = std::fs::canonicalize(&spec.path)
                .map_err(|e| Error::file("resolve", &spec.path, e))?;
            return Ok(if parquet {
                DataSpec::Parquet(spec)
            } else {
                DataSpec::Folder(spec)
            });
        }
        let spec = DataSpec::named(text);
        if !matches!(&spec, DataSpec::Path(path) if !path.exists()) {
            Ok(spec)
        } else {
            Err(Error::Config {
                detail: format!(
                    "data {text:?} is neither mnist-sample, mnist, fashion-mnist, cifar10, \
                     folder:PATH (a folder of images), parquet:PATH (Hugging Face datasets' \
                     shards) nor an existing folder or file"
                ),
            })
        }
    }
}

impl Default for DataSpec {
    /// The bundled MNIST sample.
    fn default() -> Self {
        DataSpec::Bundled
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSpec::Bundled => f.write_str("mnist-sample"),
            DataSpec::Named(kind) => f.write_str(kind.name()),
            DataSpec::Path(path) => write!(f, "{}", path.display()),
            DataSpec::Folder(folder) => write!(
                f,
                "{FOLDER_PREFIX}{}{}",
                folder.path.display(),
                folder.query()
            ),
            DataSpec::Parquet(shards) => write!(
                f,
                "{PARQUET_PREFIX}{}{}",
                shards.path.display(),
                shards.query()
            ),
        }
    }
}

impl DataSpec {
    /// Loads the training and test splits.
    pub fn load(&self) -> Result<Splits> {
        Ok(self.load_all()?.splits)
    }

    /// Loads the training and test splits, with the class count and skipped files.
    pub fn load_all(&self) -> Result<LoadedData> {
        self.load_all_with(&mut |_, _| {})
    }

    /// [`DataSpec::load_all`], telling `packing` (images done, of all) while a folder
    /// of images is packed. A folder is read through its pack in the data folder
    /// (`<data>/packed/`, see [`elbo_data::load_folder_packed`]): packed on first use,
    /// memory-mapped after.
    pub fn load_all_with(&self, packing: &mut dyn FnMut(usize, usize)) -> Result<LoadedData> {
        let data_error = |e: elbo_data::DataError| Error::Data {
            detail: e.to_string(),
        };
        let ten = |splits: Splits| LoadedData {
            splits,
            classes: (0..10).map(|k| k.to_string()).collect(),
            skipped: Vec::new(),
        };
        match self {
            DataSpec::Bundled => elbo_data::load_bundled().map(ten).map_err(data_error),
            DataSpec::Named(kind) => {
                let dir = elbo_data::dataset_dir(*kind).map_err(data_error)?;
                elbo_data::load(*kind, &dir).map(ten).map_err(data_error)
            }
            DataSpec::Path(path) => {
                let looks_like_cifar = path.extension().is_some_and(|e| e == "gz")
                    || path.join(elbo_data::CIFAR10_FOLDER).exists()
                    || path.join("data_batch_1.bin").exists();
                if looks_like_cifar {
                    elbo_data::load_cifar10(path).map(ten).map_err(data_error)
                } else {
                    elbo_data::load_idx_dir(path, 10)
                        .map(ten)
                        .map_err(data_error)
                }
            }
            DataSpec::Folder(spec) | DataSpec::Parquet(spec) => {
                let packs = elbo_data::default_data_dir()
                    .map_err(data_error)?
                    .join(PACKS);
                let (read, _) = match self {
                    DataSpec::Parquet(_) => elbo_data::load_parquet_packed(
                        &spec.path,
                        &spec.columns,
                        &spec.options,
                        &packs,
                        packing,
                    ),
                    _ => elbo_data::load_folder_packed(&spec.path, &spec.options, &packs, packing),
                }
                .map_err(data_error)?;
                Ok(LoadedData {
                    splits: read.splits,
                    classes: read.classes,
                    skipped: read.skipped,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array1;

    #[test]
    fn arrays_become_tensors_of_the_same_shape_and_values() {
        let _generator = crate::testing::generator_lock();
        let a = Array4::from_shape_fn((2, 1, 2, 3), |(n, _, h, w)| (n * 6 + h * 3 + w) as f32);
        let t = to_tensor(&a, Device::Cpu);
        assert_eq!(t.size(), [2, 1, 2, 3]);
        assert_eq!(t.double_value(&[1, 0, 1, 2]), 11.0);
    }

    #[test]
    fn the_fixed_test_set_is_the_same_every_time_and_binary_for_bernoulli() {
        let _generator = crate::testing::generator_lock();
        let images =
            Array4::from_shape_fn((4, 1, 3, 3), |(n, _, h, w)| (n * 60 + h * 20 + w * 7) as u8);
        let dataset = Dataset::new(images, Array1::zeros(4)).unwrap();
        let a = fixed_tensor(&dataset, Likelihood::Bernoulli, Some(3), Device::Cpu).unwrap();
        let b = fixed_tensor(&dataset, Likelihood::Bernoulli, None, Device::Cpu).unwrap();
        assert_eq!(a.size(), [3, 1, 3, 3]);
        assert!(a.equal(&b.narrow(0, 0, 3)));
        let binary = a.eq(0.0).logical_or(&a.eq(1.0)).all().int64_value(&[]);
        assert_eq!(binary, 1);
        let dg =
            fixed_tensor(&dataset, Likelihood::DiscretizedGaussian, None, Device::Cpu).unwrap();
        assert_eq!(dg.min().double_value(&[]), -1.0, "pixel 0 maps to -1");
    }

    #[test]
    fn data_names_parse_and_unknown_ones_are_refused() {
        let _generator = crate::testing::generator_lock();
        assert_eq!(
            "mnist-sample".parse::<DataSpec>().unwrap(),
            DataSpec::Bundled
        );
        assert_eq!(
            "cifar10".parse::<DataSpec>().unwrap(),
            DataSpec::Named(DatasetKind::Cifar10)
        );
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().display().to_string();
        assert_eq!(
            text.parse::<DataSpec>().unwrap(),
            DataSpec::Path(dir.path().into())
        );
        let err = "imagenet".parse::<DataSpec>().unwrap_err().to_string();
        assert!(err.contains("neither mnist-sample"), "{err}");
        assert_eq!(DataSpec::Bundled.to_string(), "mnist-sample");
        // Read back from a configuration, a path need not exist any more.
        assert_eq!(
            serde_json::from_str::<DataSpec>("\"/gone\"").unwrap(),
            DataSpec::Path("/gone".into())
        );
        assert_eq!(
            serde_json::to_string(&DataSpec::Bundled).unwrap(),
            "\"mnist-sample\""
        );
    }

    /// `folder:PATH?options` reads back as it was written (a run's record), the path
    /// made absolute; unknown options and missing folders are refused.
    #[test]
    fn folder_names_round_trip_with_their_options() {
        let dir = tempfile::tempdir().unwrap();
        let full = format!(
            "folder:{}?image-size=64&channels=3&test-fraction=0.1&split-seed=3&skip-bad",
            dir.path().display()
        );
        let spec: DataSpec = full.parse().unwrap();
        let DataSpec::Folder(folder) = &spec else {
            panic!("{spec:?}")
        };
        assert_eq!(
            folder.options,
            FolderOptions {
                image_size: Some(64),
                channels: Some(3),
                test_fraction: 0.1,
                seed: 3,
                skip_bad: true
            }
        );
        let canonical = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(folder.path, canonical);
        assert_eq!(DataSpec::named(&spec.to_string()), spec);
        let plain = format!("folder:{}", canonical.display());
        assert_eq!(plain.parse::<DataSpec>().unwrap().to_string(), plain);
        let err = format!("folder:{}?size=3", dir.path().display())
            .parse::<DataSpec>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected image-size=S"), "{err}");
        let err = "folder:/no/such/dir"
            .parse::<DataSpec>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not there (expected a folder of images)"),
            "{err}"
        );
    }
}
