//! The PyTorch the comparison runs: a venv under the cache with torch 2.13.0 (the
//! libtorch version elbo links) and numpy, made with the ordinary client on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cargo;
use crate::install::cache_dir;
use crate::libtorch::TORCH_VERSION;

/// The venv's folder: `ELBO_VENV` if set, else `<cache>/venv`.
pub fn dir() -> Result<PathBuf> {
    match std::env::var_os("ELBO_VENV").filter(|v| !v.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => Ok(cache_dir()?.join("venv")),
    }
}

/// The torch version `python` imports, if it imports one.
fn torch_version(python: &Path) -> Option<String> {
    let output = Command::new(python)
        .args(["-c", "import torch, numpy; print(torch.__version__)"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The venv's python, after creating the venv or installing torch and numpy into it
/// when they are missing. A venv with another torch is an error, not overwritten.
pub fn ensure(ws: &Path) -> Result<PathBuf> {
    let dir = dir()?;
    let python = dir.join("bin/python");
    let wanted = TORCH_VERSION;
    match torch_version(&python) {
        Some(found) if found.split('+').next() == Some(wanted) => return Ok(python),
        Some(found) => bail!(
            "the venv {} has torch {found}, and the comparison needs torch {wanted} (the \
             libtorch elbo links).\n  Fix: {} -m pip install torch=={wanted}, or set ELBO_VENV to \
             another folder",
            dir.display(),
            python.display()
        ),
        None => {}
    }
    if !python.exists() {
        let mut command =
            Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
        command.args(["-m", "venv"]).arg(&dir).current_dir(ws);
        cargo::run_command(&mut command, &format!("python3 -m venv {}", dir.display()))
            .context("could not make the venv (Debian/Ubuntu: apt-get install python3-venv)")?;
    }
    let mut command = Command::new(&python);
    command
        .args(["-m", "pip", "install", &format!("torch=={wanted}"), "numpy"])
        .current_dir(ws);
    cargo::run_command(
        &mut command,
        &format!("pip install torch=={wanted} numpy (about 5 GB with its CUDA libraries)"),
    )
    .context(
        "could not install PyTorch into the venv: is PyPI reachable, and is there 5 GB of disk?",
    )?;
    match torch_version(&python) {
        Some(found) if found.split('+').next() == Some(wanted) => Ok(python),
        other => bail!("after installing, the venv's torch is {other:?}, expected {wanted}"),
    }
}

/// Checks that the venv's torch sees the CUDA device the comparison runs on.
pub fn check_cuda(python: &Path, device: &str) -> Result<()> {
    let index = device.strip_prefix("cuda:").unwrap_or("0");
    let script = format!(
        "import sys, torch; sys.exit(0 if torch.cuda.is_available() and \
         torch.cuda.device_count() > {index} else 3)"
    );
    let status = Command::new(python)
        .args(["-c", &script])
        .status()
        .with_context(|| format!("could not start {}", python.display()))?;
    if !status.success() {
        bail!(
            "the PyTorch venv's torch ({}) does not see {device} (torch.cuda.is_available() \
             false, or too few devices): a CPU-only torch wheel, or no NVIDIA driver.\n  Fix: \
             {} -m pip install --force-reinstall torch=={TORCH_VERSION} (PyPI's Linux wheel \
             is the CUDA build), or set ELBO_VENV to a venv whose torch sees the GPU",
            python.display(),
            python.display()
        );
    }
    Ok(())
}
