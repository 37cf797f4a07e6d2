//! `cargo xtask gpu-check`: one prepared check of elbo on a GPU, for a machine we do not
//! have. On a machine with an NVIDIA GPU it sets up the CUDA libtorch (if needed),
//! builds, runs the `cuda-tests` suite, trains Ho et al.'s ddpm-cifar10 network for 200
//! steps under bf16 autocast on the bundled data (the loss must fall, a checkpoint must
//! be written, and a run broken at step 100 and resumed must end where the unbroken one
//! does: bit-exact, or the difference is stated), samples with DDIM, and runs the CUDA
//! bench against PyTorch; everything goes into one report,
//! `target/gpu-check/report.md`. Every step is the code path the CPU runs, with
//! `--device cuda`. On a machine without a GPU it says so and does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::bench::{self, BenchArgs, VariantChoice};
use crate::cargo;
use crate::libtorch::Variant;
use crate::setup;

/// The arguments of `cargo xtask gpu-check`.
#[derive(Debug, Clone, clap::Args)]
pub struct GpuCheckArgs {
    /// The GPU to check: `cuda` or `cuda:N`.
    #[arg(long, default_value = "cuda:0", value_parser = parse_gpu)]
    pub device: String,
    /// Training steps of the ddpm-cifar10 run (the resumed run breaks at half).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(2..))]
    pub steps: u32,
    /// The folder of the report and of the runs.
    #[arg(long, default_value = "target/gpu-check")]
    pub out: PathBuf,
    /// Leave out the comparison with PyTorch (it installs torch into a venv: ~5 GB).
    #[arg(long)]
    pub no_pytorch: bool,
}

/// `--device` of the GPU check: a CUDA device.
fn parse_gpu(text: &str) -> Result<String, String> {
    let device = bench::parse_device(text)?;
    if device == "cpu" {
        return Err("the GPU check runs on a CUDA device: cuda or cuda:N".into());
    }
    Ok(device)
}

/// What `nvidia-smi` says about the machine's GPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuProbe {
    /// One line per GPU: name, memory, driver.
    Gpus(Vec<String>),
    /// No GPU, and why we think so.
    NoGpu(String),
}

/// Asks `program` (`nvidia-smi`) for the GPUs: none when it is missing, fails or lists
/// none.
pub fn probe(program: &str) -> GpuProbe {
    let output = Command::new(program)
        .args([
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader",
        ])
        .output();
    match output {
        Err(e) => GpuProbe::NoGpu(format!("{program} could not be run ({e})")),
        Ok(out) if !out.status.success() => GpuProbe::NoGpu(format!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(out) => {
            let gpus: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            if gpus.is_empty() {
                GpuProbe::NoGpu(format!("{program} lists no GPU"))
            } else {
                GpuProbe::Gpus(gpus)
            }
        }
    }
}

/// How a step of the check ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It did what it should.
    Passed,
    /// It did not: why.
    Failed(String),
    /// It was not run: why.
    Skipped(String),
}

/// One step of the check, for the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// What it checks.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Its wall time.
    pub seconds: f64,
    /// What it measured or printed that the report keeps (one line each).
    pub details: Vec<String>,
}

/// Everything the report says.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckReport {
    /// The GPUs nvidia-smi listed.
    pub gpus: Vec<String>,
    /// The device checked.
    pub device: String,
    /// elbo's commit (`git rev-parse HEAD`), when known.
    pub commit: Option<String>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The CUDA bench's markdown, when it ran.
    pub bench: Option<String>,
}

impl CheckReport {
    /// Whether every step that ran passed.
    pub fn passed(&self) -> bool {
        self.steps
            .iter()
            .all(|s| !matches!(s.outcome, Outcome::Failed(_)))
    }
}

