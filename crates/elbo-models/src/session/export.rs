//! `elbo sample RUN --n N --format png-dir|npz --out PATH`: many samples written for the
//! tools people score them with (pytorch-fid and clean-fid read a folder of PNGs;
//! guided-diffusion's evaluator and torch-fidelity read an `.npz` of uint8 NHWC images in
//! `arr_0`, with the labels in `arr_1` for a class-guided draw).
//!
//! The export is drawn in batches, each seeded from the run's seed and its index, so it
//! is the same whether it ran at once or was killed and run again: an interrupted export
//! continues at its first incomplete batch. What it has done lives beside the output
//! (`PATH/.elbo-export.json` with the PNGs; `PATH.partial/` with the batches for an
//! `.npz`, which is assembled, whole or not at all, once every batch is there). Run again
//! with other settings, it refuses rather than mix two exports.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;
use tch::Device;

use super::evaluate::sampling_for;
use super::restore::restore;
use crate::error::{Error, Result};
use crate::eval::frechet::unit_samples;
use crate::eval::image::{to_u8_nhwc, write_png};
use crate::sample::{Classes, ClipX0, Guidance, SamplerSpec};
use crate::train::checkpoint::{sha256_of, write_atomically, write_json_atomically};

/// The file layouts of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// A folder of PNG files `000000.png`, `000001.png`, ...
    PngDir,
    /// One `.npz`: `arr_0` uint8 (N, H, W, C), `arr_1` int64 labels when class-guided.
    Npz,
}

impl std::str::FromStr for ExportFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<ExportFormat> {
        match s {
            "png-dir" => Ok(ExportFormat::PngDir),
            "npz" => Ok(ExportFormat::Npz),
            other => Err(Error::Config {
                detail: format!("--format is png-dir or npz, found {other:?}"),
            }),
        }
    }
}

/// What an export asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportRequest {
    /// How many samples.
    pub n: usize,
    /// Samples per batch (the unit of resumption).
    pub batch: usize,
    /// The layout.
    pub format: ExportFormat,
    /// The folder (png-dir) or the `.npz` file.
    pub out: PathBuf,
    /// The seed of the draws.
    pub seed: u64,
    /// A stepped model's sampler (`None`: its default).
    pub sampler: Option<SamplerSpec>,
    /// What each step does with its prediction of `x_0`.
    pub clip_x0: ClipX0,
    /// A class-conditional model's classes and guidance.
    pub guidance: Option<Guidance>,
}

/// What an export did.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportReport {
    /// The output (folder or file).
    pub out: PathBuf,
    /// Samples in it.
    pub samples: usize,
    /// Batches drawn by this call (the others were there from before).
    pub drawn_batches: usize,
    /// Whether a stop request ended it early (run it again to continue).
    pub stopped: bool,
}

/// The seed of batch `index` of an export seeded with `seed` (splitmix64 of both).
fn batch_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn batch_file(dir: &Path, index: usize, what: &str) -> PathBuf {
    dir.join(format!("batch-{index:06}.{what}"))
}

