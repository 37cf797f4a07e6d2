//! `cargo xtask bench`: the criterion benches, and the side-by-side comparison with
//! PyTorch on the same libtorch (`--with-pytorch`).
//!
//! The comparison runs elbo's `steptime` (benches/src/bin/steptime.rs) and PyTorch's
//! `benches/reference/steptime.py` with the same case, batch, threads, warm-up and
//! repetitions, alternating the sides `--rounds` times so that a change in the
//! machine's load hits all of them, and writes `target/bench-report/report.{md,json}`
//! and `ratios.png`. PyTorch runs eager (default and fused Adam) and, with fused Adam,
//! each of `--variants` (torch.compile, channels-last, both; channels-last only for the
//! convolutional models); the report names the fastest PyTorch and elbo's ratio to it.
//! `--device cuda[:N]` runs every side on a GPU and adds `ddpm-cifar10`.

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
    Best, CaseRow, DataShare, Efficiency, EfficiencyRound, Machine, MatmulRow, Protocol, Report,
    Row, RunSetting, VariantRow,
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
    /// PyTorch's variants besides eager (each with fused Adam), comma-separated; the
    /// channels-last ones run for the convolutional models only. `none` for eager only.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "compiled,channels-last,compiled+channels-last"
    )]
    pub variants: Vec<VariantChoice>,
    /// Where both sides run: `cpu`, `cuda` or `cuda:N`. On CUDA the cases gain
    /// ddpm-cifar10 (Ho et al.'s 35.7 M UNet, batch 128) and only the first of
    /// `--threads` is used (host threads).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: String,
    /// `bf16`: both sides' forward passes under bfloat16 autocast (CUDA only).
    #[arg(long, default_value = "none", value_parser = ["none", "bf16"])]
    pub autocast: String,
    /// Let float32 matmuls and convolutions on CUDA use TF32, on both sides (without it
    /// both sides keep float32: the setting is always stated).
    #[arg(long)]
    pub tf32: bool,
    /// Only the cases of these models (`ddpm-mnist`) or model:task (`ddpm-mnist:sample`),
    /// comma-separated; every case of the device by default.
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// Arguments passed on to `cargo bench -p elbo-benches` (after `--`).
    #[arg(last = true)]
    pub criterion: Vec<String>,
}

/// `--device`: `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(text: &str) -> Result<String, String> {
    match text.strip_prefix("cuda:") {
        _ if text == "cpu" || text == "cuda" => Ok(text.to_string()),
        Some(index) if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(text.to_string())
        }
        _ => Err(format!("expected cpu, cuda or cuda:N, found {text:?}")),
    }
}

/// A `--variants` entry: one of PyTorch's fast paths, or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VariantChoice {
    /// torch.compile (inductor) of the step's model.
    Compiled,
    /// Weights and inputs in channels-last (NHWC) memory format.
    ChannelsLast,
    /// Both.
    #[value(name = "compiled+channels-last")]
    CompiledChannelsLast,
    /// No variant: eager only.
    None,
}

impl VariantChoice {
    /// The name steptime.py prints as "variant" (and the report's column).
    pub fn name(self) -> &'static str {
        match self {
            VariantChoice::Compiled => "compiled",
            VariantChoice::ChannelsLast => "channels-last",
            VariantChoice::CompiledChannelsLast => "compiled+channels-last",
            VariantChoice::None => "eager",
        }
    }

    /// steptime.py's flags for it.
    fn flags(self) -> &'static [&'static str] {
        match self {
            VariantChoice::Compiled => &["--compile"],
            VariantChoice::ChannelsLast => &["--channels-last"],
            VariantChoice::CompiledChannelsLast => &["--compile", "--channels-last"],
            VariantChoice::None => &[],
        }
    }

    /// Whether it only means something for models with convolutions.
    fn needs_convolutions(self) -> bool {
        matches!(
            self,
            VariantChoice::ChannelsLast | VariantChoice::CompiledChannelsLast
        )
    }
}

/// The variants that run for `case`, in `choices`' order, each once.
pub fn variants_for(case: &Case, choices: &[VariantChoice]) -> Vec<VariantChoice> {
    let mut out: Vec<VariantChoice> = Vec::new();
    for &v in choices {
        if v != VariantChoice::None
            && (case.convolutional || !v.needs_convolutions())
            && !out.contains(&v)
        {
            out.push(v);
        }
    }
    out
}

/// The cases that run on `device` (`cpu` or a CUDA device), filtered by `--cases`.
pub fn cases_for(device: &str, filter: &[String]) -> Result<Vec<Case>> {
    let cuda = device != "cpu";
    let all: Vec<Case> = CASES
        .iter()
        .filter(|c| cuda || !c.cuda_only)
        .copied()
        .collect();
    if filter.is_empty() {
        return Ok(all);
    }
    let picked: Vec<Case> = all
        .iter()
        .filter(|c| {
            filter
                .iter()
                .any(|f| f == c.model || *f == format!("{}:{}", c.model, c.task))
        })
        .copied()
        .collect();
    for f in filter {
        if !all
            .iter()
            .any(|c| f == c.model || *f == format!("{}:{}", c.model, c.task))
        {
            let names: Vec<String> = all
                .iter()
                .map(|c| format!("{}:{}", c.model, c.task))
                .collect();
            bail!(
                "--cases {f}: no such case on {device}; expected a model or model:task of {}",
                names.join(", ")
            );
        }
    }
    Ok(picked)
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
    /// Whether the model has convolutions (the channels-last variants apply).
    pub convolutional: bool,
    /// Whether the case runs on CUDA only (too slow for the CPU comparison).
    pub cuda_only: bool,
}

