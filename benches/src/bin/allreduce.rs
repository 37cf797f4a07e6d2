//! `allreduce`: the bandwidth of elbo's Gloo all-reduce (`elbo_models::dist`), one
//! bucket of `--mib` MiB of f32 summed over the ranks of a job, timed on rank 0.
//! `benches/reference/allreduce.py` is the same measurement through `torch.distributed`;
//! both run under the same launcher:
//!
//! ```text
//! torchrun --no-python --nproc-per-node 2 target/release/allreduce --mib 25
//! torchrun --nproc-per-node 2 benches/reference/allreduce.py --mib 25
//! ```
//!
//! Prints one JSON line (rank 0): the mean and best milliseconds per all-reduce and the
//! algorithm bandwidth (bytes / time).

use std::time::{Duration, Instant};

use clap::Parser;
use elbo_models::dist::{Parallel, World};
use tch::{Device, Kind, Tensor};

#[derive(Parser, Debug)]
#[command(
    about = "Time a Gloo all-reduce of one bucket (run under torchrun or with RANK, WORLD_SIZE, ...)"
)]
struct Args {
    /// The bucket's size in MiB (f32 elements).
    #[arg(long, default_value_t = 25.0)]
    mib: f64,
    /// Untimed all-reduces first.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Timed all-reduces.
    #[arg(long, default_value_t = 30)]
    reps: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let world = World::from_env()?.ok_or("run under a launcher: WORLD_SIZE is not set (or 1)")?;
    let parallel = Parallel::connect(&world, Duration::from_secs(60), Device::Cpu)?;
    let n = (args.mib * 1024.0 * 1024.0 / 4.0) as i64;
    let bucket = Tensor::ones([n], (Kind::Float, Device::Cpu));
    let group = parallel.group();
    for _ in 0..args.warmup {
        group.all_reduce_sum(std::slice::from_ref(&bucket))?;
    }
    let mut times = Vec::with_capacity(args.reps);
    for _ in 0..args.reps {
        group.barrier(Duration::from_secs(60))?;
        let started = Instant::now();
        group.all_reduce_sum(std::slice::from_ref(&bucket))?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    if world.rank == 0 {
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        let bytes = n as f64 * 4.0;
        println!(
            "{}",
            serde_json::json!({
                "side": "elbo", "mib": args.mib, "world": world.size, "reps": args.reps,
                "ms_mean": mean, "ms_best": best,
                "gb_per_s_mean": bytes / (mean * 1e-3) / 1e9,
            })
        );
    }
    Ok(())
}
