//! `elbo plot`: a run's training curves, and a VDM run's learned noise schedule.

use std::path::{Path, PathBuf};

use tch::Device;
use tch::nn::VarStore;

use super::restore::restore;
use crate::error::{Error, Result};
use crate::models::ModelConfig;
use crate::train::{self, RunDir, checkpoint};

/// Draws the training curves of the run folder `run` (its `metrics.jsonl`) into `out`
/// (default: the run's `curves.png`); returns the file written.
pub fn plot_run(run: &Path, out: Option<&Path>) -> Result<PathBuf> {
    let folder = RunDir::new(run);
    let metrics = folder.metrics();
    if !metrics.is_file() {
        return Err(Error::Config {
            detail: format!(
                "{} has no metrics.jsonl: expected a run folder of `elbo train`",
                run.display()
            ),
        });
    }
    let text = std::fs::read_to_string(&metrics).map_err(|e| Error::file("read", &metrics, e))?;
    train::metrics::check_lines(&metrics, &text)?;
    let out = out.map_or_else(|| folder.curves(), Path::to_path_buf);
    let title = run
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run.display().to_string());
    if !train::metrics::write_curves(&metrics, &out, &title)? {
        return Err(Error::Config {
            detail: format!(
                "{} holds no metrics lines with a step and a value to plot",
                metrics.display()
            ),
        });
    }
    Ok(out)
}

/// A VDM run's learned noise schedule: `gamma(t)` of its newest checkpoint (the EMA
/// weights, which evaluation and sampling use) beside the schedule it started from (the
/// model built again from the run's seed, as training built it), as a PNG at `out`
/// (default: the run's `gamma.png`). `None` for a run of another family, or without a
/// checkpoint yet; an error for a `config.json` that contradicts the checkpoints.
pub fn plot_schedule(run: &Path, out: Option<&Path>) -> Result<Option<PathBuf>> {
    // The newest checkpoint names the family (only its JSON is read for that).
    let folder = RunDir::new(run);
    let Some(newest) = checkpoint::list(&folder.checkpoints())?.pop() else {
        return Ok(None);
    };
    let meta = checkpoint::read_meta(&newest)?;
    checkpoint::check_run_config(&folder.config(), &meta)?;
    if meta.model != crate::models::vdm::FAMILY {
        return Ok(None);
    }
    let restored = restore(run, Device::Cpu, true)?;
    let ModelConfig::Vdm(config) = &restored.config else {
        return Ok(None);
    };
    const POINTS: usize = 100;
    let curve = |vs: &VarStore| -> Result<Vec<f64>> {
        crate::models::vdm::Vdm::new(&vs.root(), config.clone())?.gamma_curve(POINTS)
    };
    // The start: a model built as training built it, from the run's seed.
    let initial = train::var_store(restored.meta.seed, Device::Cpu);
    let start = curve(&initial)?;
    // The end: the same model with the checkpoint's (EMA) weights copied in.
    let mut vs = VarStore::new(Device::Cpu);
    let end_model = crate::models::vdm::Vdm::new(&vs.root(), config.clone())?;
    vs.copy(&restored.vs)?;
    let end = end_model.gamma_curve(POINTS)?;
    let series = |name: &str, gamma: &[f64]| elbo_plot::Series {
        name: name.to_string(),
        points: gamma
            .iter()
            .enumerate()
            .map(|(i, &g)| (i as f64 / POINTS as f64, g))
            .collect(),
        style: elbo_plot::Style::Line,
    };
    let figure = elbo_plot::Figure {
        title: format!("VDM noise schedule ({})", config.gamma),
        panels: vec![elbo_plot::Panel {
            title: "gamma(t) = -log SNR(t)".to_string(),
            x_label: "t".to_string(),
            series: vec![
                series("start", &start),
                series(&format!("step {}", restored.meta.step), &end),
            ],
        }],
    };
    let out = out.map_or_else(|| folder.schedule_chart(), Path::to_path_buf);
    elbo_plot::write(&out, &figure).map_err(|e| Error::plot(out.clone(), e))?;
    Ok(Some(out))
}