/// The cases compared, in the report's order.
pub const CASES: &[Case] = &[
    Case {
        model: "vae-mlp",
        batch: 128,
        task: "train",
        target: 1.25,
        protocol: None,
        convolutional: false,
        cuda_only: false,
    },
    Case {
        model: "hvae-ladder",
        batch: 128,
        task: "train",
        target: 1.2,
        protocol: None,
        convolutional: false,
        cuda_only: false,
    },
    Case {
        model: "ddpm-mnist",
        batch: 64,
        task: "train",
        target: 1.05,
        protocol: Some([2, 3, 2]),
        convolutional: true,
        cuda_only: false,
    },
    Case {
        model: "ddpm-mnist",
        batch: 64,
        task: "sample",
        target: 1.05,
        protocol: Some([1, 2, 1]),
        convolutional: true,
        cuda_only: false,
    },
    Case {
        model: "ddpm-cifar10",
        batch: 128,
        task: "train",
        target: 1.0,
        protocol: Some([5, 5, 10]),
        convolutional: true,
        cuda_only: true,
    },
    Case {
        model: "ddpm-cifar10",
        batch: 128,
        task: "sample",
        target: 1.0,
        protocol: Some([1, 3, 1]),
        convolutional: true,
        cuda_only: true,
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
    if args.device != "cpu" {
        venv::check_cuda(&python, &args.device)?;
    }
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

/// One side's process for a case: its command line (the device and precision settings
/// of `args` included, the same for both sides).
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
    // A compiled run compiles in its first warm-up step; a second one shows a
    // recompilation before the timing rather than in it.
    let warmup = if prefix.contains(&"--compile") {
        warmup.max(2)
    } else {
        warmup
    };
    let mut command = Command::new(program);
    command
        .current_dir(ws)
        .args(prefix)
        .args(["--model", case.model, "--task", case.task])
        .args(["--batch", &case.batch.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--warmup", &warmup.to_string()])
        .args(["--reps", &reps.to_string()])
        .args(["--steps", &steps.to_string()])
        .args(["--device", &args.device, "--autocast", &args.autocast]);
    if args.tf32 {
        command.arg("--tf32");
    }
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

/// Every side of every case at every thread count, alternating `rounds` times.
fn compare(ws: &Path, steptime: &Path, python: &Path, args: &BenchArgs) -> Result<Report> {
    let script = ws.join("benches/reference/steptime.py");
    let script = script.to_str().context("the workspace path is not UTF-8")?;
    let cuda = args.device != "cpu";
    let cases = cases_for(&args.device, &args.cases)?;
    let mut rows = Vec::new();
    let matmul_case = Case {
        model: "matmul",
        // The GPU's peak needs a product large enough to fill it.
        batch: if cuda { 8192 } else { 1024 },
        task: "matmul",
        target: 0.0,
        protocol: None,
        convolutional: false,
        cuda_only: false,
    };
    // On a GPU the host threads hardly matter: one count.
    let thread_counts = if cuda {
        &args.threads[..1]
    } else {
        &args.threads[..]
    };
    for &threads in thread_counts {
        let peak = |label| {
            run_json::<MatmulRun>(
                side_command(ws, steptime, &[], &matmul_case, threads, args),
                label,
            )
        };
        let elbo = peak("steptime matmul")?;
        rows.push(Row::Matmul(Box::new(MatmulRow { threads, elbo })));
        for case in &cases {
            let variants = variants_for(case, &args.variants);
            let mut ours = Vec::new();
            let mut default_adam = Vec::new();
            let mut fused_adam = Vec::new();
            let mut variant_runs: Vec<Vec<StepRun>> = vec![Vec::new(); variants.len()];
            // The matmul peak again just before each of elbo's training runs: the
            // efficiency pairs each run with the peak of the same minutes, as a shared
            // machine's speed drifts between the start of the run and this case.
            let mut peaks = Vec::new();
            for round in 0..args.rounds {
                eprintln!(
                    "==> {} {} batch {} threads {threads} on {}: round {}/{}",
                    case.model,
                    case.task,
                    case.batch,
                    args.device,
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
                let pytorch = |adam: &str, flags: &[&str]| -> Result<StepRun> {
                    let mut prefix = vec![script, "--adam", adam];
                    prefix.extend_from_slice(flags);
                    run_json(
                        side_command(ws, python, &prefix, case, threads, args),
                        "steptime.py",
                    )
                };
                default_adam.push(pytorch("default", &[])?);
                // Sampling has no optimiser: the fused-Adam run would repeat the eager one.
                if case.task == "train" {
                    fused_adam.push(pytorch("fused", &[])?);
                }
                for (variant, runs) in variants.iter().zip(&mut variant_runs) {
                    runs.push(pytorch("fused", variant.flags())?);
                }
            }
            let mut row = case_row(case, threads, &ours, &default_adam, &fused_adam)?;
            let variant_rows: Vec<(VariantChoice, &[StepRun])> = variants
                .iter()
                .copied()
                .zip(variant_runs.iter().map(Vec::as_slice))
                .collect();
            with_variants(&mut row, &ours, &variant_rows)?;
            row.efficiency = efficiency(&row, &default_adam, &ours, &peaks);
            if case.task == "train" && !cuda {
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
        setting: RunSetting {
            device: args.device.clone(),
            autocast: args.autocast.clone(),
            tf32: args.tf32,
        },
        rows,
    })
}

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
fn with_variants(
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
        best: None,
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
