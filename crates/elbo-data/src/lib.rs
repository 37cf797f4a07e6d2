//! Data sets for elbo: MNIST, Fashion-MNIST and CIFAR-10 as `u8` ndarray arrays,
//! verified downloads, and seeded batching and transforms into `f32` batches.
//!
//! This crate does not depend on libtorch: images are [`ndarray::Array4<u8>`] of shape
//! (N, C, H, W) and labels [`ndarray::Array1<u8>`]; batches come out as
//! [`ndarray::Array4<f32>`], ready for `elbo-models` to turn into tensors.
//!
//! - Readers: [`idx`] (MNIST, Fashion-MNIST; raw or gzip, detected by content) and
//!   [`cifar`] (binary batches, from a folder or straight from the `.tar.gz`). Every
//!   malformed input is a [`DataError::Malformed`] naming the file, what was expected,
//!   what was found and the byte offset; no header's claim is trusted to size an
//!   allocation.
//! - The bundled default: [`load_bundled`] reads the 10,000-digit MNIST sample in the
//!   repository's `data/mnist/`, checking it against its `SHA256SUMS`.
//! - Downloads: [`fetch`] (HTTP, retries, md5 and sha256 checks, atomic renames) and
//!   [`import`] (from local files), from the [`Manifest`]s of [`DatasetKind`]; files go
//!   under [`default_data_dir`] and are read back with [`load`].
//! - Batching: [`Loader`] hands out an epoch's shuffled minibatches ([`EpochOrder`],
//!   same order for the same (seed, epoch) on every machine), transformed by a
//!   [`Transform`] (scaling, binarisation, dequantisation, flips; all seeded).
//!
//! # Example
//!
//! Load the bundled MNIST sample and iterate over one epoch of dynamically binarised
//! batches of 256:
//!
//! ```
//! use std::num::NonZeroUsize;
//! use elbo_data::{Batching, Loader, LoaderConfig, Pixels, Transform};
//!
//! let mnist = elbo_data::load_bundled()?;
//! assert_eq!((mnist.train.len(), mnist.test.len()), (9000, 1000));
//!
//! let config = LoaderConfig {
//!     batching: Batching { batch_size: NonZeroUsize::new(256).unwrap(), drop_last: false },
//!     shuffle: true,
//!     seed: 42,
//!     transform: Transform { pixels: Pixels::DynamicBinarised, horizontal_flip: false },
//! };
//! let loader = Loader::new(&mnist.train, config);
//! let mut seen = 0;
//! for batch in loader.epoch(0) {
//!     assert_eq!(batch.images.shape()[1..], [1, 28, 28]);
//!     assert!(batch.images.iter().all(|&x| x == 0.0 || x == 1.0));
//!     seen += batch.labels.len();
//! }
//! assert_eq!(seen, 9000); // 35 batches of 256 and a last one of 40
//! # Ok::<(), elbo_data::DataError>(())
//! ```

mod batch;
mod bundled;
mod checksum;
pub mod cifar;
mod cifar10_archive;
mod dataset;
mod download;
mod error;
mod folder;
pub mod idx;
mod import;
mod inception;
mod input;
mod kind;
mod load;
mod manifest;
pub mod npy;
mod paths;
mod progress;
pub mod pth;
mod rng;
mod shuffle;
mod staging;
mod transform;
pub mod zip;

#[cfg(test)]
mod test_server;
#[cfg(test)]
mod test_support;

pub use batch::{Batch, EpochBatches, Loader, LoaderConfig};
pub use bundled::{BUNDLED_DIR_ENV, bundled_dir, load_bundled, load_bundled_from};
pub use checksum::{Digests, digest_bytes, digest_file, hex, parse_sha256sums};
pub use cifar10_archive::load_cifar10_archive;
pub use dataset::{Dataset, Splits};
pub use download::{DownloadConfig, fetch};
pub use error::{DataError, Offset, Result};
pub use folder::{
    EXTENSIONS, FolderData, FolderOptions, PACK_FORMAT, PackInfo, load_folder, load_folder_packed,
    luma,
};
#[cfg(feature = "parquet")]
pub use folder::{ParquetColumns, load_parquet, load_parquet_packed};
pub use import::import;
pub use inception::{
    FID_INCEPTION, INCEPTION_FOLDER, INCEPTION_SAFETENSORS, convert_to_safetensors,
    fetch_inception, inception_weights_path,
};
pub use kind::DatasetKind;
pub use load::{CIFAR10_BATCHES, CIFAR10_FOLDER, IDX_FILES, load, load_cifar10, load_idx_dir};
pub use manifest::{CIFAR10, FASHION_MNIST, MNIST, Manifest, RemoteFile};
pub use paths::{DATA_DIR_ENV, dataset_dir, default_data_dir};
pub use progress::{DownloadEvent, FetchedFile, Outcome};
pub use rng::EpochSeed;
pub use shuffle::{Batching, EpochOrder};
pub use transform::{Pixels, Scale, Transform};
