//! `steptime`: elbo's side of the PyTorch comparison (`cargo xtask bench --with-pytorch`).
//!
//! Times training steps of a preset on one fixed batch, with the protocol that
//! `benches/reference/steptime.py` follows for PyTorch: `--warmup` steps, then `--reps`
//! repetitions of `--steps` consecutive steps, each timed as a whole; prints one JSON
//! line with the mean milliseconds per step of each repetition and the process's peak
//! resident memory. The step is the training loop's own (`elbo_models::train::optimise`):
//! forward, loss, backward, Adam; `--task sample` times a DDPM's DDIM sampling instead.
//!
//! `--device cuda[:N]` runs it on a GPU: each timed repetition starts and ends with a
//! device synchronisation, and the line gains the caching allocator's peak over the
//! timed steps (`peak_device_mib`). `--autocast bf16` (CUDA only, as in training) runs
//! the forward under bfloat16 autocast; `--tf32` lets float32 matmuls and convolutions
//! use TF32 (without it both are kept in float32: the setting is always stated).

use std::time::{Duration, Instant};

use clap::Parser;
use elbo_models::DeviceSpec;
use elbo_models::dist::{Alone, Parallel, Replica, World};
use elbo_models::models::draw_samples;
use elbo_models::train::optim::Adam;
use elbo_models::train::{self, TrainConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

#[derive(Parser, Debug)]
#[command(about = "Time elbo's training step of a preset (JSON on stdout)")]
struct Args {
    /// vae-mlp, hvae-ladder, ddpm-mnist or ddpm-cifar10 (`--task train`; `data` for the
    /// MNIST ones); ddpm-mnist or ddpm-cifar10 (`--task sample`); `matmul`
    /// (`--task matmul`).
    #[arg(long)]
    model: String,
    /// `train` (one training step), `sample` (one DDIM sampling of `batch` images with
    /// `--ddim-steps`, eta 0, x_0 clipped: what `elbo sample` does by default), `data`
    /// (preparing one batch as the training loop does: the model's pixel transform of
    /// `batch` images, then a tensor) or `matmul`
    /// (a `batch` x `batch` matrix product, the machine's peak for the
    /// compute-efficiency ratio: float32, TF32 with `--tf32`, bfloat16 with
    /// `--autocast bf16`).
    #[arg(long, default_value = "train")]
    task: String,
    /// Examples per step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// libtorch intra-op threads.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Untimed steps first.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Timed repetitions.
    #[arg(long, default_value_t = 10)]
    reps: u64,
    /// Steps per repetition.
    #[arg(long, default_value_t = 20)]
    steps: u64,
    /// Seed of the weights and of the step's noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `--task sample`: DDIM steps.
    #[arg(long, default_value_t = 50)]
    ddim_steps: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// `bf16`: the forward pass under bfloat16 autocast (CUDA only); `none`.
    #[arg(long, default_value = "none", value_parser = ["none", "bf16"])]
    autocast: String,
    /// Let float32 matrix products and convolutions on CUDA use TF32.
    #[arg(long)]
    tf32: bool,
    /// Leave glibc's malloc as it is, instead of making freed memory reusable without
    /// page faults as the `elbo` CLI does (`elbo_models::retain_freed_memory`).
    #[arg(long)]
    default_malloc: bool,
}

/// The process's peak resident set (VmHWM), in MiB, on Linux.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn run(args: &Args) -> Result<serde_json::Value, String> {
    if args.batch == 0 || args.reps == 0 || args.steps == 0 || args.threads < 1 {
        return Err("--batch, --reps, --steps and --threads must be at least 1".into());
    }
    tch::set_num_threads(args.threads);
    tch::set_num_interop_threads(1);
    let device = args.device.resolve().map_err(|e| e.to_string())?;
    let bf16 = args.autocast == "bf16";
    if bf16 && !device.is_cuda() {
        return Err(format!(
            "--autocast bf16 runs on CUDA only (as elbo's training), and --device is {}",
            args.device
        ));
    }
    if device.is_cuda() {
        elbo_models::ffi::set_cuda_tf32(args.tf32, args.tf32)?;
        if bf16 {
            elbo_models::ffi::set_cuda_autocast_bf16()?;
        }
    }
    let setting = Setting {
        device,
        bf16,
        tf32: args.tf32,
    };
    match (args.task.as_str(), args.model.as_str()) {
        ("train", _) => train_steps(args, setting),
        ("sample", _) => samplings(args, setting),
        ("data", _) if device == Device::Cpu => data_batches(args),
        ("data", _) => Err("--task data runs on the CPU only".into()),
        ("matmul", "matmul") => matmul(args, setting),
        (task, model) => Err(format!(
            "unknown --task {task:?} for --model {model:?}: expected train, sample or data \
             with a model, or matmul with --model matmul"
        )),
    }
}

