//! What runs at each epoch's end, plugged into the loop (a model's test evaluation and
//! sample pictures: `eval::hooks`). The loop calls them after the checkpoint due at that
//! step is on disk, so nothing optional can cost a run its training.

use serde_json::Value;

use super::layout::RunDir;
use crate::error::Result;

/// Where a run is at an epoch's end.
pub struct EpochEnd<'a> {
    /// The epoch just finished, counted from 1.
    pub epoch: u64,
    /// Optimiser steps taken.
    pub step: u64,
    /// The run folder.
    pub run: &'a RunDir,
}

/// Something the loop runs at each epoch's end.
pub trait Hook {
    /// Does its work; returns the values to add to the epoch's metrics line (numbers
    /// are also shown as progress; an empty list adds nothing).
    fn epoch_end(&mut self, at: &EpochEnd<'_>) -> Result<Vec<(String, Value)>>;
}
