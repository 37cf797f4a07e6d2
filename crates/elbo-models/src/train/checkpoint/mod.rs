//! Checkpoints: the tensors (weights, optimiser moments, EMA) in one safetensors file and
//! what they belong to (model, config, step, seed) in a small JSON file beside it.
//!
//! Both are written to temporary names in the checkpoint folder, synced, and renamed into
//! place, the JSON last: a checkpoint whose JSON exists is complete. The last `keep`
//! checkpoints are kept.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};

mod tensors;

/// The version of the checkpoint format this code writes and reads.
pub const FORMAT: u32 = 1;

/// What a checkpoint belongs to: enough to refuse it for another model, and to resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// [`FORMAT`] when written.
    pub format: u32,
    /// The elbo version that wrote it.
    pub elbo_version: String,
    /// The model family (`vae`, ...).
    pub model: String,
    /// The model's configuration: what determines the shapes of its weights.
    pub model_config: serde_json::Value,
    /// The training configuration of the run.
    pub train_config: serde_json::Value,
    /// Optimiser steps taken.
    pub step: u64,
    /// The run's seed.
    pub seed: u64,
    /// The safetensors file, relative to the JSON file's folder.
    pub tensors: String,
    /// The sha256 digest of the safetensors file, checked whenever it is read
    /// (safetensors has no checksum of its own). Absent in checkpoints written before
    /// elbo recorded it, which are read unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensors_sha256: Option<String>,
    /// The number of processes of the data-parallel job that wrote it (1: one process).
    /// A run may resume with another number. Absent in checkpoints written before elbo
    /// recorded it (all of one process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
}

impl CheckpointMeta {
    /// Refuses a checkpoint of another model family or model configuration, naming each
    /// field that differs.
    pub fn check_compatible(&self, model: &str, model_config: &serde_json::Value) -> Result<()> {
        if self.format != FORMAT {
            return Err(Error::Checkpoint {
                detail: format!(
                    "format {} was written by another elbo version ({}); this one reads format \
                     {FORMAT}",
                    self.format, self.elbo_version
                ),
            });
        }
        if self.model != model {
            return Err(Error::Checkpoint {
                detail: format!("it holds a {} model, this run is a {model}", self.model),
            });
        }
        let differences = json_differences("", &self.model_config, model_config);
        if differences.is_empty() {
            Ok(())
        } else {
            Err(Error::Checkpoint {
                detail: format!(
                    "it was made with another {model} configuration: {}",
                    differences.join("; ")
                ),
            })
        }
    }
}

/// Writes a run's `config.json` (at `path`): the model family, its configuration and
/// the training configuration of `meta`, whole or not at all.
pub fn write_run_config(path: &Path, meta: &CheckpointMeta) -> Result<()> {
    let value = serde_json::json!({
        "model": meta.model,
        "model_config": meta.model_config,
        "train_config": meta.train_config,
    });
    write_json_atomically(path, &value)
}

/// Checks a run's `config.json` (at `path`, written when the run began) against one of
/// its checkpoints: `Ok(true)` when it names the same model family and configuration,
/// `Ok(false)` when it is not there (the checkpoint's own record is complete; a resume
/// writes the file again), and an error saying what was found when it was emptied,
/// garbled or edited to describe another model.
pub fn check_run_config(path: &Path, meta: &CheckpointMeta) -> Result<bool> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::file("read", path, e)),
    };
    let remedy = "its checkpoints still record the run: restore the file, or delete it and \
                  resume the run (which writes it again from the newest checkpoint)";
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        detail: format!(
            "{} is not the JSON elbo wrote when the run began (expected an object with \
             model, model_config and train_config; {}); {remedy}",
            path.display(),
            if text.trim().is_empty() {
                "found an empty file".to_string()
            } else {
                format!("found text that does not parse: {e}")
            }
        ),
    })?;
    let differences = match value.get("model").and_then(|m| m.as_str()) {
        Some(family) if family == meta.model => json_differences(
            "model_config",
            &meta.model_config,
            value
                .get("model_config")
                .unwrap_or(&serde_json::Value::Null),
        ),
        Some(family) => vec![format!(
            "model: the checkpoint holds a {}, config.json says {family}",
            meta.model
        )],
        None => vec![format!(
            "model: the checkpoint holds a {}, config.json names no model",
            meta.model
        )],
    };
    if differences.is_empty() {
        return Ok(true);
    }
    Err(Error::Checkpoint {
        detail: format!(
            "{} does not describe the run its checkpoints hold ({}): it was edited after \
             the run began; {remedy}",
            path.display(),
            differences
                .join("; ")
                .replace(": checkpoint ", ": the checkpoint has ")
                .replace(", asked ", ", config.json ")
        ),
    })
}

