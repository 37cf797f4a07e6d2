//! A run in TensorBoard: an event file per process start in the run folder (so that
//! `tensorboard --logdir runs` shows every run by its folder's name), written by the
//! process that writes the run (rank 0), beside `metrics.jsonl` and from the same lines.
//!
//! Tags: a step line's values under `train/<name>` (`train/loss`, `train/elbo`,
//! `train/lr`, `train/grad_norm`, ...), an epoch line's `test_<name>` values under
//! `test/<name>` and its other numbers under `epoch/<name>`; the training throughput at
//! each logged step under `perf/images_per_s` (not in `metrics.jsonl`, which stays a
//! function of the seed); the epoch's sample grid and
//! reconstructions as the images `samples` and `reconstructions`; the run's
//! configuration (config.json) as the text `config`; `elbo eval`'s sweeps, in event files
//! of their own, as the image and text `sweep/frechet-sweep` (or `guidance-sweep`) at
//! the checkpoint's step. A resumed run marks a session
//! start just after its checkpoint's step, so TensorBoard drops what the interrupted
//! process logged past the checkpoint, as the resume drops those lines from
//! `metrics.jsonl`.

use elbo_board::{BoardError, EventWriter};
use serde_json::Value;

use super::RunDir;
use crate::error::{Error, Result};

/// The run's event file being written.
pub struct Board {
    writer: EventWriter,
}

fn error(e: BoardError) -> Error {
    match e {
        BoardError::Io {
            action,
            path,
            source,
        } => Error::File {
            action,
            path,
            reason: source,
        },
        other => Error::Config {
            detail: other.to_string(),
        },
    }
}

impl Board {
    /// A new event file in `run`, starting at `step` (a session start when resumed),
    /// with the run's configuration as text.
    pub fn open(run: &RunDir, step: u64) -> Result<Board> {
        let mut writer = EventWriter::create(&run.events()).map_err(error)?;
        if step > 0 {
            // TensorBoard drops the earlier files' events from this step on: the
            // checkpoint's own step stays.
            writer.start_session(step + 1).map_err(error)?;
        }
        if let Ok(config) = std::fs::read_to_string(run.config()) {
            writer
                .text(step, "config", &format!("```json\n{config}\n```"))
                .map_err(error)?;
        }
        Ok(Board { writer })
    }

    /// The scalars of a metrics line (a step line or an epoch line; others are not
    /// drawn).
    pub fn line(&mut self, line: &Value) -> Result<()> {
        let Some(step) = line["step"].as_u64() else {
            return Ok(());
        };
        let values = tags_of(line);
        if values.is_empty() {
            return Ok(());
        }
        self.writer.scalars(step, &values).map_err(error)
    }

    /// Training images per second (of the global batch) over the steps since the last
    /// logged one, at `step`, as `perf/images_per_s`.
    pub fn throughput(&mut self, step: u64, images_per_s: f64) -> Result<()> {
        self.writer
            .scalars(step, &[("perf/images_per_s".to_string(), images_per_s)])
            .map_err(error)
    }

    /// The pictures of epoch `epoch` (counted from 1) that the run wrote, at `step`.
    pub fn pictures(&mut self, run: &RunDir, step: u64, epoch: u64) -> Result<()> {
        for (tag, path) in [
            ("samples", run.epoch_samples(epoch)),
            ("reconstructions", run.epoch_reconstructions(epoch)),
        ] {
            let Ok(png) = std::fs::read(&path) else {
                continue;
            };
            self.writer.png(step, tag, &png).map_err(error)?;
        }
        Ok(())
    }
}

/// A sweep of `elbo eval` (its chart `png` and its points as JSON) in a new event file
/// of `run`, at the checkpoint's `step`: the image `sweep/<name>` and the text
/// `sweep/<name>`.
pub fn sweep(run: &RunDir, step: u64, name: &str, png: &[u8], points: &Value) -> Result<()> {
    let mut writer = EventWriter::create(&run.events()).map_err(error)?;
    let tag = format!("sweep/{name}");
    writer.png(step, &tag, png).map_err(error)?;
    let text = serde_json::to_string_pretty(points).unwrap_or_default();
    writer
        .text(step, &tag, &format!("```json\n{text}\n```"))
        .map_err(error)
}

/// A metrics line's numbers under their TensorBoard tags (see the module's docs).
pub fn tags_of(line: &Value) -> Vec<(String, f64)> {
    let Some(fields) = line.as_object() else {
        return Vec::new();
    };
    let kind = line["kind"].as_str().unwrap_or_default();
    fields
        .iter()
        .filter(|(name, _)| !["kind", "step", "epoch"].contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name, value.as_f64()?)))
        .filter_map(|(name, value)| {
            let tag = match kind {
                "step" => format!("train/{name}"),
                "epoch" => match name.strip_prefix("test_") {
                    Some(test) => format!("test/{test}"),
                    None => format!("epoch/{name}"),
                },
                _ => return None,
            };
            Some((tag, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_map_to_stable_tags() {
        let step = serde_json::json!({"kind": "step", "step": 10, "epoch": 0, "loss": 2.5,
            "lr": 0.001, "elbo": -90.0});
        assert_eq!(
            tags_of(&step),
            [
                ("train/elbo".to_string(), -90.0),
                ("train/loss".to_string(), 2.5),
                ("train/lr".to_string(), 0.001)
            ]
        );
        let epoch = serde_json::json!({"kind": "epoch", "step": 70, "epoch": 1,
            "test_elbo": -88.0, "active_units": {"z_1": [3, 20]}, "fid": 12.0});
        assert_eq!(
            tags_of(&epoch),
            [
                ("epoch/fid".to_string(), 12.0),
                ("test/elbo".to_string(), -88.0)
            ]
        );
        let resume = serde_json::json!({"kind": "resume", "step": 5, "changed": {}});
        assert!(tags_of(&resume).is_empty());
    }
}
