//! `cargo xtask gpu-check`: one prepared check of elbo on a GPU, for a machine we do not
//! have. On a machine with an NVIDIA GPU it sets up the CUDA libtorch (if needed),
//! builds, runs the `cuda-tests` suite, trains Ho et al.'s ddpm-cifar10 network for 200
//! steps under bf16 autocast on the bundled data (the loss must fall, a checkpoint must
//! be written, and a run broken at step 100 and resumed must end where the unbroken one
//! does: bit-exact, or the difference is stated), with two GPUs trains on both over NCCL
//! (the processes' final states must agree to the bit), samples with DDIM, and runs the CUDA
//! bench against PyTorch; everything goes into one report,
//! `target/gpu-check/report.md`. Every step is the code path the CPU runs, with
//! `--device cuda`. On a machine without a GPU it says so and does nothing.

mod plan;
mod probe;
mod report;
mod runner;
mod runs;
mod tensors;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::{self, BenchArgs, VariantChoice};
use crate::cargo;
use crate::libtorch::Variant;
use crate::setup;
use plan::{BENCH, BUILD, CIFAR, CUDA_TESTS, DDIM, NCCL, RESUME, SETUP, TRAIN};
pub use plan::{Planned, plan};
pub use probe::{
    COMPILE_PROBE, GpuProbe, agreed_digest, compile_ready, cuda_available, nccl_compiled, probe,
};
pub use report::{CheckReport, Outcome, Step, markdown};
pub use runner::{Ran, not_run};
pub use runs::loss_falls;
pub use tensors::compare;

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
    /// Only what matters most, inside 10 minutes once the set-up is done: the build, the
    /// cuda tests, 50 bf16 steps of ddpm-cifar10 with the resume check, and the bench's
    /// ddpm-cifar10 training case (eager PyTorch only).
    #[arg(long)]
    pub quick: bool,
}

/// `--device` of the GPU check: a CUDA device.
fn parse_gpu(text: &str) -> Result<String, String> {
    let device = bench::parse_device(text)?;
    if device == "cpu" {
        return Err("the GPU check runs on a CUDA device: cuda or cuda:N".into());
    }
    Ok(device)
}

/// A step's work that did not fail but was not done, or fell back: the report records
/// it as skipped, with this reason.
#[derive(Debug)]
pub struct Skip(pub String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

/// What a step's work found.
#[derive(Debug, Default)]
pub struct Found {
    /// The lines the report keeps.
    pub details: Vec<String>,
    /// Tests that printed `not run` (the step is then not a pass).
    pub not_run: Vec<String>,
}

impl From<Vec<String>> for Found {
    fn from(details: Vec<String>) -> Found {
        Found {
            details,
            not_run: Vec::new(),
        }
    }
}

/// Runs the check: on a machine without a GPU (as `probe` finds it), says so and returns
/// without doing anything. The report is written after every step.
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
    let steps = plan(args);
    eprintln!("cargo xtask gpu-check: the plan (estimates on a machine with nothing cached)");
    for step in &steps {
        eprintln!(
            "  {:>5.0} s  (stopped at {:>4.0} s)  {}",
            step.estimate.as_secs_f64(),
            step.limit.as_secs_f64(),
            step.name
        );
    }
    let total: f64 = steps.iter().map(|s| s.estimate.as_secs_f64()).sum();
    eprintln!("  {total:>5.0} s  in all");
    let mut report = CheckReport {
        gpus,
        device: args.device.clone(),
        commit: git_commit(ws),
        environment: Vec::new(),
        steps: Vec::new(),
        plan: steps
            .iter()
            .map(|s| (s.name.to_string(), s.estimate.as_secs_f64()))
            .collect(),
        bench: None,
    };
    let mut check = Check {
        ws,
        args,
        out: &out,
        plan: steps,
        data: "mnist-sample",
        gpus: report.gpus.len(),
    };
    check.all(&mut report);
    let path = out.join("report.md");
    check.write(&report)?;
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

/// The environment variables of every GPU run: cuBLAS's deterministic workspace, so
/// that with `--deterministic` a resumed run must equal the unbroken one to the bit.
const DETERMINISTIC_ENV: (&str, &str) = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8");

/// The check's steps, sharing where they run.
struct Check<'a> {
    ws: &'a Path,
    args: &'a GpuCheckArgs,
    out: &'a Path,
    plan: Vec<Planned>,
    /// The training data: `cifar10` once fetched, else the bundled `mnist-sample`.
    data: &'a str,
    /// How many GPUs `nvidia-smi` lists.
    gpus: usize,
}