/// Where and in which precision a run computes.
#[derive(Clone, Copy, Debug)]
struct Setting {
    device: Device,
    /// bfloat16 autocast (CUDA).
    bf16: bool,
    /// TF32 allowed for float32 (CUDA).
    tf32: bool,
}

impl Setting {
    /// The fields every line carries about it.
    fn fields(&self) -> serde_json::Value {
        serde_json::json!({
            "device": device_name(self.device),
            "autocast": if self.bf16 { "bf16" } else { "none" },
            "tf32": self.tf32,
        })
    }

    /// Waits for the device's queued work (a no-op on the CPU).
    fn synchronize(&self) {
        if let Device::Cuda(index) = self.device {
            tch::Cuda::synchronize(index as i64);
        }
    }

    /// Starts the device's memory peak afresh (CUDA). A build without the allocator's
    /// statistics (a CUDA libtorch without CUDA's headers) times all the same and says
    /// so once, here.
    fn reset_peak(&self) {
        if let Device::Cuda(index) = self.device
            && let Err(message) = elbo_models::ffi::reset_cuda_memory_peaks(index)
        {
            eprintln!("steptime: no peak device memory: {message}");
        }
    }

    /// The caching allocator's peak bytes allocated to tensors, in MiB (CUDA; `None`
    /// on the CPU or without the allocator's statistics).
    fn peak_device_mib(&self) -> Option<f64> {
        match self.device {
            Device::Cuda(index) => elbo_models::ffi::cuda_memory_peaks(index)
                .ok()
                .map(|(allocated, _reserved)| allocated as f64 / (1024.0 * 1024.0)),
            _ => None,
        }
    }
}

/// `cpu` or `cuda:N`, as PyTorch prints a device.
fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(index) => format!("cuda:{index}"),
        _ => "cpu".to_string(),
    }
}

/// Adds `more`'s fields to the object `line`.
fn with_fields(mut line: serde_json::Value, more: serde_json::Value) -> serde_json::Value {
    if let (Some(line), serde_json::Value::Object(more)) = (line.as_object_mut(), more) {
        line.extend(more);
    }
    line
}

