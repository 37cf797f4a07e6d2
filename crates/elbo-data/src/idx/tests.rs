use proptest::prelude::*;

use super::*;
use crate::error::{DataError, Offset};
use crate::test_support::{gzip, idx_images, idx_labels};

fn malformed(result: Result<impl Sized>) -> (Offset, String, String) {
    match result {
        Err(DataError::Malformed {
            offset,
            expected,
            found,
            ..
        }) => (offset, expected, found),
        Err(other) => panic!("expected a Malformed error, got {other}"),
        Ok(_) => panic!("expected a Malformed error, got Ok"),
    }
}

#[test]
fn decodes_raw_and_gzip_images_alike() {
    let pixels: Vec<u8> = (0..2 * 3 * 4).collect();
    let raw = idx_images(2, 3, 4, &pixels);
    let from_raw = decode_images("a", &raw).unwrap();
    let from_gz = decode_images("a", &gzip(&raw)).unwrap();
    assert_eq!(from_raw.shape(), &[2, 1, 3, 4]);
    assert_eq!(from_raw[[1, 0, 2, 3]], 23);
    assert_eq!(from_raw, from_gz);
}

#[test]
fn decodes_labels_and_checks_their_range() {
    let labels = decode_labels("l", &idx_labels(&[0, 9, 3]), 10).unwrap();
    assert_eq!(labels.to_vec(), vec![0, 9, 3]);

    let (offset, expected, found) = malformed(decode_labels("l", &idx_labels(&[0, 10]), 10));
    assert_eq!(offset, Offset::File(9));
    assert!(expected.contains("below 10"), "{expected}");
    assert_eq!(found, "10");
    let (offset, ..) = malformed(decode_labels("l", &gzip(&idx_labels(&[12])), 10));
    assert_eq!(offset, Offset::Decompressed(8));
}

#[test]
fn wrong_magic_type_and_dimension_count_are_located() {
    let mut bad = idx_images(1, 1, 1, &[0]);
    bad[0] = 0x50;
    let (offset, _, found) = malformed(decode_images("x", &bad));
    assert_eq!(offset, Offset::File(0));
    assert!(found.contains("not an IDX file"), "{found}");

    let mut bad = idx_images(1, 1, 1, &[0]);
    bad[2] = 0x0D;
    let (offset, _, found) = malformed(decode_images("x", &bad));
    assert_eq!(
        (offset, found.as_str()),
        (Offset::File(2), "data type 0x0D")
    );

    // A label file handed to the image reader: wrong dimension count.
    let (offset, expected, found) = malformed(decode_images("x", &idx_labels(&[1, 2])));
    assert_eq!(offset, Offset::File(3));
    assert!(expected.starts_with("3 dimension(s)") && found.starts_with("1 dimension(s)"));
}

#[test]
fn truncated_and_trailing_data_are_located() {
    let full = idx_images(2, 2, 2, &[7; 8]);
    let (offset, expected, found) = malformed(decode_images("x", &full[..full.len() - 3]));
    assert_eq!(offset, Offset::File(16 + 5));
    assert!(
        expected.starts_with("8 bytes") && found.contains("only 5 bytes"),
        "{found}"
    );

    let mut long = full.clone();
    long.push(1);
    let (offset, _, found) = malformed(decode_images("x", &long));
    assert_eq!(
        (offset, found.as_str()),
        (Offset::File(24), "1 trailing bytes")
    );

    let (offset, ..) = malformed(decode_images("x", &gzip(&long)));
    assert_eq!(offset, Offset::Decompressed(24));

    let (offset, ..) = malformed(decode_images("x", &full[..6]));
    assert_eq!(offset, Offset::File(4));
}

#[test]
fn a_header_claiming_four_billion_images_allocates_nothing() {
    // 2^32 - 1 images of 28 x 28 would be 3.4 TB; both frames refuse before allocating.
    let header = idx_images(u32::MAX, 28, 28, &[0; 100]);
    let (_, expected, found) = malformed(decode_images("huge", &header));
    assert!(expected.starts_with("3367254359280 bytes"), "{expected}");
    assert!(found.contains("only 100 bytes"), "{found}");
    let (_, _, found) = malformed(decode_images("huge.gz", &gzip(&header)));
    assert!(found.contains("cannot hold more than"), "{found}");
    // A product overflowing u64 saturates, and is refused the same way.
    let overflow = idx_images(u32::MAX, u32::MAX, u32::MAX, &[]);
    assert!(decode_images("o", &overflow).is_err());
}

