//! `cargo xtask bench`: the criterion benches, and the side-by-side comparison with
//! PyTorch eager on the same libtorch (`--with-pytorch`).
//!
//! The comparison runs elbo's `steptime` (benches/src/bin/steptime.rs) and PyTorch's
//! `benches/reference/steptime.py` with the same case, batch, threads, warm-up and
//! repetitions, alternating the two sides `--rounds` times so that a change in the
//! machine's load hits both, and writes `target/bench-report/report.{md,json}` and
//! `ratios.png`.

pub mod chart;
pub mod stats;
mod venv;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cargo;
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
    write_report(&out, &report)
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
fn run_json(mut command: Command, label: &str) -> Result<Value> {
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

fn step_ms(value: &Value) -> Vec<f64> {
    value["step_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// Both sides of every case at every thread count, alternating `rounds` times.
fn compare(ws: &Path, steptime: &Path, python: &Path, args: &BenchArgs) -> Result<Value> {
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
            run_json(
                side_command(ws, steptime, &[], &matmul_case, threads, args),
                label,
            )
        };
        let matmul = peak("steptime matmul")?;
        rows.push(json!({"kind": "matmul", "threads": threads, "elbo": matmul}));
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
            efficiency(&mut row, &default_adam, &ours, &peaks);
            if case.task != "train" {
                rows.push(row);
                continue;
            }
            let data_case = Case {
                task: "data",
                ..*case
            };
            let data = run_json(
                side_command(ws, steptime, &[], &data_case, threads, args),
                "steptime data",
            )?;
            if let (Some(data), Some(step)) = (
                Summary::of(&step_ms(&data)),
                row["elbo_ms"]["median"].as_f64(),
            ) {
                row["elbo_data_ms"] = data.median.into();
                row["data_share"] = (data.median / (data.median + step)).into();
            }
            rows.push(row);
        }
    }
    Ok(json!({
        "machine": machine(),
        "command": std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "protocol": {"rounds": args.rounds, "warmup": args.warmup, "reps": args.reps, "steps": args.steps},
        "rows": rows,
    }))
}

/// For a training step whose model reports its analytic forward FLOPs per example
/// (the UNet), adds elbo's achieved GFLOP/s (a step is counted as 3 forwards: forward,
/// and the backward's two products per layer) and its ratio to the machine's fp32 matmul
/// peak: per round, elbo's run (`ours[r]`, its median step) over the peak measured just
/// before it (`peaks[r]`); the row carries the median over rounds and each round's.
fn efficiency(row: &mut Value, reference: &[Value], ours: &[Value], peaks: &[Value]) {
    let flops = reference
        .first()
        .and_then(|r| r["forward_flops_per_example"].as_f64());
    let (Some(flops), Some(batch)) = (flops, row["batch"].as_f64()) else {
        return;
    };
    if row["task"] != "train" {
        return;
    }
    let gflops_at = |ms: f64| 3.0 * flops * batch / (ms * 1e-3) / 1e9;
    let rounds: Vec<(f64, f64)> = ours
        .iter()
        .zip(peaks)
        .filter_map(|(run, peak)| {
            let ms = Summary::of(&step_ms(run))?.median;
            Some((gflops_at(ms), peak["gflops"].as_f64()?))
        })
        .collect();
    let ratios: Vec<f64> = rounds.iter().map(|(g, p)| g / p).collect();
    let peak_values: Vec<f64> = rounds.iter().map(|&(_, p)| p).collect();
    let (Some(ratio), Some(peak), Some(ms)) = (
        Summary::of(&ratios),
        Summary::of(&peak_values),
        row["elbo_ms"]["median"].as_f64(),
    ) else {
        return;
    };
    row["forward_flops_per_example"] = flops.into();
    row["elbo_gflops"] = gflops_at(ms).into();
    row["matmul_peak_gflops"] = peak.median.into();
    row["efficiency"] = ratio.median.into();
    row["efficiency_per_round"] = ratios.into();
}

