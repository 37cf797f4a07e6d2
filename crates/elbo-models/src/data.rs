//! Data sets as users name them ([`DataSpec`]), and from elbo-data's arrays to tensors,
//! with the transform each likelihood needs.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use elbo_data::{Dataset, DatasetKind, EpochSeed, Pixels, Scale, Splits, Transform};
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
    Tensor::from_slice(flat).reshape(shape).to_device(device)
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSpec {
    /// The MNIST sample bundled with elbo (the default).
    Bundled,
    /// A data set fetched with `cargo xtask data`, in the default data folder.
    Named(DatasetKind),
    /// A folder of MNIST-layout IDX files, or a CIFAR-10 folder or archive.
    Path(PathBuf),
}

impl DataSpec {
    /// What `text` names, without checking that a path exists (for names read back
    /// from a run's configuration).
    pub fn named(text: &str) -> DataSpec {
        if text == "mnist-sample" {
            return DataSpec::Bundled;
        }
        match text.parse::<DatasetKind>() {
            Ok(kind) => DataSpec::Named(kind),
            Err(_) => DataSpec::Path(PathBuf::from(text)),
        }
    }
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

    /// A name, or a folder or file that exists.
    fn from_str(text: &str) -> Result<Self> {
        let spec = DataSpec::named(text);
        if !matches!(&spec, DataSpec::Path(path) if !path.exists()) {
            Ok(spec)
        } else {
            Err(Error::Config {
                detail: format!(
                    "data {text:?} is neither mnist-sample, mnist, fashion-mnist, cifar10 nor \
                     an existing folder or file"
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
        }
    }
}

impl DataSpec {
    /// Loads the training and test splits.
    pub fn load(&self) -> Result<Splits> {
        let data_error = |e: elbo_data::DataError| Error::Data {
            detail: e.to_string(),
        };
        match self {
            DataSpec::Bundled => elbo_data::load_bundled().map_err(data_error),
            DataSpec::Named(kind) => {
                let dir = elbo_data::dataset_dir(*kind).map_err(data_error)?;
                elbo_data::load(*kind, &dir).map_err(data_error)
            }
            DataSpec::Path(path) => {
                let looks_like_cifar = path.extension().is_some_and(|e| e == "gz")
                    || path.join(elbo_data::CIFAR10_FOLDER).exists()
                    || path.join("data_batch_1.bin").exists();
                if looks_like_cifar {
                    elbo_data::load_cifar10(path).map_err(data_error)
                } else {
                    elbo_data::load_idx_dir(path, 10).map_err(data_error)
                }
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
}
