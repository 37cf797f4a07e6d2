//! numpy's `.npy` arrays and `.npz` archives of them: what guided-diffusion's sample
//! files (`arr_0` uint8 NHWC images, `arr_1` labels) and pytorch-fid's statistics files
//! (`mu`, `sigma` in float64) are.
//!
//! Arrays are little-endian and C-ordered; the header is version 1.0 (2.0 when it would
//! not fit), padded so that the data starts at a multiple of 64 bytes, as numpy writes
//! it.

use std::io::{Read, Write};
use std::path::Path;

use crate::error::{DataError, Offset, Result};
use crate::zip::{ZipArchive, ZipWriter};

const MAGIC: &[u8] = b"\x93NUMPY";

/// An element type of the arrays elbo reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// `|u1`.
    U8,
    /// `<i8`.
    I64,
    /// `<f4`.
    F32,
    /// `<f8`.
    F64,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Dtype::U8 => "|u1",
            Dtype::I64 => "<i8",
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::F32 => 4,
            Dtype::I64 | Dtype::F64 => 8,
        }
    }

    fn parse(descr: &str) -> Option<Dtype> {
        [Dtype::U8, Dtype::I64, Dtype::F32, Dtype::F64]
            .into_iter()
            .find(|d| d.descr() == descr || (d.size() == 1 && descr == "<u1"))
    }
}

/// One array: its element type, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The element type.
    pub dtype: Dtype,
    /// The shape (C order).
    pub shape: Vec<usize>,
    /// `product(shape) * dtype.size()` bytes.
    pub data: Vec<u8>,
}

impl Array {
    /// A float64 array.
    pub fn f64(shape: Vec<usize>, values: &[f64]) -> Array {
        Array {
            dtype: Dtype::F64,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The values of a float64 or float32 array, as f64.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        match self.dtype {
            Dtype::F64 => Some(
                self.data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect(),
            ),
            Dtype::F32 => Some(
                self.data
                    .chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap_or_default())))
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// The header of an array of `dtype` and `shape`, padded to a multiple of 64 bytes.
pub fn header(dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {dims}, }}",
        dtype.descr()
    );
    // numpy leaves room for the first axis to grow to 21 digits in place.
    let growth = shape
        .first()
        .map_or(0, |d| 21usize.saturating_sub(d.to_string().len()));
    let dict = format!("{dict}{}", " ".repeat(growth));
    let (version, prefix) = if dict.len() + 1 + 10 <= 65_535 {
        (1u8, 10)
    } else {
        (2, 12)
    };
    let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    let len = total - prefix;
    if version == 1 {
        out.extend_from_slice(&(len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// The `.npy` bytes of `array`.
pub fn to_npy(array: &Array) -> Vec<u8> {
    let mut out = header(array.dtype, &array.shape);
    out.extend_from_slice(&array.data);
    out
}

/// Parses `.npy` bytes; `file` names them in errors.
pub fn from_npy(file: &str, bytes: &[u8]) -> Result<Array> {
    let bad = |at: u64, expected: &str, found: String| DataError::Malformed {
        file: file.to_owned(),
        offset: Offset::File(at),
        expected: expected.to_owned(),
        found,
    };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(0, "a .npy array (\\x93NUMPY)", "other bytes".into()));
    }
    let (len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(6, "format version 1, 2 or 3", format!("version {v}"))),
    };
    let text = bytes
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad(start as u64, "a text header", "a cut or binary one".into()))?;
    let field = |key: &str| -> Option<&str> {
        let at = text.find(&format!("'{key}':"))? + key.len() + 3;
        Some(text[at..].trim_start())
    };
    let descr = field("descr")
        .and_then(|v| v.strip_prefix('\'')?.split('\'').next())
        .ok_or_else(|| bad(start as u64, "a 'descr' entry", text.into()))?;
    let dtype = Dtype::parse(descr).ok_or_else(|| {
        bad(
            start as u64,
            "dtype |u1, <i8, <f4 or <f8 (little-endian)",
            descr.into(),
        )
    })?;
    if field("fortran_order").is_none_or(|v| !v.starts_with("False")) {
        return Err(bad(
            start as u64,
            "fortran_order False (C order)",
            text.into(),
        ));
    }
    let dims = field("shape")
        .and_then(|v| v.strip_prefix('(')?.split(')').next())
        .ok_or_else(|| bad(start as u64, "a 'shape' tuple", text.into()))?;
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| bad(start as u64, "a shape of whole numbers", dims.into()))?;
    let data = &bytes[start + len..];
    let expected = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .unwrap_or(usize::MAX);
    if data.len() != expected {
        return Err(bad(
            (start + len) as u64,
            &format!("{expected} bytes of data for shape {shape:?} of {descr}"),
            format!("{} bytes", data.len()),
        ));
    }
    Ok(Array {
        dtype,
        shape,
        data: data.to_vec(),
    })
}

