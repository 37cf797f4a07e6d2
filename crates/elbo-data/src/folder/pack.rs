//! A folder of images packed once and memory-mapped after: the first use decodes,
//! resizes and converts every image and writes them as one array of bytes, so that later
//! runs, and every process of a data-parallel job, map the same file (one copy in the
//! page cache, shared) instead of decoding again into each process's memory.
//!
//! A pack is a folder `<packs>/<name>-<digest of the source's path and the options>/`
//! of three files:
//!
//! ```text
//! images.u8      the training images then the test images, (N, C, H, W) row-major
//! labels.u8      their labels, one byte each, in the same order
//! manifest.txt   "elbo-pack 1", the source, the listing digest, the shape, the counts,
//!                both files' sha256, the classes and the files left out
//! ```
//!
//! The listing digest covers every image file's path, label, size and modification
//! time: a changed source (a file added, removed, replaced or re-labelled) re-packs
//! it; reading it checks both files' size and
//! sha256, so a damaged pack is refused naming the file. Packing holds a lock
//! (`<name>.lock`): processes that start together wait for one to pack, then map it.
//! The pack is written in a temporary folder and renamed into place whole.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::Array1;
use sha2::{Digest, Sha256};

use super::{FolderData, FolderOptions, Scanned, decode_scanned, scan};
use crate::checksum::hex;
use crate::dataset::{Dataset, Splits};
use crate::error::{DataError, Result};

/// The version of the pack layout this code writes and reads.
pub const PACK_FORMAT: u32 = 1;

const IMAGES: &str = "images.u8";
const LABELS: &str = "labels.u8";
const MANIFEST: &str = "manifest.txt";

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> DataError + use<> {
    let path = path.to_path_buf();
    move |source| DataError::Io {
        path,
        action,
        source,
    }
}

/// What identifies a pack's content: each of `files`' path, tag (a label, a column),
/// size and modification time, in order, and the options.
pub(crate) fn listing_of<'a>(
    files: impl Iterator<Item = (&'a Path, String)>,
    options: &FolderOptions,
) -> Result<String> {
    use std::os::unix::ffi::OsStrExt;
    let mut hasher = Sha256::new();
    hasher.update(format!("elbo-pack {PACK_FORMAT}\n{options:?}\n").as_bytes());
    for (path, tag) in files {
        let meta = std::fs::metadata(path).map_err(io(path, "reading the metadata of"))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        hasher.update(path.as_os_str().as_bytes());
        hasher.update(format!("\0{tag}\0{}\0{modified}\n", meta.len()).as_bytes());
    }
    Ok(hex(&hasher.finalize()))
}

