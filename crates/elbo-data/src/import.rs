//! Importing a data set's files from a local path (`cargo xtask data ... --from`),
//! verified exactly as downloads are.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::download::already_present;
use crate::error::{DataError, Result};
use crate::manifest::{Manifest, RemoteFile};
use crate::progress::{DownloadEvent, FetchedFile, Outcome};
use crate::staging::{CopyError, Staged};

/// Copies the files of `manifest` from `from` into `dir` (created if needed), verified.
///
/// `from` is a folder holding the files under their manifest names, or one file: a
/// file whose name is in the manifest, or any file if the manifest has a single one
/// (CIFAR-10's archive). Files `dir` already holds, verified, are not copied again;
/// every other file of the manifest must be found in `from`. The source files are
/// never changed.
pub fn import(
    manifest: &Manifest,
    from: &Path,
    dir: &Path,
    observer: &mut dyn FnMut(DownloadEvent<'_>),
) -> Result<Vec<FetchedFile>> {
    if !from.exists() {
        return Err(DataError::Missing {
            path: from.to_owned(),
            hint: "expected a folder holding the data set's files, or one of the files".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, "creating", e))?;
    let mut fetched = Vec::with_capacity(manifest.files.len());
    for file in manifest.files.iter() {
        let dest = dir.join(file.name.as_ref());
        let pinned = file.sha256.is_some();
        if let Some(digests) = already_present(file, &dest)? {
            observer(DownloadEvent::AlreadyPresent {
                file: &file.name,
                path: &dest,
            });
            fetched.push(FetchedFile {
                name: file.name.to_string(),
                path: dest,
                digests,
                sha256_pinned: pinned,
                outcome: Outcome::AlreadyPresent,
            });
            continue;
        }
        let source = source_of(manifest, file, from)?;
        let digests = copy_verified(file, &source, dir, &dest, observer)?;
        observer(DownloadEvent::Verified {
            file: &file.name,
            path: &dest,
            digests: &digests,
        });
        fetched.push(FetchedFile {
            name: file.name.to_string(),
            path: dest,
            digests,
            sha256_pinned: pinned,
            outcome: Outcome::Imported,
        });
    }
    Ok(fetched)
}

/// Where to take `file` from.
fn source_of(manifest: &Manifest, file: &RemoteFile, from: &Path) -> Result<PathBuf> {
    if from.is_dir() {
        let path = from.join(file.name.as_ref());
        return if path.is_file() {
            Ok(path)
        } else {
            Err(DataError::Missing {
                path,
                hint: format!(
                    "expected {} ({}) in the folder to import from",
                    file.name,
                    match (&file.sha256, &file.md5) {
                        (Some(sha), _) => format!("sha256 {sha}"),
                        (None, Some(md5)) => format!("md5 {md5}"),
                        (None, None) => "no digest pinned".into(),
                    }
                ),
            })
        };
    }
    let same_name = from.file_name().and_then(|n| n.to_str()) == Some(file.name.as_ref());
    if same_name || manifest.files.len() == 1 {
        Ok(from.to_owned())
    } else {
        Err(DataError::Missing {
            path: from.with_file_name(file.name.as_ref()),
            hint: format!(
                "importing one file gives only {}; pass the folder holding all the files",
                from.display()
            ),
        })
    }
}

fn copy_verified(
    file: &RemoteFile,
    source: &Path,
    dir: &Path,
    dest: &Path,
    observer: &mut dyn FnMut(DownloadEvent<'_>),
) -> Result<crate::Digests> {
    let mut reader = File::open(source).map_err(|e| DataError::io(source, "opening", e))?;
    let total = reader.metadata().ok().map(|m| m.len());
    let shown = source.display().to_string();
    observer(DownloadEvent::Started {
        file: &file.name,
        source: &shown,
        total,
    });
    let mut staged = Staged::create(dir, &file.name)?;
    let name: &str = &file.name;
    staged
        .copy_from(&mut reader, &mut |received| {
            observer(DownloadEvent::Progress {
                file: name,
                received,
            })
        })
        .map_err(|e| match e {
            CopyError::Read(e) => DataError::io(source, "reading", e),
            CopyError::Local(e) => e,
        })?;
    staged.commit(
        file,
        dest,
        "the copy was deleted (the source file was left alone)",
    )
}

#[cfg(test)]
mod tests;
