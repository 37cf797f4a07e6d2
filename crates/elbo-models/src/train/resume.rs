//! How a run begins: a fresh start (the run folder's `config.json`) or the resume of its
//! newest checkpoint, with the check that the training options still describe the same
//! run.

use std::collections::BTreeMap;

use tch::{Tensor, nn::VarStore};

use super::checkpoint;
use super::layout;
use super::metrics::{self, MetricsLog};
use super::optim::Adam;
use super::state::{Ema, restore_state};
use super::{Control, LrDecay, TrainStep, Trainer};
use crate::error::{Error, Result};

impl Trainer<'_> {
    /// Starts a new run (writing `config.json`) or resumes the newest checkpoint of the
    /// run folder; returns the step to start from.
    pub(super) fn start_or_resume(
        &self,
        control: Control<'_>,
        step: &dyn TrainStep,
        vs: &mut VarStore,
        adam: &mut Adam,
        ema: Option<&mut Ema>,
    ) -> Result<u64> {
        let run = &self.run;
        if self.writer {
            // Before the first step, not after the first epoch's work.
            checkpoint::create_folder(&run.checkpoints())?;
        }
        let newest = checkpoint::list(&run.checkpoints())?.pop();
        match (control.resume, newest) {
            (true, Some(newest)) => {
                let loaded = checkpoint::load(&newest)?;
                loaded
                    .meta
                    .check_compatible(&self.identity.family, &self.identity.config)?;
                let has_config = checkpoint::check_run_config(&run.config(), &loaded.meta)?;
                if loaded.meta.seed != self.config.seed {
                    return Err(Error::Checkpoint {
                        detail: format!(
                            "it was trained with seed {}, this run asks for seed {}",
                            loaded.meta.seed, self.config.seed
                        ),
                    });
                }
                if loaded.meta.step > self.config.steps {
                    return Err(Error::Config {
                        detail: format!(
                            "{} is at step {}, past the {} steps this run asks for: nothing \
                             to train; resume with more steps to continue it",
                            newest.display(),
                            loaded.meta.step,
                            self.config.steps
                        ),
                    });
                }
                let changes = self.changes_from(&loaded.meta.train_config);
                if !changes.is_empty() && !control.allow_changes {
                    return Err(Error::Config {
                        detail: format!(
                            "resuming {} with other training options would not continue the \
                             same run: {}; resume with the options it was started with, or \
                             pass --allow-changes to record the change and go on",
                            newest.display(),
                            changes
                                .iter()
                                .map(|(k, (was, now))| format!("{k} was {was}, now {now}"))
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                    });
                }
                restore_state(vs, adam, ema, &loaded.tensors, loaded.meta.step)?;
                let own: BTreeMap<String, Tensor> = loaded
                    .tensors
                    .iter()
                    .filter_map(|(k, t)| {
                        Some((k.strip_prefix(layout::STEP)?.to_string(), t.copy()))
                    })
                    .collect();
                step.restore(&own)?;
                if self.writer {
                    if !has_config {
                        // Deleted: written again, from the checkpoint.
                        checkpoint::write_run_config(&run.config(), &loaded.meta)?;
                    }
                    metrics::truncate(&run.metrics(), loaded.meta.step)?;
                    if !changes.is_empty() {
                        let changed: serde_json::Map<String, serde_json::Value> = changes
                            .into_iter()
                            .map(|(k, (was, now))| (k, serde_json::json!([was, now])))
                            .collect();
                        MetricsLog::open(&run.metrics())?.write(&serde_json::json!({
                            "kind": "resume", "step": loaded.meta.step, "changed": changed,
                        }))?;
                    }
                }
                return Ok(loaded.meta.step);
            }
            (false, Some(last)) => {
                return Err(Error::Config {
                    detail: format!(
                        "the run folder {} already holds a run (checkpoint {}): pass --resume \
                         to continue it, or choose another run folder",
                        run.root.display(),
                        last.display()
                    ),
                });
            }
            // Nothing to resume: a fresh start, whatever an interrupted run left before
            // its first checkpoint.
            (_, None) => {}
        }
        if self.writer {
            for stale in [run.metrics(), run.curves()] {
                match std::fs::remove_file(&stale) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::file("remove", stale, e));
                    }
                    _ => {}
                }
            }
            checkpoint::write_run_config(&run.config(), &self.meta(0))?;
        }
        Ok(0)
    }

    /// The training options of this run that differ from those recorded in a checkpoint
    /// (`recorded`), by name, with the old and new values. The run's [`super::Cadence`] (which
    /// never changes the weights) may change; so may the number of steps, unless the
    /// learning rate decays over them.
    fn changes_from(
        &self,
        recorded: &serde_json::Value,
    ) -> Vec<(String, (serde_json::Value, serde_json::Value))> {
        let now = serde_json::to_value(&self.config).unwrap_or_default();
        let cadence = serde_json::to_value(self.config.cadence).unwrap_or_default();
        let mut free: Vec<&str> = cadence
            .as_object()
            .map(|fields| fields.keys().map(String::as_str).collect())
            .unwrap_or_default();
        if self.config.decay == LrDecay::Constant {
            free.push("steps");
        }
        let (Some(was), Some(now)) = (recorded.as_object(), now.as_object()) else {
            return Vec::new();
        };
        now.iter()
            .filter(|(key, _)| !free.contains(&key.as_str()))
            .filter_map(|(key, value)| {
                let old = was.get(key).cloned().unwrap_or(serde_json::Value::Null);
                (old != *value).then(|| (key.clone(), (old, value.clone())))
            })
            .collect()
    }
}
