//! `elbo import diffusers` and `elbo export diffusers`: a diffusers `UNet2DModel` folder
//! made into an elbo run (a step-0 checkpoint that `elbo sample`, `elbo eval` and
//! `elbo train ddpm --resume` take), and an elbo DDPM run written as such a folder.

use std::path::{Path, PathBuf};

use serde_json::json;
use tch::Device;

use super::options::{TrainDefaults, TrainOptions};
use super::restore::restore;
use crate::data::DataSpec;
use crate::error::{Error, Result};
use crate::interop::diffusers::{self, DiffusersModel};
use crate::models::ModelConfig;
use crate::models::ddpm::{self, DdpmConfig, Recipe, RecipeName};
use crate::train::checkpoint::{self, CheckpointMeta};
use crate::train::optim::Adam;
use crate::train::{self, Ema, RunDir, TrainConfig};

/// What `elbo import diffusers` asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportRequest {
    /// The diffusers model folder.
    pub folder: PathBuf,
    /// The run folder to create.
    pub run: PathBuf,
    /// The data the model is for (its test split is what `elbo eval` reads).
    pub data: DataSpec,
    /// The recipe fine-tuning (`--resume`) continues with.
    pub recipe: RecipeName,
    /// The sha256 the weights file must have, if known.
    pub sha256: Option<String>,
    /// The run's seed.
    pub seed: u64,
}

/// What was imported.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportReport {
    /// The checkpoint written.
    pub checkpoint: PathBuf,
    /// The DDPM it holds.
    pub config: DdpmConfig,
    /// Its parameters.
    pub parameters: i64,
    /// The weights file read, and its sha256.
    pub weights: (PathBuf, String),
}

/// The training configuration an imported run records: `recipe`'s, on `data`.
fn imported_train_config(request: &ImportRequest) -> Result<TrainConfig> {
    let options = TrainOptions {
        data: request.data.clone(),
        seed: request.seed,
        ..TrainOptions::default()
    };
    options.resolve(
        &TrainDefaults::recipe(&Recipe::of(request.recipe)),
        usize::MAX,
        Default::default(),
    )
}

/// Reads the diffusers folder of `request` and writes it as a new elbo run: its
/// `config.json` and a step-0 checkpoint (the weights, Adam's moments at zero, the EMA at
/// the weights), and `imported.json` saying where it came from.
pub fn import_diffusers(request: &ImportRequest) -> Result<ImportReport> {
    let run = RunDir::new(&request.run);
    if let Some(existing) = checkpoint::list(&run.checkpoints())
        .ok()
        .and_then(|mut l| l.pop())
    {
        return Err(Error::Config {
            detail: format!(
                "the run folder {} already holds a run (checkpoint {}): import into a new \
                 folder",
                run.root.display(),
                existing.display()
            ),
        });
    }
    let DiffusersModel {
        config,
        weights,
        weights_file,
    } = diffusers::read_diffusers(&request.folder, request.sha256.as_deref())?;
    let train_config = imported_train_config(request)?;
    let model_config = ModelConfig::Ddpm(config.clone());
    let mut vs = train::var_store(request.seed, Device::Cpu);
    let _model = model_config.build(&vs.root())?;
    let prefixed = weights
        .into_iter()
        .map(|(name, t)| (format!("{}unet.{name}", train::layout::MODEL), t))
        .collect();
    train::load_weights(&mut vs, &prefixed, false)?;
    let adam = Adam::new(&vs, train_config.adam);
    let ema = train_config.ema_decay.map(|_| Ema::new(&vs));
    let tensors = train::state_tensors(&vs, &adam, ema.as_ref());
    let parameters = vs.variables().values().map(|t| t.numel() as i64).sum();
    let meta = CheckpointMeta {
        format: checkpoint::FORMAT,
        elbo_version: env!("CARGO_PKG_VERSION").to_string(),
        model: ddpm::FAMILY.to_string(),
        model_config: model_config.to_json(),
        train_config: serde_json::to_value(&train_config).unwrap_or_default(),
        step: 0,
        seed: request.seed,
        tensors: String::new(),
        tensors_sha256: None,
        world_size: Some(1),
    };
    std::fs::create_dir_all(&run.root).map_err(|e| Error::file("create", &run.root, e))?;
    checkpoint::write_json_atomically(
        &run.imported(),
        &json!({
            "from": "diffusers",
            "folder": request.folder.display().to_string(),
            "weights": weights_file.0.display().to_string(),
            "weights_sha256": weights_file.1,
        }),
    )?;
    let saved = checkpoint::save(
        &run.checkpoints(),
        meta.clone(),
        &tensors,
        train_config.cadence.keep_checkpoints,
    )?;
    checkpoint::write_run_config(&run.config(), &meta)?;
    Ok(ImportReport {
        checkpoint: saved,
        config,
        parameters,
        weights: weights_file,
    })
}

/// Writes the DDPM of the run or checkpoint `path` (its EMA weights when kept, which
/// is what elbo samples with) as a diffusers folder at `out`; returns the files.
pub fn export_diffusers(path: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let restored = restore(path, Device::Cpu, true)?;
    let ModelConfig::Ddpm(config) = &restored.config else {
        return Err(Error::Config {
            detail: format!(
                "{} holds a {} model: diffusers' UNet2DModel is a DDPM's network, so only \
                 DDPM runs export",
                restored.path.display(),
                restored.meta.model
            ),
        });
    };
    let weights = restored
        .vs
        .variables()
        .into_iter()
        .filter_map(|(name, t)| Some((name.strip_prefix("unet.")?.to_string(), t)))
        .collect();
    diffusers::write_diffusers(config, &weights, out)
}
