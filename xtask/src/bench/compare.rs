//! The arithmetic of the comparison: each side's runs of a case summarised into the
//! report's row (medians, speed-ups and their ranges, PyTorch's variants and the fastest
//! of them, the data share, the step's efficiency against the matmul peak).

use anyhow::{Context, Result, bail};

use super::args::VariantChoice;
use super::cases::Case;
use super::report::{Best, CaseRow, DataShare, Efficiency, EfficiencyRound, VariantRow};
use super::runs::{MatmulRun, StepRun};
use super::stats::{self, Summary};

/// Every repetition of every run, summarised; `None` without usable times.
fn summary_of(runs: &[StepRun]) -> Option<Summary> {
    let all: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.step_ms.iter().copied())
        .collect();
    Summary::of(&all)
}

/// The median of the runs' values of `field` (`None` when none has one).
fn median_of(runs: &[StepRun], field: impl Fn(&StepRun) -> Option<f64>) -> Option<f64> {
    let all: Vec<f64> = runs.iter().filter_map(field).collect();
    Summary::of(&all).map(|s| s.median)
}

/// Adds PyTorch's variants to `row` and names the fastest PyTorch of all (eager with
/// either Adam, and the variants) by median step, with elbo's ratio to it. A variant
/// whose runs are not the same model is refused, as the eager runs are.
pub(super) fn with_variants(
    row: &mut CaseRow,
    ours: &[StepRun],
    variants: &[(VariantChoice, &[StepRun])],
) -> Result<()> {
    let params = ours.first().and_then(|r| r.params);
    let mut candidates: Vec<(String, Summary)> =
        vec![("eager, default Adam".into(), row.pytorch_ms)];
    if let Some(fused) = row.pytorch_fused_ms {
        candidates.push(("eager, fused Adam".into(), fused));
    }
    row.variants.clear();
    for &(variant, runs) in variants {
        let ms = summary_of(runs).with_context(|| {
            format!(
                "PyTorch ({}) reported no usable times for {}",
                variant.name(),
                row.model
            )
        })?;
        if let Some(run) = runs.iter().find(|r| r.params != params) {
            bail!(
                "{}: elbo has {params:?} parameters and PyTorch ({}) {:?}: the two must be \
                 the same model",
                row.model,
                variant.name(),
                run.params
            );
        }
        let adam = if row.task == "train" {
            ", fused Adam"
        } else {
            ""
        };
        candidates.push((format!("{}{adam}", variant.name()), ms));
        row.variants.push(VariantRow {
            variant: variant.name().to_string(),
            ms,
            speedup: ms.median / row.elbo_ms.median,
            first_step_s: median_of(runs, |r| r.first_step_s),
            peak_rss_mib: runs
                .iter()
                .filter_map(|r| r.peak_rss_mib)
                .fold(0.0, f64::max),
        });
    }
    if row.task != "train" {
        candidates[0].0 = "eager".into();
    }
    let (name, ms) = candidates
        .into_iter()
        .min_by(|a, b| a.1.median.total_cmp(&b.1.median))
        .expect("the eager run is always a candidate");
    let (speedup, low, high) = stats::speedup(row.elbo_ms, ms);
    row.best = Some(Best {
        variant: name,
        ms,
        speedup,
        speedup_range: [low, high],
    });
    Ok(())
}

/// The time to prepare a batch (`data`, steptime's `--task data`) next to the median
/// training step `step_ms`; `None` when the run has no usable times.
pub(super) fn data_share(data: &StepRun, step_ms: f64) -> Option<DataShare> {
    let data = Summary::of(&data.step_ms)?;
    Some(DataShare {
        elbo_data_ms: data.median,
        data_share: data.median / (data.median + step_ms),
    })
}

