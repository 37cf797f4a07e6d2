//! Where a run keeps what, in one place: the run folder's files and folders, the
//! checkpoint file names, and the prefixes of the tensors inside a checkpoint.
//!
//! ```text
//! <run>/config.json                      model, model_config, train_config
//! <run>/metrics.jsonl                    one JSON object per logged step and per epoch
//! <run>/curves.png                       the metrics as training curves
//! <run>/samples/epoch-NNN.png            samples at each epoch's end
//! <run>/samples/reconstructions-epoch-NNN.png
//! <run>/checkpoints/step-NNNNNNNNN.json  what the tensors belong to (written last)
//! <run>/checkpoints/step-NNNNNNNNN.safetensors
//!     model.<variable>   the weights      (MODEL)
//!     adam.m.<variable>  Adam's moments   (ADAM)
//!     adam.v.<variable>
//!     ema.<variable>     the EMA weights  (EMA, when the run keeps one)
//! ```

use std::path::{Path, PathBuf};

/// The prefix of the weights in a checkpoint.
pub const MODEL: &str = "model.";
/// The prefix of Adam's moments (`adam.m.`, `adam.v.`).
pub const ADAM: &str = "adam.";
/// The prefix of the EMA weights.
pub const EMA: &str = "ema.";

/// A run folder.
#[derive(Clone, Debug)]
pub struct RunDir {
    /// The folder.
    pub root: PathBuf,
}

impl RunDir {
    /// The run folder at `root`.
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }
    /// Where checkpoints go.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// The metrics log.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// The run's configuration, written when it starts.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    /// The training curves.
    pub fn curves(&self) -> PathBuf {
        self.root.join("curves.png")
    }
    /// Where sample grids go.
    pub fn samples(&self) -> PathBuf {
        self.root.join("samples")
    }
    /// The sample grid of epoch `epoch` (counted from 1).
    pub fn epoch_samples(&self, epoch: u64) -> PathBuf {
        self.samples().join(format!("epoch-{epoch:03}.png"))
    }
    /// The reconstructions of epoch `epoch` (counted from 1).
    pub fn epoch_reconstructions(&self, epoch: u64) -> PathBuf {
        self.samples()
            .join(format!("reconstructions-epoch-{epoch:03}.png"))
    }
    /// The newest sample grid, if any.
    pub fn newest_samples(&self) -> Option<PathBuf> {
        std::fs::read_dir(self.samples()).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("epoch-"))
                })
                .max()
        })
    }
}

/// The file names (safetensors, JSON) of the checkpoint at `step`.
pub fn checkpoint_names(step: u64) -> (String, String) {
    let stem = format!("step-{step:09}");
    (format!("{stem}.safetensors"), format!("{stem}.json"))
}

/// Whether `path` is the JSON file of the checkpoint at `step`.
pub fn is_checkpoint_of(path: &Path, step: u64) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy() == checkpoint_names(step).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_folders() {
        let _generator = crate::testing::generator_lock();
        let run = RunDir::new("/r");
        assert_eq!(run.metrics(), Path::new("/r/metrics.jsonl"));
        assert_eq!(run.epoch_samples(7), Path::new("/r/samples/epoch-007.png"));
        assert_eq!(
            checkpoint_names(42),
            (
                "step-000000042.safetensors".into(),
                "step-000000042.json".into()
            )
        );
        assert!(is_checkpoint_of(
            Path::new("/r/checkpoints/step-000000042.json"),
            42
        ));
        assert!(!is_checkpoint_of(
            Path::new("/r/checkpoints/step-000000041.json"),
            42
        ));
    }
}
