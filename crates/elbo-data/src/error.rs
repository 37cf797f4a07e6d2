//! The crate's error type.
//!
//! Every error about a file's content names the file, what was expected, what was
//! found and where (a byte offset); every error about a download names the URL.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// The result type of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// What to do when a download cannot reach its host (appended to download errors).
pub(crate) const OFFLINE_HINT: &str = "if this machine is offline or cannot reach the host, \
     fetch the files elsewhere and import them with `cargo xtask data <set> --from PATH` \
     (library: `elbo_data::import`), or use a mirror with `--mirror URL` \
     (library: `Manifest::with_base_url`)";

/// Where in a file a problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// A byte offset in the file as stored on disk.
    File(u64),
    /// A byte offset in the decompressed content of a gzip-compressed file.
    Decompressed(u64),
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offset::File(n) => write!(f, "byte {n}"),
            Offset::Decompressed(n) => write!(f, "byte {n} of the decompressed data"),
        }
    }
}

/// Everything that can go wrong while reading, downloading or batching data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file's content does not follow its format.
    #[error("{file}: at {offset}: expected {expected}, found {found}")]
    Malformed {
        /// The file (for an archive member: `archive:member`).
        file: String,
        /// Where the problem starts.
        offset: Offset,
        /// What the format requires there.
        expected: String,
        /// What the file holds there.
        found: String,
    },
    /// Reading or writing a local file failed.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done, e.g. "reading".
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// An image file that cannot be decoded (truncated, damaged, or not the format its
    /// name says).
    #[error(
        "{}: {detail}; expected an image it can decode (--skip-bad leaves such files out, listed)",
        path.display()
    )]
    BadImage {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        detail: String,
    },
    /// A needed file or folder does not exist.
    #[error("{}: not found; {hint}", path.display())]
    Missing {
        /// The path looked for.
        path: PathBuf,
        /// How to get it.
        hint: String,
    },
    /// A file's digest differs from the one it must have. The file was deleted (for a
    /// download or an import) or left alone (for the bundled data set).
    #[error(
        "{file}: {algorithm} checksum mismatch: expected {expected}, found {actual}; {consequence}"
    )]
    Checksum {
        /// The file.
        file: String,
        /// `md5` or `sha256`.
        algorithm: &'static str,
        /// The digest the manifest or checksum list gives.
        expected: String,
        /// The digest of the bytes at hand.
        actual: String,
        /// What happened to the file.
        consequence: &'static str,
    },
    /// A manifest entry pins no digest, so a download could not be verified.
    #[error(
        "{file}: the manifest pins neither an md5 nor a sha256 digest: nothing to verify the file against"
    )]
    Unpinned {
        /// The file.
        file: String,
    },
    /// The server answered with an HTTP status that retrying does not change.
    #[error("{url}: the server answered HTTP {status}; {OFFLINE_HINT}")]
    HttpStatus {
        /// The URL requested.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The download failed on every attempt (host unreachable, connection dropped,
    /// body cut short, server error).
    #[error("could not download {url} ({attempts} attempt(s)): {error}; {OFFLINE_HINT}")]
    Download {
        /// The URL requested.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        error: String,
    },
    /// The server sends (or announces) more bytes than the file has: a wrong file, or a
    /// server that would fill the disk.
    #[error(
        "{url} sends more than the {expected} bytes {name} has (it announced or sent {found}): refused, and nothing of it kept"
    )]
    TooLarge {
        /// The URL requested.
        url: String,
        /// The file.
        name: String,
        /// Its size in bytes, from the manifest.
        expected: u64,
        /// The bytes announced (Content-Length) or received when refused.
        found: u64,
    },
    /// A request for data that the data set does not hold.
    #[error("index {index} is out of range for a data set of {len} examples")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The number of examples.
        len: usize,
    },
    /// A value that does not make sense (e.g. images and labels of different counts).
    #[error("invalid {what}: expected {expected}, found {found}")]
    Invalid {
        /// What the value is.
        what: &'static str,
        /// What it must be.
        expected: String,
        /// What it is.
        found: String,
    },
}

impl DataError {
    /// A [`DataError::Malformed`].
    pub(crate) fn malformed(
        file: &str,
        offset: Offset,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        DataError::Malformed {
            file: file.to_owned(),
            offset,
            expected: expected.into(),
            found: found.into(),
        }
    }

    /// A [`DataError::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}

/// Reads a whole file, mapping a missing file to [`DataError::Missing`] with `hint`.
pub(crate) fn read_file(path: &std::path::Path, hint: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_owned(),
                hint: hint.to_owned(),
            }
        } else {
            DataError::io(path, "reading", source)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_names_file_offset_expected_and_found() {
        let e = DataError::malformed("a.idx", Offset::Decompressed(12), "3 dimensions", "1");
        assert_eq!(
            e.to_string(),
            "a.idx: at byte 12 of the decompressed data: expected 3 dimensions, found 1"
        );
    }

    #[test]
    fn download_errors_point_to_the_alternatives() {
        let e = DataError::Download {
            url: "http://h/f".into(),
            attempts: 2,
            error: "connection refused".into(),
        };
        let text = e.to_string();
        for needle in ["http://h/f", "connection refused", "--from", "--mirror"] {
            assert!(text.contains(needle), "{text}");
        }
    }
}