/// Where packed images come from: a folder, parquet files.
pub(crate) trait Source {
    /// The source's canonical path (with the options, it names the pack).
    fn root(&self) -> &Path;
    /// What identifies its content ([`listing_of`]), without decoding anything.
    fn listing(&self, options: &FolderOptions) -> Result<String>;
    /// Its images, decoded (`progress` told images done, of all).
    fn decode(
        self: Box<Self>,
        options: &FolderOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<FolderData>;
}

/// A folder of images as a [`Source`].
struct FolderSource {
    root: PathBuf,
    scanned: Scanned,
}

impl Source for FolderSource {
    fn root(&self) -> &Path {
        &self.root
    }
    fn listing(&self, options: &FolderOptions) -> Result<String> {
        let files = self.scanned.files();
        listing_of(
            files.into_iter().map(|f| match f {
                Some((path, label)) => (path, label.to_string()),
                None => (Path::new("/"), "test".to_string()),
            }),
            options,
        )
    }
    fn decode(
        self: Box<Self>,
        options: &FolderOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<FolderData> {
        decode_scanned(self.scanned, options, progress)
    }
}

/// The pack folder of the source folder `root` (canonical) read with `options`, under
/// `packs` (one per source and options: switching between sizes does not re-pack).
fn pack_dir(packs: &Path, root: &Path, options: &FolderOptions) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let name: String = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut hasher = Sha256::new();
    hasher.update(root.as_os_str().as_bytes());
    hasher.update(format!("\0{options:?}").as_bytes());
    let digest = hex(&hasher.finalize());
    packs.join(format!("{name}-{}", &digest[..12]))
}

/// A pack's manifest, read.
struct Manifest {
    listing: String,
    shape: [usize; 3],
    train: usize,
    test: usize,
    images_sha256: String,
    labels_sha256: String,
    classes: Vec<String>,
    skipped: Vec<(PathBuf, String)>,
}

fn read_manifest(path: &Path) -> Result<Option<Manifest>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, "reading")(e)),
    };
    let bad = |found: &str| DataError::Malformed {
        file: path.display().to_string(),
        offset: crate::error::Offset::File(0),
        expected: format!("an elbo pack manifest (elbo-pack {PACK_FORMAT})"),
        found: found.to_string(),
    };
    let mut lines = text.lines();
    if lines.next() != Some(&format!("elbo-pack {PACK_FORMAT}")) {
        return Err(bad("another first line"));
    }
    let mut m = Manifest {
        listing: String::new(),
        shape: [0; 3],
        train: 0,
        test: 0,
        images_sha256: String::new(),
        labels_sha256: String::new(),
        classes: Vec::new(),
        skipped: Vec::new(),
    };
    for line in lines {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        let number = |v: &str| v.parse::<usize>().map_err(|_| bad(line));
        match key {
            "source" => {}
            "listing" => m.listing = value.to_string(),
            "shape" => {
                let dims: Vec<usize> = value.split(' ').map(number).collect::<Result<_>>()?;
                m.shape = dims.try_into().map_err(|_| bad(line))?;
            }
            "train" => m.train = number(value)?,
            "test" => m.test = number(value)?,
            "images-sha256" => m.images_sha256 = value.to_string(),
            "labels-sha256" => m.labels_sha256 = value.to_string(),
            "class" => m.classes.push(value.to_string()),
            "skipped" => {
                let (file, why) = value.split_once('\t').unwrap_or((value, ""));
                m.skipped.push((PathBuf::from(file), why.to_string()));
            }
            _ => return Err(bad(line)),
        }
    }
    Ok(Some(m))
}

/// The sha256 of the file at `path`.
fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(io(path, "opening"))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io(path, "reading"))?;
    Ok(hex(&hasher.finalize()))
}

/// Maps the pack `dir` described by `m`, after checking both files' sizes and digests.
fn map(dir: &Path, m: Manifest) -> Result<FolderData> {
    let [c, h, w] = m.shape;
    let per_image = c * h * w;
    let count = m.train + m.test;
    let (images, labels) = (dir.join(IMAGES), dir.join(LABELS));
    for (path, expected_len, expected_sha) in [
        (&images, count * per_image, &m.images_sha256),
        (&labels, count, &m.labels_sha256),
    ] {
        let len = std::fs::metadata(path)
            .map_err(io(path, "reading the metadata of"))?
            .len();
        let damaged = |found: String| DataError::Malformed {
            file: path.display().to_string(),
            offset: crate::error::Offset::File(0),
            expected: format!(
                "the packed file its manifest describes; remove {} and elbo packs the \
                 source again",
                dir.display()
            ),
            found,
        };
        if len != expected_len as u64 {
            return Err(damaged(format!("{len} bytes, not {expected_len}")));
        }
        let found = sha256_file(path)?;
        if &found != expected_sha {
            return Err(damaged(format!("sha256 {found}, not {expected_sha}")));
        }
    }
    let file = File::open(&images).map_err(io(&images, "opening"))?;
    // SAFETY: the pack is written once, whole, and renamed into place; it is never
    // written again while it exists (a re-pack writes a new folder and replaces this
    // one under the lock), so the mapped bytes do not change under the reader.
    #[allow(unsafe_code)]
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(io(&images, "mapping"))?);
    let all_labels = std::fs::read(&labels).map_err(io(&labels, "reading"))?;
    let train = Dataset::mapped(
        Arc::clone(&map),
        0,
        [m.train, c, h, w],
        Array1::from(all_labels[..m.train].to_vec()),
    )?;
    let test = Dataset::mapped(
        map,
        m.train * per_image,
        [m.test, c, h, w],
        Array1::from(all_labels[m.train..].to_vec()),
    )?;
    Ok(FolderData {
        splits: Splits { train, test },
        classes: m.classes,
        skipped: m.skipped,
    })
}