/// The run folder of a checkpoint's JSON file `<run>/checkpoints/step-*.json`; `None`
/// for a checkpoint outside a run folder's `checkpoints/`.
pub fn run_of(json: &Path) -> Option<super::RunDir> {
    let folder = json.parent()?;
    if folder.file_name()? != "checkpoints" {
        return None;
    }
    Some(super::RunDir::new(folder.parent()?))
}

/// `field: checkpoint X, asked Y` for every leaf where two JSON values differ.
pub(crate) fn json_differences(
    path: &str,
    saved: &serde_json::Value,
    asked: &serde_json::Value,
) -> Vec<String> {
    use serde_json::Value;
    match (saved, asked) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    json_differences(
                        &child,
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                    )
                })
                .collect()
        }
        _ if saved == asked => Vec::new(),
        _ => vec![format!("{path}: checkpoint {saved}, asked {asked}")],
    }
}

/// Writes `path` whole or not at all, through the project's one atomic writer
/// ([`elbo_plot::write_atomic_with`]: a synced temporary file in the same folder, then
/// renamed): `write` fills the temporary path it is given. An error of `write` comes
/// back as it was; a failure of the writer itself names the file.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut failed = None;
    let written = elbo_plot::write_atomic_with(path, |temp| {
        write(temp).map_err(|e| {
            let reason = std::io::Error::other(e.to_string());
            failed = Some(e);
            reason
        })
    });
    match (written, failed) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(Error::Io(reason))) => Err(Error::File {
            action: "write",
            path: path.to_path_buf(),
            reason,
        }),
        (Err(_), Some(own)) => Err(own),
        // The file the user knows is `path`, not the temporary name it was written as.
        (Err(e @ elbo_plot::PlotError::Io { .. }), None) => Err(Error::plot(path, e)),
        (Err(other), None) => Err(Error::File {
            action: "write",
            path: path.to_path_buf(),
            reason: std::io::Error::other(other.to_string()),
        }),
    }
}

/// Writes `value` as pretty-printed JSON to `path`, whole or not at all
/// ([`write_atomically`]).
pub fn write_json_atomically(path: &Path, value: &serde_json::Value) -> Result<()> {
    write_atomically(path, |temp| {
        fs::write(
            temp,
            serde_json::to_string_pretty(value).unwrap_or_default(),
        )?;
        Ok(())
    })
}

/// Saves a checkpoint into `dir` (created if needed), then removes all but the newest
/// `keep` checkpoints. Returns the JSON file's path. On failure nothing of this
/// checkpoint is left: a tensors file whose JSON could not be written is removed.
pub fn save(
    dir: &Path,
    mut meta: CheckpointMeta,
    tensors: &[(String, Tensor)],
    keep: usize,
) -> Result<PathBuf> {
    create_folder(dir)?;
    let (tensor_name, json_name) = super::layout::checkpoint_names(meta.step);
    meta.tensors = tensor_name.clone();
    let tensor_path = dir.join(&tensor_name);
    write_atomically(&tensor_path, |temp| {
        tensors::write(temp, tensors).map_err(|e| Error::file("write", &tensor_path, e))?;
        meta.tensors_sha256 = Some(sha256_of(temp)?);
        Ok(())
    })?;
    let json_path = dir.join(&json_name);
    let json = write_atomically(&json_path, |temp| {
        let mut file = fs::File::create(temp)?;
        serde_json::to_writer_pretty(&mut file, &meta).map_err(std::io::Error::from)?;
        file.write_all(b"\n")?;
        Ok(())
    });
    if let Err(e) = json {
        // Without its JSON the tensors are no checkpoint: nothing would ever read or
        // remove them.
        let _ = fs::remove_file(&tensor_path);
        return Err(e);
    }
    prune(dir, keep.max(1))?;
    Ok(json_path)
}

