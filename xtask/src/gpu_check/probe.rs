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

/// Whether `elbo info`'s text says this build has NCCL (`compiled in ... NCCL yes`).
pub fn nccl_compiled(info: &str) -> bool {
    info.lines()
        .filter_map(|l| l.strip_prefix("compiled in"))
        .any(|rest| rest.contains("NCCL yes"))
}

/// The digest `elbo train` prints when every process of a job ended with the same state
/// (`every process holds the same final state ...: sha256 HEX`); an error with the
/// output's last lines when it did not say so.
pub fn agreed_digest(output: &str) -> Result<String, String> {
    output
        .lines()
        .filter(|l| l.starts_with("every process holds the same final state"))
        .find_map(|l| {
            l.rsplit_once("sha256 ")
                .map(|(_, hex)| hex.trim().to_string())
        })
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            let tail: Vec<&str> = output.lines().rev().take(5).collect();
            format!(
                "the job did not report that its processes agree; its last lines: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )
        })
}

/// The script that asks a Python what torch.compile's inductor needs on a CPU-less
/// check: the directory of `Python.h` and whether it is there, and a C compiler.
pub const COMPILE_PROBE: &str = "import os, shutil, sysconfig\n\
inc = sysconfig.get_paths()['include']\n\
print('include', inc, os.path.exists(os.path.join(inc, 'Python.h')))\n\
print('compiler', shutil.which('cc') or shutil.which('gcc') or shutil.which('clang') or '-')\n";

/// What [`COMPILE_PROBE`] printed: `Err` naming what torch.compile would miss (its
/// compiled variants then fail at their first step, minutes into the bench).
pub fn compile_ready(printed: &str) -> Result<(), String> {
    let mut missing = Vec::new();
    let include = printed.lines().find_map(|l| l.strip_prefix("include "));
    match include.and_then(|rest| rest.rsplit_once(' ')) {
        Some((_, "True")) => {}
        Some((dir, _)) => missing.push(format!(
            "Python's headers (no Python.h in {dir}; Debian/Ubuntu: apt-get install python3-dev)"
        )),
        None => missing.push("Python's headers (the probe printed no include line)".into()),
    }
    match printed.lines().find_map(|l| l.strip_prefix("compiler ")) {
        Some(cc) if cc.trim() != "-" && !cc.trim().is_empty() => {}
        _ => missing.push("a C compiler (cc, gcc or clang on PATH)".into()),
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("torch.compile needs {}", missing.join(" and ")))
    }
}
