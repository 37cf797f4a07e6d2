//! Data-parallel training with two real processes (Gloo over loopback), against a
//! one-process reference:
//! - two ranks with a global batch of 64 give the weights of one process that computes
//!   the same two half-batch gradients (each with its rank's draws) and averages them:
//!   the data slices, the reduction, the broadcast of rank 0's initial weights and the
//!   per-rank seeding are all checked by that (vae-mlp and a small DDPM);
//! - every rank ends with the same weights, Adam moments and EMA;
//! - resuming a two-rank run is bit-exact against an unbroken two-rank run, and a
//!   two-rank run resumes on one process;
//! - processes that disagree on the job stop before training, naming the rank.
//!
//! This binary starts copies of itself as the workers (`harness = false` in
//! Cargo.toml: `main` is either the tests or one worker, by ELBO_PARALLEL_WORKER), since
//! libtorch's generator is process-wide and each rank needs its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use elbo_data::{Batching, Dataset, EpochSeed, Loader, LoaderConfig};
use elbo_models::data;
use elbo_models::dist::{Alone, Parallel, Replicas, World};
use elbo_models::fit;
use elbo_models::models::ElboModel;
use elbo_models::models::ddpm::Ddpm;
use elbo_models::models::vae::{Vae, VaeConfig, VaePreset};
use elbo_models::nn::likelihood::Likelihood;
use elbo_models::train::optim::Adam;
use elbo_models::train::{self, Batch, Control, RunDir, TrainConfig, checkpoint, rank_step_seed};
use tch::nn::VarStore;
use tch::{Device, Tensor};

mod common;

const WORKER: &str = "ELBO_PARALLEL_WORKER";

/// The model of a test run: vae-mlp, or a DDPM with a small UNet.
fn model(kind: &str, vs: &VarStore) -> Box<dyn ElboModel> {
    match kind {
        "vae" => {
            let config =
                VaeConfig::preset(VaePreset::Mlp, [1, 28, 28], Likelihood::Bernoulli).unwrap();
            Box::new(Vae::new(&vs.root(), config).unwrap())
        }
        "ddpm" => {
            let config = common::tiny_ddpm();
            let sampling = elbo_models::sample::SamplingOptions {
                sampler: "ddim-2".parse().unwrap(),
                clip_x0: elbo_models::sample::ClipX0::Static,
                guidance: None,
            };
            Box::new(
                Ddpm::new(&vs.root(), config)
                    .unwrap()
                    .with_sampling(sampling)
                    .unwrap(),
            )
        }
        other => panic!("no test model {other}"),
    }
}

fn config(steps: u64, ema: bool) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 64,
        seed: 3,
        cadence: train::Cadence {
            checkpoint_every: 10,
            log_every: 5,
            eval_examples: 0,
            ..train::Cadence::default()
        },
        ema_decay: ema.then_some(0.9),
        ..TrainConfig::default()
    }
}

fn train_set() -> Dataset {
    // 320 examples: 5 steps per epoch, so 20 steps cross epoch boundaries.
    common::subset(320, 1).0
}