/// The report as markdown.
pub fn markdown(report: &CheckReport) -> String {
    let mut md = String::from("# elbo GPU check\n\n");
    md.push_str(&format!(
        "Device {}; commit {}; GPUs (nvidia-smi: name, memory, driver):\n\n",
        report.device,
        report.commit.as_deref().unwrap_or("unknown"),
    ));
    for gpu in &report.gpus {
        md.push_str(&format!("- {gpu}\n"));
    }
    md.push_str(&format!(
        "\nResult: **{}**\n\n| step | result | seconds |\n| --- | --- | --- |\n",
        if report.passed() {
            "every step passed"
        } else {
            "a step failed"
        }
    ));
    for step in &report.steps {
        let result = match &step.outcome {
            Outcome::Passed => "passed".to_string(),
            Outcome::Failed(why) => format!("**failed**: {}", one_line(why)),
            Outcome::Skipped(why) => format!("skipped: {}", one_line(why)),
        };
        md.push_str(&format!(
            "| {} | {} | {:.0} |\n",
            step.name, result, step.seconds
        ));
    }
    for step in report.steps.iter().filter(|s| !s.details.is_empty()) {
        md.push_str(&format!("\n## {}\n\n```\n", step.name));
        for line in &step.details {
            md.push_str(line);
            md.push('\n');
        }
        md.push_str("```\n");
    }
    if let Some(bench) = &report.bench {
        md.push_str("\n## CUDA bench against PyTorch\n\n");
        md.push_str(bench);
    }
    md
}

/// A message for a table cell: one line, no pipes.
fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").replace('|', "/");
    let chars: Vec<char> = line.chars().collect();
    if chars.len() > 300 {
        format!("{}...", chars[..300].iter().collect::<String>())
    } else {
        line
    }
}

