//! PNG charts with no dependency but the `png` encoder: training curves as small
//! multiples ([`Figure`]) and horizontal bar charts ([`BarChart`]), drawn on an RGB
//! [`Canvas`] with a built-in 5x7 bitmap font (no font files, no system fonts).
//!
//! A [`Figure`] is a grid of [`Panel`]s (two or three to a row), each with its own axes,
//! round tick values (steps of 1, 2 or 5 times a power of ten, see [`Axis`]), a legend
//! and its [`Series`]. Bad data is drawn, not refused: a point with a NaN or infinite
//! coordinate is skipped (and counted in the legend), a lone point is a dot, equal
//! values get a range around them, and a panel with nothing to plot says so.
//!
//! ```
//! use elbo_plot::{Figure, Panel, Series, Style};
//!
//! let train: Vec<(f64, f64)> = (1..=20).map(|e| (e as f64, 200.0 / e as f64 + 90.0)).collect();
//! // An evaluation every 5 epochs; one of them diverged.
//! let test = vec![(5.0, 131.0), (10.0, 112.0), (15.0, f64::NAN), (20.0, 101.5)];
//! let figure = Figure {
//!     title: "vae-mlp on MNIST".into(),
//!     panels: vec![Panel {
//!         title: "negative ELBO (nats)".into(),
//!         x_label: "epoch".into(),
//!         series: vec![
//!             Series { name: "train".into(), points: train, style: Style::Line },
//!             Series { name: "test".into(), points: test, style: Style::LineAndDots },
//!         ],
//!     }],
//! };
//! let png = elbo_plot::render(&figure)?;
//! assert!(png.starts_with(&[0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n']));
//! # Ok::<(), elbo_plot::PlotError>(())
//! ```
//!
//! [`write`](fn@write) and [`write_bars`] write the file whole or not at all
//! ([`write_atomic`]).

mod axis;
mod bar;
mod canvas;
mod error;
pub mod font;
mod line;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub use axis::Axis;
pub use bar::{Bar, BarChart, MET, MISSED, TARGET, draw_bars, render_bars, write_bars};
pub use canvas::{Canvas, GREY, GRID, INK, MAX_SIDE, Rgb, WHITE};
pub use error::PlotError;
pub use line::{Figure, PALETTE, Panel, Series, Style, draw, render, write};

/// Writes `bytes` to `path` so that `path` never holds part of them
/// ([`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PlotError> {
    write_atomic_with(path, |temp| std::fs::write(temp, bytes))
}

/// Writes the file `path` so that it never holds part of what `write` writes: `write`
/// gets a new temporary file in the same folder (`.<name>.<process>.<n>.tmp`, created
/// empty for it), which is then flushed to disk and renamed over `path`. On failure the
/// temporary file is removed and `path` is left as it was. Every file elbo writes whole
/// goes through here (charts, pictures, checkpoints, run records, reports).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), PlotError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let Some(name) = path.file_name() else {
        return Err(PlotError::NotAFile {
            path: path.to_path_buf(),
        });
    };
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let tmp = folder.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    // The name is claimed (created new) before `write` fills it.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|_| write(&tmp))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all());
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(PlotError::Io {
            path: tmp,
            action: "writing the temporary file",
            source,
        });
    }
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        PlotError::Io {
            path: path.to_path_buf(),
            action: "renaming the temporary file into place",
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(folder: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        std::fs::write(&path, b"old").unwrap();
        write_atomic(&path, b"new bytes").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new bytes");
        assert_eq!(names(dir.path()), ["curves.png"]);
    }

    #[test]
    fn a_failed_atomic_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a folder that is not empty: the rename fails.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"x").unwrap();
        let err = write_atomic(&path, b"bytes").unwrap_err();
        assert!(
            err.to_string()
                .contains("renaming the temporary file into place"),
            "{err}"
        );
        assert_eq!(names(dir.path()), ["taken"]);
        // A folder that does not exist: nothing is created.
        let err = write_atomic(&dir.path().join("missing/a.png"), b"bytes").unwrap_err();
        assert!(matches!(err, PlotError::Io { .. }), "{err}");
        assert_eq!(names(dir.path()), ["taken"]);
        let err = write_atomic(Path::new("/"), b"bytes").unwrap_err();
        assert!(
            err.to_string().contains("expected a path to a file"),
            "{err}"
        );
    }
}
