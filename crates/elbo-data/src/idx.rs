//! The IDX format of MNIST and Fashion-MNIST, raw or gzip-compressed.
//!
//! An IDX file is a 4-byte magic number (two zero bytes, a data type byte, a dimension
//! count byte), one big-endian `u32` per dimension, then the values in row-major
//! order. MNIST uses unsigned bytes (type `0x08`): images have 3 dimensions (count,
//! rows, columns; magic 2051) and labels 1 (count; magic 2049). Whether a file is
//! gzip-compressed is decided by its first two bytes, never by its name.

use std::path::Path;

use ndarray::{Array1, Array4};

use crate::error::{DataError, Result, read_file};
use crate::input::{Input, content_offset};

/// The magic number of an IDX file of unsigned-byte images (3 dimensions).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// The magic number of an IDX file of unsigned-byte labels (1 dimension).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// The IDX code of the unsigned-byte data type.
const TYPE_U8: u8 = 0x08;

/// Decodes an IDX image file's bytes into an array of shape (count, 1, rows, columns).
///
/// `name` is used in error messages.
pub fn decode_images(name: &str, bytes: &[u8]) -> Result<Array4<u8>> {
    let (dims, pixels) = decode(name, bytes, 3)?;
    let [count, rows, cols] = [dims[0], dims[1], dims[2]];
    // `decode` returned exactly count * rows * cols values, so the shape always fits.
    Array4::from_shape_vec((count, 1, rows, cols), pixels).map_err(|e| DataError::Invalid {
        what: "IDX image array",
        expected: format!("{count} x 1 x {rows} x {cols} values"),
        found: e.to_string(),
    })
}

/// Decodes an IDX label file's bytes, checking that every label is below `classes`.
///
/// `name` is used in error messages.
pub fn decode_labels(name: &str, bytes: &[u8], classes: usize) -> Result<Array1<u8>> {
    let (_, labels) = decode(name, bytes, 1)?;
    if let Some(i) = labels.iter().position(|&l| usize::from(l) >= classes) {
        let at = HEADER_FIXED + 4 + i as u64;
        return Err(DataError::malformed(
            name,
            content_offset(bytes, at),
            format!("a label below {classes} (label {i})"),
            labels[i].to_string(),
        ));
    }
    Ok(Array1::from(labels))
}

/// Reads an IDX image file (raw or gzip); see [`decode_images`].
pub fn read_images(path: &Path) -> Result<Array4<u8>> {
    let bytes = read_file(path, "expected an IDX image file")?;
    decode_images(&path.display().to_string(), &bytes)
}

/// Reads an IDX label file (raw or gzip); see [`decode_labels`].
pub fn read_labels(path: &Path, classes: usize) -> Result<Array1<u8>> {
    let bytes = read_file(path, "expected an IDX label file")?;
    decode_labels(&path.display().to_string(), &bytes, classes)
}

/// Bytes before the dimension sizes: the magic number.
const HEADER_FIXED: u64 = 4;

/// Decodes an unsigned-byte IDX file of `ndims` dimensions into (sizes, values).
pub(crate) fn decode(name: &str, bytes: &[u8], ndims: u8) -> Result<(Vec<usize>, Vec<u8>)> {
    let mut input = Input::new(name, bytes);
    let expected_magic = u32::from_be_bytes([0, 0, TYPE_U8, ndims]);
    let describe = |magic: u32| format!("0x{magic:08X} ({magic})");

    let magic = input.read_array::<4>("an IDX magic number")?;
    let found_magic = u32::from_be_bytes(magic);
    if magic[0] != 0 || magic[1] != 0 {
        return Err(input.error(
            0,
            format!("the IDX magic number {}", describe(expected_magic)),
            format!("{} (not an IDX file)", describe(found_magic)),
        ));
    }
    if magic[2] != TYPE_U8 {
        return Err(input.error(
            2,
            "IDX data type 0x08 (unsigned byte)",
            format!("data type 0x{:02X}", magic[2]),
        ));
    }
    if magic[3] != ndims {
        return Err(input.error(
            3,
            format!("{ndims} dimension(s) (magic {})", describe(expected_magic)),
            format!(
                "{} dimension(s) (magic {})",
                magic[3],
                describe(found_magic)
            ),
        ));
    }

    let mut dims = Vec::with_capacity(usize::from(ndims));
    let mut len: u64 = 1;
    for k in 0..u64::from(ndims) {
        let size = u32::from_be_bytes(input.read_array::<4>("a dimension size")?);
        if k > 0 && size == 0 {
            return Err(input.error(
                HEADER_FIXED + 4 * k,
                format!("a non-zero size of dimension {k}"),
                "0",
            ));
        }
        len = len.saturating_mul(u64::from(size));
        dims.push(size as usize);
    }
    let what = format!(
        "values for dimensions {}",
        dims.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(" x ")
    );
    // `read_payload` checks `len` against what the file can hold before allocating;
    // a saturated product can never be held.
    let values = input.read_payload(len, &what)?;
    input.finish(&what)?;
    Ok((dims, values))
}

#[cfg(test)]
mod tests;