impl Check<'_> {
    fn all(&mut self, report: &mut CheckReport) {
        let built = self.step(report, SETUP, |_| {
            setup::run(self.ws, Variant::Cuda, false, false)?;
            Ok(Found::default())
        }) && self.step(report, BUILD, |limit| {
            // The tests build in the release profile too: one build of the crates.
            self.cargo(&cuda_tests(&["--no-run"]), limit)?;
            self.cargo(
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
                limit,
            )?;
            let info = self.elbo(&["info"], limit)?;
            if !cuda_available(&info) {
                bail!("`elbo info` sees no CUDA device: {}", info.trim());
            }
            Ok(Found::default())
        });
        if !built {
            for planned in self.plan.iter().skip(report.steps.len()) {
                skip(report, planned, "the set-up or the build did not succeed");
            }
            return;
        }
        report.environment = self.environment();
        if !self.args.quick {
            // Ho et al.'s network is for 3x32x32 images: CIFAR-10 if it can be fetched
            // (verified; already there: nothing is downloaded), else the bundled MNIST, on
            // which the same preset is a smaller UNet. A machine without network skips it.
            let fetched = self.step(report, CIFAR, |limit| {
                let xtask = std::env::current_exe().context("finding the xtask's own binary")?;
                let mut command = Command::new(&xtask);
                command.current_dir(self.ws).args(["data", "cifar10"]);
                let ran = runner::run(&mut command, limit, true)?;
                if !ran.succeeded() {
                    return Err(Skip(format!(
                        "CIFAR-10 could not be fetched, so the runs train on the bundled MNIST: \
                         {}",
                        ran.tail.last().map_or("", String::as_str)
                    ))
                    .into());
                }
                Ok(Found::default())
            });
            if fetched {
                self.data = "cifar10";
            }
        }
        self.step(report, CUDA_TESTS, |limit| {
            let ran = self.cargo(&cuda_tests(&[]), limit)?;
            let results: Vec<String> = ran
                .lines
                .iter()
                .filter(|l| l.starts_with("test ") || l.starts_with("test result"))
                .cloned()
                .collect();
            Ok(Found {
                details: results,
                not_run: not_run(&ran.lines),
            })
        });
        let steps = if self.args.quick { 50 } else { self.args.steps };
        let full = self.out.join("runs/full");
        let trained = self.step(report, TRAIN, |limit| {
            let log = self.train(&full, steps, false, limit)?;
            let mut details = vec![format!("{steps} steps on {}", self.data)];
            details.extend(loss_falls(&full)?);
            details.extend(log.lines().rev().take(3).map(str::to_string));
            Ok(details.into())
        });
        if trained {
            self.step(report, RESUME, |limit| {
                let resumed = self.out.join("runs/resumed");
                self.train(&resumed, steps / 2, false, limit)?;
                self.train(&resumed, steps, true, limit)?;
                let checkpoint = |run: &Path| {
                    run.join("checkpoints")
                        .join(format!("step-{steps:09}.safetensors"))
                };
                let comparison = compare(&checkpoint(&full), &checkpoint(&resumed))?;
                let lines = comparison.lines();
                if !comparison.identical() {
                    bail!(
                        "the resumed run's final state differs from the unbroken run's, with \
                         deterministic algorithms on: {}",
                        lines.join("; ")
                    );
                }
                let mut details =
                    vec!["resumed = unbroken, every tensor to the bit (weights, Adam, EMA)".into()];
                details.extend(lines);
                Ok(details.into())
            });
            if !self.args.quick {
                let environment = report.environment.join("\n");
                self.step(report, NCCL, |limit| self.nccl(&environment, limit));
                self.step(report, DDIM, |limit| {
                    let png = self.out.join("samples.png");
                    let text = self.elbo(
                        &[
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
                        ],
                        limit,
                    )?;
                    if !png.is_file() {
                        bail!("no {} after `elbo sample`", png.display());
                    }
                    Ok(text.lines().map(str::to_string).collect::<Vec<_>>().into())
                });
            }
        } else {
            for planned in self.plan.iter().skip(report.steps.len()) {
                if planned.name != BENCH {
                    skip(report, planned, "the training run failed");
                }
            }
        }
        if self.args.no_pytorch {
            return;
        }
        let mut bench_md = None;
        // torch.compile's prerequisites, checked before the bench rather than found
        // missing minutes into it: without them the compiled variants are left out.
        let compile = if self.args.quick {
            Ok(())
        } else {
            let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
            Command::new(&python)
                .args(["-c", COMPILE_PROBE])
                .output()
                .map_err(|e| format!("{python} could not be run: {e}"))
                .and_then(|out| compile_ready(&String::from_utf8_lossy(&out.stdout)))
        };
        self.step(report, BENCH, |_| {
            let args = BenchArgs {
                with_pytorch: true,
                compare_only: true,
                threads: vec![1],
                // One round, and a compiled variant only in the full check (every
                // compiled variant compiles the UNet: minutes).
                rounds: 1,
                warmup: 10,
                reps: 5,
                steps: 10,
                variants: match (self.args.quick, &compile) {
                    (true, _) => vec![],
                    (false, Ok(())) => vec![VariantChoice::Compiled, VariantChoice::ChannelsLast],
                    (false, Err(_)) => vec![VariantChoice::ChannelsLast],
                },
                device: self.args.device.clone(),
                autocast: "bf16".into(),
                tf32: false,
                cases: if self.args.quick {
                    vec!["ddpm-cifar10:train".into()]
                } else {
                    vec!["ddpm-cifar10".into(), "ddpm-mnist".into()]
                },
                criterion: vec![],
            };
            bench::run(self.ws, &args)?;
            let md = self.ws.join("target/bench-report/report.md");
            bench_md = Some(
                std::fs::read_to_string(&md)
                    .with_context(|| format!("reading {}", md.display()))?,
            );
            Ok(match &compile {
                Ok(()) => Found::default(),
                Err(why) => vec![format!("the compiled variants were left out: {why}")].into(),
            })
        });
        report.bench = bench_md;
    }

    /// Writes the report as it stands (after every step: a check cut short still
    /// leaves one).
    fn write(&self, report: &CheckReport) -> Result<()> {
        let path = self.out.join("report.md");
        elbo_plot::write_atomic(&path, markdown(report).as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Runs `work` as the step `name` with the plan's time limit, recording its outcome
    /// and writing the report; whether it passed (a skip or tests not run are not).
    fn step(
        &self,
        report: &mut CheckReport,
        name: &str,
        work: impl FnOnce(Duration) -> Result<Found>,
    ) -> bool {
        let planned = self
            .plan
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .unwrap_or_else(|| Planned::new("unplanned", 0, Duration::from_secs(600)));
        eprintln!(
            "==> gpu-check: {name} (planned {:.0} s, stopped at {:.0} s)",
            planned.estimate.as_secs_f64(),
            planned.limit.as_secs_f64()
        );
        let started = Instant::now();
        let (outcome, details) = match work(planned.limit) {
            Ok(found) if found.not_run.is_empty() => (Outcome::Passed, found.details),
            Ok(found) => (Outcome::NotRun(found.not_run.join("; ")), found.details),
            Err(e) => match e.downcast_ref::<Skip>() {
                Some(Skip(why)) => (Outcome::Skipped(why.clone()), vec![]),
                None => {
                    let text = format!("{e:#}");
                    let details = text.lines().skip(1).map(str::to_string).collect();
                    (Outcome::Failed(text), details)
                }
            },
        };
        let passed = outcome == Outcome::Passed;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("<== gpu-check: {name}: {outcome:?} [{seconds:.0} s]");
        report.steps.push(Step {
            name: name.to_string(),
            outcome,
            seconds,
            estimate: planned.estimate.as_secs_f64(),
            details,
        });
        if let Err(e) = self.write(report) {
            eprintln!("gpu-check: could not write the report: {e:#}");
        }
        passed
    }

    /// Runs `cargo ARGS` in the workspace within `limit`, its output shown and kept.
    fn cargo(&self, args: &[&str], limit: Duration) -> Result<Ran> {
        let mut command = cargo::cargo_command();
        command
            .current_dir(self.ws)
            .args(args)
            .env(DETERMINISTIC_ENV.0, DETERMINISTIC_ENV.1);
        let ran = runner::run(&mut command, limit, true)?;
        if !ran.succeeded() {
            bail!(
                "{}",
                ran.failure(&format!("cargo {}", args.join(" ")), limit)
            );
        }
        Ok(ran)
    }

    /// Runs the release `elbo` with `args` within `limit`; its output.
    fn elbo(&self, args: &[&str], limit: Duration) -> Result<String> {
        let program = self.ws.join("target/release/elbo");
        let mut command = Command::new(&program);
        command
            .current_dir(self.ws)
            .args(args)
            .env(DETERMINISTIC_ENV.0, DETERMINISTIC_ENV.1);
        let ran = runner::run(&mut command, limit, false)?;
        if !ran.succeeded() {
            bail!(
                "{}",
                ran.failure(&format!("elbo {}", args.join(" ")), limit)
            );
        }
        Ok(ran.lines.join("\n"))
    }

    /// What the loaded libtorch reports (`elbo info`), and the settings of the runs.
    fn environment(&self) -> Vec<String> {
        let mut lines = match self.elbo(&["info"], Duration::from_secs(120)) {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(e) => vec![format!("`elbo info` failed: {e:#}")],
        };
        lines.push(format!(
            "the runs: bf16 autocast, TF32 off, deterministic algorithms on ({}={})",
            DETERMINISTIC_ENV.0, DETERMINISTIC_ENV.1
        ));
        lines
    }
}

/// `cargo test` of the cuda tests in the release profile (the build's profile), with
/// `extra` arguments (`--no-run` to build them only).
fn cuda_tests<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["test", "--release"];
    args.extend_from_slice(extra);
    args.extend([
        "-p",
        "elbo-models",
        "--features",
        "cuda-tests",
        "--test",
        "cuda",
        "--test",
        "parallel",
    ]);
    args
}

/// A planned step that was not run.
fn skip(report: &mut CheckReport, planned: &Planned, why: &str) {
    report.steps.push(Step {
        name: planned.name.to_string(),
        outcome: Outcome::Skipped(why.to_string()),
        seconds: 0.0,
        estimate: planned.estimate.as_secs_f64(),
        details: vec![],
    });
}

/// A path as UTF-8 for a command line.
fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

#[cfg(test)]
mod tests;