/// Runs the check: on a machine without a GPU (as `probe` finds it), says so and returns
/// without doing anything.
pub fn run(ws: &Path, args: &GpuCheckArgs, probe: GpuProbe) -> Result<()> {
    let gpus = match probe {
        GpuProbe::NoGpu(why) => {
            eprintln!(
                "cargo xtask gpu-check: no GPU on this machine ({why}); nothing to check. Run \
                 it on a machine with an NVIDIA GPU and its driver."
            );
            return Ok(());
        }
        GpuProbe::Gpus(gpus) => gpus,
    };
    let out = ws.join(&args.out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut report = CheckReport {
        gpus,
        device: args.device.clone(),
        commit: git_commit(ws),
        steps: Vec::new(),
        bench: None,
    };
    let mut check = Check {
        ws,
        args,
        out: &out,
        data: "mnist-sample",
    };
    check.all(&mut report);
    let path = out.join("report.md");
    elbo_plot::write_atomic(&path, markdown(&report).as_bytes())?;
    println!("{}", markdown(&report));
    println!("wrote {}: please send it to us", path.display());
    if !report.passed() {
        bail!("a step of the GPU check failed (see {})", path.display());
    }
    Ok(())
}

fn git_commit(ws: &Path) -> Option<String> {
    let out = Command::new("git")
        .current_dir(ws)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The check's steps, sharing where they run.
struct Check<'a> {
    ws: &'a Path,
    args: &'a GpuCheckArgs,
    out: &'a Path,
    /// The training data: `cifar10` once fetched, else the bundled `mnist-sample`.
    data: &'a str,
}

impl Check<'_> {
    fn all(&mut self, report: &mut CheckReport) {
        let built = self.step(report, "CUDA libtorch (cargo xtask setup --cuda)", || {
            setup::run(self.ws, Variant::Cuda, false, false)?;
            Ok(vec![])
        }) && self.step(report, "build (release: elbo, steptime)", || {
            cargo::run(
                self.ws,
                &[
                    "build",
                    "--release",
                    "-p",
                    "elbo-cli",
                    "-p",
                    "elbo-benches",
                    "--bin",
                    "elbo",
                    "--bin",
                    "steptime",
                ],
            )?;
            let info = self.elbo(&["info"])?;
            if !cuda_available(&info) {
                bail!("`elbo info` sees no CUDA device: {}", info.trim());
            }
            Ok(info.lines().map(str::to_string).collect())
        });
        if !built {
            for name in ["cuda-tests", "train", "resume", "DDIM", "bench"] {
                skip(report, name, "the build did not succeed");
            }
            return;
        }
        // Ho et al.'s network is for 3x32x32 images: CIFAR-10 if it can be fetched
        // (verified; already there: nothing is downloaded), else the bundled MNIST, on
        // which the same preset is a smaller UNet (no 16x16 level for attention).
        let fetched = self.step(report, "CIFAR-10 (cargo xtask data cifar10)", || {
            let xtask = std::env::current_exe().context("finding the xtask's own binary")?;
            let out = Command::new(&xtask)
                .current_dir(self.ws)
                .args(["data", "cifar10"])
                .output()
                .with_context(|| format!("could not start {}", xtask.display()))?;
            if !out.status.success() {
                bail!(
                    "could not fetch it ({}), training on the bundled MNIST instead: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(vec![])
        });
        if fetched {
            self.data = "cifar10";
        }
        self.step(report, "cuda-tests suite", || {
            cargo::run(
                self.ws,
                &[
                    "test",
                    "-p",
                    "elbo-models",
                    "--features",
                    "cuda-tests",
                    "--test",
                    "cuda",
                    "--test",
                    "parallel",
                ],
            )?;
            Ok(vec![])
        });
        let full = self.out.join("runs/full");
        let trained = self.step(
            report,
            &format!(
                "train ddpm-cifar10, {} steps, bf16 autocast",
                self.args.steps
            ),
            || {
                let log = self.train(&full, self.args.steps, false)?;
                let mut details = loss_falls(&full)?;
                details.extend(log.lines().rev().take(3).map(str::to_string));
                Ok(details)
            },
        );
        if trained {
            self.step(report, "resume (broken at half) vs unbroken", || {
                let resumed = self.out.join("runs/resumed");
                self.train(&resumed, self.args.steps / 2, false)?;
                self.train(&resumed, self.args.steps, true)?;
                self.compare_runs(&full, &resumed)
            });
            self.step(report, "DDIM-50 sampling", || {
                let png = self.out.join("samples.png");
                let text = self.elbo(&[
                    "sample",
                    path(&full)?,
                    "--sampler",
                    "ddim-50",
                    "--n",
                    "64",
                    "--device",
                    &self.args.device,
                    "--out",
                    path(&png)?,
                ])?;
                if !png.is_file() {
                    bail!("no {} after `elbo sample`", png.display());
                }
                Ok(text.lines().map(str::to_string).collect())
            });
        } else {
            skip(report, "resume", "the training run failed");
            skip(report, "DDIM", "the training run failed");
        }
        if self.args.no_pytorch {
            skip(report, "CUDA bench against PyTorch", "--no-pytorch");
            return;
        }
        let mut bench_md = None;
        self.step(report, "CUDA bench against PyTorch (bf16 autocast)", || {
            let args = BenchArgs {
                with_pytorch: true,
                compare_only: true,
                threads: vec![1],
                // One round and two variants: every compiled variant is a compilation
                // of the UNet (minutes), and the check has ten minutes in all.
                rounds: 1,
                warmup: 10,
                reps: 5,
                steps: 10,
                variants: vec![VariantChoice::Compiled, VariantChoice::ChannelsLast],
                device: self.args.device.clone(),
                autocast: "bf16".into(),
                tf32: false,
                cases: vec!["ddpm-mnist".into(), "ddpm-cifar10".into()],
                criterion: vec![],
            };
            bench::run(self.ws, &args)?;
            let md = self.ws.join("target/bench-report/report.md");
            bench_md = Some(
                std::fs::read_to_string(&md)
                    .with_context(|| format!("reading {}", md.display()))?,
            );
            Ok(vec![])
        });
        report.bench = bench_md;
    }

    /// Runs `work` as the step `name`, recording its outcome; whether it passed.
    fn step(
        &self,
        report: &mut CheckReport,
        name: &str,
        work: impl FnOnce() -> Result<Vec<String>>,
    ) -> bool {
        eprintln!("==> gpu-check: {name}");
        let started = Instant::now();
        let (outcome, details) = match work() {
            Ok(details) => (Outcome::Passed, details),
            Err(e) => (Outcome::Failed(format!("{e:#}")), vec![]),
        };
        let passed = outcome == Outcome::Passed;
        report.steps.push(Step {
            name: name.to_string(),
            outcome,
            seconds: started.elapsed().as_secs_f64(),
            details,
        });
        passed
    }

    /// Runs the release `elbo` with `args`; its stdout and stderr.
    fn elbo(&self, args: &[&str]) -> Result<String> {
        let program = self.ws.join("target/release/elbo");
        let out = Command::new(&program)
            .current_dir(self.ws)
            .args(args)
            .output()
            .with_context(|| format!("could not start {}", program.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!(
                "`elbo {}` failed ({}): {}",
                args.join(" "),
                out.status,
                text.trim()
            );
        }
        Ok(text)
    }

    /// Trains (or, `resume`, continues) the check's ddpm-cifar10 run in `run` up to
    /// `steps` steps.
    fn train(&self, run: &Path, steps: u32, resume: bool) -> Result<String> {
        let steps = steps.to_string();
        // The same learning-rate warm-up for the whole run and both of its halves (the
        // recipe's default is capped by --steps, which differs between them, and a
        // resumed run refuses a changed warm-up).
        let warmup = (self.args.steps / 2).min(20).to_string();
        let mut args = vec![
            "train",
            "ddpm",
            "--preset",
            "ddpm-cifar10",
            "--data",
            self.data,
            "--warmup",
            &warmup,
            "--device",
            &self.args.device,
            "--autocast",
            "bf16",
            "--steps",
            &steps,
            "--checkpoint-every",
            "50",
            "--final-examples",
            "0",
            "--seed",
            "0",
            "--run",
            path(run)?,
        ];
        if resume {
            args.push("--resume");
        } else if run.exists() {
            std::fs::remove_dir_all(run)
                .with_context(|| format!("removing the old run {}", run.display()))?;
        }
        self.elbo(&args)
    }

    /// Whether the run broken at half ended where the unbroken one did: the same test
    /// bound to the last printed digit (as bit-exact weights give), or the difference.
    fn compare_runs(&self, full: &Path, resumed: &Path) -> Result<Vec<String>> {
        let eval = |run: &Path| -> Result<String> {
            self.elbo(&[
                "eval",
                path(run)?,
                "--examples",
                "16",
                "--seed",
                "0",
                "--device",
                &self.args.device,
            ])
        };
        let (a, b) = (eval(full)?, eval(resumed)?);
        let bound = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.contains("nats") || l.contains("bits/dim"))
                .map(str::to_string)
                .collect()
        };
        let (a, b) = (bound(&a), bound(&b));
        if a.is_empty() {
            bail!("`elbo eval` printed no bound");
        }
        let mut details = vec![if a == b {
            "resumed = unbroken: the same bound to every printed digit".to_string()
        } else {
            "resumed != unbroken (GPU kernels need not be deterministic): the difference \
             stated below"
                .to_string()
        }];
        details.extend(a.iter().map(|l| format!("unbroken: {l}")));
        details.extend(b.iter().map(|l| format!("resumed:  {l}")));
        Ok(details)
    }
}

/// Whether `elbo info`'s text says CUDA is available (`CUDA available  yes (...)`).
pub fn cuda_available(info: &str) -> bool {
    info.lines().any(|l| {
        l.strip_prefix("CUDA available")
            .is_some_and(|rest| rest.trim_start().starts_with("yes"))
    })
}

/// A skipped step.
fn skip(report: &mut CheckReport, name: &str, why: &str) {
    report.steps.push(Step {
        name: name.to_string(),
        outcome: Outcome::Skipped(why.to_string()),
        seconds: 0.0,
        details: vec![],
    });
}

/// A path as UTF-8 for a command line.
fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// The run's first and last logged losses, and an error unless the loss fell.
pub fn loss_falls(run: &Path) -> Result<Vec<String>> {
    let file = run.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let losses: Vec<(u64, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "step")
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect();
    let (Some(first), Some(last)) = (losses.first(), losses.last()) else {
        bail!("{} has no step with a loss", file.display());
    };
    if losses.len() < 2 || last.1 >= first.1 {
        bail!(
            "the loss did not fall: {} at step {}, {} at step {}",
            first.1,
            first.0,
            last.1,
            last.0
        );
    }
    let folder = run.join("checkpoints");
    let checkpoints = std::fs::read_dir(&folder)
        .with_context(|| format!("listing {}", folder.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .count();
    if checkpoints == 0 {
        bail!("no checkpoint in {}", folder.display());
    }
    Ok(vec![
        format!(
            "loss {:.4} at step {} -> {:.4} at step {}",
            first.1, first.0, last.1, last.0
        ),
        format!("{checkpoints} checkpoint(s) in {}", folder.display()),
    ])
}

#[cfg(test)]
mod tests;
