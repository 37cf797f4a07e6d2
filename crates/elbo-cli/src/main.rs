//! `elbo`: train, evaluate and sample the evidence-lower-bound models of this workspace.
//! Thin by design: it parses arguments (`args`), draws progress (`progress`), and each
//! command is one call into `elbo_models::session`, the library's front door (`train`,
//! `eval`).

mod args;
mod eval;
mod launch;
mod progress;
mod train;

use std::process::ExitCode;

use anyhow::Result;
use clap::FromArgMatches;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    // Freed tensor memory is reused without page faults (see the function's docs); on a
    // C library other than glibc nothing changes, which costs speed, not correctness.
    let _ = elbo_models::session::retain_freed_memory();
    let matches = args::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Info => {
            println!("elbo {}", env!("CARGO_PKG_VERSION"));
            println!("{}", elbo_models::session::RuntimeInfo::current());
        }
        Command::Train { model } => return train::run(model),
        Command::Eval(args) => {
            interrupt_ends("the evaluation")?;
            eval::eval(*args)?
        }
        Command::Sample(args) if args.format.is_some() => eval::export_samples(args)?,
        Command::Sample(args) => {
            interrupt_ends("sampling")?;
            eval::sample(args)?
        }
        Command::Plot(args) => {
            interrupt_ends("plotting")?;
            eval::plot(args)?
        }
        Command::Import { from } => eval::import(from)?,
        Command::Export { to } => {
            interrupt_ends("the export")?;
            eval::export(to)?
        }
        Command::Data { action } => eval::data(action)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A command that only reads a run and writes its outputs whole at the end: Ctrl-C or
/// SIGTERM ends it at once (exit 130), saying that nothing was written. (The outputs
/// go through temporary names, so none is left half-written.)
fn interrupt_ends(what: &'static str) -> Result<()> {
    use anyhow::Context;
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: {what} stopped; it wrote nothing (its files are written whole, at the end)");
        elbo_models::session::exit_now(130);
    })
    .context("installing the Ctrl-C handler")
}
