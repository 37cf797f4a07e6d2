//! A folder of images as a data set, in torchvision's `ImageFolder` convention: one
//! sub-folder per class gives the labels (classes numbered in the sorted order of their
//! folders' names), a folder of images alone is unlabelled (every label 0).
//!
//! The test split is `PATH/test` when it exists (with `PATH/train`, or the rest of
//! `PATH`, for training), else a seeded fraction of the images. PNG, JPEG, WebP, BMP
//! and GIF (its first frame) are decoded with the `image` crate; files with other
//! extensions are not images and are passed over, as torchvision does. Images are
//! brought to one size by [`FolderOptions::image_size`]: the short side resized to it
//! with the triangle (bilinear) filter, whose support widens with the downscaling
//! factor (an antialiased resize, as PIL's `BILINEAR`), then the centre cropped to a
//! square. Without it, every image must have the same size. Channels: 3 (RGB), or 1
//! when asked or when every image is grey (a grey type, or colour pixels with equal
//! channels), converted as PIL's "L" is (`(299 R + 587 G + 114 B) / 1000`).
//! Alpha is dropped (composited over nothing: the colour channels as stored).
//!
//! Sub-folders are followed through symbolic links, each real folder once (a link
//! loop is read once, not forever); names that are not UTF-8 are kept as the bytes
//! they are and shown lossily in messages.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use ndarray::{Array1, Array4};

use crate::dataset::{Dataset, Splits};
use crate::error::{DataError, Result};
use crate::rng::EpochSeed;
use crate::shuffle::EpochOrder;

/// The extensions read as images (compared without case).
pub const EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "bmp", "gif"];

/// How a folder becomes a data set.
#[derive(Clone, Debug, PartialEq)]
pub struct FolderOptions {
    /// Resize the short side to this and crop the centre to a square (`None`: every
    /// image must already have one size).
    pub image_size: Option<u32>,
    /// 1 (grey) or 3 (RGB); `None`: 1 when every image is grey, else 3.
    pub channels: Option<u8>,
    /// The share of the images held out for testing when there is no `test/` folder
    /// (at least one image; none of a class-folder's images is favoured).
    pub test_fraction: f64,
    /// The seed of that split.
    pub seed: u64,
    /// Leave out files that cannot be decoded (listed in [`FolderData::skipped`])
    /// instead of failing on the first.
    pub skip_bad: bool,
}

impl Default for FolderOptions {
    /// Images as they are, channels from the images, 2 % held out (seed 0), no file
    /// skipped.
    fn default() -> Self {
        FolderOptions {
            image_size: None,
            channels: None,
            test_fraction: 0.02,
            seed: 0,
            skip_bad: false,
        }
    }
}

/// A folder read as a data set.
#[derive(Debug, Clone)]
pub struct FolderData {
    /// The train and test splits.
    pub splits: Splits,
    /// The class names, in label order (empty: unlabelled).
    pub classes: Vec<String>,
    /// The files left out with [`FolderOptions::skip_bad`], with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// One image and its label: a file, or bytes read from elsewhere (a parquet row),
/// named for messages by `path`.
pub(crate) struct Entry {
    pub(crate) path: PathBuf,
    pub(crate) label: u8,
    pub(crate) bytes: Option<Vec<u8>>,
}

fn io<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> DataError + 'a {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

fn invalid(what: &'static str, expected: impl Into<String>, found: impl Into<String>) -> DataError {
    DataError::Invalid {
        what,
        expected: expected.into(),
        found: found.into(),
    }
}

/// The entries of `dir`, sorted by name (as bytes).
fn sorted_entries(dir: &Path) -> Result<Vec<(OsString, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir, "listing"))? {
        let entry = entry.map_err(io(dir, "listing"))?;
        out.push((entry.file_name(), entry.path()));
    }
    out.sort();
    Ok(out)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Every image file below `dir` (sub-folders followed, each real folder once), sorted