/// Reads the safetensors file at `path` (any, not only a checkpoint's: imported
/// weights, the FID Inception's), its tensors on the CPU in the file's order; `what`
/// says in an error what the file was read as.
pub fn read_tensor_file(path: &Path, what: &str) -> Result<Vec<(String, Tensor)>> {
    tensors::read(path).map_err(|e| Error::Checkpoint {
        detail: match e {
            tensors::ReadError::Io(e) => format!("cannot read {} ({what}): {e}", path.display()),
            tensors::ReadError::Format(why) => {
                format!(
                    "{} is not the safetensors file of {what}: {why}",
                    path.display()
                )
            }
        },
    })
}

/// Writes `tensors` as the safetensors file `path`, whole or not at all (a temporary
/// name, synced, renamed).
pub fn write_tensor_file(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    write_atomically(path, |temp| {
        tensors::write(temp, tensors).map_err(|e| Error::file("write", path, e))
    })
}

/// Creates the checkpoint folder `dir`, refusing a file in its place with what was
/// expected.
pub fn create_folder(dir: &Path) -> Result<()> {
    if dir.is_file() {
        return Err(Error::file(
            "create the checkpoint folder",
            dir,
            std::io::Error::other("it is a file: expected a folder (or nothing) there"),
        ));
    }
    fs::create_dir_all(dir).map_err(|e| Error::file("create", dir, e))
}

/// The sha256 digest of the file at `path`, in lowercase hexadecimal.
pub fn sha256_of(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = fs::File::open(path).map_err(|e| Error::Checkpoint {
        detail: format!("cannot read {}: {e}", path.display()),
    })?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::Checkpoint {
        detail: format!("cannot read {}: {e}", path.display()),
    })?;
    Ok(elbo_data::hex(&hasher.finalize()))
}

/// The complete checkpoints in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(named(dir, ".json")?.into_iter().map(|(_, p)| p).collect())
}

