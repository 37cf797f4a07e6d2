//! Builders of small valid inputs, shared by the unit tests.

use std::io::Write;
use std::sync::OnceLock;

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::dataset::Splits;

/// `bytes` gzip-compressed.
pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder
        .write_all(bytes)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// A raw IDX image file: `count` images of `rows` x `cols` taken from `pixels`.
pub(crate) fn idx_images(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, 3];
    for d in [count, rows, cols] {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// A raw IDX label file.
pub(crate) fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, 1];
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// A CIFAR-10 batch: one record per label, pixels `(label + i) mod 256`.
pub(crate) fn cifar_records(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(labels.len() * 3073);
    for &label in labels {
        out.push(label);
        out.extend((0..3072).map(|i| (usize::from(label) + i) as u8));
    }
    out
}

/// The bundled sample, loaded (and its checksums verified) once per test binary.
pub(crate) fn bundled() -> &'static Splits {
    static BUNDLED: OnceLock<Splits> = OnceLock::new();
    BUNDLED.get_or_init(|| crate::bundled::load_bundled().expect("the bundled sample loads"))
}

/// A gzip-compressed tar archive of `members` (path, content).
pub(crate) fn tar_gz(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, *content)
            .expect("writing to a Vec cannot fail");
    }
    gzip(&builder.into_inner().expect("writing to a Vec cannot fail"))
}

/// The six CIFAR-10 batches, small: batch `k` holds `k + 1` records of label `k`.
pub(crate) fn cifar_batches() -> Vec<(&'static str, Vec<u8>)> {
    crate::load::CIFAR10_BATCHES
        .iter()
        .enumerate()
        .map(|(k, name)| (*name, cifar_records(&vec![k as u8; k + 1])))
        .collect()
}