#[test]
fn zero_rows_are_refused_but_zero_images_are_an_empty_set() {
    let (offset, ..) = malformed(decode_images("x", &idx_images(1, 0, 3, &[])));
    assert_eq!(offset, Offset::File(8));
    assert_eq!(
        decode_images("x", &idx_images(0, 2, 2, &[])).unwrap().len(),
        0
    );
}

#[test]
fn file_errors_name_the_path() {
    let err = read_images(Path::new("/nonexistent/train-images")).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
}

/// One change to a valid file.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        xor: u8,
    },
    Truncate {
        at: usize,
    },
    Append(Vec<u8>),
    Insert {
        at: usize,
        byte: u8,
    },
    /// Overwrites the 4-byte field starting at `4 * field` with `value`.
    Field {
        field: usize,
        value: u32,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        prop::collection::vec(any::<u8>(), 1..8).prop_map(Mutation::Append),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        (
            0..4usize,
            prop_oneof![any::<u32>(), Just(u32::MAX), 0..8u32]
        )
            .prop_map(|(field, value)| Mutation::Field { field, value }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len().max(1);
    match m {
        Mutation::Flip { at, xor } => {
            if let Some(b) = bytes.get_mut(at % len) {
                *b ^= xor;
            }
        }
        Mutation::Truncate { at } => bytes.truncate(at % len),
        Mutation::Append(extra) => bytes.extend_from_slice(extra),
        Mutation::Insert { at, byte } => bytes.insert(at % (bytes.len() + 1), *byte),
        Mutation::Field { field, value } => {
            let start = 4 * field;
            if let Some(slot) = bytes.get_mut(start..start + 4) {
                slot.copy_from_slice(&value.to_be_bytes());
            }
        }
    }
}

/// A small valid image file and its labels: (images, labels, count).
fn valid_pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (0..5u32, 1..4u32, 1..4u32).prop_flat_map(|(n, r, c)| {
        let pixels = prop::collection::vec(any::<u8>(), (n * r * c) as usize);
        let labels = prop::collection::vec(0..10u8, n as usize);
        (pixels, labels).prop_map(move |(p, l)| (idx_images(n, r, c, &p), idx_labels(&l)))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    /// Arbitrary bytes, some behind a valid magic number, some gzip-compressed: the
    /// readers return, never panic.
    #[test]
    fn arbitrary_bytes_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..64),
        frame in 0..4u8,
    ) {
        let bytes = match frame {
            0 => tail,
            1 => [&[0, 0, 8, 3][..], &tail].concat(),
            2 => gzip(&[&[0, 0, 8, 3][..], &tail].concat()),
            _ => gzip(&[&[0, 0, 8, 1][..], &tail].concat()),
        };
        let images = decode_images("fuzz", &bytes);
        let labels = decode_labels("fuzz", &bytes, 10);
        if let Ok(images) = images {
            prop_assert_eq!(images.len() + 16, bytes_len_decompressed(&bytes));
        }
        if let Ok(labels) = labels {
            prop_assert!(labels.iter().all(|&l| l < 10));
        }
    }

    /// Valid files with a few mutations, raw and gzip: never a panic, and whatever
    /// decodes is the file it claims to be (re-encoding gives the same content).
    #[test]
    fn mutated_valid_files_never_panic(
        (images, labels) in valid_pair(),
        mutations in prop::collection::vec(mutation(), 0..3),
        compress in any::<bool>(),
    ) {
        for original in [images, labels] {
            let mut content = original.clone();
            for m in &mutations {
                apply(&mut content, m);
            }
            let bytes = if compress { gzip(&content) } else { content.clone() };
            if let Ok(a) = decode_images("fuzz", &bytes) {
                let [n, _, r, c] = [a.shape()[0], a.shape()[1], a.shape()[2], a.shape()[3]];
                let again = idx_images(n as u32, r as u32, c as u32, a.as_slice().unwrap());
                prop_assert_eq!(&again, &content);
            }
            if let Ok(l) = decode_labels("fuzz", &bytes, 10) {
                prop_assert_eq!(&idx_labels(l.as_slice().unwrap()), &content);
            }
            if mutations.is_empty() {
                let ok = decode_images("fuzz", &bytes).is_ok() || decode_labels("fuzz", &bytes, 10).is_ok();
                prop_assert!(ok, "a valid file must decode");
            }
        }
    }
}

/// The length of the content of `bytes` (decompressed if gzip).
fn bytes_len_decompressed(bytes: &[u8]) -> usize {
    use std::io::Read;
    if crate::input::is_gzip(bytes) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out.len()
    } else {
        bytes.len()
    }
}
