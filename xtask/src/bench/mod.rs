//! `cargo xtask bench`: the criterion benches, and the side-by-side comparison with
//! PyTorch eager on the same libtorch (`--with-pytorch`).
//!
//! The comparison runs elbo's `steptime` (benches/src/bin/steptime.rs) and PyTorch's
//! `benches/reference/steptime.py` with the same case, batch, threads, warm-up and
//! repetitions, alternating the two sides `--rounds` times so that a change in the
//! machine's load hits both, and writes `target/bench-report/report.{md,json}` and
//! `ratios.png`.

pub mod chart;
pub mod report;
pub mod runs;
pub mod stats;
mod venv;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

use crate::cargo;
use report::{
    CaseRow, DataShare, Efficiency, EfficiencyRound, Machine, MatmulRow, Protocol, Report, Row,
};
use runs::{MatmulRun, StepRun};
use stats::Summary;

/// The arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Also compare with PyTorch 2.13.0 eager (installed into a venv under the cache
    /// if missing, about 5 GB); without it the comparison is skipped.
    #[arg(long)]
    pub with_pytorch: bool,
    /// Only the comparison, not the criterion benches.
    #[arg(long)]
    pub compare_only: bool,
    /// Thread counts to compare at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<u32>,
    /// Alternations of the two sides per case.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Untimed steps before timing, in each process.
    #[arg(long, default_value_t = 10)]
    pub warmup: u32,
    /// Timed repetitions per process.
    #[arg(long, default_value_t = 5)]
    pub reps: u32,
    /// Steps per timed repetition.
    #[arg(long, default_value_t = 10)]
    pub steps: u32,
    /// Arguments passed on to `cargo bench -p elbo-benches` (after `--`).
    #[arg(last = true)]
    pub criterion: Vec<String>,
}

/// One thing both sides time.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// The model as both harnesses name it.
    pub model: &'static str,
    /// Examples per step.
    pub batch: u32,
    /// What is timed (`train`: one training step).
    pub task: &'static str,
    /// The speed-up issue 8 asks of elbo.
    pub target: f64,
    /// (warm-up, repetitions, steps per repetition) for cases whose step takes seconds
    /// (the DDPM's), instead of `--warmup/--reps/--steps`.
    pub protocol: Option<[u32; 3]>,
}

/// The cases compared, in the report's order.
pub const CASES: &[Case] = &[
    Case {
        model: "vae-mlp",
        batch: 128,
        task: "train",
        target: 1.25,
        protocol: None,
    },
    Case {
        model: "hvae-ladder",
        batch: 128,
        task: "train",
        target: 1.2,
        protocol: None,
    },
    Case {
        model: "ddpm-mnist",
        batch: 64,
        task: "train",
        target: 1.05,
        protocol: Some([2, 3, 2]),
    },
    Case {
        model: "ddpm-mnist",
        batch: 64,
        task: "sample",
        target: 1.05,
        protocol: Some([1, 2, 1]),
    },
];

/// Runs the benches and, with `--with-pytorch`, the comparison.
pub fn run(ws: &Path, args: &BenchArgs) -> Result<()> {
    if !args.compare_only {
        let mut cargo_args = vec!["bench", "-p", "elbo-benches"];
        if !args.criterion.is_empty() {
            cargo_args.push("--");
            cargo_args.extend(args.criterion.iter().map(String::as_str));
        }
        cargo::run(ws, &cargo_args)?;
    }
    if !args.with_pytorch {
        eprintln!(
            "the comparison with PyTorch is skipped: pass --with-pytorch (installs torch \
             2.13.0 into a venv under the cache if it is missing)"
        );
        return Ok(());
    }
    if args.threads.is_empty() || args.threads.contains(&0) || args.rounds == 0 {
        bail!("--threads needs counts of at least 1 and --rounds at least 1");
    }
    let python = venv::ensure(ws)?;
    cargo::run(
        ws,
        &[
            "build",
            "--release",
            "-p",
            "elbo-benches",
            "--bin",
            "steptime",
        ],
    )?;
    let steptime = ws.join("target/release/steptime");
    let out = ws.join("target/bench-report");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let report = compare(ws, &steptime, &python, args)?;
    report::write(&out, &report)
}