/// by path.
fn images_below(dir: &Path, seen: &mut BTreeSet<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
    let real = std::fs::canonicalize(dir).map_err(io(dir, "resolving"))?;
    if !seen.insert(real) {
        return Ok(()); // a link back to a folder already read
    }
    for (_, path) in sorted_entries(dir)? {
        if path.is_dir() {
            images_below(&path, seen, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// The images of one split folder: labelled by class sub-folders (whose names are
/// `classes`, or become them when `classes` is empty), or unlabelled.
fn scan_split(dir: &Path, classes: &mut Vec<OsString>, skip: &[&str]) -> Result<Vec<Entry>> {
    let entries: Vec<(OsString, PathBuf)> = sorted_entries(dir)?
        .into_iter()
        .filter(|(name, _)| !skip.iter().any(|s| name == *s))
        .collect();
    let folders: Vec<&(OsString, PathBuf)> = entries.iter().filter(|(_, p)| p.is_dir()).collect();
    let loose: Vec<&PathBuf> = entries
        .iter()
        .map(|(_, p)| p)
        .filter(|p| !p.is_dir() && is_image(p))
        .collect();
    if folders.is_empty() {
        return Ok(loose
            .into_iter()
            .map(|p| Entry {
                path: p.clone(),
                label: 0,
                bytes: None,
            })
            .collect());
    }
    if let Some(first) = loose.first() {
        return Err(invalid(
            "image folder",
            format!(
                "{} to hold either one sub-folder per class or images only",
                dir.display()
            ),
            format!("class folders beside images such as {}", first.display()),
        ));
    }
    if classes.is_empty() {
        *classes = folders.iter().map(|(n, _)| n.clone()).collect();
        if classes.len() > 256 {
            return Err(invalid(
                "image folder",
                format!("at most 256 class folders in {}", dir.display()),
                format!("{}", classes.len()),
            ));
        }
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, path) in folders {
        let Some(label) = classes.iter().position(|c| c == name) else {
            return Err(invalid(
                "image folder",
                format!(
                    "the test split's classes among the training split's ({})",
                    classes
                        .iter()
                        .map(|c| c.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                format!("{} (in {})", name.to_string_lossy(), dir.display()),
            ));
        };
        let mut files = Vec::new();
        images_below(path, &mut seen, &mut files)?;
        out.extend(files.into_iter().map(|path| Entry {
            path,
            label: label as u8,
            bytes: None,
        }));
    }
    Ok(out)
}

/// One decoded image, brought to the common size, as RGB, and whether it was grey.
fn decode(
    entry: &Entry,
    size: Option<u32>,
) -> std::result::Result<(image::RgbImage, bool), String> {
    let read;
    let bytes = match &entry.bytes {
        Some(bytes) => bytes,
        None => {
            read = std::fs::read(&entry.path).map_err(|e| format!("cannot read it: {e}"))?;
            &read
        }
    };
    let image = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| format!("not a whole image ({e})"))?;
    let colour_type = !image.color().has_color();
    let image = match size {
        None => image,
        Some(s) => {
            // torchvision's Resize(s) and CenterCrop(s): the long side s * long / short,
            // truncated; the crop's offsets rounded half to even (Python's round).
            let (w, h) = (image.width(), image.height());
            let long =
                |l: u32, short: u32| ((u64::from(s) * u64::from(l)) / u64::from(short)) as u32;
            let (nw, nh) = if w <= h {
                (s, long(h, w))
            } else {
                (long(w, h), s)
            };
            let resized = image.resize_exact(nw, nh, FilterType::Triangle);
            let offset = |d: u32| {
                let q = d / 2;
                if d % 2 == 1 { q + (q & 1) } else { q }
            };
            resized.crop_imm(offset(nw - s), offset(nh - s), s, s)
        }
    };
    let rgb = image.to_rgb8();
    // Grey: a grey colour type, or colour pixels that all are (a GIF has no grey type).
    let grey = colour_type || rgb.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]);
    Ok((rgb, grey))
}

/// PIL's "L" conversion of an RGB pixel: `(299 R + 587 G + 114 B) / 1000`, rounded
/// half up as PIL does (`(R*19595 + G*38470 + B*7471 + 0x8000) >> 16`).
pub fn luma(rgb: [u8; 3]) -> u8 {
    let [r, g, b] = rgb.map(u32::from);
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

/// A folder's image files, found but not decoded.
pub(crate) struct Scanned {
    /// The training split's files.
    pub(crate) train: Vec<Entry>,
    /// The `test/` folder's, when there is one.
    pub(crate) test: Option<Vec<Entry>>,
    /// The class folders' names, in label order.
    pub(crate) classes: Vec<OsString>,
}

impl Scanned {
    /// Every file with its label, the training split's first, then `None` and the test
    /// folder's (what a pack's listing digest covers, with each file's size and time).
    pub(crate) fn files(&self) -> Vec<Option<(&Path, u8)>> {
        let mut out: Vec<Option<(&Path, u8)>> = self
            .train
            .iter()
            .map(|e| Some((e.path.as_path(), e.label)))
            .collect();
        if let Some(test) = &self.test {
            out.push(None);
            out.extend(test.iter().map(|e| Some((e.path.as_path(), e.label))));
        }
        out
    }

    /// The number of files.
    pub(crate) fn len(&self) -> usize {
        self.train.len() + self.test.as_ref().map_or(0, Vec::len)
    }
}

/// Refuses options that cannot work: channels other than 1 or 3, a size of 0, a
/// held-out share outside (0, 1).
pub(crate) fn check_options(options: &FolderOptions) -> Result<()> {
    if let Some(c) = options.channels.filter(|c| ![1, 3].contains(c)) {
        return Err(invalid("--channels", "1 or 3", c.to_string()));
    }
    if options.image_size == Some(0) {
        return Err(invalid("--image-size", "at least 1 pixel", "0"));
    }
    let fraction = options.test_fraction;
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(invalid(
            "--test-fraction",
            "a share in (0, 1)",
            fraction.to_string(),
        ));
    }
    Ok(())
}

/// Checks the options and finds the folder's image files and classes.
pub(crate) fn scan(root: &Path, options: &FolderOptions) -> Result<Scanned> {
    if !root.is_dir() {
        return Err(DataError::Missing {
            path: root.to_path_buf(),
            hint: "expected a folder of images (one sub-folder per class, or images only)".into(),
        });
    }
    check_options(options)?;
    let mut classes = Vec::new();
    let (train_dir, test_dir) = (root.join("train"), root.join("test"));
    let (train, test) = if test_dir.is_dir() {
        let train = if train_dir.is_dir() {
            scan_split(&train_dir, &mut classes, &[])?
        } else {
            scan_split(root, &mut classes, &["test"])?
        };
        let test = scan_split(&test_dir, &mut classes, &[])?;
        (train, Some(test))
    } else {
        (scan_split(root, &mut classes, &[])?, None)
    };
    if train.is_empty() {
        return Err(invalid(
            "image folder",
            format!(
                "images ({}) in {}",
                EXTENSIONS.join(", "),
                if train_dir.is_dir() { &train_dir } else { root }.display()
            ),
            "none",
        ));
    }
    Ok(Scanned {
        train,
        test,
        classes,
    })
}

/// Reads the folder `root` as a data set (see the module's documentation).
pub fn load_folder(root: &Path, options: &FolderOptions) -> Result<FolderData> {
    decode_scanned(scan(root, options)?, options, &mut |_, _| {})
}

/// Decodes what [`scan`] found into the splits, telling `progress` (files done, of
/// all) as it goes.
pub(crate) fn decode_scanned(
    scanned: Scanned,
    options: &FolderOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FolderData> {
    let total = scanned.len();
    let Scanned {
        train,
        test,
        classes,
    } = scanned;
    let fraction = options.test_fraction;
    let mut skipped = Vec::new();
    let mut done = 0;
    let mut decoded = |entries: Vec<Entry>| -> Result<Vec<(image::RgbImage, bool, u8)>> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            match decode(&entry, options.image_size) {
                Ok((image, grey)) => out.push((image, grey, entry.label)),
                Err(why) if options.skip_bad => skipped.push((entry.path, why)),
                Err(detail) => {
                    return Err(DataError::BadImage {
                        path: entry.path,
                        detail,
                    });
                }
            }
            done += 1;
            progress(done, total);
        }
        Ok(out)
    };
    let train = decoded(train)?;
    let test = test.map(&mut decoded).transpose()?;
    let all_grey = train
        .iter()
        .chain(test.iter().flatten())
        .all(|(_, grey, _)| *grey);
    let channels = options.channels.unwrap_or(if all_grey { 1 } else { 3 });
    let to_dataset = |images: &[&(image::RgbImage, bool, u8)], paths: &str| -> Result<Dataset> {
        let Some(first) = images.first() else {
            return Err(invalid(
                "image folder",
                format!("images in the {paths} split"),
                "none",
            ));
        };
        let (w, h) = first.0.dimensions();
        if let Some(other) = images.iter().find(|i| i.0.dimensions() != (w, h)) {
            return Err(invalid(
                "image folder",
                "images of one size (or --image-size S to resize them)",
                format!(
                    "{w}x{h} and {}x{}",
                    other.0.dimensions().0,
                    other.0.dimensions().1
                ),
            ));
        }
        let (hw, n) = ((w * h) as usize, images.len());
        let mut pixels = Vec::with_capacity(n * channels as usize * hw);
        for (image, _, _) in images {
            if channels == 1 {
                pixels.extend(image.pixels().map(|p| luma(p.0)));
            } else {
                for c in 0..3 {
                    pixels.extend(image.pixels().map(|p| p.0[c]));
                }
            }
        }
        let array = Array4::from_shape_vec((n, channels as usize, h as usize, w as usize), pixels)
            .map_err(|e| invalid("image folder", "a whole array", e.to_string()))?;
        Dataset::new(array, images.iter().map(|i| i.2).collect::<Array1<u8>>())
    };
    let splits = match &test {
        Some(test) => Splits {
            train: to_dataset(&train.iter().collect::<Vec<_>>(), "training")?,
            test: to_dataset(&test.iter().collect::<Vec<_>>(), "test")?,
        },
        None => {
            if train.len() < 2 {
                return Err(invalid(
                    "image folder",
                    "at least 2 images (one held out for testing)",
                    train.len().to_string(),
                ));
            }
            let held = ((train.len() as f64 * fraction).ceil() as usize).clamp(1, train.len() - 1);
            let order = EpochOrder::shuffled(
                train.len(),
                EpochSeed {
                    seed: options.seed,
                    epoch: u64::MAX,
                },
            );
            let mut test_ix: Vec<usize> = order.indices()[..held].to_vec();
            let mut train_ix: Vec<usize> = order.indices()[held..].to_vec();
            test_ix.sort_unstable();
            train_ix.sort_unstable();
            let pick = |ix: &[usize]| ix.iter().map(|&i| &train[i]).collect::<Vec<_>>();
            Splits {
                train: to_dataset(&pick(&train_ix), "training")?,
                test: to_dataset(&pick(&test_ix), "test")?,
            }
        }
    };
    Ok(FolderData {
        splits,
        classes: classes
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect(),
        skipped,
    })
}

#[cfg(feature = "parquet")]
mod hub;
mod pack;
#[cfg(feature = "parquet")]
pub use hub::{ParquetColumns, load_parquet, load_parquet_packed};
pub use pack::{PACK_FORMAT, PackInfo, load_folder_packed};

#[cfg(test)]
mod tests;
