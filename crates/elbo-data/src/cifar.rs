//! The binary format of CIFAR-10 (`data_batch_1.bin` ... `data_batch_5.bin`,
//! `test_batch.bin`).
//!
//! A batch file is a sequence of 3073-byte records: one label byte (0 to 9), then a
//! 32 x 32 image as three 1024-byte planes (red, green, blue), each row-major. There
//! is no header: the record count is the file length divided by 3073.

use std::path::Path;

use ndarray::{Array1, Array4};

use crate::error::{DataError, Offset, Result, read_file};

/// The number of classes of CIFAR-10.
pub const CLASSES: usize = 10;
/// Channels, rows and columns of a CIFAR-10 image.
pub const IMAGE_SHAPE: [usize; 3] = [3, 32, 32];
/// Bytes of one image: 3 planes of 32 x 32.
pub const IMAGE_LEN: usize = 3 * 32 * 32;
/// Bytes of one record: the label byte and the image.
pub const RECORD_LEN: usize = 1 + IMAGE_LEN;

/// Decodes a CIFAR-10 batch file's bytes into images (N, 3, 32, 32) and labels (N).
///
/// `name` is used in error messages. An empty file, a length that is not a multiple
/// of 3073 and a label above 9 are errors.
pub fn decode_batch(name: &str, bytes: &[u8]) -> Result<(Array4<u8>, Array1<u8>)> {
    let partial = bytes.len() % RECORD_LEN;
    if bytes.is_empty() || partial != 0 {
        let whole = bytes.len() - partial;
        return Err(DataError::malformed(
            name,
            Offset::File(whole as u64),
            format!(
                "a length that is a positive multiple of {RECORD_LEN} (records of 1 label + {IMAGE_LEN} pixel bytes)"
            ),
            format!(
                "{} bytes: {} whole records and {partial} bytes of a cut-off one",
                bytes.len(),
                bytes.len() / RECORD_LEN
            ),
        ));
    }
    let count = bytes.len() / RECORD_LEN;
    let mut labels = Vec::with_capacity(count);
    let mut pixels = Vec::with_capacity(count * IMAGE_LEN);
    for (i, record) in bytes.chunks_exact(RECORD_LEN).enumerate() {
        let label = record[0];
        if usize::from(label) >= CLASSES {
            return Err(DataError::malformed(
                name,
                Offset::File((i * RECORD_LEN) as u64),
                format!("a label below {CLASSES} (record {i})"),
                label.to_string(),
            ));
        }
        labels.push(label);
        pixels.extend_from_slice(&record[1..]);
    }
    let [c, h, w] = IMAGE_SHAPE;
    let images =
        Array4::from_shape_vec((count, c, h, w), pixels).map_err(|e| DataError::Invalid {
            what: "CIFAR-10 image array",
            expected: format!("{count} x {c} x {h} x {w} values"),
            found: e.to_string(),
        })?;
    Ok((images, Array1::from(labels)))
}

/// Reads a CIFAR-10 batch file; see [`decode_batch`].
pub fn read_batch(path: &Path) -> Result<(Array4<u8>, Array1<u8>)> {
    let bytes = read_file(path, "expected a CIFAR-10 binary batch file")?;
    decode_batch(&path.display().to_string(), &bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::test_support::cifar_records;

    #[test]
    fn records_become_planes_and_labels() {
        let (images, labels) = decode_batch("b", &cifar_records(&[3, 7])).unwrap();
        assert_eq!(images.shape(), &[2, 3, 32, 32]);
        assert_eq!(labels.to_vec(), vec![3, 7]);
        // Record 1 (label 7): pixel i is (7 + i) mod 256; green plane starts at i = 1024.
        assert_eq!(images[[1, 0, 0, 0]], 7);
        assert_eq!(images[[1, 1, 0, 0]], ((7 + 1024) % 256) as u8);
        assert_eq!(images[[1, 2, 31, 31]], ((7 + 3071) % 256) as u8);
    }

    #[test]
    fn a_cut_off_record_is_located() {
        let bytes = cifar_records(&[1, 2]);
        let err = decode_batch("b", &bytes[..RECORD_LEN + 10]).unwrap_err();
        let DataError::Malformed { offset, found, .. } = err else {
            panic!("expected Malformed, got {err}")
        };
        assert_eq!(offset, Offset::File(RECORD_LEN as u64));
        assert_eq!(
            found,
            "3083 bytes: 1 whole records and 10 bytes of a cut-off one"
        );
        assert!(decode_batch("b", &[]).is_err());
    }

    #[test]
    fn a_label_out_of_range_is_located() {
        let mut bytes = cifar_records(&[1, 2, 3]);
        bytes[2 * RECORD_LEN] = 10;
        let err = decode_batch("b", &bytes).unwrap_err().to_string();
        assert!(
            err.contains("at byte 6146") && err.contains("record 2"),
            "{err}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        /// Arbitrary bytes (an arbitrary head, repeated to lengths around the record
        /// size so that whole records occur).
        #[test]
        fn arbitrary_bytes_never_panic(
            head in prop::collection::vec(any::<u8>(), 0..48),
            len in prop_oneof![Just(None), (RECORD_LEN - 2..RECORD_LEN + 2).prop_map(Some), Just(Some(2 * RECORD_LEN))],
        ) {
            let bytes: Vec<u8> = match len {
                None => head,
                Some(len) if !head.is_empty() => head.iter().copied().cycle().take(len).collect(),
                Some(_) => Vec::new(),
            };
            match decode_batch("fuzz", &bytes) {
                Ok((images, labels)) => {
                    prop_assert_eq!(labels.len() * RECORD_LEN, bytes.len());
                    prop_assert_eq!(images.len(), labels.len() * IMAGE_LEN);
                }
                Err(e) => prop_assert!(matches!(e, DataError::Malformed { .. }), "{}", e),
            }
        }

        /// Valid batches with a few edits (byte flips, cuts, additions): an error or the
        /// exact records, never a panic.
        #[test]
        fn mutated_valid_batches_never_panic(
            labels in prop::collection::vec(0..10u8, 1..3),
            flips in prop::collection::vec((any::<usize>(), any::<bool>(), any::<u8>()), 0..3),
            resize in -3i32..3,
        ) {
            let mut bytes = cifar_records(&labels);
            for (at, on_label, value) in &flips {
                // Half of the edits hit a label byte, the rest any byte.
                let i = if *on_label { (at % labels.len()) * RECORD_LEN } else { at % bytes.len() };
                bytes[i] = *value;
            }
            let new_len = (bytes.len() as i64 + i64::from(resize)) as usize;
            bytes.resize(new_len, 0xAB);
            if let Ok((images, decoded)) = decode_batch("fuzz", &bytes) {
                for (i, record) in bytes.chunks_exact(RECORD_LEN).enumerate() {
                    prop_assert_eq!(decoded[i], record[0]);
                    let plane = images.index_axis(ndarray::Axis(0), i);
                    prop_assert!(plane.iter().eq(record[1..].iter()));
                }
            }
        }
    }
}
