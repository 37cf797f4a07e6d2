//! Where a run keeps what, in one place: the run folder's files and folders, the
//! checkpoint file names, and the prefixes of the tensors inside a checkpoint.
//!
//! ```text
//! <run>/config.json                      model, model_config, train_config
//! <run>/metrics.jsonl                    one JSON object per logged step and per epoch
//! <run>/curves.png                       the metrics as training curves
//! <run>/events.out.tfevents.*            the same in TensorBoard (one per process start)
//! <run>/skipped-images.txt               files of a folder data set left out (skip-bad)
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
/// The prefix of a training step's own state ([`super::TrainStep::state`]).
pub const STEP: &str = "step.";

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
    /// Where an imported run came from (`elbo import`): the source and its digest.
    pub fn imported(&self) -> PathBuf {
        self.root.join("imported.json")
    }
    /// The files a folder data set's `skip-bad` left out, with why.
    pub fn skipped_images(&self) -> PathBuf {
        self.root.join("skipped-images.txt")
    }
    /// Where the TensorBoard event files go (`events.out.tfevents.*`): the run folder
    /// itself, so that `tensorboard --logdir runs` names each run by its folder.
    pub fn events(&self) -> PathBuf {
        self.root.clone()
    }
    /// The training curves.
    pub fn curves(&self) -> PathBuf {
        self.root.join("curves.png")
    }
    /// A learned noise schedule's chart (a VDM's `gamma(t)`).
    pub fn schedule_chart(&self) -> PathBuf {
        self.root.join("gamma.png")
    }
    /// The chart of the run's objective as a weighting of the ELBO over log-SNR.
    pub fn weighting_chart(&self) -> PathBuf {
        self.root.join("weighting.png")
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

/// The exclusive lock of a run folder that a training process holds for its whole run
/// (released when dropped, or by the system when the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

impl RunDir {
    /// The lock file (`.lock`, holding the holder's process id).
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(".lock")
    }

    /// Takes the run folder for this process (creating the folder): an error naming the
    /// holder's process id when another process trains in it. Readers (`eval`,
    /// `sample`) do not take it.
    pub fn lock(&self) -> crate::Result<RunLock> {
        use std::io::{Read, Seek, Write};
        if self.root.exists() && !self.root.is_dir() {
            return Err(crate::Error::Config {
                detail: format!(
                    "the run folder {} is a file: expected a folder (or a path to create one)",
                    self.root.display()
                ),
            });
        }
        std::fs::create_dir_all(&self.root)
            .map_err(|e| crate::Error::file("create the run folder", &self.root, e))?;
        let path = self.lock_file();
        let at = |e: std::io::Error| crate::Error::file("write the run's lock file", &path, e);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(at)?;
        if let Err(e) = file.try_lock() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(crate::Error::Config {
                detail: match e {
                    std::fs::TryLockError::WouldBlock => format!(
                        "the run folder {} is in use by another training process (pid {}): \
                         wait for it, stop it, or choose another run folder",
                        self.root.display(),
                        holder.trim()
                    ),
                    std::fs::TryLockError::Error(e) => {
                        format!("cannot lock {}: {e}", path.display())
                    }
                },
            });
        }
        file.set_len(0).map_err(at)?;
        file.rewind().map_err(at)?;
        writeln!(file, "{}", std::process::id()).map_err(at)?;
        Ok(RunLock { _file: file })
    }

    /// Removes what interrupted writers left: temporary files (`.<name>.<pid>.<n>.tmp`,
    /// and `.<name>.tmp-<pid>` of earlier versions) of processes that are gone, in the run
    /// folder, its checkpoints and its samples. Returns the files removed.
    pub fn remove_stale_temporaries(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for folder in [self.root.clone(), self.checkpoints(), self.samples()] {
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pid) = temporary_owner(&name)
                    && !process_alive(pid)
                    && std::fs::remove_file(entry.path()).is_ok()
                {
                    removed.push(entry.path());
                }
            }
        }
        removed
    }
}

/// The process id in the name of a temporary file elbo writes (`.<name>.<pid>.<n>.tmp`,
/// [`elbo_plot::write_atomic_with`]; `.<name>.tmp-<pid>` from the checkpoints of earlier
/// versions), or `None` for other files.
fn temporary_owner(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    if let Some((_, pid)) = name.rsplit_once(".tmp-") {
        return pid.parse().ok();
    }
    let stem = name.strip_suffix(".tmp")?;
    let mut fields = stem.rsplit('.');
    let _counter: u64 = fields.next()?.parse().ok()?;
    fields.next()?.parse().ok()
}

/// Whether process `pid` exists (Linux: /proc/<pid>; elsewhere every writer is taken for
/// gone, which only the run's lock holder asks).
fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
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
    fn a_second_writer_is_refused_naming_the_first_and_stale_temporaries_go() {
        let _generator = crate::testing::generator_lock();
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let held = run.lock().unwrap();
        let err = run.lock().unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "in use by another training process (pid {})",
                std::process::id()
            )),
            "{err}"
        );
        drop(held);
        let again = run.lock().unwrap();
        std::fs::create_dir_all(run.checkpoints()).unwrap();
        // pid 0 is never a process's: its temporaries are stale.
        for name in [
            ".step-000000010.safetensors.tmp-0",
            ".curves.png.0.3.tmp",
            ".metrics.jsonl.tmp-0",
        ] {
            std::fs::write(run.checkpoints().join(name), b"half").unwrap();
        }
        let live = format!(".config.json.tmp-{}", std::process::id());
        std::fs::write(run.root.join(&live), b"mine").unwrap();
        std::fs::write(run.checkpoints().join("step-000000010.json"), b"{}").unwrap();
        let removed = run.remove_stale_temporaries();
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(run.root.join(live).exists());
        assert!(run.checkpoints().join("step-000000010.json").exists());
        assert_eq!(temporary_owner("step-1.json"), None);
        assert_eq!(temporary_owner(".a.png.12.0.tmp"), Some(12));
        drop(again);
    }

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
