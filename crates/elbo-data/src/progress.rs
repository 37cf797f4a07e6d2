//! What downloads and imports report: events while they run, and a result per file.
//!
//! The library draws nothing: callers pass an observer (`&mut dyn FnMut(DownloadEvent)`)
//! and show the events as they like (the xtask draws progress bars from them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::checksum::Digests;

/// Something that happened while fetching a data set's files.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum DownloadEvent<'a> {
    /// The file is already in place with the right digests; it is not fetched again.
    AlreadyPresent {
        /// The file name.
        file: &'a str,
        /// Where it is.
        path: &'a Path,
    },
    /// A transfer begins (again, after a retry).
    Started {
        /// The file name.
        file: &'a str,
        /// The URL, or for an import the source path.
        source: &'a str,
        /// The announced length, if any.
        total: Option<u64>,
    },
    /// More bytes arrived.
    Progress {
        /// The file name.
        file: &'a str,
        /// Bytes received so far in this attempt.
        received: u64,
    },
    /// An attempt failed; another follows after `delay`.
    Retrying {
        /// The file name.
        file: &'a str,
        /// The attempt that failed, from 1.
        attempt: u32,
        /// The wait before the next one.
        delay: Duration,
        /// Why it failed.
        error: &'a str,
    },
    /// The file was verified and moved to its final name.
    Verified {
        /// The file name.
        file: &'a str,
        /// Where it is.
        path: &'a Path,
        /// Its digests.
        digests: &'a Digests,
    },
}

/// How a file came to be in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was there already, with the right digests.
    AlreadyPresent,
    /// It was downloaded.
    Downloaded,
    /// It was copied from a local path.
    Imported,
}

/// One verified file of a data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedFile {
    /// The file name.
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its digests.
    pub digests: Digests,
    /// Whether the manifest pinned its sha256 (if not, only the md5 was checked, and
    /// `digests.sha256` is the value to pin).
    pub sha256_pinned: bool,
    /// How it came to be there.
    pub outcome: Outcome,
}
