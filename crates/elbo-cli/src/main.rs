//! `elbo`: train, evaluate and sample the evidence-lower-bound models of this workspace.
//! Thin by design: it parses arguments and calls into `elbo-models`.

use clap::{Parser, Subcommand};

/// Latent-variable generative models (VAE, hierarchical VAE, DDPM) on libtorch.
#[derive(Debug, Parser)]
#[command(name = "elbo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What the loaded libtorch can do: CUDA, cuDNN, threads.
    Info,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Info => {
            println!("elbo {}", env!("CARGO_PKG_VERSION"));
            println!("{}", elbo_models::RuntimeInfo::current());
        }
    }
    Ok(())
}
