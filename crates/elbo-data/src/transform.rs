//! Turning `u8` images into `f32` batches: scaling, binarisation, dequantisation and
//! horizontal flips, all seeded.
//!
//! Randomness is per image: image `i` of epoch (seed, epoch) draws its flip from the
//! stream ("flip", `i`) (the top bit of its first 32-bit word) and its pixel noise
//! from the bytes of the stream ("pixels", `i`), pixels taken in (channel, row,
//! column) order of the output. Dynamic binarisation uses byte `k` for pixel `k`'s
//! first digit and, in the rare ties, the bytes after the image's first `n`;
//! dequantisation uses bytes `2k` and `2k + 1` (see the `rng` module). So an image's
//! transform depends on the seed, the epoch and its index, never on the batch size or
//! on which batch it falls in.

use ndarray::{Array4, Axis};
use rand_chacha::rand_core::RngCore;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::rng::{Bytes, EpochSeed, Purpose, coin, stream};

/// The range pixel values are scaled to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scale {
    /// [0, 1]: `p / 255` (for dequantised values, [0, 1)).
    #[default]
    Unit,
    /// [-1, 1]: `2 p / 255 - 1` (for dequantised values, [-1, 1)).
    Symmetric,
}

/// What each pixel `p` (0 to 255) becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pixels {
    /// `p` scaled to the range.
    Scaled(Scale),
    /// Uniform dequantisation: `(p + u) / 256` with `u` uniform in [0, 1) (on a grid
    /// of 2^-16, which with the 8 bits of `p` fills an `f32`'s 24-bit mantissa), then
    /// mapped to the range (for [`Scale::Symmetric`], `2 (p + u) / 256 - 1`). Fresh
    /// noise every epoch.
    Dequantised(Scale),
    /// Dynamic binarisation: 1 with probability `p / 255` (exactly, to within
    /// 2^-64), else 0; resampled every epoch.
    DynamicBinarised,
    /// Fixed binarisation: 1 if `p` is above the threshold, else 0.
    Thresholded(u8),
}

impl Default for Pixels {
    fn default() -> Self {
        Pixels::Scaled(Scale::Unit)
    }
}

/// A transform from `u8` images to `f32` batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transform {
    /// What the pixel values become.
    pub pixels: Pixels,
    /// Whether to mirror each image left-right with probability 1/2 (for CIFAR-10).
    pub horizontal_flip: bool,
}

impl Transform {
    /// The images at `indices` of `dataset`, transformed, as (B, C, H, W) in `f32`.
    pub fn apply(
        &self,
        dataset: &Dataset,
        indices: &[usize],
        key: EpochSeed,
    ) -> Result<Array4<f32>> {
        if let Some(&index) = indices.iter().find(|&&i| i >= dataset.len()) {
            return Err(DataError::IndexOutOfRange {
                index,
                len: dataset.len(),
            });
        }
        Ok(self.apply_valid(dataset, indices, key))
    }

    /// [`Transform::apply`] for indices known to be in range.
    pub(crate) fn apply_valid(
        &self,
        dataset: &Dataset,
        indices: &[usize],
        key: EpochSeed,
    ) -> Array4<f32> {
        let [c, h, w] = dataset.image_shape();
        let mut out = Array4::<f32>::zeros((indices.len(), c, h, w));
        let images = dataset.images();
        let mut scratch = Scratch::new(self.table(), c * h * w);
        for (mut dst, &index) in out.outer_iter_mut().zip(indices) {
            let image = images.index_axis(Axis(0), index);
            let flip = self.horizontal_flip && coin(&mut stream(key, Purpose::Flip, index as u64));
            let src: &[u8] = match image.to_slice() {
                Some(pixels) if !flip => pixels,
                _ => {
                    scratch.source.clear();
                    for row in image.rows() {
                        if flip {
                            scratch.source.extend(row.iter().rev());
                        } else {
                            scratch.source.extend(row.iter());
                        }
                    }
                    &scratch.source
                }
            };
            let rng = || stream(key, Purpose::Pixels, index as u64);
            // `zeros` is in standard layout, so each image is one slice; the other
            // branch only keeps this correct for any layout.
            match dst.as_slice_mut() {
                Some(dst) => self.fill(dst, src, &mut scratch.random, &scratch.table, rng),
                None => {
                    let mut tmp = vec![0.0; src.len()];
                    self.fill(&mut tmp, src, &mut scratch.random, &scratch.table, rng);
                    dst.iter_mut().zip(tmp).for_each(|(o, v)| *o = v);
                }
            }
        }
        out
    }

    /// Writes one image's transformed pixels `src` into `dst`.
    fn fill<R: RngCore>(
        &self,
        dst: &mut [f32],
        src: &[u8],
        random: &mut Vec<u8>,
        table: &[f32; 256],
        rng: impl FnOnce() -> R,
    ) {
        let out = dst.iter_mut().zip(src);
        match self.pixels {
            Pixels::Scaled(_) | Pixels::Thresholded(_) => {
                out.for_each(|(o, &p)| *o = table[usize::from(p)]);
            }
            Pixels::DynamicBinarised => {
                // Byte i of the stream is pixel i's first base-256 digit; the rare ties
                // (byte == p) continue with the bytes after the image's first n.
                let mut bytes = Bytes::new(rng());
                random.resize(src.len(), 0);
                bytes.fill(random);
                for ((o, &p), &b) in out.zip(random.iter()) {
                    let one = if b == p {
                        bytes.bernoulli_255(p)
                    } else {
                        b < p
                    };
                    *o = f32::from(u8::from(one));
                }
            }
            Pixels::Dequantised(scale) => {
                // Bytes 2i and 2i + 1 (little-endian) are pixel i's 16 bits of noise.
                random.resize(2 * src.len(), 0);
                Bytes::new(rng()).fill(random);
                let (a, b) = match scale {
                    Scale::Unit => (1.0 / 256.0, 0.0),
                    Scale::Symmetric => (2.0 / 256.0, -1.0),
                };
                for ((o, &p), u) in out.zip(random.chunks_exact(2)) {
                    let u = f32::from(u16::from_le_bytes([u[0], u[1]])) * (1.0 / 65_536.0);
                    *o = (f32::from(p) + u) * a + b;
                }
            }
        }
    }

    /// The value of every byte for the deterministic maps (unused by the random ones).
    fn table(&self) -> [f32; 256] {
        std::array::from_fn(|p| match self.pixels {
            Pixels::Scaled(Scale::Unit) => p as f32 / 255.0,
            Pixels::Scaled(Scale::Symmetric) => (2.0 * p as f32 - 255.0) / 255.0,
            Pixels::Thresholded(t) => f32::from(u8::from(p > usize::from(t))),
            Pixels::DynamicBinarised | Pixels::Dequantised(_) => 0.0,
        })
    }
}

/// Buffers reused across the images of a batch.
struct Scratch {
    table: [f32; 256],
    /// A flipped (or re-laid-out) source image.
    source: Vec<u8>,
    /// Random bytes for one image.
    random: Vec<u8>,
}

impl Scratch {
    fn new(table: [f32; 256], image_len: usize) -> Self {
        Scratch {
            table,
            source: Vec::with_capacity(image_len),
            random: Vec::with_capacity(2 * image_len),
        }
    }
}

#[cfg(test)]
mod tests;