/// The files `step-*<suffix>` in `dir` by name, sorted (none when `dir` does not exist).
fn named(dir: &Path, suffix: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(found),
        Err(e) => return Err(Error::file("list", dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| Error::file("list", dir, e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if name.starts_with("step-") && name.ends_with(suffix) {
            found.push((name, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Removes all but the newest `keep` checkpoints, and every tensors file without its
/// JSON (left by a kill between the two writes, or during an earlier rotation).
fn prune(dir: &Path, keep: usize) -> Result<()> {
    let all = list(dir)?;
    for json in &all[..all.len().saturating_sub(keep)] {
        // JSON first: a checkpoint is gone as soon as its JSON is.
        fs::remove_file(json).map_err(|e| Error::file("remove", json, e))?;
        let _ = fs::remove_file(json.with_extension("safetensors"));
    }
    for (_, orphan) in named(dir, ".safetensors")? {
        if !orphan.with_extension("json").exists() {
            fs::remove_file(&orphan).map_err(|e| Error::file("remove", &orphan, e))?;
        }
    }
    Ok(())
}

/// The error for a checkpoint `json` that is not there (any more): a run's writer keeps
/// only its newest checkpoints, so a reader that named one may find it rotated away.
fn removed(json: &Path) -> Error {
    let folder = json.parent().unwrap_or(Path::new("."));
    let newest = list(folder).ok().and_then(|mut l| l.pop());
    Error::Checkpoint {
        detail: match newest {
            Some(newest) => format!(
                "{} is not there: the run's writer keeps only its newest checkpoints and \
                 removed it (rotation); the newest is {} (name the run folder to always \
                 read the newest)",
                json.display(),
                newest.display()
            ),
            None => format!(
                "{} is not there, and {} holds no checkpoint",
                json.display(),
                folder.display()
            ),
        },
    }
}

/// A checkpoint read back.
pub struct Loaded {
    /// What it belongs to.
    pub meta: CheckpointMeta,
    /// Its tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
}

/// Reads the checkpoint whose JSON file is `json`, or the newest in `json` when it is a
/// folder.
pub fn load(json: &Path) -> Result<Loaded> {
    let json = if json.is_dir() {
        list(json)?.pop().ok_or_else(|| Error::Checkpoint {
            detail: format!("no checkpoint (step-*.json) in {}", json.display()),
        })?
    } else {
        json.to_path_buf()
    };
    if json.extension().is_some_and(|e| e != "json") {
        return Err(Error::Checkpoint {
            detail: format!(
                "{} is not a checkpoint's JSON file: expected a run folder, its checkpoints/ \
                 folder, or a step-*.json file (the .safetensors beside it holds only the \
                 tensors)",
                json.display()
            ),
        });
    }
    let meta = read_meta(&json)?;
    let named = json
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if named.starts_with("step-") && named != super::layout::checkpoint_names(meta.step).1 {
        return Err(Error::Checkpoint {
            detail: format!(
                "{} says it is step {}, its name says otherwise: it was renamed or edited",
                json.display(),
                meta.step
            ),
        });
    }
    // A checkpoint names only a file of its own folder: never another run's weights
    // (an absolute path, `..`, a sub-folder).
    let plain = Path::new(&meta.tensors);
    if meta.tensors.is_empty()
        || plain.components().count() != 1
        || !matches!(
            plain.components().next(),
            Some(std::path::Component::Normal(_))
        )
    {
        return Err(Error::Checkpoint {
            detail: format!(
                "{} names its tensors {:?}: expected the name of a file beside it (such as \
                 step-000000010.safetensors), not a path",
                json.display(),
                meta.tensors
            ),
        });
    }
    let tensor_path = json.parent().unwrap_or(Path::new(".")).join(&meta.tensors);
    if !tensor_path.exists() && !json.exists() {
        // Rotated away between reading the JSON and its tensors.
        return Err(removed(&json));
    }
    if let Some(expected) = &meta.tensors_sha256 {
        let found = sha256_of(&tensor_path)?;
        if &found != expected {
            return Err(Error::Checkpoint {
                detail: format!(
                    "the tensors {} have sha256 {found}, but {} records {expected}: the file \
                     was changed or damaged after it was written",
                    tensor_path.display(),
                    json.display()
                ),
            });
        }
    }
    let tensors = tensors::read(&tensor_path).map_err(|e| Error::Checkpoint {
        detail: match e {
            tensors::ReadError::Io(e) => format!("cannot read {}: {e}", tensor_path.display()),
            tensors::ReadError::Format(why) => format!(
                "the tensors {} are not the complete safetensors file the checkpoint's JSON \
                 names: {why}",
                tensor_path.display()
            ),
        },
    })?;
    // Written only of finite states; a NaN read back is damage or an edit, and would
    // evaluate to NaN, sample black images and resume into NaN.
    let not_finite = tch::no_grad(|| {
        tensors
            .iter()
            .find(|(_, t)| t.is_floating_point() && t.isfinite().all().int64_value(&[]) == 0)
            .map(|(name, _)| name.clone())
    });
    if let Some(name) = not_finite {
        return Err(Error::Checkpoint {
            detail: format!(
                "{} holds values that are not finite in {name}: elbo writes checkpoints only \
                 of finite states, so the file was changed after it was written; use an \
                 earlier checkpoint",
                tensor_path.display()
            ),
        });
    }
    Ok(Loaded {
        meta,
        tensors: tensors.into_iter().collect(),
    })
}

/// What the checkpoint whose JSON file is `json` says about itself (its tensors are
/// not read).
pub fn read_meta(json: &Path) -> Result<CheckpointMeta> {
    let text = fs::read_to_string(json).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => removed(json),
        _ => Error::Checkpoint {
            detail: format!("cannot read {}: {e}", json.display()),
        },
    })?;
    let meta: CheckpointMeta = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        detail: format!("{} is not an elbo checkpoint: {e}", json.display()),
    })?;
    if meta.format != FORMAT {
        return Err(Error::Checkpoint {
            detail: format!(
                "{} has format {}, written by elbo {}; this elbo reads format {FORMAT}",
                json.display(),
                meta.format,
                meta.elbo_version
            ),
        });
    }
    Ok(meta)
}

/// Finds the checkpoint meant by `path`: a checkpoint's JSON file, a run folder (its
/// newest checkpoint), or a run's `checkpoints/` folder.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name.starts_with("step-") && name.ends_with(".json") && !path.exists() {
        return Err(removed(path));
    }
    let in_run = super::RunDir::new(path).checkpoints();
    let folder = if in_run.is_dir() {
        in_run
    } else {
        path.to_path_buf()
    };
    list(&folder)?.pop().ok_or_else(|| Error::Checkpoint {
        detail: format!(
            "{} holds no checkpoint: expected a run folder, its checkpoints/ folder, or a \
             step-*.json file",
            path.display()
        ),
    })
}

#[cfg(test)]
mod tests;
