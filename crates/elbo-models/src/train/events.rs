//! What goes in and out of a run besides the model: how it is started and stopped
//! ([`Control`]), what its checkpoints say they hold ([`Identity`]), what it reports as
//! it goes ([`Observer`], [`RunStart`], [`Progress`]) and how it ended ([`TrainReport`]).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use tch::Device;

/// What the loop reports as it goes (for a progress bar or log lines).
#[derive(Clone, Debug)]
pub struct Progress {
    /// The step just taken (counted from 1).
    pub step: u64,
    /// Steps in all.
    pub steps: u64,
    /// The epoch (counted from 0).
    pub epoch: u64,
    /// The batch means of the reported terms (or loss values).
    pub terms: Vec<(String, f64)>,
    /// Steps per second since the (re)start.
    pub steps_per_second: f64,
    /// The numbers of the evaluation made at this step (an epoch's end), if any: the
    /// test ELBO (`test_elbo`), a classifier's `test_accuracy`.
    pub evaluation: Vec<(String, f64)>,
}

/// What a run is, printed before its first step.
#[derive(Clone, Debug)]
pub struct RunStart {
    /// The model, as its job names it (`vae-mlp`, `ddpm-mnist`, ...).
    pub label: String,
    /// Trainable parameters.
    pub parameters: i64,
    /// The data set.
    pub data: String,
    /// Training examples.
    pub train_examples: usize,
    /// Steps in all.
    pub steps: u64,
    /// The step this call starts from (0, or the resumed checkpoint's).
    pub start_step: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// Where the weights live.
    pub device: Device,
    /// libtorch's CPU threads.
    pub threads: i32,
    /// The run folder.
    pub run: PathBuf,
}

/// What watches a run: [`Observer::started`] once, then [`Observer::progress`] at every
/// logged step. A closure taking `&Progress` is an observer.
pub trait Observer {
    /// The run is set up and about to take its first step.
    fn started(&mut self, start: &RunStart);
    /// A logged step.
    fn progress(&mut self, progress: &Progress);
    /// A folder of images is being packed: `done` of `total` images decoded (nothing
    /// is called when its pack is found).
    fn packing(&mut self, done: usize, total: usize) {
        let _ = (done, total);
    }
}

impl<F: FnMut(&Progress)> Observer for F {
    fn started(&mut self, _start: &RunStart) {}
    fn progress(&mut self, progress: &Progress) {
        self(progress)
    }
}

/// Watching nothing.
impl Observer for () {
    fn started(&mut self, _start: &RunStart) {}
    fn progress(&mut self, _progress: &Progress) {}
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Finished {
    /// All steps were taken.
    Completed,
    /// The stop flag was raised; the checkpoint written is named.
    Interrupted {
        /// The step the run stopped after.
        step: u64,
    },
}

/// The outcome of [`Trainer::fit`].
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// How it ended.
    pub finished: Finished,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// Steps taken in this call.
    pub steps_taken: u64,
    /// In a data-parallel job that completed: the sha256 of the final state (weights,
    /// Adam's moments, the EMA), found equal in every process.
    pub agreed: Option<String>,
}

/// How a call to [`Trainer::fit`] starts and stops.
#[derive(Clone, Copy, Debug)]
pub struct Control<'a> {
    /// Continue from the newest checkpoint of the run folder (refused if it belongs to
    /// another model or configuration) instead of starting a new run.
    pub resume: bool,
    /// Raised (by a Ctrl-C handler, say) to end the run after the current step with a
    /// checkpoint.
    pub stop: &'a AtomicBool,
    /// On resume, accept training options that differ from the checkpoint's (each change
    /// is recorded in `metrics.jsonl`); otherwise such a resume is refused.
    pub allow_changes: bool,
}

/// What a run's checkpoints say they hold: the family and configuration of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    /// The family (`vae`, `hvae`, `ddpm`, `classifier`).
    pub family: String,
    /// The configuration that fixes the shapes of the weights.
    pub config: serde_json::Value,
}