/// One rank of a job: trains as the environment says, then writes its whole state to
/// `<dir>/rank-<r>.safetensors`.
fn worker(kind: &str) {
    let var = |name: &str| std::env::var(name).unwrap();
    let dir = PathBuf::from(var("ELBO_PARALLEL_DIR"));
    let steps: u64 = var("ELBO_PARALLEL_STEPS").parse().unwrap();
    let resume = var("ELBO_PARALLEL_RESUME") == "1";
    let ema = var("ELBO_PARALLEL_EMA") == "1";
    let mut config = config(steps, ema);
    config.seed += var("ELBO_PARALLEL_SEED_OFFSET").parse::<u64>().unwrap();
    let train = train_set();
    let world = World::from_env().unwrap();
    let device = match (std::env::var("ELBO_PARALLEL_DEVICE").as_deref(), &world) {
        (Ok("cuda"), Some(w)) => w.device(Device::Cuda(0)),
        _ => Device::Cpu,
    };
    let mut vs = train::var_store(config.seed, device);
    let model = model(kind, &vs);
    let step = model.train_step().unwrap();
    let parallel = world
        .as_ref()
        .map(|w| Parallel::connect(w, std::time::Duration::from_secs(30), device).unwrap());
    if let Some(p) = &parallel {
        // On a GPU, a CUDA build reduces with NCCL, on the GPU itself.
        assert_eq!(p.device(), device, "the process group's device");
    }
    let replicas: &dyn Replicas = match &parallel {
        Some(p) => p,
        None => &Alone,
    };
    let mut trainer = fit::trainer(
        model.as_ref(),
        config,
        RunDir::new(dir.join("run")),
        kind,
        None,
    )
    .replicas(replicas);
    let result = trainer.fit(
        step.as_ref(),
        &mut vs,
        &train,
        Control {
            resume,
            stop: &AtomicBool::new(false),
            allow_changes: false,
        },
        &mut (),
    );
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("worker error: {e}");
            std::process::exit(3);
        }
    };
    // The state as the trainer left it, as the checkpoint names it: the weights, and
    // (from the newest checkpoint's restore) nothing else is in memory here, so the
    // weights and, through a fresh load, the moments are compared by the caller.
    let rank = world.map_or(0, |w| w.rank);
    let named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (format!("model.{n}"), t.detach().to_device(Device::Cpu)))
        .collect();
    Tensor::write_safetensors(&named, dir.join(format!("rank-{rank}.safetensors"))).unwrap();
    // The digest of the final state every process was found to hold (a job only).
    if let Some(digest) = report.agreed {
        std::fs::write(dir.join(format!("agreed-{rank}")), digest).unwrap();
    }
}