/// The comparison of one case: every repetition of every round of each side, PyTorch
/// with its default Adam (what `torch.optim.Adam` does on the CPU: per parameter) and
/// with `fused=True`. The target is judged against the default.
fn case_row(
    case: &Case,
    threads: u32,
    ours: &[Value],
    default_adam: &[Value],
    fused_adam: &[Value],
) -> Result<Value> {
    let summary = |runs: &[Value], side: &str| {
        let all: Vec<f64> = runs.iter().flat_map(step_ms).collect();
        Summary::of(&all)
            .with_context(|| format!("{side} reported no usable times for {}", case.model))
    };
    let o = summary(ours, "elbo")?;
    let d = summary(default_adam, "PyTorch")?;
    let f = summary(fused_adam, "PyTorch (fused Adam)")?;
    let params = |runs: &[Value]| runs.first().and_then(|r| r["params"].as_i64());
    if params(ours) != params(default_adam) {
        bail!(
            "{}: elbo has {:?} parameters and the PyTorch reference {:?}: the two must be the \
             same model",
            case.model,
            params(ours),
            params(default_adam)
        );
    }
    let peak = |runs: &[Value]| {
        runs.iter()
            .filter_map(|r| r["peak_rss_mib"].as_f64())
            .fold(0.0, f64::max)
    };
    // Minor page faults per timed step (each process's own count), median over runs.
    let faults = |runs: &[Value]| {
        let all: Vec<f64> = runs
            .iter()
            .filter_map(|r| r["faults_per_step"].as_f64())
            .collect();
        Summary::of(&all).map(|s| s.median)
    };
    let (ratio, low, high) = stats::speedup(o, d);
    let (fused_ratio, fused_low, fused_high) = stats::speedup(o, f);
    Ok(json!({
        "kind": "case", "model": case.model, "task": case.task, "batch": case.batch,
        "threads": threads, "params": params(ours), "target": case.target,
        "elbo_ms": o.to_json(), "pytorch_ms": d.to_json(), "pytorch_fused_ms": f.to_json(),
        "speedup": ratio, "speedup_range": [low, high],
        "speedup_vs_fused": fused_ratio, "speedup_vs_fused_range": [fused_low, fused_high],
        "elbo_peak_rss_mib": peak(ours), "pytorch_peak_rss_mib": peak(default_adam),
        "elbo_faults_per_step": faults(ours), "pytorch_faults_per_step": faults(default_adam),
    }))
}

fn machine() -> Value {
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
    json!({"cpu": cpu, "cores": cores, "loadavg_at_end": load.trim()})
}

