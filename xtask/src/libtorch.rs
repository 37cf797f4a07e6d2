//! Which libtorch the build uses, and what it is: the facts `setup`, `doctor` and
//! `test` share.
//!
//! Three sources, in the order torch-sys itself honours them:
//! 1. `LIBTORCH_USE_PYTORCH=1`: the libtorch inside the Python `torch` package.
//! 2. `LIBTORCH=/path` set by the user: that folder.
//! 3. Otherwise the workspace's `.libtorch` link (what `.cargo/config.toml` points
//!    `LIBTORCH` at), made by `cargo xtask setup` to an install in the user's cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The libtorch version tch 0.26 is built for (its build script refuses any other).
pub const TORCH_VERSION: &str = "2.13.0";

/// The name of the link, at the workspace root, that `.cargo/config.toml` points
/// `LIBTORCH` at.
pub const LINK_NAME: &str = ".libtorch";

/// The two kinds of libtorch: with or without the CUDA libraries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// CPU only: `libtorch_cpu.so` and the two small CUDA runtime libraries it needs
    /// at load time.
    Cpu,
    /// The full set: `libtorch_cuda.so` and every CUDA 13 library it links.
    Cuda,
}

impl Variant {
    /// The name used in folder names and messages.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Cpu => "cpu",
            Variant::Cuda => "cuda",
        }
    }

    /// The variant of the libtorch whose `lib` folder is `lib`.
    pub fn of_lib_dir(lib: &Path) -> Variant {
        if lib.join("libtorch_cuda.so").exists() {
            Variant::Cuda
        } else {
            Variant::Cpu
        }
    }
}

/// Where the libtorch of a build comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `LIBTORCH_USE_PYTORCH` is set: the Python torch package's libtorch.
    Pytorch,
    /// The user set `LIBTORCH` to this folder.
    User(PathBuf),
    /// The install that `cargo xtask setup` manages, reached through the workspace link.
    Managed,
}

impl Source {
    /// Decides the source from the two environment variables, as torch-sys does.
    /// `LIBTORCH` equal to the workspace link is the project's own default (from
    /// `.cargo/config.toml`), not a user's choice.
    pub fn from_env(libtorch: Option<&str>, use_pytorch: Option<&str>, workspace: &Path) -> Source {
        if use_pytorch.is_some_and(|v| !v.is_empty()) {
            return Source::Pytorch;
        }
        match libtorch.filter(|v| !v.is_empty()) {
            Some(path) if Path::new(path) != workspace.join(LINK_NAME) => {
                Source::User(PathBuf::from(path))
            }
            _ => Source::Managed,
        }
    }

    /// The source for this process's environment.
    pub fn current(workspace: &Path) -> Source {
        let libtorch = std::env::var("LIBTORCH").ok();
        let use_pytorch = std::env::var("LIBTORCH_USE_PYTORCH").ok();
        Source::from_env(libtorch.as_deref(), use_pytorch.as_deref(), workspace)
    }
}

/// The version in a libtorch folder: `build-version` (libtorch archives, and our own
/// installs) or `version.py` (a Python torch package folder). `None` when neither is
/// there.
pub fn read_version(libtorch: &Path) -> Result<Option<String>> {
    let build_version = libtorch.join("build-version");
    if build_version.exists() {
        let text = std::fs::read_to_string(&build_version)
            .with_context(|| format!("reading {}", build_version.display()))?;
        return Ok(Some(text.trim().to_string()));
    }
    let version_py = libtorch.join("version.py");
    if version_py.exists() {
        let text = std::fs::read_to_string(&version_py)
            .with_context(|| format!("reading {}", version_py.display()))?;
        return Ok(parse_version_py(&text));
    }
    Ok(None)
}

/// The `__version__` of a torch `version.py`.
pub fn parse_version_py(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("__version__")?;
        let rest = rest.trim_start().strip_prefix('=')?.trim();
        let quoted = rest.strip_prefix(['\'', '"'])?;
        let end = quoted.find(['\'', '"'])?;
        Some(quoted[..end].to_string())
    })
}

/// Checks a version string such as `2.13.0+cu130` against [`TORCH_VERSION`]; the error
/// names both versions, where they come from, and the fix.
pub fn check_version(found: &str, origin: &str) -> Result<()> {
    let plain = found.split('+').next().unwrap_or(found).trim();
    if plain == TORCH_VERSION {
        Ok(())
    } else {
        bail!(
            "{origin} is libtorch {found}, but elbo builds on tch 0.26, which needs libtorch \
             {TORCH_VERSION} exactly.\n  Fix: point it at a libtorch {TORCH_VERSION} (for \
             Python: pip install torch=={TORCH_VERSION}), or unset LIBTORCH and \
             LIBTORCH_USE_PYTORCH and run `cargo xtask setup` to install one in the cache."
        )
    }
}

/// What the Python `torch` package reports: its version and its `lib` folder.
#[derive(Debug, Clone)]
pub struct PythonTorch {
    /// `torch.__version__`.
    pub version: String,
    /// The folder holding `libtorch_cpu.so`.
    pub lib_dir: PathBuf,
}