/// For a training step whose model reports its analytic forward FLOPs per example
/// (the UNet), elbo's achieved GFLOP/s (a step is counted as 3 forwards: forward, and
/// the backward's two products per layer) and its ratio to the machine's fp32 matmul
/// peak: per round, elbo's run (`ours[r]`, its median step) over the peak measured just
/// before it (`peaks[r]`); the median over rounds and each round's.
pub(super) fn efficiency(
    row: &CaseRow,
    reference: &[StepRun],
    ours: &[StepRun],
    peaks: &[MatmulRun],
) -> Option<Efficiency> {
    let flops = reference.first()?.forward_flops_per_example?;
    if row.task != "train" {
        return None;
    }
    let batch = f64::from(row.batch);
    let gflops_at = |ms: f64| 3.0 * flops * batch / (ms * 1e-3) / 1e9;
    let rounds: Vec<EfficiencyRound> = ours
        .iter()
        .zip(peaks)
        .filter_map(|(run, peak)| {
            let ms = Summary::of(&run.step_ms)?.median;
            Some(EfficiencyRound {
                elbo_gflops: gflops_at(ms),
                matmul_peak_gflops: peak.gflops?,
            })
        })
        .collect();
    let ratios: Vec<f64> = rounds
        .iter()
        .map(|r| r.elbo_gflops / r.matmul_peak_gflops)
        .collect();
    let peak_values: Vec<f64> = rounds.iter().map(|r| r.matmul_peak_gflops).collect();
    let (ratio, peak) = (Summary::of(&ratios)?, Summary::of(&peak_values)?);
    Some(Efficiency {
        forward_flops_per_example: flops,
        elbo_gflops: gflops_at(row.elbo_ms.median),
        matmul_peak_gflops: peak.median,
        efficiency: ratio.median,
        efficiency_per_round: ratios,
        efficiency_rounds: rounds,
    })
}

/// The comparison of one case: every repetition of every round of each side, PyTorch
/// with its default Adam (what `torch.optim.Adam` does on the CPU: per parameter) and
/// with `fused=True`. The target is judged against the default.
pub(super) fn case_row(
    case: &Case,
    threads: u32,
    ours: &[StepRun],
    default_adam: &[StepRun],
    fused_adam: &[StepRun],
) -> Result<CaseRow> {
    let summary = |runs: &[StepRun], side: &str| {
        summary_of(runs)
            .with_context(|| format!("{side} reported no usable times for {}", case.model))
    };
    let o = summary(ours, "elbo")?;
    let d = summary(default_adam, "PyTorch")?;
    // Sampling runs no optimiser, and so no fused-Adam run.
    let f = if fused_adam.is_empty() {
        None
    } else {
        Some(summary(fused_adam, "PyTorch (fused Adam)")?)
    };
    let params = |runs: &[StepRun]| runs.first().and_then(|r| r.params);
    if params(ours) != params(default_adam) {
        bail!(
            "{}: elbo has {:?} parameters and the PyTorch reference {:?}: the two must be the \
             same model",
            case.model,
            params(ours),
            params(default_adam)
        );
    }
    let peak = |runs: &[StepRun]| {
        runs.iter()
            .filter_map(|r| r.peak_rss_mib)
            .fold(0.0, f64::max)
    };
    // Minor page faults per timed step (each process's own count), median over runs.
    let faults = |runs: &[StepRun]| {
        let all: Vec<f64> = runs.iter().filter_map(|r| r.faults_per_step).collect();
        Summary::of(&all).map(|s| s.median)
    };
    let (ratio, low, high) = stats::speedup(o, d);
    let fused = f.map(|f| stats::speedup(o, f));
    Ok(CaseRow {
        model: case.model.to_string(),
        task: case.task.to_string(),
        batch: case.batch,
        threads,
        params: params(ours),
        target: case.target,
        elbo_ms: o,
        pytorch_ms: d,
        pytorch_fused_ms: f,
        speedup: ratio,
        speedup_range: [low, high],
        speedup_vs_fused: fused.map(|(ratio, _, _)| ratio),
        speedup_vs_fused_range: fused.map(|(_, low, high)| [low, high]),
        elbo_peak_rss_mib: peak(ours),
        pytorch_peak_rss_mib: peak(default_adam),
        elbo_faults_per_step: faults(ours),
        pytorch_faults_per_step: faults(default_adam),
        elbo_peak_device_mib: median_of(ours, |r| r.peak_device_mib),
        pytorch_peak_device_mib: median_of(default_adam, |r| r.peak_device_mib),
        data: None,
        efficiency: None,
        variants: Vec::new(),
        failed_variants: Vec::new(),
        best: None,
    })
}

#[cfg(test)]
mod tests;
