//! The crate's error type.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while drawing or writing a chart. Bad data is not an
/// error: non-finite points are skipped and empty panels say so in the image.
#[derive(Debug)]
#[non_exhaustive]
pub enum PlotError {
    /// The image would be empty or larger than [`MAX_SIDE`](crate::MAX_SIDE) pixels on
    /// a side (for example a figure of thousands of panels).
    Size {
        /// `"width"` or `"height"`.
        side: &'static str,
        /// The size the image would have had, in pixels.
        found: usize,
    },
    /// The PNG encoder refused the image.
    Encode(png::EncodingError),
    /// Writing the file failed.
    Io {
        /// The file (for a failed write, the temporary file next to the target).
        path: PathBuf,
        /// What was being done, e.g. "writing".
        action: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// The path to write to names no file (it ends in `..` or is a root).
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
}

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlotError::Size { side, found } => write!(
                f,
                "expected an image {side} of 1 to {} pixels, found {found}",
                crate::MAX_SIDE
            ),
            PlotError::Encode(err) => write!(f, "encoding the PNG: {err}"),
            PlotError::Io {
                path,
                action,
                source,
            } => write!(f, "{}: {action}: {source}", path.display()),
            PlotError::NotAFile { path } => write!(
                f,
                "expected a path to a file, found {:?}, which has no file name",
                path.display()
            ),
        }
    }
}

impl std::error::Error for PlotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PlotError::Encode(err) => Some(err),
            PlotError::Io { source, .. } => Some(source),
            PlotError::Size { .. } | PlotError::NotAFile { .. } => None,
        }
    }
}

impl From<png::EncodingError> for PlotError {
    fn from(err: png::EncodingError) -> PlotError {
        PlotError::Encode(err)
    }
}
