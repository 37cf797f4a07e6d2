//! The check's training runs: the ddpm-cifar10 run (and its resumed twin), the two-GPU
//! run over NCCL, and the check that a run's loss fell.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Check, Found, Skip, agreed_digest, nccl_compiled, path};

impl Check<'_> {
    /// A short data-parallel run on two GPUs (`--nproc 2`, NCCL), whose processes must
    /// end with the same state to the bit (the training loop compares their digests).
    /// Skipped with one GPU, or when this build has no NCCL (the job would use Gloo).
    pub(super) fn nccl(&self, environment: &str, limit: Duration) -> Result<Found> {
        if self.gpus < 2 {
            return Err(Skip(format!(
                "{} GPU here, 2 needed (the cuda-tests suite's two-GPU test is not run either)",
                self.gpus
            ))
            .into());
        }
        if !nccl_compiled(environment) {
            return Err(Skip(
                "this build has no NCCL (`elbo info`: compiled in ... NCCL no): a job would \
                 reduce with Gloo through the CPU"
                    .into(),
            )
            .into());
        }
        let run = self.out.join("runs/nccl");
        if run.exists() {
            std::fs::remove_dir_all(&run)
                .with_context(|| format!("removing the old run {}", run.display()))?;
        }
        let output = self.elbo(
            &[
                "train",
                "ddpm",
                "--preset",
                "ddpm-cifar10",
                "--data",
                self.data,
                "--nproc",
                "2",
                "--device",
                "cuda",
                "--autocast",
                "bf16",
                "--steps",
                "20",
                "--warmup",
                "10",
                "--final-examples",
                "0",
                "--seed",
                "0",
                "--run",
                path(&run)?,
            ],
            limit,
        )?;
        let digest = agreed_digest(&output).map_err(anyhow::Error::msg)?;
        Ok(vec![
            format!(
                "20 steps on {} by 2 processes on cuda:0 and cuda:1 over NCCL",
                self.data
            ),
            format!("both ended with the same state to the bit: sha256 {digest}"),
        ]
        .into())
    }

    /// Trains (or, `resume`, continues) the check's ddpm-cifar10 run in `run` up to
    /// `steps` steps, with deterministic algorithms.
    pub(super) fn train(
        &self,
        run: &Path,
        steps: u32,
        resume: bool,
        limit: Duration,
    ) -> Result<String> {
        let total = if self.args.quick { 50 } else { self.args.steps };
        let steps = steps.to_string();
        // The same learning-rate warm-up for the whole run and both of its halves (the
        // recipe's default is capped by --steps, which differs between them, and a
        // resumed run refuses a changed warm-up).
        let warmup = (total / 2).min(20).to_string();
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
            "--deterministic",
            "--steps",
            &steps,
            "--checkpoint-every",
            "25",
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
        self.elbo(&args, limit)
    }
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