/// Times `steps` products of two `batch` x `batch` matrices per repetition: float32
/// (TF32 if allowed) or, with bf16, bfloat16 matrices.
fn matmul(args: &Args, setting: Setting) -> Result<serde_json::Value, String> {
    let n = args.batch as i64;
    let kind = if setting.bf16 {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    let a = Tensor::randn([n, n], (kind, setting.device));
    let b = Tensor::randn([n, n], (kind, setting.device));
    let c = Tensor::zeros([n, n], (kind, setting.device));
    for _ in 0..args.warmup {
        let _ = Tensor::mm_out(&c, &a, &b);
    }
    let Timing {
        step_ms,
        faults_per_step,
    } = timed(args, setting, |_| {
        let _ = Tensor::mm_out(&c, &a, &b);
        Ok(())
    })?;
    let flops = 2.0 * (n as f64).powi(3);
    let best = step_ms.iter().copied().fold(f64::INFINITY, f64::min);
    let line = serde_json::json!({
        "side": "elbo", "model": "matmul", "task": "matmul", "size": n,
        "threads": args.threads, "step_ms": step_ms, "faults_per_step": faults_per_step,
        "gflops": flops / (best * 1e-3) / 1e9,
        "dtype": if setting.bf16 { "bf16" } else if setting.tf32 && setting.device.is_cuda() { "tf32" } else { "f32" },
        "peak_rss_mib": peak_rss_mib(),
    });
    Ok(with_fields(line, setting.fields()))
}

/// Times the data pipeline of the training loop for `args.model`: each call transforms
/// the next `batch` images of the bundled training split (for the Bernoulli presets a
/// dynamic binarisation keyed by (seed, epoch, image)) and makes the tensor.
fn data_batches(args: &Args) -> Result<serde_json::Value, String> {
    let vs = train::var_store(args.seed, Device::Cpu);
    let model = elbo_benches::preset_model(&args.model, &vs.root())?;
    let splits = elbo_data::load_bundled().map_err(|e| e.to_string())?;
    let n = splits.train.len();
    let transform = elbo_models::data::transform_for(model.likelihood(), false);
    let one = |i: u64| {
        let start = (i as usize * args.batch) % n;
        let indices: Vec<usize> = (start..start + args.batch).map(|j| j % n).collect();
        let key = elbo_data::EpochSeed {
            seed: args.seed,
            epoch: i,
        };
        let images = transform
            .apply(&splits.train, &indices, key)
            .map_err(|e| e.to_string())?;
        let _ = elbo_models::data::to_tensor(&images, Device::Cpu);
        Ok(())
    };
    for i in 0..args.warmup {
        one(i)?;
    }
    let Timing {
        step_ms,
        faults_per_step,
    } = timed(args, CPU, |i| one(args.warmup + i))?;
    Ok(serde_json::json!({
        "side": "elbo", "model": args.model, "task": "data", "batch": args.batch,
        "threads": args.threads, "step_ms": step_ms, "faults_per_step": faults_per_step, "peak_rss_mib": peak_rss_mib(),
    }))
}

/// The process's minor page faults so far (field 10 of /proc/self/stat), on Linux.
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the parenthesised command name start with field 3 (state).
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(7)?.parse().ok()
}

/// What [`timed`] measured.
struct Timing {
    /// Mean milliseconds per call, one per repetition.
    step_ms: Vec<f64>,
    /// Minor page faults per timed call (memory the kernel mapped and zeroed afresh).
    faults_per_step: Option<f64>,
}

/// The data pipeline's setting: the CPU, float32.
const CPU: Setting = Setting {
    device: Device::Cpu,
    bf16: false,
    tf32: false,
};

/// `reps` timings of `steps` calls of `one`; `one` gets the index of the call among all
/// timed calls. On a GPU each repetition starts and ends with a synchronisation, so that
/// it times the work it queued, not the queueing.
fn timed(
    args: &Args,
    setting: Setting,
    mut one: impl FnMut(u64) -> Result<(), String>,
) -> Result<Timing, String> {
    let mut step_ms = Vec::with_capacity(args.reps as usize);
    let mut index = 0;
    let faults_before = minor_faults();
    for _ in 0..args.reps {
        setting.synchronize();
        let start = Instant::now();
        for _ in 0..args.steps {
            one(index)?;
            index += 1;
        }
        setting.synchronize();
        step_ms.push(start.elapsed().as_secs_f64() * 1e3 / args.steps as f64);
    }
    let faults_per_step = faults_before
        .zip(minor_faults())
        .map(|(before, after)| (after - before) as f64 / index as f64);
    Ok(Timing {
        step_ms,
        faults_per_step,
    })
}

/// Times DDIM samplings of `args.batch` images from `args.model` (untrained weights:
/// the work per step does not depend on them).
fn samplings(args: &Args, setting: Setting) -> Result<serde_json::Value, String> {
    let vs: VarStore = train::var_store(args.seed, setting.device);
    let model = elbo_benches::preset_model(&args.model, &vs.root())?;
    let ddim = elbo_benches::ddim(args.ddim_steps);
    let params: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    let batch = args.batch as i64;
    let one = |i: u64| {
        tch::manual_seed(train::step_seed(args.seed, i));
        let images = tch::no_grad(|| {
            tch::autocast(setting.bf16, || {
                draw_samples(model.as_ref(), batch, Some(&ddim))
            })
        })
        .map_err(|e| e.to_string())?;
        let finite = images.isfinite().all().int64_value(&[]) == 1;
        if finite {
            Ok(())
        } else {
            Err(format!("non-finite samples at sampling {}", i + 1))
        }
    };
    for i in 0..args.warmup {
        one(i)?;
    }
    setting.synchronize();
    setting.reset_peak();
    let Timing {
        step_ms,
        faults_per_step,
    } = timed(args, setting, |i| one(args.warmup + i))?;
    let line = serde_json::json!({
        "side": "elbo", "model": args.model, "task": "sample", "params": params,
        "batch": args.batch, "threads": args.threads, "warmup": args.warmup,
        "reps": args.reps, "steps_per_rep": args.steps, "step_ms": step_ms, "faults_per_step": faults_per_step,
        "ddim_steps": args.ddim_steps, "eta": 0.0, "peak_rss_mib": peak_rss_mib(),
        "peak_device_mib": setting.peak_device_mib(),
    });
    Ok(with_fields(line, setting.fields()))
}

