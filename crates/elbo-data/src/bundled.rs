//! The MNIST sample shipped with the repository: the default data set.
//!
//! `data/mnist/` at the repository's root holds 10,000 real MNIST digits (9,000
//! train, 1,000 test) in the standard IDX layout, gzip-compressed, with a `README.md`
//! (provenance) and a `SHA256SUMS` list. Every load checks each file's sha256 against
//! that list before decoding it (from the same bytes, so what is checked is what is
//! decoded).
//!
//! The folder is found at run time: `$ELBO_BUNDLED_DIR` if set, else the path this
//! crate was compiled from (`<repo>/crates/elbo-data/../../data/mnist`). A binary
//! moved off the machine that built it must set `ELBO_BUNDLED_DIR` or pass the folder
//! to [`load_bundled_from`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::checksum::{digest_bytes, parse_sha256sums};
use crate::dataset::Splits;
use crate::error::{DataError, Result, read_file};
use crate::load::load_idx_dir_checked;

/// The environment variable that overrides the bundled sample's folder.
pub const BUNDLED_DIR_ENV: &str = "ELBO_BUNDLED_DIR";

/// The checksum list in the bundled folder.
const SUMS: &str = "SHA256SUMS";

/// The bundled sample's folder: `$ELBO_BUNDLED_DIR`, else the repository's `data/mnist`.
pub fn bundled_dir() -> PathBuf {
    match std::env::var_os(BUNDLED_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist"),
    }
}

/// Loads the bundled MNIST sample from [`bundled_dir`], verifying its checksums.
pub fn load_bundled() -> Result<Splits> {
    load_bundled_from(&bundled_dir())
}

/// Loads an MNIST-layout folder whose every file must be listed, with the right
/// sha256, in the folder's `SHA256SUMS`.
pub fn load_bundled_from(dir: &Path) -> Result<Splits> {
    let sums_path = dir.join(SUMS);
    let hint = format!(
        "the bundled MNIST sample lives in the repository's data/mnist; set {BUNDLED_DIR_ENV} to its folder"
    );
    let text = read_file(&sums_path, &hint)?;
    let sums_name = sums_path.display().to_string();
    let text = String::from_utf8(text).map_err(|e| {
        DataError::malformed(
            &sums_name,
            crate::error::Offset::File(e.utf8_error().valid_up_to() as u64),
            "UTF-8 text",
            "a byte that is not UTF-8",
        )
    })?;
    let sums: HashMap<String, String> = parse_sha256sums(&sums_name, &text)?.into_iter().collect();

    let mut verify = |path: &Path, bytes: &[u8]| -> Result<()> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Some(expected) = sums.get(name) else {
            return Err(DataError::Missing {
                path: sums_path.clone(),
                hint: format!("expected a line for {name} in {SUMS}"),
            });
        };
        let actual = digest_bytes(bytes).sha256;
        if &actual != expected {
            return Err(DataError::Checksum {
                file: path.display().to_string(),
                algorithm: "sha256",
                expected: expected.clone(),
                actual,
                consequence: "the file was left alone; restore it from the repository",
            });
        }
        Ok(())
    };
    load_idx_dir_checked(dir, 10, &mut verify)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::test_support::bundled;

    #[test]
    fn the_bundled_sample_has_its_documented_counts() {
        let splits = bundled();
        assert_eq!((splits.train.len(), splits.test.len()), (9000, 1000));
        assert_eq!(splits.train.image_shape(), [1, 28, 28]);
        // The README: the test split holds exactly 100 digits of each class, and the
        // whole 10,000 these class counts.
        let mut test_counts = [0usize; 10];
        let mut all_counts = [0usize; 10];
        for &l in splits.test.labels() {
            test_counts[usize::from(l)] += 1;
            all_counts[usize::from(l)] += 1;
        }
        for &l in splits.train.labels() {
            all_counts[usize::from(l)] += 1;
        }
        assert_eq!(test_counts, [100; 10]);
        assert_eq!(
            all_counts,
            [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
        );
    }

    #[test]
    fn a_changed_byte_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        for entry in fs::read_dir(bundled_dir()).unwrap() {
            let path = entry.unwrap().path();
            // Read and write (not copy): the repository's files are read-only.
            let bytes = fs::read(&path).unwrap();
            fs::write(dir.path().join(path.file_name().unwrap()), bytes).unwrap();
        }
        let target = dir.path().join("t10k-labels-idx1-ubyte.gz");
        let mut bytes = fs::read(&target).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&target, bytes).unwrap();
        let err = load_bundled_from(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                DataError::Checksum {
                    algorithm: "sha256",
                    ..
                }
            ),
            "{text}"
        );
        assert!(
            text.contains("44c73e294b226cdb50e0ccd793f3f5422f108deece25168b868d6c691e4a16f6"),
            "{text}"
        );

        fs::remove_file(dir.path().join(SUMS)).unwrap();
        let err = load_bundled_from(dir.path()).unwrap_err().to_string();
        assert!(err.contains(BUNDLED_DIR_ENV), "{err}");
    }
}
