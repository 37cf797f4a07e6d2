//! Files written under a temporary name and moved into place only once verified.
//!
//! A staged file lives in the destination folder as `.<name>.<random>.part`, is
//! hashed as it is written, and on commit is checked against the manifest, flushed to
//! disk (`fsync`), renamed to its final name (atomic within one folder) and the
//! folder flushed too. A failed check, an error or a panic drops the staged file,
//! which deletes it: nothing half-written ever sits under a final name.

use std::io::{self, Read, Write};
use std::path::Path;

use tempfile::NamedTempFile;

use crate::checksum::{Digests, Hasher, verify};
use crate::error::{DataError, Result};
use crate::manifest::RemoteFile;

/// A file being written under a temporary name.
pub(crate) struct Staged {
    file: NamedTempFile,
    hasher: Hasher,
    written: u64,
}

/// Why copying into a staged file stopped.
pub(crate) enum CopyError {
    /// Reading the source failed (for a download: worth retrying).
    Read(io::Error),
    /// Writing the staged file failed.
    Local(DataError),
}

impl Staged {
    /// A new, empty staged file for `name` in `dir`.
    pub(crate) fn create(dir: &Path, name: &str) -> Result<Self> {
        let file = tempfile::Builder::new()
            .prefix(&format!(".{name}.{}.", std::process::id()))
            .suffix(".part")
            .tempfile_in(dir)
            .map_err(|e| DataError::io(dir, "creating a temporary file in", e))?;
        Ok(Staged {
            file,
            hasher: Hasher::default(),
            written: 0,
        })
    }

    /// The temporary path.
    #[cfg(test)]
    pub(crate) fn path(&self) -> std::path::PathBuf {
        self.file.path().to_owned()
    }

    /// Copies all of `source` in, calling `progress` with the running byte count.
    pub(crate) fn copy_from(
        &mut self,
        source: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> std::result::Result<u64, CopyError> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => return Ok(self.written),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            };
            self.file
                .write_all(&buf[..n])
                .map_err(|e| CopyError::Local(DataError::io(self.file.path(), "writing", e)))?;
            self.hasher.update(&buf[..n]);
            self.written += n as u64;
            progress(self.written);
        }
    }

    /// Checks the digests against `expected` and moves the file to `dest`; on a
    /// mismatch the staged file is deleted and the error (with `consequence`) returned.
    pub(crate) fn commit(
        self,
        expected: &RemoteFile,
        dest: &Path,
        consequence: &'static str,
    ) -> Result<Digests> {
        let Staged { file, hasher, .. } = self;
        let digests = hasher.finish();
        verify(&dest.display().to_string(), expected, &digests, consequence)?;
        file.as_file()
            .sync_all()
            .map_err(|e| DataError::io(file.path(), "flushing", e))?;
        file.persist(dest)
            .map_err(|e| DataError::io(dest, "moving the verified file to", e.error))?;
        sync_parent(dest)?;
        Ok(digests)
    }
}

/// Writes `bytes` as the file `dest`, whole or not at all: a temporary file in its
/// folder, synced, renamed into place (what elbo-data writes besides downloads, e.g. the
/// converted Inception weights).
pub(crate) fn write_whole(dest: &Path, bytes: &[u8]) -> Result<()> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut staged = Staged::create(dir, &name)?;
    staged
        .file
        .write_all(bytes)
        .and_then(|()| staged.file.as_file().sync_all())
        .map_err(|e| DataError::io(dest, "writing", e))?;
    staged
        .file
        .persist(dest)
        .map_err(|e| DataError::io(dest, "moving the written file to", e.error))?;
    sync_parent(dest)
}

/// Removes the staged files of `name` in `dir` that processes which are gone left behind
/// (an interrupted download): `.<name>.<pid>.<random>.part` whose `pid` no longer runs
/// (on Linux, no /proc/<pid>). Returns the files removed.
pub(crate) fn remove_stale(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let prefix = format!(".{name}.");
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        if !rest.ends_with(".part") {
            continue;
        }
        let owner = rest.split('.').next().and_then(|p| p.parse::<u32>().ok());
        let alive = owner.is_some_and(|pid| {
            pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
        });
        // A staged file without a process id is from before they carried one: stale.
        if !alive && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// Flushes the folder holding `path`, so that a rename survives a crash.
fn sync_parent(path: &Path) -> Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| DataError::io(dir, "flushing", e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::checksum::digest_bytes;

    fn entry(bytes: &[u8]) -> RemoteFile {
        let d = digest_bytes(bytes);
        RemoteFile {
            name: Cow::Borrowed("f.bin"),
            md5: Some(Cow::Owned(d.md5)),
            sha256: Some(Cow::Owned(d.sha256)),
            size: None,
        }
    }

    #[test]
    fn stale_staged_files_of_gone_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mine = Staged::create(dir.path(), "a.gz").unwrap();
        // pid 0 is never a process's; the second is from before staged files had a pid.
        for stale in [".a.gz.0.x1y2.part", ".a.gz.q7Zr.part"] {
            std::fs::write(dir.path().join(stale), b"half").unwrap();
        }
        std::fs::write(dir.path().join(".b.gz.0.x.part"), b"other file").unwrap();
        let removed = remove_stale(dir.path(), "a.gz");
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(mine.path().exists(), "a live download's file stays");
        assert!(dir.path().join(".b.gz.0.x.part").exists());
    }

    #[test]
    fn a_verified_file_is_moved_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut staged = Staged::create(dir.path(), "f.bin").unwrap();
        let temp = staged.path();
        assert!(
            temp.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(".f.bin.")
        );
        let mut seen = 0;
        staged
            .copy_from(&mut &b"hello"[..], &mut |n| seen = n)
            .ok()
            .unwrap();
        assert_eq!(seen, 5);
        let dest = dir.path().join("f.bin");
        staged.commit(&entry(b"hello"), &dest, "deleted").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        assert!(!temp.exists());
    }

    #[test]
    fn a_mismatch_deletes_the_staged_file_and_reports_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        let mut staged = Staged::create(dir.path(), "f.bin").unwrap();
        let temp = staged.path();
        staged
            .copy_from(&mut &b"hellO"[..], &mut |_| {})
            .ok()
            .unwrap();
        let dest = dir.path().join("f.bin");
        let expected = entry(b"hello");
        let err = staged
            .commit(&expected, &dest, "the file was deleted")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected.md5.as_deref().unwrap_or_default()),
            "{err}"
        );
        assert!(err.contains(&digest_bytes(b"hellO").md5), "{err}");
        assert!(!temp.exists() && !dest.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