/// Draws the export `request` of the checkpoint at `path` (its EMA weights when kept);
/// `progress(done, total)` after each batch; a raised `stop` ends it after the batch in
/// hand (run it again to continue).
pub fn export_samples(
    path: &Path,
    request: &ExportRequest,
    device: Device,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ExportReport> {
    if !(1..=10_000_000).contains(&request.n) || request.batch == 0 {
        return Err(Error::Config {
            detail: format!(
                "an export needs 1 to 10000000 samples in batches of at least 1, found --n {} \
                 and batch {}",
                request.n, request.batch
            ),
        });
    }
    let restored = restore(path, device, true)?;
    let model = restored.model.as_ref();
    let sampling = sampling_for(model, request.sampler, request.clip_x0, request.guidance)?;
    let classes = model
        .capabilities()
        .stepped
        .and_then(|s| s.classes())
        .unwrap_or(0);
    // The labels each sample was drawn for, when guided.
    let labels = |len: usize| -> Option<Vec<i64>> {
        match request.guidance.map(|g| g.classes) {
            Some(Classes::One(k)) => Some(vec![k; len]),
            Some(Classes::All) => {
                let per = len / classes.max(1) as usize;
                Some(
                    (0..classes)
                        .flat_map(|k| std::iter::repeat_n(k, per))
                        .collect(),
                )
            }
            None => None,
        }
    };
    if let Some(Guidance {
        classes: Classes::All,
        ..
    }) = request.guidance
    {
        let k = classes.max(1) as usize;
        if !request.batch.is_multiple_of(k) || !(request.n % request.batch).is_multiple_of(k) {
            return Err(Error::Config {
                detail: format!(
                    "--class all draws as many of each of the {k} classes in every batch: \
                     the batch ({}) and the last batch ({}) must be multiples of {k}",
                    request.batch,
                    request.n % request.batch
                ),
            });
        }
    }
    let [c, h, w] = restored.config.image();
    let record = json!({
        "checkpoint_sha256": restored.meta.tensors_sha256.clone().unwrap_or_else(|| sha256_of(&restored.path).unwrap_or_default()),
        "step": restored.meta.step,
        "n": request.n,
        "batch": request.batch,
        "seed": request.seed,
        "sampler": request.sampler.map(|s| s.to_string()),
        "clip_x0": format!("{:?}", request.clip_x0),
        "guidance": request.guidance.map(|g| format!("{g:?}")),
        "image": [c, h, w],
    });
    let work = match request.format {
        ExportFormat::PngDir => request.out.clone(),
        ExportFormat::Npz => {
            let mut name = request.out.as_os_str().to_owned();
            name.push(".partial");
            PathBuf::from(name)
        }
    };
    if request.format == ExportFormat::Npz && request.out.is_file() {
        return Err(Error::Config {
            detail: format!(
                "{} exists: an export never overwrites a finished file; remove it or choose \
                 another --out",
                request.out.display()
            ),
        });
    }
    let manifest = work.join(".elbo-export.json");
    if manifest.is_file() {
        let text =
            std::fs::read_to_string(&manifest).map_err(|e| Error::file("read", &manifest, e))?;
        let found: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if found != record {
            return Err(Error::Config {
                detail: format!(
                    "{} holds an export of other settings or another checkpoint (its record: \
                     {found}; asked: {record}): finish it with the same command, or choose \
                     another --out",
                    work.display()
                ),
            });
        }
    } else {
        let occupied = std::fs::read_dir(&work).is_ok_and(|mut d| d.next().is_some());
        if occupied || work.is_file() {
            return Err(Error::Config {
                detail: format!(
                    "{} is not empty and holds no export of elbo's: choose another --out",
                    work.display()
                ),
            });
        }
        std::fs::create_dir_all(&work).map_err(|e| Error::file("create", &work, e))?;
        write_json_atomically(&manifest, &record)?;
    }
    let batches = request.n.div_ceil(request.batch);
    let bounds = |b: usize| (b * request.batch, ((b + 1) * request.batch).min(request.n));
    let done = |b: usize| -> bool {
        let (start, end) = bounds(b);
        match request.format {
            ExportFormat::PngDir => {
                (start..end).all(|i| work.join(format!("{i:06}.png")).is_file())
            }
            ExportFormat::Npz => batch_file(&work, b, "u8").is_file(),
        }
    };
    let mut drawn = 0;
    let mut finished = 0;
    for b in 0..batches {
        if done(b) {
            finished += 1;
            progress(finished, batches);
            continue;
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(ExportReport {
                out: request.out.clone(),
                samples: request.n,
                drawn_batches: drawn,
                stopped: true,
            });
        }
        let (start, end) = bounds(b);
        let images = unit_samples(
            model,
            end - start,
            (end - start) as i64,
            batch_seed(request.seed, b),
            sampling.as_ref(),
        )?;
        let pixels = to_u8_nhwc(&images)?;
        match request.format {
            ExportFormat::PngDir => {
                let size = (h * w * c) as usize;
                for (i, image) in pixels.chunks_exact(size).enumerate() {
                    write_png(
                        &work.join(format!("{:06}.png", start + i)),
                        w as u32,
                        h as u32,
                        c as usize,
                        image,
                    )?;
                }
            }
            ExportFormat::Npz => {
                if let Some(labels) = labels(end - start) {
                    let bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
                    let file = batch_file(&work, b, "labels");
                    write_atomically(&file, |temp| Ok(std::fs::write(temp, &bytes)?))?;
                }
                // The pixels last: a batch is done when they are there.
                let file = batch_file(&work, b, "u8");
                write_atomically(&file, |temp| Ok(std::fs::write(temp, &pixels)?))?;
            }
        }
        drawn += 1;
        finished += 1;
        progress(finished, batches);
    }
    if request.format == ExportFormat::Npz {
        assemble_npz(
            &work,
            &request.out,
            request.n,
            [h, w, c],
            batches,
            request.guidance.is_some(),
        )?;
        std::fs::remove_dir_all(&work).map_err(|e| Error::file("remove", &work, e))?;
    }
    Ok(ExportReport {
        out: request.out.clone(),
        samples: request.n,
        drawn_batches: drawn,
        stopped: false,
    })
}

/// Writes the `.npz` of the finished batches in `work`: `arr_0` (n, H, W, C) uint8 and,
/// when `labelled`, `arr_1` (n,) int64; streamed batch by batch.
fn assemble_npz(
    work: &Path,
    out: &Path,
    n: usize,
    [h, w, c]: [i64; 3],
    batches: usize,
    labelled: bool,
) -> Result<()> {
    use elbo_data::npy::{Dtype, add_npy_member};
    use elbo_data::zip::ZipWriter;
    let member = |what: &'static str| -> Result<(u64, u32)> {
        let mut crc = crc32fast::Hasher::new();
        let mut len = 0u64;
        for b in 0..batches {
            let file = batch_file(work, b, what);
            let bytes = std::fs::read(&file).map_err(|e| Error::file("read", &file, e))?;
            crc.update(&bytes);
            len += bytes.len() as u64;
        }
        Ok((len, crc.finalize()))
    };
    let chain = |what: &'static str| -> Result<Box<dyn Read>> {
        let mut reader: Box<dyn Read> = Box::new(std::io::empty());
        for b in 0..batches {
            let file = batch_file(work, b, what);
            let f = std::fs::File::open(&file).map_err(|e| Error::file("read", &file, e))?;
            reader = Box::new(reader.chain(std::io::BufReader::new(f)));
        }
        Ok(reader)
    };
    let (len, crc) = member("u8")?;
    let expected = (n as i64 * h * w * c) as u64;
    if len != expected {
        return Err(Error::Config {
            detail: format!(
                "the batches in {} hold {len} bytes of pixels, {n} images need {expected}: \
                 a batch file was changed; remove the folder and export again",
                work.display()
            ),
        });
    }
    let labels = if labelled {
        Some(member("labels")?)
    } else {
        None
    };
    write_atomically(out, |temp| {
        let file = std::io::BufWriter::new(std::fs::File::create(temp)?);
        let mut zip = ZipWriter::new(file);
        let shape = [n, h as usize, w as usize, c as usize];
        add_npy_member(
            &mut zip,
            "arr_0",
            Dtype::U8,
            &shape,
            len,
            crc,
            &mut chain("u8")?,
        )?;
        if let Some((len, crc)) = labels {
            add_npy_member(
                &mut zip,
                "arr_1",
                Dtype::I64,
                &[n],
                len,
                crc,
                &mut chain("labels")?,
            )?;
        }
        zip.finish()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_seeds_differ_and_repeat() {
        let seeds: Vec<u64> = (0..100).map(|b| batch_seed(7, b)).collect();
        let mut unique = seeds.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 100);
        assert_eq!(batch_seed(7, 3), seeds[3]);
        assert_ne!(batch_seed(8, 3), seeds[3]);
    }
}
