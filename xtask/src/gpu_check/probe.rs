//! What the machine has: the GPUs `nvidia-smi` lists, and whether `elbo info` sees CUDA.

use std::process::Command;

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

/// Whether `elbo info`'s text says CUDA is available (`CUDA available  yes (...)`).
pub fn cuda_available(info: &str) -> bool {
    info.lines().any(|l| {
        l.strip_prefix("CUDA available")
            .is_some_and(|rest| rest.trim_start().starts_with("yes"))
    })
}
