use std::fs;

use super::*;
use crate::test_support::{cifar_batches, gzip, idx_images, idx_labels, tar_gz};

/// Writes an MNIST-layout folder: 3 train and 2 test images of 2 x 2; the train
/// images gzip-compressed, the rest raw.
fn write_idx_dir(dir: &Path, test_labels: &[u8]) {
    let files: [(String, Vec<u8>); 4] = [
        (
            format!("{}.gz", IDX_FILES[0]),
            gzip(&idx_images(3, 2, 2, &[1; 12])),
        ),
        (IDX_FILES[1].into(), idx_labels(&[0, 1, 2])),
        (IDX_FILES[2].into(), idx_images(2, 2, 2, &[2; 8])),
        (IDX_FILES[3].into(), idx_labels(test_labels)),
    ];
    for (name, bytes) in files {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn idx_folders_mix_gzip_and_raw_files() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dir(dir.path(), &[4, 5]);
    let splits = load(DatasetKind::FashionMnist, dir.path()).unwrap();
    assert_eq!((splits.train.len(), splits.test.len()), (3, 2));
    assert_eq!(splits.test.labels().to_vec(), vec![4, 5]);
    assert_eq!(splits.train.images()[[2, 0, 1, 1]], 1);
}

#[test]
fn label_and_image_counts_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dir(dir.path(), &[4, 5, 6]);
    let err = load_idx_dir(dir.path(), 10).unwrap_err().to_string();
    assert!(err.contains("t10k-labels-idx1-ubyte: at byte 4"), "{err}");
    assert!(
        err.contains("expected 2 labels") && err.contains("found 3 labels"),
        "{err}"
    );
}

#[test]
fn test_images_must_match_the_training_shape() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dir(dir.path(), &[4, 5]);
    fs::write(dir.path().join(IDX_FILES[2]), idx_images(2, 1, 4, &[2; 8])).unwrap();
    let err = load_idx_dir(dir.path(), 10).unwrap_err().to_string();
    assert!(err.contains("at byte 8") && err.contains("2 x 2"), "{err}");
}

#[test]
fn a_missing_file_says_how_to_fetch_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(DatasetKind::Mnist, dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DataError::Missing { .. }));
    assert!(
        text.contains("train-images-idx3-ubyte.gz") && text.contains("cargo xtask data mnist"),
        "{text}"
    );
}

#[test]
fn cifar_loads_from_folder_nested_folder_and_archive_alike() {
    let batches = cifar_batches();
    let members: Vec<(String, &[u8])> = batches
        .iter()
        .map(|(n, b)| (format!("{CIFAR10_FOLDER}/{n}"), b.as_slice()))
        .collect();
    let mut with_extra: Vec<(&str, &[u8])> = vec![("cifar-10-batches-bin/readme.html", b"hi")];
    with_extra.extend(members.iter().map(|(n, b)| (n.as_str(), *b)));

    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("cifar-10-binary.tar.gz");
    fs::write(&archive, tar_gz(&with_extra)).unwrap();
    let from_archive = load(DatasetKind::Cifar10, root.path()).unwrap();
    assert_eq!(load_cifar10(&archive).unwrap(), from_archive);

    let nested = root.path().join(CIFAR10_FOLDER);
    fs::create_dir(&nested).unwrap();
    for (name, bytes) in &batches {
        fs::write(nested.join(name), bytes).unwrap();
    }
    assert_eq!(load_cifar10(root.path()).unwrap(), from_archive);
    assert_eq!(load_cifar10(&nested).unwrap(), from_archive);

    // Training batches 1..5 hold 1..5 records (15), the test batch 6, in order.
    assert_eq!((from_archive.train.len(), from_archive.test.len()), (15, 6));
    assert_eq!(from_archive.train.labels()[14], 4);
    assert_eq!(from_archive.train.image_shape(), [3, 32, 32]);
}

#[test]
fn archive_problems_are_named() {
    let batches = cifar_batches();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.tar.gz");

    let first_five: Vec<(&str, &[u8])> = batches[..5]
        .iter()
        .map(|(n, b)| (*n, b.as_slice()))
        .collect();
    fs::write(&path, tar_gz(&first_five)).unwrap();
    let err = load_cifar10(&path).unwrap_err().to_string();
    assert!(err.contains("test_batch.bin"), "{err}");

    let bad = [("x/data_batch_1.bin", &batches[0].1[..100])];
    fs::write(&path, tar_gz(&bad)).unwrap();
    let err = load_cifar10(&path).unwrap_err().to_string();
    assert!(
        err.contains("c.tar.gz:x/data_batch_1.bin") && err.contains("100 bytes"),
        "{err}"
    );

    let all: Vec<(&str, &[u8])> = batches.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let full = tar_gz(&all);
    fs::write(&path, &full[..full.len() / 2]).unwrap();
    let err = load_cifar10(&path).unwrap_err().to_string();
    assert!(
        err.contains("expected a complete gzip-compressed tar archive"),
        "{err}"
    );
}