/// Writes the pack of `data` (read from `root` with `listing`) into a new folder in
/// `packs`, then renames it to `dir` (replacing an older pack there).
fn write(dir: &Path, root: &Path, listing: &str, data: &FolderData) -> Result<()> {
    let packs = dir.parent().unwrap_or(Path::new("."));
    let temp = tempfile::Builder::new()
        .prefix(".pack.")
        .tempdir_in(packs)
        .map_err(io(packs, "creating a temporary folder in"))?;
    let (train, test) = (&data.splits.train, &data.splits.test);
    let put = |name: &str, parts: [&[u8]; 2]| -> Result<String> {
        let path = temp.path().join(name);
        let mut file = File::create(&path).map_err(io(&path, "creating"))?;
        let mut hasher = Sha256::new();
        for part in parts {
            file.write_all(part).map_err(io(&path, "writing"))?;
            hasher.update(part);
        }
        file.sync_all().map_err(io(&path, "syncing"))?;
        Ok(hex(&hasher.finalize()))
    };
    let (train_images, test_images) = (train.images(), test.images());
    let images_sha256 = put(
        IMAGES,
        [
            train_images.as_slice().unwrap_or(&[]),
            test_images.as_slice().unwrap_or(&[]),
        ],
    )?;
    let labels_sha256 = put(
        LABELS,
        [
            train.labels().as_slice().unwrap_or(&[]),
            test.labels().as_slice().unwrap_or(&[]),
        ],
    )?;
    let [c, h, w] = train.image_shape();
    let mut manifest = format!(
        "elbo-pack {PACK_FORMAT}\nsource {}\nlisting {listing}\nshape {c} {h} {w}\ntrain {}\n\
         test {}\nimages-sha256 {images_sha256}\nlabels-sha256 {labels_sha256}\n",
        root.display(),
        train.len(),
        test.len()
    );
    for class in &data.classes {
        let _ = writeln!(manifest, "class {}", class.replace('\n', " "));
    }
    for (file, why) in &data.skipped {
        let _ = writeln!(
            manifest,
            "skipped {}\t{}",
            file.display(),
            why.replace(['\n', '\t'], " ")
        );
    }
    put(MANIFEST, [manifest.as_bytes(), &[]])?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir, "removing the older pack"))?;
    }
    let kept = temp.keep();
    std::fs::rename(&kept, dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&kept);
        io(dir, "renaming the new pack to")(e)
    })?;
    Ok(())
}

/// What [`load_folder_packed`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct PackInfo {
    /// The pack folder.
    pub dir: PathBuf,
    /// Whether it was (re-)packed now, rather than found.
    pub packed_now: bool,
}

/// Reads the folder `root` as [`super::load_folder`] does, through its pack under
/// `packs`: found and current, it is mapped; absent, or made of another listing, the
/// folder is decoded (`progress` told files done, of all) and packed, then mapped.
/// Either way the data sets' images are mapped from the pack.
pub fn load_folder_packed(
    root: &Path,
    options: &FolderOptions,
    packs: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(FolderData, PackInfo)> {
    let scanned = scan(root, options)?;
    let root = std::fs::canonicalize(root).map_err(io(root, "resolving"))?;
    load_packed(
        Box::new(FolderSource { root, scanned }),
        options,
        packs,
        progress,
    )
}

/// [`load_folder_packed`] for any [`Source`].
pub(crate) fn load_packed(
    source: Box<dyn Source>,
    options: &FolderOptions,
    packs: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(FolderData, PackInfo)> {
    let listing = source.listing(options)?;
    std::fs::create_dir_all(packs).map_err(io(packs, "creating"))?;
    let root = source.root().to_path_buf();
    let dir = pack_dir(packs, &root, options);
    let lock_path = dir.with_extension("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path, "opening"))?;
    lock.lock().map_err(io(&lock_path, "locking"))?;
    let manifest = read_manifest(&dir.join(MANIFEST))?;
    let packed_now = match manifest {
        Some(m) if m.listing == listing => {
            return Ok((
                map(&dir, m)?,
                PackInfo {
                    dir,
                    packed_now: false,
                },
            ));
        }
        _ => {
            let data = source.decode(options, progress)?;
            write(&dir, &root, &listing, &data)?;
            true
        }
    };
    let manifest = read_manifest(&dir.join(MANIFEST))?.ok_or_else(|| DataError::Missing {
        path: dir.join(MANIFEST),
        hint: "the pack just written has no manifest".into(),
    })?;
    Ok((map(&dir, manifest)?, PackInfo { dir, packed_now }))
}