/// Times training steps of `args.model`; under a launcher (RANK, WORLD_SIZE, ... set:
/// `torchrun --no-python --nproc-per-node 2 steptime ...`) as one rank of a
/// data-parallel job, each rank stepping on its `batch / world` slice with the gradient
/// all-reduce of training (`--batch` stays the global batch).
fn train_steps(args: &Args, setting: Setting) -> Result<serde_json::Value, String> {
    let world = World::from_env().map_err(|e| e.to_string())?;
    // Under a launcher each rank computes on its own GPU, cuda:LOCAL_RANK: the model, the
    // batch, the synchronisations and the memory peaks all go there.
    let setting = Setting {
        device: world
            .as_ref()
            .map_or(setting.device, |w| w.device(setting.device)),
        ..setting
    };
    let device = setting.device;
    let parallel = match &world {
        Some(w) => Some(
            Parallel::connect(w, Duration::from_secs(120), device).map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let ranks = world.as_ref().map_or(1, |w| w.size);
    if !args.batch.is_multiple_of(ranks) {
        return Err(format!(
            "--batch {} does not divide among {ranks} ranks",
            args.batch
        ));
    }
    let vs: VarStore = train::var_store(args.seed, device);
    let model = elbo_benches::preset_model(&args.model, &vs.root())?;
    let params: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    let batch = elbo_benches::training_batch(model.as_ref(), args.batch / ranks, device)?;
    let config = TrainConfig {
        seed: args.seed,
        autocast_bf16: setting.bf16,
        ..TrainConfig::default()
    };
    let mut adam = Adam::new(&vs, config.adam);
    let loss = model.train_step().map_err(|e| e.to_string())?;
    let replica = Replica {
        replicas: match &parallel {
            Some(p) => p,
            None => &Alone,
        },
        share: 1.0 / ranks as f64,
        stop_requested: false,
    };
    let mut guard = train::Guard::new(device);
    let mut one = |step: u64| {
        train::optimise(
            loss.as_ref(),
            &mut adam,
            &batch,
            &config,
            step,
            &replica,
            &mut guard,
        )
        .map(|_| ())
        .map_err(|failure| format!("{failure:?} at step {}", step + 1))
    };
    for step in 0..args.warmup {
        one(step)?;
    }
    setting.synchronize();
    setting.reset_peak();
    let Timing {
        step_ms,
        faults_per_step,
    } = timed(args, setting, |i| one(args.warmup + i))?;
    guard
        .check()
        .map_err(|(step, value)| format!("the loss of step {step} was {value}"))?;
    if world.as_ref().is_some_and(|w| w.rank != 0) {
        return Ok(serde_json::Value::Null);
    }
    let line = serde_json::json!({
        "side": "elbo",
        "model": args.model,
        "task": "train",
        "params": params,
        "batch": args.batch,
        "world": ranks,
        "threads": args.threads,
        "warmup": args.warmup,
        "reps": args.reps,
        "steps_per_rep": args.steps,
        "step_ms": step_ms, "faults_per_step": faults_per_step,
        "peak_rss_mib": peak_rss_mib(),
        "peak_device_mib": setting.peak_device_mib(),
        "default_malloc": args.default_malloc,
    });
    Ok(with_fields(line, setting.fields()))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !args.default_malloc
        && let Err(message) = elbo_models::retain_freed_memory()
    {
        eprintln!("steptime: glibc malloc left as it is: {message}");
    }
    match run(&args) {
        Ok(serde_json::Value::Null) => std::process::ExitCode::SUCCESS,
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("steptime: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