/// Asks `python` for its torch package (what `LIBTORCH_USE_PYTORCH=1` builds against).
pub fn python_torch(python: &str) -> Result<PythonTorch> {
    let script = "import os, torch; print(torch.__version__); \
                  print(os.path.join(os.path.dirname(torch.__file__), 'lib'))";
    let output = Command::new(python)
        .args(["-c", script])
        .output()
        .with_context(|| {
            format!(
                "LIBTORCH_USE_PYTORCH is set, but `{python}` could not be run; install \
                 Python 3 with torch=={TORCH_VERSION}, or unset LIBTORCH_USE_PYTORCH"
            )
        })?;
    if !output.status.success() {
        bail!(
            "LIBTORCH_USE_PYTORCH is set, but `{python} -c 'import torch'` failed:\n{}\n  \
             Fix: pip install torch=={TORCH_VERSION}, or unset LIBTORCH_USE_PYTORCH",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines();
    match (lines.next(), lines.next()) {
        (Some(version), Some(lib)) => Ok(PythonTorch {
            version: version.trim().to_string(),
            lib_dir: PathBuf::from(lib.trim()),
        }),
        _ => bail!("`{python}` printed no torch version and path: {stdout:?}"),
    }
}

/// The platforms `cargo xtask setup` can install libtorch on, as the pip platform tag of
/// the wheel to fetch. Others get an error that names the supported ones.
pub fn wheel_platform(os: &str, arch: &str) -> Result<&'static str> {
    match (os, arch) {
        ("linux", "x86_64") => Ok("manylinux_2_28_x86_64"),
        _ => bail!(
            "`cargo xtask setup` installs libtorch on Linux x86_64 (glibc 2.28 or newer) \
             only; this is {os} {arch}.\n  On other platforms install libtorch \
             {TORCH_VERSION} yourself and set LIBTORCH to its folder, or install \
             torch=={TORCH_VERSION} in Python and set LIBTORCH_USE_PYTORCH=1."
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_follows_torch_sys_precedence() {
        let ws = Path::new("/ws");
        assert_eq!(Source::from_env(None, None, ws), Source::Managed);
        assert_eq!(
            Source::from_env(Some("/ws/.libtorch"), None, ws),
            Source::Managed,
            "the workspace default is not a user's choice"
        );
        assert_eq!(
            Source::from_env(Some("/opt/libtorch"), None, ws),
            Source::User(PathBuf::from("/opt/libtorch"))
        );
        assert_eq!(
            Source::from_env(Some("/opt/libtorch"), Some("1"), ws),
            Source::Pytorch
        );
        assert_eq!(Source::from_env(Some(""), Some(""), ws), Source::Managed);
    }

    #[test]
    fn version_py_is_parsed_with_either_quote() {
        let text = "from typing import Optional\n__version__ = '2.13.0+cu130'\ncuda = '13.0'\n";
        assert_eq!(parse_version_py(text).as_deref(), Some("2.13.0+cu130"));
        assert_eq!(
            parse_version_py("__version__=\"2.12.1\"").as_deref(),
            Some("2.12.1")
        );
        assert_eq!(parse_version_py("version = '1'"), None);
    }

    #[test]
    fn version_check_accepts_local_suffixes_and_names_both_versions_on_mismatch() {
        check_version("2.13.0+cpu", "x").unwrap();
        check_version("2.13.0", "x").unwrap();
        let err = check_version("2.12.1+cu126", "LIBTORCH=/opt/libtorch")
            .unwrap_err()
            .to_string();
        assert!(err.contains("2.12.1+cu126"), "{err}");
        assert!(err.contains(TORCH_VERSION), "{err}");
        assert!(err.contains("LIBTORCH=/opt/libtorch"), "{err}");
        assert!(err.contains("Fix"), "{err}");
    }

    #[test]
    fn read_version_prefers_build_version_then_version_py() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_version(dir.path()).unwrap(), None);
        std::fs::write(
            dir.path().join("version.py"),
            "__version__ = '2.13.0+cu130'\n",
        )
        .unwrap();
        assert_eq!(
            read_version(dir.path()).unwrap().as_deref(),
            Some("2.13.0+cu130")
        );
        std::fs::write(dir.path().join("build-version"), "2.13.0+cpu\n").unwrap();
        assert_eq!(
            read_version(dir.path()).unwrap().as_deref(),
            Some("2.13.0+cpu")
        );
    }

    #[test]
    fn unsupported_platforms_are_named_with_the_supported_one() {
        assert_eq!(
            wheel_platform("linux", "x86_64").unwrap(),
            "manylinux_2_28_x86_64"
        );
        let err = wheel_platform("macos", "aarch64").unwrap_err().to_string();
        assert!(err.contains("macos aarch64"), "{err}");
        assert!(err.contains("Linux x86_64"), "{err}");
        assert!(err.contains("LIBTORCH"), "{err}");
    }

    #[test]
    fn python_torch_reports_a_missing_interpreter() {
        let err = python_torch("/nonexistent/python3").unwrap_err();
        assert!(format!("{err:#}").contains("could not be run"), "{err:#}");
    }

    #[test]
    fn variant_is_read_from_the_lib_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Variant::of_lib_dir(dir.path()), Variant::Cpu);
        std::fs::write(dir.path().join("libtorch_cuda.so"), b"").unwrap();
        assert_eq!(Variant::of_lib_dir(dir.path()), Variant::Cuda);
    }
}
