//! Reading CIFAR-10 straight from `cifar-10-binary.tar.gz`, without extracting it.
//!
//! Members are matched by file name (`data_batch_1.bin`, ..., `test_batch.bin`), in
//! whatever folder of the archive; other members are skipped. A member's size from
//! its tar header is checked (a positive multiple of 3073) before it is read, and is
//! never used to size an allocation: memory grows with the bytes actually read.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use flate2::read::GzDecoder;

use crate::cifar::{self, RECORD_LEN};
use crate::dataset::{Dataset, Splits};
use crate::error::{DataError, Offset, Result};
use crate::load::{CIFAR10_BATCHES, splits_from_batches};

/// Loads the six batches from the archive at `path`.
pub fn load_cifar10_archive(path: &Path) -> Result<Splits> {
    let archive_name = path.display().to_string();
    let file = File::open(path).map_err(|e| DataError::io(path, "opening", e))?;
    let position = Rc::new(Cell::new(0u64));
    let counted = Counting {
        inner: BufReader::new(file),
        position: Rc::clone(&position),
    };
    let corrupt = |e: io::Error| {
        let at = position.get();
        DataError::malformed(
            &archive_name,
            Offset::File(at),
            "a complete gzip-compressed tar archive",
            format!("{e} (noticed after reading {at} bytes)"),
        )
    };

    let mut archive = tar::Archive::new(GzDecoder::new(counted));
    let mut batches: [Option<Dataset>; 6] = Default::default();
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let member_path = entry.path().map_err(corrupt)?.into_owned();
        let Some(slot) = member_path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| CIFAR10_BATCHES.iter().position(|b| *b == n))
        else {
            continue;
        };
        let member = format!("{archive_name}:{}", member_path.display());
        if batches[slot].is_some() {
            return Err(DataError::malformed(
                &member,
                Offset::File(entry.raw_header_position()),
                format!("one member named {}", CIFAR10_BATCHES[slot]),
                "a second one",
            ));
        }
        let declared = entry.size();
        if declared == 0 || declared % RECORD_LEN as u64 != 0 {
            return Err(DataError::malformed(
                &member,
                Offset::File(declared - declared % RECORD_LEN as u64),
                format!("a positive multiple of {RECORD_LEN} bytes"),
                format!("a member of {declared} bytes (by its tar header)"),
            ));
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(corrupt)?;
        let (images, labels) = cifar::decode_batch(&member, &bytes)?;
        batches[slot] = Some(Dataset::new(images, labels)?);
    }

    let mut parts = Vec::with_capacity(batches.len());
    for (slot, batch) in batches.into_iter().enumerate() {
        parts.push(batch.ok_or_else(|| DataError::Missing {
            path: path.join(CIFAR10_BATCHES[slot]),
            hint: format!(
                "expected a member named {} in the archive",
                CIFAR10_BATCHES[slot]
            ),
        })?);
    }
    splits_from_batches(parts)
}

/// A reader that counts the bytes it hands out (to locate errors in the archive).
struct Counting<R> {
    inner: R,
    position: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.position.set(self.position.get() + n as u64);
        Ok(n)
    }
}