/// Writes the arrays `named` as an `.npz` archive (stored members `<name>.npy`) to `out`.
pub fn write_npz(out: impl Write, named: &[(&str, &Array)]) -> std::io::Result<()> {
    let mut zip = ZipWriter::new(out);
    for (name, array) in named {
        zip.add_bytes(&format!("{name}.npy"), &to_npy(array))?;
    }
    zip.finish()?;
    Ok(())
}

/// Writes one member `<name>.npy` of `dtype` and `shape` into `zip`, its data read from
/// `data` (`crc` is the CRC-32 of the data alone, `data_len` its length): for arrays too
/// large to hold in memory (an export of 50,000 images).
pub fn add_npy_member<W: Write>(
    zip: &mut ZipWriter<W>,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    data_len: u64,
    data_crc: u32,
    data: &mut dyn Read,
) -> std::io::Result<()> {
    let head = header(dtype, shape);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    let combined = {
        // CRC-32 of header || data from the two CRCs.
        let mut h = crc.clone();
        h.combine(&crc32fast::Hasher::new_with_initial_len(data_crc, data_len));
        h.finalize()
    };
    let size = head.len() as u64 + data_len;
    let mut chain = (&head[..]).chain(data);
    zip.add(&format!("{name}.npy"), size, combined, &mut chain)
}

/// Reads every array of the `.npz` file at `path`, by name (without `.npy`).
pub fn read_npz(path: &Path) -> Result<Vec<(String, Array)>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, "reading", e))?;
    let file = path.display().to_string();
    let zip = ZipArchive::new(&file, &bytes)?;
    zip.members()
        .iter()
        .map(|m| {
            let name = m.name.strip_suffix(".npy").unwrap_or(&m.name).to_owned();
            let array = from_npy(&format!("{file}:{}", m.name), &zip.read(m)?)?;
            Ok((name, array))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_numpys_own() {
        // The bytes numpy 2 writes for np.save of np.zeros((2, 3), np.uint8) and of a
        // 1-d float64 array of 4: the dict, room for the first axis to grow, spaces
        // and a newline ending at a multiple of 64 bytes.
        let h = header(Dtype::U8, &[2, 3]);
        assert_eq!(h.len(), 128);
        let text = std::str::from_utf8(&h[10..]).unwrap();
        assert!(text.starts_with("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(text.ends_with(" \n"));
        assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(u16::from_le_bytes([h[8], h[9]]), 118);
        let one = header(Dtype::F64, &[4]);
        assert!(String::from_utf8_lossy(&one[10..]).contains("'shape': (4,), }"));
    }

    #[test]
    fn arrays_round_trip_through_npz() {
        let a = Array::f64(vec![2, 2], &[1.0, -2.5, 3.25, 1e-300]);
        let b = Array {
            dtype: Dtype::U8,
            shape: vec![3],
            data: vec![0, 128, 255],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.npz");
        write_npz(
            std::fs::File::create(&path).unwrap(),
            &[("mu", &a), ("arr_0", &b)],
        )
        .unwrap();
        let back = read_npz(&path).unwrap();
        assert_eq!(back[0], ("mu".to_string(), a.clone()));
        assert_eq!(back[1], ("arr_0".to_string(), b));
        assert_eq!(back[0].1.to_f64().unwrap(), [1.0, -2.5, 3.25, 1e-300]);
    }

    #[test]
    fn a_streamed_member_equals_a_whole_one() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let array = Array {
            dtype: Dtype::U8,
            shape: vec![10, 10, 10],
            data: data.clone(),
        };
        let mut whole = Vec::new();
        write_npz(&mut whole, &[("arr_0", &array)]).unwrap();
        let mut zip = ZipWriter::new(Vec::new());
        let crc = crc32fast::hash(&data);
        add_npy_member(
            &mut zip,
            "arr_0",
            Dtype::U8,
            &[10, 10, 10],
            1000,
            crc,
            &mut &data[..],
        )
        .unwrap();
        assert_eq!(zip.finish().unwrap(), whole);
    }

    #[test]
    fn wrong_arrays_are_refused_naming_what() {
        let mut npy = to_npy(&Array::f64(vec![3], &[1.0, 2.0, 3.0]));
        npy.pop();
        let err = from_npy("x.npy", &npy).unwrap_err().to_string();
        assert!(
            err.contains("24 bytes of data for shape [3]") && err.contains("23"),
            "{err}"
        );
        let mut big_endian = to_npy(&Array::f64(vec![1], &[1.0]));
        big_endian[21] = b'>';
        let err = from_npy("b.npy", &big_endian).unwrap_err().to_string();
        assert!(err.contains(">f8"), "{err}");
        assert!(from_npy("t.npy", b"text").is_err());
    }
}
