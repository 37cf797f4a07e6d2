//! `cargo xtask setup`: make the libtorch the build will use ready, whatever its source.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::install::{self, Outcome};
use crate::libtorch::{self, LINK_NAME, Source, TORCH_VERSION, Variant};
use crate::pip::Pip;

/// The libtorch a build will use, once set up.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Its `lib` folder.
    pub lib_dir: PathBuf,
    /// Its version, as it reports it (`2.13.0+cpu`), when it does.
    pub version: Option<String>,
    /// CPU only, or with CUDA.
    pub variant: Variant,
}

/// What happened to the workspace link.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// It already pointed at the install.
    Unchanged,
    /// It was made, or pointed elsewhere before (the previous target).
    Changed(Option<PathBuf>),
}

/// Runs the set-up for `variant` (`force`: download again even when installed), and
/// makes Gloo's headers ready (`require_gloo`: their absence is an error, not a warning).
pub fn run(
    workspace: &Path,
    variant: Variant,
    force: bool,
    require_gloo: bool,
) -> Result<Resolved> {
    let started = std::time::Instant::now();
    let resolved = match Source::current(workspace) {
        Source::Managed => setup_managed(workspace, variant, force)?,
        source => {
            let resolved = resolve_external(source)?;
            if variant == Variant::Cuda && resolved.variant == Variant::Cpu {
                bail!(
                    "--cuda was asked for, but the libtorch you chose ({}) has no \
                     libtorch_cuda.so. Point LIBTORCH at a CUDA build of libtorch \
                     {TORCH_VERSION}, or unset LIBTORCH / LIBTORCH_USE_PYTORCH to let setup \
                     install one.",
                    resolved.lib_dir.display()
                );
            }
            resolved
        }
    };
    match crate::gloo::ensure(workspace, &install::cache_dir()?) {
        Ok(include) => eprintln!("Gloo's headers ready at {}", include.display()),
        // Everything but data-parallel training builds without them.
        Err(e) if !require_gloo => {
            eprintln!("warning: {e:#}\n(without Gloo's headers elbo trains in one process only)")
        }
        Err(e) => return Err(e),
    }
    eprintln!(
        "libtorch {} ({}) ready at {} [{:.1} s]",
        resolved.version.as_deref().unwrap_or("of unknown version"),
        resolved.variant.name(),
        resolved.lib_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(resolved)
}

/// Checks a libtorch the user chose (through `LIBTORCH` or `LIBTORCH_USE_PYTORCH`)
/// without changing anything.
pub fn resolve_external(source: Source) -> Result<Resolved> {
    match &source {
        Source::Pytorch => {
            let python = python();
            let torch = libtorch::python_torch(&python)?;
            libtorch::check_version(
                &torch.version,
                &format!("the torch package of `{python}` (LIBTORCH_USE_PYTORCH)"),
            )?;
            Ok(Resolved {
                variant: Variant::of_lib_dir(&torch.lib_dir),
                lib_dir: torch.lib_dir,
                version: Some(torch.version),
            })
        }
        Source::User(path) => {
            let lib_dir = path.join("lib");
            if !lib_dir.join("libtorch_cpu.so").is_file() {
                bail!(
                    "LIBTORCH={} holds no lib/libtorch_cpu.so: it should be the folder of a \
                     libtorch {TORCH_VERSION} (with include/ and lib/). Fix LIBTORCH, or unset \
                     it to let `cargo xtask setup` install one.",
                    path.display()
                );
            }
            let version = libtorch::read_version(path)?;
            match &version {
                Some(v) => libtorch::check_version(v, &format!("LIBTORCH={}", path.display()))?,
                None => eprintln!(
                    "warning: LIBTORCH={} has no build-version or version.py; its version \
                     cannot be checked (tch needs {TORCH_VERSION})",
                    path.display()
                ),
            }
            Ok(Resolved {
                variant: Variant::of_lib_dir(&lib_dir),
                lib_dir,
                version,
            })
        }
        Source::Managed => bail!("internal: resolve_external called for the managed install"),
    }
}

fn python() -> String {
    std::env::var("PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".to_string())
}

fn setup_managed(workspace: &Path, variant: Variant, force: bool) -> Result<Resolved> {
    let platform = libtorch::wheel_platform(std::env::consts::OS, std::env::consts::ARCH)?;
    let cache = install::cache_dir()?;
    let pip = Pip {
        python: python(),
        platform,
        env: Vec::new(),
    };
    let outcome = install::ensure_installed(&cache, variant, force, &mut |dest| {
        pip.download(variant, dest)
    })?;
    let dir = install::install_dir(&cache, variant);
    match outcome {
        Outcome::AlreadyInstalled => eprintln!("libtorch already installed: no download"),
        Outcome::Installed => {
            eprintln!("installed libtorch {TORCH_VERSION} into {}", dir.display())
        }
    }
    let torch = dir.join("torch");
    if let LinkChange::Changed(Some(previous)) = link_workspace(workspace, &torch)? {
        eprintln!(
            "{LINK_NAME} pointed at {}; cleaning torch-sys so that it builds against the new \
             libtorch",
            previous.display()
        );
        crate::cargo::run(workspace, &["clean", "-p", "torch-sys"])?;
    }
    Ok(Resolved {
        lib_dir: torch.join("lib"),
        version: libtorch::read_version(&torch)?,
        variant,
    })
}

/// Points `<workspace>/.libtorch` at `target`, atomically (a new link renamed over the
/// old one). Refuses to replace anything that is not a link.
pub fn link_workspace(workspace: &Path, target: &Path) -> Result<LinkChange> {
    link_named(workspace, LINK_NAME, target)
}

/// Points the link `<workspace>/<name>` at `target`, as [`link_workspace`] does.
pub fn link_named(workspace: &Path, name: &str, target: &Path) -> Result<LinkChange> {
    let link = workspace.join(name);
    let previous = match std::fs::symlink_metadata(&link) {
        Ok(meta) if meta.file_type().is_symlink() => Some(std::fs::read_link(&link)?),
        Ok(_) => bail!(
            "{} exists and is not a link; `cargo xtask setup` manages that name. Move it \
             away (to use your own libtorch, set LIBTORCH instead).",
            link.display()
        ),
        Err(_) => None,
    };
    if previous.as_deref() == Some(target) {
        return Ok(LinkChange::Unchanged);
    }
    let staging = workspace.join(format!("{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, &staging)
        .with_context(|| format!("creating the link {}", staging.display()))?;
    std::fs::rename(&staging, &link)
        .with_context(|| format!("moving the link {} into place", link.display()))?;
    Ok(LinkChange::Changed(previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_is_made_then_left_alone_then_moved() {
        let ws = tempfile::tempdir().unwrap();
        let a = ws.path().join("a");
        let b = ws.path().join("b");
        assert_eq!(
            link_workspace(ws.path(), &a).unwrap(),
            LinkChange::Changed(None)
        );
        assert_eq!(
            link_workspace(ws.path(), &a).unwrap(),
            LinkChange::Unchanged
        );
        assert_eq!(
            link_workspace(ws.path(), &b).unwrap(),
            LinkChange::Changed(Some(a))
        );
        assert_eq!(std::fs::read_link(ws.path().join(LINK_NAME)).unwrap(), b);
    }

    #[test]
    fn a_real_folder_under_the_link_name_is_not_replaced() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join(LINK_NAME)).unwrap();
        let err = link_workspace(ws.path(), Path::new("/x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a link"), "{err}");
        assert!(ws.path().join(LINK_NAME).is_dir());
    }

    #[test]
    fn a_user_libtorch_is_checked_for_its_library_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_external(Source::User(dir.path().into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no lib/libtorch_cpu.so"), "{err}");

        std::fs::create_dir(dir.path().join("lib")).unwrap();
        std::fs::write(dir.path().join("lib/libtorch_cpu.so"), b"").unwrap();
        std::fs::write(dir.path().join("build-version"), "2.9.1+cpu\n").unwrap();
        let err = resolve_external(Source::User(dir.path().into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2.9.1+cpu") && err.contains(TORCH_VERSION),
            "{err}"
        );

        std::fs::write(dir.path().join("build-version"), "2.13.0+cpu\n").unwrap();
        let ok = resolve_external(Source::User(dir.path().into())).unwrap();
        assert_eq!(ok.variant, Variant::Cpu);
        assert_eq!(ok.version.as_deref(), Some("2.13.0+cpu"));
    }
}