/// The markdown table of a report.
pub fn markdown(report: &Value) -> String {
    let mut md = String::new();
    let machine = &report["machine"];
    md.push_str(&format!(
        "Machine: {} ({} cores), load at the end {}; `cargo xtask {}`; {} rounds x {} reps x {} steps after {} warm-up steps.\n\n",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["loadavg_at_end"].as_str().unwrap_or("?"),
        report["command"].as_str().unwrap_or("bench --with-pytorch"),
        report["protocol"]["rounds"], report["protocol"]["reps"], report["protocol"]["steps"], report["protocol"]["warmup"],
    ));
    md.push_str(
        "| case | threads | elbo ms/step (median, min-max) | PyTorch ms/step | speed-up | \
         target | PyTorch, fused Adam | speed-up over it | peak RSS elbo / PyTorch (MiB) | \
         page faults per step elbo / PyTorch |\n",
    );
    md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    let rows = report["rows"].as_array().cloned().unwrap_or_default();
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let ms = |v: &Value| {
        format!(
            "{:.2} ({:.2}-{:.2})",
            num(&v["median"]),
            num(&v["min"]),
            num(&v["max"])
        )
    };
    for row in rows.iter().filter(|r| r["kind"] == "case") {
        let ratio = num(&row["speedup"]);
        let target = num(&row["target"]);
        md.push_str(&format!(
            "| {} {} (batch {}) | {} | {} | {} | **{:.2}x** ({:.2}-{:.2}) | {:.2}x {} | {} | {:.2}x | {:.0} / {:.0} | {:.0} / {:.0} |\n",
            row["model"].as_str().unwrap_or("?"),
            row["task"].as_str().unwrap_or("?"),
            row["batch"],
            row["threads"],
            ms(&row["elbo_ms"]),
            ms(&row["pytorch_ms"]),
            ratio,
            num(&row["speedup_range"][0]),
            num(&row["speedup_range"][1]),
            target,
            if ratio >= target { "met" } else { "missed" },
            ms(&row["pytorch_fused_ms"]),
            num(&row["speedup_vs_fused"]),
            num(&row["elbo_peak_rss_mib"]),
            num(&row["pytorch_peak_rss_mib"]),
            num(&row["elbo_faults_per_step"]),
            num(&row["pytorch_faults_per_step"]),
        ));
    }
    for row in rows
        .iter()
        .filter(|r| r["kind"] == "case" && r["data_share"].is_number())
    {
        md.push_str(&format!(
            "\nData pipeline, {} (threads {}): {:.3} ms per batch of {}, {:.1}% of a training step plus its batch.",
            row["model"].as_str().unwrap_or("?"),
            row["threads"],
            num(&row["elbo_data_ms"]),
            row["batch"],
            100.0 * num(&row["data_share"]),
        ));
    }
    for row in rows.iter().filter(|r| r["efficiency"].is_number()) {
        md.push_str(&format!(
            "\nCompute efficiency, {} train step (threads {}): {:.1} GFLOP/s ({:.3} GFLOP \
             forward per example, x3 for a step); over the matmul peak measured just before \
             each round ({:.1} GFLOP/s median), per round {}: median {:.2} (target 0.5: {}).",
            row["model"].as_str().unwrap_or("?"),
            row["threads"],
            num(&row["elbo_gflops"]),
            num(&row["forward_flops_per_example"]) / 1e9,
            num(&row["matmul_peak_gflops"]),
            row["efficiency_per_round"]
                .as_array()
                .map(|r| r
                    .iter()
                    .map(|v| format!("{:.2}", v.as_f64().unwrap_or(f64::NAN)))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            num(&row["efficiency"]),
            if num(&row["efficiency"]) >= 0.5 {
                "met"
            } else {
                "missed"
            },
        ));
    }
    md.push('\n');
    for row in rows.iter().filter(|r| r["kind"] == "matmul") {
        md.push_str(&format!(
            "\nfp32 matmul peak of libtorch here ({} thread(s), 1024 x 1024) at the start of \
             the run: {:.1} GFLOP/s.",
            row["threads"],
            row["elbo"]["gflops"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    md.push('\n');
    md
}

fn write_report(out: &Path, report: &Value) -> Result<()> {
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf> {
        let path = out.join(name);
        let tmp = out.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming into {}", path.display()))?;
        Ok(path)
    };
    let json_path = write(
        "report.json",
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    let md = markdown(report);
    let md_path = write("report.md", md.as_bytes())?;
    let bars: Vec<chart::Bar> = report["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["kind"] == "case")
        .map(|r| chart::Bar {
            label: format!(
                "{} {} {}T",
                r["model"].as_str().unwrap_or("?"),
                r["task"].as_str().unwrap_or("?"),
                r["threads"]
            ),
            ratio: r["speedup"].as_f64().unwrap_or(f64::NAN),
            target: r["target"].as_f64(),
        })
        .collect();
    let png_path = out.join("ratios.png");
    chart::write(&png_path, "elbo vs PyTorch eager, same libtorch", &bars)?;
    println!("{md}");
    println!(
        "wrote {}, {} and {}",
        md_path.display(),
        json_path.display(),
        png_path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(side: &str, params: i64, ms: &[f64], rss: f64) -> Value {
        // Page faults per step: 10 per MiB of peak, something to tell the sides apart by.
        json!({"side": side, "params": params, "step_ms": ms, "peak_rss_mib": rss,
               "faults_per_step": rss / 10.0})
    }

    #[test]
    fn a_case_row_compares_medians_and_the_table_says_whether_the_target_is_met() {
        let case = CASES[0];
        let ours = [
            run("elbo", 10, &[4.0, 4.0], 100.0),
            run("elbo", 10, &[5.0], 120.0),
        ];
        let default = [run("pytorch", 10, &[6.0, 5.0, 7.0], 600.0)];
        let fused = [run("pytorch", 10, &[4.0], 610.0)];
        let row = case_row(&case, 1, &ours, &default, &fused).unwrap();
        assert_eq!(row["speedup"], 1.5);
        assert_eq!(row["speedup_vs_fused"], 1.0);
        assert_eq!(row["elbo_peak_rss_mib"], 120.0);
        // Medians of the runs' own counts: elbo 10 and 12, PyTorch 60.
        assert_eq!(row["elbo_faults_per_step"], 11.0);
        assert_eq!(row["pytorch_faults_per_step"], 60.0);
        let report = json!({
            "machine": {"cpu": "test cpu", "cores": 2, "loadavg_at_end": "0.1"},
            "command": "bench --with-pytorch",
            "protocol": {"rounds": 1, "warmup": 1, "reps": 1, "steps": 1},
            "rows": [row, {"kind": "matmul", "threads": 1, "elbo": {"gflops": 90.0}}],
        });
        let md = markdown(&report);
        assert!(md.contains("**1.50x**"), "{md}");
        assert!(md.contains("1.25x met"), "{md}");
        assert!(md.contains("| 120 / 600 | 11 / 60 |"), "{md}");
        assert!(md.contains("90.0 GFLOP/s"), "{md}");
    }

    #[test]
    fn the_unet_step_efficiency_is_three_forwards_over_the_matmul_peak() {
        let mut row = json!({
            "kind": "case", "model": "ddpm-mnist", "task": "train", "batch": 64,
            "threads": 1, "elbo_ms": {"median": 1000.0},
        });
        let reference = [json!({"forward_flops_per_example": 5e8})];
        // Three rounds: each run's median step over the peak measured just before it.
        let ours = [
            json!({"step_ms": [900.0, 1000.0, 1100.0]}),
            json!({"step_ms": [2000.0]}),
            json!({"step_ms": [1000.0]}),
        ];
        let peaks = [
            json!({"gflops": 192.0}),
            json!({"gflops": 96.0}),
            json!({"gflops": 120.0}),
        ];
        efficiency(&mut row, &reference, &ours, &peaks);
        // 3 x 5e8 x 64 FLOPs in 1 s = 96 GFLOP/s (the row's median step).
        assert_eq!(row["elbo_gflops"], 96.0);
        // Rounds: 96/192 = 0.5, 48/96 = 0.5, 96/120 = 0.8; median 0.5.
        assert_eq!(row["efficiency_per_round"], json!([0.5, 0.5, 0.8]));
        assert_eq!(row["efficiency"], 0.5);
        assert_eq!(row["matmul_peak_gflops"], 120.0);
        let mut sample = json!({"task": "sample", "batch": 64, "elbo_ms": {"median": 1.0}});
        efficiency(&mut sample, &reference, &ours, &peaks);
        assert!(sample.get("efficiency").is_none());
    }

    #[test]
    fn different_parameter_counts_are_refused() {
        let ours = [run("elbo", 10, &[4.0], 1.0)];
        let theirs = [run("pytorch", 11, &[4.0], 1.0)];
        let err = case_row(&CASES[0], 1, &ours, &theirs, &theirs).unwrap_err();
        assert!(err.to_string().contains("must be the same model"), "{err}");
    }
}
