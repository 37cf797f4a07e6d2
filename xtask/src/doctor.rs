//! `cargo xtask doctor`: which libtorch the build uses, what it is, and what is wrong.

use std::path::Path;

use anyhow::{Result, bail};

use crate::install;
use crate::libtorch::{self, LINK_NAME, Source, TORCH_VERSION, Variant};
use crate::setup;

/// Prints the report; fails when something would stop a build or a run.
pub fn run(workspace: &Path) -> Result<()> {
    let mut problems: Vec<String> = Vec::new();
    println!(
        "platform        {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    if let Err(err) = libtorch::wheel_platform(std::env::consts::OS, std::env::consts::ARCH) {
        println!("                (setup cannot install here: {err})");
    }
    println!("tch needs       libtorch {TORCH_VERSION}");
    let source = Source::current(workspace);
    let resolved = match &source {
        Source::Managed => {
            println!("source          `cargo xtask setup` install, via {LINK_NAME}");
            managed(workspace, &mut problems)
        }
        Source::User(path) => {
            println!("source          LIBTORCH={}", path.display());
            report(setup::resolve_external(source.clone()), &mut problems)
        }
        Source::Pytorch => {
            println!("source          LIBTORCH_USE_PYTORCH (the Python torch package)");
            report(setup::resolve_external(source.clone()), &mut problems)
        }
    };
    if let Some(resolved) = &resolved {
        println!("lib folder      {}", resolved.lib_dir.display());
        println!(
            "version         {}",
            resolved.version.as_deref().unwrap_or("unknown")
        );
        println!("variant         {}", resolved.variant.name());
    }
    let driver = Path::new("/proc/driver/nvidia/version").exists();
    println!(
        "NVIDIA driver   {}",
        if driver { "present" } else { "none found" }
    );
    if resolved.is_some() && problems.is_empty() {
        // Only libtorch itself can say whether CUDA works: ask it through the elbo binary.
        println!("asking libtorch at run time (`elbo info`; the first build takes minutes):");
        if let Err(err) = crate::cargo::run(
            workspace,
            &["run", "--quiet", "-p", "elbo-cli", "--", "info"],
        ) {
            problems.push(format!("the elbo binary did not build or run: {err:#}"));
        }
        if let Some(r) = &resolved
            && r.variant == Variant::Cuda
            && !driver
        {
            println!("note            CUDA libtorch without a GPU driver: runs on CPU only");
        }
    }
    if problems.is_empty() {
        println!("no problems found");
        Ok(())
    } else {
        for problem in &problems {
            println!("problem         {problem}");
        }
        bail!("{} problem(s) found", problems.len())
    }
}

fn managed(workspace: &Path, problems: &mut Vec<String>) -> Option<setup::Resolved> {
    let link = workspace.join(LINK_NAME);
    let Ok(target) = std::fs::read_link(&link) else {
        problems.push(format!(
            "{} does not exist: run `cargo xtask setup` (or set LIBTORCH)",
            link.display()
        ));
        return None;
    };
    println!("link            {} -> {}", link.display(), target.display());
    let install_root = target.parent().unwrap_or(&target);
    if !install::is_complete(install_root) {
        problems.push(format!(
            "{} is not a complete install: run `cargo xtask setup --force`",
            install_root.display()
        ));
        return None;
    }
    let version = libtorch::read_version(&target).ok().flatten();
    if let Some(v) = &version
        && let Err(err) = libtorch::check_version(v, &target.display().to_string())
    {
        problems.push(err.to_string());
    }
    let lib_dir = target.join("lib");
    Some(setup::Resolved {
        variant: Variant::of_lib_dir(&lib_dir),
        lib_dir,
        version,
    })
}

fn report(
    resolved: Result<setup::Resolved>,
    problems: &mut Vec<String>,
) -> Option<setup::Resolved> {
    resolved
        .map_err(|err| problems.push(format!("{err:#}")))
        .ok()
}
