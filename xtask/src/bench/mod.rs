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
//!
//! This module orchestrates a run (the criterion benches, the build, each side's
//! processes, the rounds); the arguments are in [`args`], the table of cases in
//! [`cases`], and the arithmetic that turns the runs into the report's rows in
//! `compare`.

pub mod args;
pub mod cases;
pub mod chart;
mod compare;
pub mod report;
pub mod runs;
pub mod stats;
mod venv;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

use crate::cargo;
pub use args::{BenchArgs, VariantChoice, parse_device};
pub use cases::{Case, cases_for, variants_for};
use compare::{case_row, data_share, efficiency, with_variants};
use report::{Machine, MatmulRow, Protocol, Report, Row, RunSetting};
use runs::{MatmulRun, StepRun};

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
            let mut variant_failures: Vec<Option<String>> = vec![None; variants.len()];
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
                for ((variant, runs), failure) in variants
                    .iter()
                    .zip(&mut variant_runs)
                    .zip(&mut variant_failures)
                {
                    // A variant that failed (torch.compile without a compiler, say) is
                    // that variant's failure: it is left out, the comparison goes on.
                    if failure.is_some() {
                        continue;
                    }
                    match pytorch("fused", variant.flags()) {
                        Ok(run) => runs.push(run),
                        Err(e) => {
                            let why = format!("{e:#}");
                            eprintln!("PyTorch ({}) failed, left out: {why}", variant.name());
                            *failure = Some(why.lines().next().unwrap_or("").to_string());
                        }
                    }
                }
            }
            let mut row = case_row(case, threads, &ours, &default_adam, &fused_adam)?;
            row.failed_variants = variants
                .iter()
                .zip(&variant_failures)
                .filter_map(|(v, f)| Some((v.name().to_string(), f.clone()?)))
                .collect();
            let variant_rows: Vec<(VariantChoice, &[StepRun])> = variants
                .iter()
                .copied()
                .zip(variant_runs.iter().map(Vec::as_slice))
                .zip(&variant_failures)
                .filter(|(_, failure)| failure.is_none())
                .map(|(row, _)| row)
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