/// One side's process for a case: its command line.
fn side_command(
    ws: &Path,
    program: &Path,
    prefix: &[&str],
    case: &Case,
    threads: u32,
    args: &BenchArgs,
) -> Command {
    let [warmup, reps, steps] = case
        .protocol
        .unwrap_or([args.warmup, args.reps, args.steps]);
    let mut command = Command::new(program);
    command
        .current_dir(ws)
        .args(prefix)
        .args(["--model", case.model, "--task", case.task])
        .args(["--batch", &case.batch.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--warmup", &warmup.to_string()])
        .args(["--reps", &reps.to_string()])
        .args(["--steps", &steps.to_string()]);
    command
}

/// Runs `command` and parses the one JSON line it prints.
fn run_json<T: DeserializeOwned>(mut command: Command, label: &str) -> Result<T> {
    let output = command
        .output()
        .with_context(|| format!("could not start {label}"))?;
    if !output.status.success() {
        bail!(
            "{label} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{label} printed no JSON line: {stdout:?}"))?;
    serde_json::from_str(line).with_context(|| format!("{label} printed invalid JSON: {line}"))
}

/// Both sides of every case at every thread count, alternating `rounds` times.
fn compare(ws: &Path, steptime: &Path, python: &Path, args: &BenchArgs) -> Result<Report> {
    let script = ws.join("benches/reference/steptime.py");
    let script = script.to_str().context("the workspace path is not UTF-8")?;
    let mut rows = Vec::new();
    let matmul_case = Case {
        model: "matmul",
        batch: 1024,
        task: "matmul",
        target: 0.0,
        protocol: None,
    };
    for &threads in &args.threads {
        let peak = |label| {
            run_json::<MatmulRun>(
                side_command(ws, steptime, &[], &matmul_case, threads, args),
                label,
            )
        };
        let elbo = peak("steptime matmul")?;
        rows.push(Row::Matmul(MatmulRow { threads, elbo }));
        for case in CASES {
            let mut ours = Vec::new();
            let mut default_adam = Vec::new();
            let mut fused_adam = Vec::new();
            // The matmul peak again just before each of elbo's training runs: the
            // efficiency pairs each run with the peak of the same minutes, as a shared
            // machine's speed drifts between the start of the run and this case.
            let mut peaks = Vec::new();
            for round in 0..args.rounds {
                eprintln!(
                    "==> {} {} batch {} threads {threads}: round {}/{}",
                    case.model,
                    case.task,
                    case.batch,
                    round + 1,
                    args.rounds
                );
                if case.task == "train" {
                    peaks.push(peak("steptime matmul")?);
                }
                ours.push(run_json(
                    side_command(ws, steptime, &[], case, threads, args),
                    "steptime",
                )?);
                for (adam, runs) in [("default", &mut default_adam), ("fused", &mut fused_adam)] {
                    let prefix = [script, "--adam", adam];
                    runs.push(run_json(
                        side_command(ws, python, &prefix, case, threads, args),
                        "steptime.py",
                    )?);
                }
            }
            let mut row = case_row(case, threads, &ours, &default_adam, &fused_adam)?;
            row.efficiency = efficiency(&row, &default_adam, &ours, &peaks);
            if case.task == "train" {
                let data_case = Case {
                    task: "data",
                    ..*case
                };
                let data: StepRun = run_json(
                    side_command(ws, steptime, &[], &data_case, threads, args),
                    "steptime data",
                )?;
                row.data = data_share(&data, row.elbo_ms.median);
            }
            rows.push(Row::Case(Box::new(row)));
        }
    }
    Ok(Report {
        machine: machine(),
        command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        protocol: Protocol {
            rounds: args.rounds,
            warmup: args.warmup,
            reps: args.reps,
            steps: args.steps,
        },
        rows,
    })
}

/// The time to prepare a batch (`data`, steptime's `--task data`) next to the median
/// training step `step_ms`; `None` when the run has no usable times.
fn data_share(data: &StepRun, step_ms: f64) -> Option<DataShare> {
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
fn efficiency(
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
fn case_row(
    case: &Case,
    threads: u32,
    ours: &[StepRun],
    default_adam: &[StepRun],
    fused_adam: &[StepRun],
) -> Result<CaseRow> {
    let summary = |runs: &[StepRun], side: &str| {
        let all: Vec<f64> = runs
            .iter()
            .flat_map(|r| r.step_ms.iter().copied())
            .collect();
        Summary::of(&all)
            .with_context(|| format!("{side} reported no usable times for {}", case.model))
    };
    let o = summary(ours, "elbo")?;
    let d = summary(default_adam, "PyTorch")?;
    let f = summary(fused_adam, "PyTorch (fused Adam)")?;
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
    let (fused_ratio, fused_low, fused_high) = stats::speedup(o, f);
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
        speedup_vs_fused: fused_ratio,
        speedup_vs_fused_range: [fused_low, fused_high],
        elbo_peak_rss_mib: peak(ours),
        pytorch_peak_rss_mib: peak(default_adam),
        elbo_faults_per_step: faults(ours),
        pytorch_faults_per_step: faults(default_adam),
        data: None,
        efficiency: None,
    })
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    Machine {
        cpu,
        cores,
        loadavg_at_end: load.trim().to_string(),
    }
}

#[cfg(test)]
mod tests;
