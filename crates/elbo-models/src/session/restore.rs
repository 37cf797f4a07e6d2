//! A trained model brought back from its checkpoint, the first step of every command
//! that reads a run.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::Device;
use tch::nn::VarStore;

use crate::data::DataSpec;
use crate::error::{Error, Result};
use crate::models::{ElboModel, ModelConfig};
use crate::train;
use crate::train::checkpoint::{self, CheckpointMeta, resolve_checkpoint};

/// A trained model brought back from a checkpoint.
pub struct Restored {
    /// Its variables.
    pub vs: VarStore,
    /// The model.
    pub model: Box<dyn ElboModel>,
    /// Its configuration.
    pub config: ModelConfig,
    /// What the checkpoint says about itself.
    pub meta: CheckpointMeta,
    /// The checkpoint's JSON file.
    pub path: PathBuf,
}

impl Restored {
    /// The data the run was trained on, as its configuration records it (the bundled
    /// sample for a record without one).
    pub fn trained_on(&self) -> DataSpec {
        #[derive(Deserialize)]
        struct Recorded {
            #[serde(default)]
            data: DataSpec,
        }
        serde_json::from_value::<Recorded>(self.meta.train_config.clone())
            .map(|r| r.data)
            .unwrap_or_default()
    }
}

/// Rebuilds the model of the checkpoint at `path` (a checkpoint's JSON file, a run
/// folder, or its `checkpoints/` folder) on `device`, with its weights, or its EMA
/// weights when `use_ema` and present.
pub fn restore(path: &Path, device: Device, use_ema: bool) -> Result<Restored> {
    let json = resolve_checkpoint(path)?;
    let loaded = checkpoint::load(&json)?;
    if let Some(run) = checkpoint::run_of(&json) {
        checkpoint::check_run_config(&run.config(), &loaded.meta)?;
    }
    let config = ModelConfig::from_record(&loaded.meta.model, &loaded.meta.model_config).map_err(
        |e| match e {
            Error::Checkpoint { detail } => Error::Checkpoint {
                detail: format!("{}: {detail}", json.display()),
            },
            other => other,
        },
    )?;
    let mut vs = train::var_store(loaded.meta.seed, device);
    let model = config.build(&vs.root())?;
    train::load_weights(&mut vs, &loaded.tensors, use_ema)?;
    Ok(Restored {
        vs,
        model,
        config,
        meta: loaded.meta,
        path: json,
    })
}
