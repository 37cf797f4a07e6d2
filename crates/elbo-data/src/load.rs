//! Assembling a data set's train and test splits from the files in its folder.

use std::path::{Path, PathBuf};

use crate::cifar10_archive;
use crate::dataset::{Dataset, Splits};
use crate::error::{DataError, Result, read_file};
use crate::kind::DatasetKind;
use crate::{cifar, idx};

/// The four files of an MNIST-layout folder, without the optional `.gz`:
/// train images, train labels, test images, test labels.
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The CIFAR-10 batch files: five training batches, then the test batch.
pub const CIFAR10_BATCHES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];

/// The folder the CIFAR-10 archive extracts to.
pub const CIFAR10_FOLDER: &str = "cifar-10-batches-bin";

/// Loads `kind` from `dir`, the folder `cargo xtask data` fills (see
/// [`crate::dataset_dir`]).
pub fn load(kind: DatasetKind, dir: &Path) -> Result<Splits> {
    match kind {
        DatasetKind::Mnist | DatasetKind::FashionMnist => {
            load_idx_dir(dir, kind.classes()).map_err(|e| with_fetch_hint(e, kind))
        }
        DatasetKind::Cifar10 => load_cifar10(dir).map_err(|e| with_fetch_hint(e, kind)),
    }
}

/// Loads an MNIST-layout folder: the four [`IDX_FILES`], each either gzip-compressed
/// (`<name>.gz`) or raw (`<name>`), labels in `0..classes`.
pub fn load_idx_dir(dir: &Path, classes: usize) -> Result<Splits> {
    load_idx_dir_checked(dir, classes, &mut |_, _| Ok(()))
}

/// [`load_idx_dir`], calling `check(path, bytes)` on every file's bytes before decoding.
pub(crate) fn load_idx_dir_checked(
    dir: &Path,
    classes: usize,
    check: &mut dyn FnMut(&Path, &[u8]) -> Result<()>,
) -> Result<Splits> {
    let mut split = |images_stem: &str, labels_stem: &str, like: Option<&Dataset>| {
        let (images_path, images_bytes) = read_idx_file(dir, images_stem)?;
        check(&images_path, &images_bytes)?;
        let images_name = images_path.display().to_string();
        let images = idx::decode_images(&images_name, &images_bytes)?;
        let shape = [images.shape()[2], images.shape()[3]];
        if let Some(like) = like.filter(|d| !d.is_empty() && !images.is_empty()) {
            let [_, rows, cols] = like.image_shape();
            if [rows, cols] != shape {
                return Err(DataError::malformed(
                    &images_name,
                    crate::input::content_offset(&images_bytes, 8),
                    format!("images of {rows} x {cols}, as in the training split"),
                    format!("images of {} x {}", shape[0], shape[1]),
                ));
            }
        }
        drop(images_bytes);

        let (labels_path, labels_bytes) = read_idx_file(dir, labels_stem)?;
        check(&labels_path, &labels_bytes)?;
        let labels_name = labels_path.display().to_string();
        let labels = idx::decode_labels(&labels_name, &labels_bytes, classes)?;
        let (n_images, n_labels) = (images.shape()[0], labels.len());
        if n_images != n_labels {
            return Err(DataError::malformed(
                &labels_name,
                crate::input::content_offset(&labels_bytes, 4),
                format!("{n_images} labels, as many as the images in {images_name}"),
                format!("{n_labels} labels"),
            ));
        }
        Dataset::new(images, labels)
    };
    let train = split(IDX_FILES[0], IDX_FILES[1], None)?;
    let test = split(IDX_FILES[2], IDX_FILES[3], Some(&train))?;
    Ok(Splits { train, test })
}

/// Reads `<stem>.gz`, or `<stem>` if there is no `.gz`; content decides how it is read.
fn read_idx_file(dir: &Path, stem: &str) -> Result<(PathBuf, Vec<u8>)> {
    let gz = dir.join(format!("{stem}.gz"));
    let path = if gz.exists() { gz } else { dir.join(stem) };
    let hint = format!("expected {stem}.gz or {stem} (an IDX file, gzip or raw) in this folder");
    match read_file(&path, &hint) {
        Err(DataError::Missing { .. }) => Err(DataError::Missing {
            path: dir.join(format!("{stem}.gz")),
            hint,
        }),
        other => other.map(|bytes| (path, bytes)),
    }
}

/// Loads CIFAR-10 from `path`: the `.tar.gz` archive itself, a folder holding the
/// batch files, a folder holding `cifar-10-batches-bin/`, or a folder holding the
/// archive (read without extracting it).
pub fn load_cifar10(path: &Path) -> Result<Splits> {
    if path.is_file() {
        return cifar10_archive::load_cifar10_archive(path);
    }
    let nested = path.join(CIFAR10_FOLDER);
    let archive = path.join(crate::manifest::CIFAR10.files[0].name.as_ref());
    if path.join(CIFAR10_BATCHES[0]).exists() {
        load_cifar10_folder(path)
    } else if nested.is_dir() {
        load_cifar10_folder(&nested)
    } else if archive.is_file() {
        cifar10_archive::load_cifar10_archive(&archive)
    } else {
        Err(DataError::Missing {
            path: archive,
            hint: format!(
                "expected the CIFAR-10 binary archive, or its batch files (in this folder or in {CIFAR10_FOLDER}/)"
            ),
        })
    }
}

/// Loads the six batch files from `dir`.
fn load_cifar10_folder(dir: &Path) -> Result<Splits> {
    let mut parts = Vec::with_capacity(CIFAR10_BATCHES.len());
    for name in CIFAR10_BATCHES {
        let (images, labels) = cifar::read_batch(&dir.join(name))?;
        parts.push(Dataset::new(images, labels)?);
    }
    splits_from_batches(parts)
}

/// Five training batches and the test batch, in [`CIFAR10_BATCHES`] order, as splits.
pub(crate) fn splits_from_batches(mut parts: Vec<Dataset>) -> Result<Splits> {
    let test = parts.pop().ok_or_else(|| DataError::Invalid {
        what: "CIFAR-10 batches",
        expected: "six batches".into(),
        found: "none".into(),
    })?;
    let train = Dataset::concatenate(&parts)?;
    Ok(Splits { train, test })
}

/// Adds to a missing-file error how to fetch the data set.
fn with_fetch_hint(e: DataError, kind: DatasetKind) -> DataError {
    match e {
        DataError::Missing { path, hint } => DataError::Missing {
            path,
            hint: format!(
                "{hint}; fetch it with `cargo xtask data {kind}` (or import files you have with `--from PATH`)"
            ),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests;
