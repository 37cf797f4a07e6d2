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
        Command::Eval(args) => eval::eval(args)?,
        Command::Sample(args) => eval::sample(args)?,
        Command::Plot(args) => eval::plot(args)?,
    }
    Ok(ExitCode::SUCCESS)
}