/// Runs a job of `ranks` processes of this binary; returns each rank's exit code and
/// what it printed on stderr.
#[allow(clippy::too_many_arguments)]
fn job(
    kind: &str,
    device: &str,
    ranks: usize,
    dir: &Path,
    steps: u64,
    resume: bool,
    ema: bool,
    seed_offset: impl Fn(usize) -> u64,
) -> Vec<(i32, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let children: Vec<_> = (0..ranks)
        .map(|rank| {
            let mut command = Command::new(std::env::current_exe().unwrap());
            command
                .env(WORKER, kind)
                .env("ELBO_PARALLEL_DEVICE", device)
                .env("ELBO_PARALLEL_DIR", dir)
                .env("ELBO_PARALLEL_STEPS", steps.to_string())
                .env("ELBO_PARALLEL_RESUME", if resume { "1" } else { "0" })
                .env("ELBO_PARALLEL_EMA", if ema { "1" } else { "0" })
                .env("ELBO_PARALLEL_SEED_OFFSET", seed_offset(rank).to_string())
                .env("OMP_NUM_THREADS", "1")
                .stderr(std::process::Stdio::piped());
            if ranks > 1 {
                let world = World {
                    rank,
                    size: ranks,
                    local_rank: rank,
                    local_size: ranks,
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                    agent_store: false,
                    gloo_interfaces: Vec::new(),
                    restart_count: 0,
                };
                command.envs(world.vars());
            }
            command.spawn().unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .collect()
}

fn succeeded(results: &[(i32, String)]) {
    for (rank, (code, stderr)) in results.iter().enumerate() {
        assert_eq!(*code, 0, "rank {rank} failed:\n{stderr}");
    }
}

fn load(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn max_abs_difference(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same tensors"
    );
    a.iter()
        .map(|(name, t)| (t - &b[name]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

/// One process computing what two ranks compute: per step, each half of the global
/// batch's gradient under its rank's seed, averaged, then one Adam step.
fn reference(kind: &str, steps: u64) -> BTreeMap<String, Tensor> {
    let config = config(steps, false);
    let train = train_set();
    let vs = train::var_store(config.seed, Device::Cpu);
    let model = model(kind, &vs);
    let step = model.train_step().unwrap();
    let mut adam = Adam::new(&vs, config.adam);
    let batching = Batching {
        batch_size: std::num::NonZeroUsize::new(config.batch_size).unwrap(),
        drop_last: false,
    };
    let loader = Loader::new(
        &train,
        LoaderConfig {
            batching,
            shuffle: true,
            seed: config.seed,
            transform: step.transform(false),
        },
    );
    let per_epoch = loader.batches_per_epoch() as u64;
    for index in 0..steps {
        let epoch = index / per_epoch;
        let order = loader.order(epoch);
        let global = order
            .batches(batching)
            .nth((index % per_epoch) as usize)
            .unwrap();
        let n = global.len();
        let mut mean: Vec<Option<Tensor>> = adam.params().iter().map(|_| None).collect();
        for rank in 0..2 {
            let shard = &global[n * rank / 2..n * (rank + 1) / 2];
            let images = loader
                .config()
                .transform
                .apply(
                    &train,
                    shard,
                    EpochSeed {
                        seed: config.seed,
                        epoch,
                    },
                )
                .unwrap();
            let labels: Vec<i64> = shard
                .iter()
                .map(|&i| i64::from(train.labels()[i]))
                .collect();
            let batch = Batch {
                x: data::to_tensor(&images, Device::Cpu),
                labels: Tensor::from_slice(&labels),
            };
            tch::manual_seed(rank_step_seed(config.seed, index, rank));
            adam.zero_grad();
            step.loss(&batch, index).loss.backward();
            for (slot, p) in mean.iter_mut().zip(adam.params()) {
                let g = p.grad();
                if g.defined() {
                    let half = &g * 0.5;
                    *slot = Some(match slot.take() {
                        None => half,
                        Some(sum) => sum + half,
                    });
                }
            }
        }
        adam.zero_grad();
        for (p, g) in adam.params().iter().zip(&mean) {
            if let Some(g) = g {
                elbo_models::sys::ffi::set_grad(p, g).unwrap();
            }
        }
        adam.step(config.lr_at(index));
    }
    vs.variables()
        .into_iter()
        .map(|(n, t)| (format!("model.{n}"), t.detach().copy()))
        .collect()
}

fn checkpoint_weights(dir: &Path) -> (checkpoint::CheckpointMeta, BTreeMap<String, Tensor>) {
    let loaded = checkpoint::load(&dir.join("run/checkpoints")).unwrap();
    (loaded.meta, loaded.tensors)
}

fn two_ranks_equal_one_process_averaging_the_same_half_batches(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    succeeded(&job(kind, "cpu", 2, dir.path(), 20, false, false, |_| 0));
    let expected = reference(kind, 20);
    let rank0 = load(&dir.path().join("rank-0.safetensors"));
    let rank1 = load(&dir.path().join("rank-1.safetensors"));
    // The same float operations in the same order (halving is exact and two addends
    // commute, so Gloo's sum is the reference's), on one thread each: the ranks and the
    // reference agree to the bit (seen: 0). With the reference on two threads instead
    // the matrix products block their sums differently and the weights differ by up to
    // 6e-6 after 20 steps: that is the reduction-order difference, and not what this
    // test is about.
    let difference = max_abs_difference(&rank0, &expected);
    println!("{kind}: max |two ranks - reference| = {difference:e}");
    assert_eq!(difference, 0.0, "{kind}");
    assert_eq!(
        max_abs_difference(&rank0, &rank1),
        0.0,
        "every rank holds the same weights"
    );
    // The loop's own end-of-run check found the same: one digest, reported by both.
    let agreed = |rank: usize| std::fs::read_to_string(dir.path().join(format!("agreed-{rank}")));
    let digest = agreed(0).expect("rank 0 reports the agreed digest");
    assert_eq!(digest.len(), 64, "{digest}");
    assert_eq!(agreed(1).unwrap(), digest);
    let (meta, saved) = checkpoint_weights(dir.path());
    assert_eq!(meta.world_size, Some(2));
    assert_eq!(meta.step, 20);
    let saved_weights: BTreeMap<String, Tensor> = saved
        .into_iter()
        .filter(|(k, _)| k.starts_with("model."))
        .collect();
    assert_eq!(max_abs_difference(&saved_weights, &rank0), 0.0);
    // Only rank 0 writes metrics: one line per logged step (5, 10, 15, 20), not two.
    let metrics = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    let logged = metrics
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .count();
    assert_eq!(logged, 4, "{metrics}");
}

fn resume_under_two_ranks_is_bit_exact_and_one_process_may_take_over() {
    let straight = tempfile::tempdir().unwrap();
    succeeded(&job(
        "vae",
        "cpu",
        2,
        straight.path(),
        20,
        false,
        true,
        |_| 0,
    ));
    let broken = tempfile::tempdir().unwrap();
    succeeded(&job("vae", "cpu", 2, broken.path(), 10, false, true, |_| 0));
    succeeded(&job("vae", "cpu", 2, broken.path(), 20, true, true, |_| 0));
    let (meta_a, a) = checkpoint_weights(straight.path());
    let (meta_b, b) = checkpoint_weights(broken.path());
    assert_eq!((meta_a.step, meta_b.step), (20, 20));
    assert!(a.keys().any(|k| k.starts_with("ema.")) && a.keys().any(|k| k.starts_with("adam.")));
    assert_eq!(
        max_abs_difference(&a, &b),
        0.0,
        "weights, Adam's moments and the EMA, bit for bit"
    );
    // The last rank's weights are rank 0's (the moments and EMA are updated from the
    // same reduced gradients and weights, so they are too).
    let rank1 = load(&broken.path().join("rank-1.safetensors"));
    let weights: BTreeMap<String, Tensor> = b
        .into_iter()
        .filter(|(k, _)| k.starts_with("model."))
        .collect();
    assert_eq!(max_abs_difference(&weights, &rank1), 0.0);
    // One process goes on from the two-rank checkpoint.
    succeeded(&job("vae", "cpu", 1, broken.path(), 25, true, true, |_| 0));
    let (meta, _) = checkpoint_weights(broken.path());
    assert_eq!((meta.step, meta.world_size), (25, Some(1)));
}

fn ranks_that_disagree_stop_before_training_and_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let results = job("vae", "cpu", 2, dir.path(), 5, false, false, |rank| {
        rank as u64
    });
    for (rank, (code, stderr)) in results.iter().enumerate() {
        assert_eq!(*code, 3, "rank {rank}: {stderr}");
        assert!(
            stderr.contains("rank 1 differs from rank 0"),
            "rank {rank}: {stderr}"
        );
    }
    assert!(
        !dir.path().join("run/checkpoints").exists(),
        "nothing was trained or written"
    );
}

/// Two ranks on two GPUs, with NCCL: the job trains, and both ranks end with the same
/// weights (run with `--features cuda-tests` on a machine with two GPUs).
#[cfg(feature = "cuda-tests")]
fn two_ranks_on_two_gpus_with_nccl() {
    let gpus = tch::Cuda::device_count();
    if gpus < 2 {
        println!("two_ranks_on_two_gpus_with_nccl: {gpus} GPU(s) here, 2 needed: not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    succeeded(&job("ddpm", "cuda", 2, dir.path(), 20, false, true, |_| 0));
    let rank0 = load(&dir.path().join("rank-0.safetensors"));
    let rank1 = load(&dir.path().join("rank-1.safetensors"));
    assert_eq!(max_abs_difference(&rank0, &rank1), 0.0);
    let (meta, _) = checkpoint_weights(dir.path());
    assert_eq!((meta.step, meta.world_size), (20, Some(2)));
}

fn main() {
    if let Ok(kind) = std::env::var(WORKER) {
        worker(&kind);
        return;
    }
    // As in the workers (OMP_NUM_THREADS=1): a matrix product's sums are blocked by the
    // number of threads, so the reference computes with the same one thread.
    tch::set_num_threads(1);
    if !elbo_models::dist::AVAILABLE {
        panic!("{}", elbo_models::dist::UNAVAILABLE);
    }
    let tests: [(&str, &dyn Fn()); 4] = [
        ("vae_two_ranks_equal_the_reference", &|| {
            two_ranks_equal_one_process_averaging_the_same_half_batches("vae")
        }),
        ("ddpm_two_ranks_equal_the_reference", &|| {
            two_ranks_equal_one_process_averaging_the_same_half_batches("ddpm")
        }),
        (
            "resume_under_two_ranks_is_bit_exact_and_one_process_may_take_over",
            &resume_under_two_ranks_is_bit_exact_and_one_process_may_take_over,
        ),
        (
            "ranks_that_disagree_stop_before_training_and_are_named",
            &ranks_that_disagree_stop_before_training_and_are_named,
        ),
    ];
    #[cfg(feature = "cuda-tests")]
    two_ranks_on_two_gpus_with_nccl();
    for (name, test) in tests {
        let started = std::time::Instant::now();
        test();
        println!(
            "test {name} ... ok ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
}
