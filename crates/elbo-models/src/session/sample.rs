//! `elbo sample`: the pictures of a checkpoint (sample grids, fixed-top grids,
//! trajectories, interpolations).

use std::path::{Path, PathBuf};

use tch::Device;

use super::evaluate::sampling_for;
use super::restore::{Restored, restore};
use crate::data;
use crate::error::{Error, Result};
use crate::models::{draw_samples, trajectory};
use crate::sample::{Classes, ClipX0, Guidance, SamplerSpec, SamplingOptions};

/// Writes `n` samples of a restored model as a PNG grid at `out` (8 columns; with
/// guidance of every class, one row per class), drawn with `sampling` (see
/// [`sampling_for`]; `None`: the model's own), and, with
/// `interpolation_steps`, latent interpolation strips beside it
/// (`<out>-interpolations.png`). For a hierarchical model it also writes, for each `k`
/// from 1 to the number of layers minus 1, `<out>-fixed-top-<k>.png`: rows of 8 that
/// share a draw of the top `k` layers and redraw the layers below (as many rows as `n`
/// fills, at least one). For a model that samples in steps (a DDPM) it writes
/// `<out>-trajectory.png`: up to 8 rows (one per class with every class) of up to 10
/// states from `x_T` (left) to `x_0` (right). Returns the files written.
pub fn write_samples(
    restored: &Restored,
    n: i64,
    out: &Path,
    interpolation_steps: Option<i64>,
    sampling: Option<&SamplingOptions>,
) -> Result<Vec<PathBuf>> {
    let model = restored.model.as_ref();
    let capabilities = model.capabilities();
    let likelihood = model.likelihood();
    let grid = |images: &tch::Tensor, columns: i64, path: &Path| {
        crate::eval::image::save_grid(&data::to_unit_range(likelihood, images), columns, path)
    };
    let samples = tch::no_grad(|| draw_samples(model, n, sampling))?;
    // Every class: one row per class.
    let classes = match (sampling.and_then(|s| s.guidance), capabilities.stepped) {
        (
            Some(Guidance {
                classes: Classes::All,
                ..
            }),
            Some(stepped),
        ) => stepped.classes(),
        _ => None,
    };
    grid(&samples, classes.map_or(8, |c| (n / c).max(1)), out)?;
    let mut written = vec![out.to_path_buf()];
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let (Some(latents), Some(hierarchy)) = (capabilities.latents, capabilities.hierarchy) {
        for fixed in 1..latents.latent_layers() {
            let images = tch::no_grad(|| hierarchy.fixed_top_samples(fixed, (n / 8).max(1), 8))?;
            let path = out.with_file_name(format!("{stem}-fixed-top-{fixed}.png"));
            grid(&images, 8, &path)?;
            written.push(path);
        }
    }
    if let Some(stepped) = capabilities.stepped {
        let options = sampling
            .copied()
            .unwrap_or_else(|| stepped.default_sampling());
        let rows = classes.unwrap_or(n.clamp(1, 8));
        let strip = tch::no_grad(|| trajectory(stepped, &options, rows, 10))?;
        let path = out.with_file_name(format!("{stem}-trajectory.png"));
        // A sampler of fewer than 10 steps keeps one state per step.
        grid(&strip, (strip.size()[0] / rows).max(1), &path)?;
        written.push(path);
    }
    if let Some(steps) = interpolation_steps {
        let interpolating = capabilities.interpolation.ok_or_else(|| Error::Config {
            detail: format!(
                "a {} model has no single latent space to interpolate in",
                restored.meta.model
            ),
        })?;
        let strips = tch::no_grad(|| interpolating.interpolations(8, steps));
        let path = out.with_file_name(format!("{stem}-interpolations.png"));
        grid(&strips, steps, &path)?;
        written.push(path);
    }
    Ok(written)
}

/// The sampler `sampler` with each step's `x_0` clipped (the default), unguided.
pub fn clipped(sampler: SamplerSpec) -> SamplingOptions {
    SamplingOptions::clipped(sampler)
}

/// What `elbo sample` asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleRequest {
    /// How many samples.
    pub n: i64,
    /// The PNG grid to write (and the stem of the others).
    pub out: PathBuf,
    /// Also latent interpolation strips of this many steps.
    pub interpolation_steps: Option<i64>,
    /// A stepped model's sampler (`None`: its default).
    pub sampler: Option<SamplerSpec>,
    /// What each step does with its prediction of `x_0`.
    pub clip_x0: ClipX0,
    /// A class-conditional model's classes and guidance.
    pub guidance: Option<Guidance>,
    /// The seed of the draws.
    pub seed: u64,
}

/// Restores the checkpoint at `path` (EMA weights when kept) and writes the samples
/// `request` asks for ([`write_samples`]); returns the files written.
pub fn sample_checkpoint(
    path: &Path,
    request: &SampleRequest,
    device: Device,
) -> Result<Vec<PathBuf>> {
    if !(1..=100_000).contains(&request.n) {
        return Err(Error::Config {
            detail: format!("--n must be between 1 and 100000, found {}", request.n),
        });
    }
    let restored = restore(path, device, true)?;
    let sampling = sampling_for(
        restored.model.as_ref(),
        request.sampler,
        request.clip_x0,
        request.guidance,
    )?;
    crate::sample::seed_draws(request.seed);
    write_samples(
        &restored,
        request.n,
        &request.out,
        request.interpolation_steps,
        sampling.as_ref(),
    )
}
