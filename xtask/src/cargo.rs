//! Running cargo (and other programs) from the xtask, with clear failures.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The cargo that runs this xtask (`$CARGO`), so nested calls use the same toolchain.
pub fn cargo_command() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cargo ARGS` in the workspace, failing with the command line and exit status.
pub fn run(workspace: &Path, args: &[&str]) -> Result<()> {
    let mut command = cargo_command();
    command.args(args).current_dir(workspace);
    run_command(&mut command, &format!("cargo {}", args.join(" ")))
}

/// Runs `command` (described as `label`), printing how long it took.
pub fn run_command(command: &mut Command, label: &str) -> Result<()> {
    eprintln!("==> {label}");
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("could not start `{label}`"))?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("`{label}` failed ({status}) after {seconds:.1} s");
    }
    eprintln!("<== {label}: ok [{seconds:.1} s]");
    Ok(())
}
