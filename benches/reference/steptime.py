#!/usr/bin/env python3
"""Training-step time of PyTorch on one fixed batch: the PyTorch side of the
side-by-side comparison (`cargo xtask bench --with-pytorch`). elbo's Rust harness
follows the same protocol and prints the same JSON line, so the two can be put in one
table.

    python steptime.py --model vae-mlp|hvae-ladder|ddpm-mnist|ddpm-cifar10 \
        [--task train|sample] --batch 128 --threads 1 --warmup 20 --reps 10 --steps 20 \
        [--seed 0] [--adam default|fused|foreach] [--ddim-steps 50] \
        [--compile] [--channels-last] [--device cpu|cuda[:N]] [--autocast bf16] [--tf32]

PyTorch at its best (issue 20), each a flag so that the variants combine:
- `--compile`: torch.compile (inductor, default mode) of what a step evaluates: the
  model's `loss` for `--task train` (AOTAutograd compiles its backward too; the
  optimiser step stays eager: fused Adam is already one kernel per step on the CPU), the
  UNet's forward for `--task sample`. Compilation happens in the first warm-up step; its
  wall time is reported as "first_step_s" and is excluded from the timed steps (give
  --warmup at least 2 so that a recompilation shows up before the timing).
- `--channels-last`: the model's 4-d parameters and the batch (for sampling, the
  noise it starts from) in torch.channels_last (NHWC) memory format, which oneDNN and
  cuDNN prefer for convolutions (a no-op for the MLP models: no 4-d tensors).
- `--device cuda[:N]`: the model, the batch and the optimiser on that GPU; every timed
  repetition starts and ends with torch.cuda.synchronize, and "peak_device_mib" is the
  caching allocator's peak (torch.cuda.max_memory_allocated) over the timed steps.
- `--autocast bf16`: the loss (forward) under torch.autocast(dtype=torch.bfloat16) on
  the step's device; weights, gradients and Adam stay float32. CUDA only, as elbo's.
- `--tf32`: float32 matmuls and convolutions on CUDA may use TF32 (both
  torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 set; without
  the flag both are cleared, so the setting is always the stated one).

Protocol:
1. torch.set_num_interop_threads(1), torch.set_num_threads(--threads), before any work.
2. torch.manual_seed(--seed); build the model (PyTorch default init; the parameter count
   is asserted equal to elbo's).
3. The batch: the first --batch images of the bundled training sample
   (data/mnist/train-images-idx3-ubyte.gz, read with elbo_compat), each model's
   preparation of them; for the Bernoulli models a fixed threshold, pixel >= 128 -> 1.0
   else 0.0, float32 (N, 1, 28, 28). ddpm-cifar10 (CIFAR-10 is not bundled): synthetic
   uniform pixels from numpy's default_rng(--seed), scaled to [-1, 1]. Prepared once;
   no data work in the timed loop.
4. Optimiser torch.optim.Adam(lr=1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay):
   `default` leaves foreach/fused unset (on CPU that is the single-tensor, per-parameter
   implementation), `foreach` sets foreach=True, `fused` sets fused=True.
5. `--task train` (default). One step = zero_grad(set_to_none=True); loss = model's loss (for the VAEs minus the
   batch-mean ELBO with one reparameterised sample); loss.backward(); opt.step();
   no read of the loss (elbo's training loop reads it only at logged steps: its NaN
   guard stays on the device); each repetition ends with a device synchronisation.
   --warmup steps untimed, then --reps repetitions, each timing --steps consecutive
   steps with time.perf_counter(); step_ms[r] = rep time / steps * 1000.
   `--task sample` (models with `ddim_sample`, i.e. ddpm-mnist): the same loop, but one
   "step" is one DDIM sampling of --batch images (`ddim_sample(batch, --ddim-steps,
   eta=0)`: uniform timesteps, x0 clipped, as elbo's DDIM-50 bench) under
   torch.no_grad() in eval mode; no optimiser step (Adam is still built, unused). Keep
   --warmup and --steps small: a sampling is --ddim-steps network calls.
6. One JSON line on stdout:
   {"side": "pytorch", "model", "task", "params", "batch", "threads", "warmup", "reps",
    "steps_per_rep", "step_ms": [reps floats], "peak_rss_mib", "torch_version", "adam",
    "variant", "compile", "channels_last", "device", "autocast", "tf32",
    "first_step_s", "peak_device_mib"}
   where "variant" names the combination ("eager", "compiled", "channels-last",
   "compiled+channels-last") and "peak_device_mib" is null on the CPU.
   plus, for ddpm-mnist, "forward_flops_per_example" (ddpm_unet.unet_flops: one UNet
   evaluation; a training step is about 3x that, a DDIM-S sampling S x) and, for
   --task sample, "ddim_steps" and "eta".
   peak_rss_mib = resource.getrusage(RUSAGE_SELF).ru_maxrss / 1024 (Linux: KiB -> MiB),
   of the whole process (interpreter and torch's libraries included).
Diagnostics (median, the final loss, which Adam implementation ran) go to stderr.

Adding a model: write its twin in its own module with a `loss(x)` method (and
`ddim_sample(n, steps, eta)` for --task sample), then add one `ModelSpec` to MODELS below
(its builder, the expected parameter count of elbo's model, `batch`, which makes the
model's input for a batch size, optionally `forward_flops` and `tasks`).
"""

import argparse
import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import elbo_compat  # noqa: E402
import ddpm_unet  # noqa: E402
import ladder_hvae  # noqa: E402
import vae_mlp  # noqa: E402

DEFAULT_DATA = HERE.parent.parent / "data" / "mnist"
THRESHOLD = 128  # pixel >= THRESHOLD -> 1.0


def binarise_fixed(images_u8):
    """(N, 28, 28) uint8 -> float32 (N, 1, 28, 28), pixel >= 128 -> 1."""
    x = (images_u8 >= THRESHOLD).astype(np.float32)
    return torch.from_numpy(x).unsqueeze(1).contiguous()


def mnist_batch(prepare):
    """A batch maker: the first n images of the bundled training sample, `prepare`d."""

    def make(n, data_dir, seed):
        images = elbo_compat.read_idx_gz(data_dir / "train-images-idx3-ubyte.gz")
        if n > images.shape[0]:
            raise SystemExit(f"--batch {n} > {images.shape[0]} images")
        return prepare(images[:n])

    return make


def synthetic_cifar10_batch(n, data_dir, seed):
    """n synthetic 3x32x32 images (uniform pixels 0..255 from a generator seeded `seed`,
    scaled as elbo scales pixels, (2 p - 255) / 255): CIFAR-10 is not bundled, and the
    time of a step does not depend on what the pixels show."""
    del data_dir
    pixels = np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    return torch.from_numpy((pixels.astype(np.float32) * 2.0 - 255.0) / 255.0)


class VaeMlpLoss(vae_mlp.VAE):
    """vae_mlp.VAE with the training loss of elbo's vae-mlp: -mean(rec - kl)."""

    def loss(self, x):
        rec, kl = self.elbo_terms(x)
        return -(rec - kl).mean()


@dataclass
class ModelSpec:
    build: Callable[[], torch.nn.Module]  # a module with .loss(x) -> scalar
    params: int  # elbo's parameter count, asserted
    # (batch size, MNIST folder, seed) -> the model's input batch (float32, on the CPU).
    batch: Callable[[int, Path, int], torch.Tensor]
    # Analytic forward FLOPs of one example (reported when known).
    forward_flops: Optional[Callable[[], int]] = None
    # Tasks besides `train` (a `sample` model has ddim_sample(n, steps, eta)).
    tasks: tuple = ("train",)


# The extension point: one entry per elbo preset compared.
MODELS = {
    "vae-mlp": ModelSpec(VaeMlpLoss, vae_mlp.PARAMS, mnist_batch(binarise_fixed)),
    "hvae-ladder": ModelSpec(
        ladder_hvae.LadderHVAE, ladder_hvae.PARAMS, mnist_batch(binarise_fixed)
    ),
    # elbo's ddpm-mnist preset (linear schedule, T = 1000, eps, L_simple); the input is
    # elbo's symmetric pixel scaling (2 p - 255) / 255 in [-1, 1].
    "ddpm-mnist": ModelSpec(
        ddpm_unet.DDPM,
        ddpm_unet.PARAMS,
        mnist_batch(ddpm_unet.scale_to_pm1),
        forward_flops=ddpm_unet.unet_flops,
        tasks=("train", "sample"),
    ),
    # elbo's ddpm-cifar10 preset: Ho et al.'s 35.7 M UNet (dropout 0.1) on 3x32x32.
    "ddpm-cifar10": ModelSpec(
        lambda: ddpm_unet.DDPM(ddpm_unet.ddpm_cifar10_config()),
        ddpm_unet.CIFAR10_PARAMS,
        synthetic_cifar10_batch,
        forward_flops=lambda: ddpm_unet.unet_flops(ddpm_unet.ddpm_cifar10_config()),
        tasks=("train", "sample"),
    ),
}


def make_adam(params, kind, lr):
    extra = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[kind]
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, **extra)


def adam_implementation(opt):
    g = opt.param_groups[0]
    if g.get("fused"):
        return "fused"
    if g.get("foreach"):
        return "foreach"
    # Unset: torch resolves it at step time (_default_to_fused_or_foreach): foreach
    # only when every parameter is on a foreach device (CUDA, XPU, ...), so on CPU the
    # single-tensor loop.
    params = [p for p in g["params"]]
    from torch.optim.optimizer import _default_to_fused_or_foreach

    _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    return "foreach" if foreach else "single-tensor"


def variant_name(compiled, channels_last):
    """The report's name of a combination of --compile and --channels-last."""
    parts = [name for name, on in (("compiled", compiled), ("channels-last", channels_last)) if on]
    return "+".join(parts) or "eager"


def parse_device(text):
    """--device: `cpu`, `cuda` or `cuda:N`, checked against what this machine has."""
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {text}: this torch sees no CUDA device")
        device = torch.device(text if text != "cuda" else "cuda:0")
        if device.index >= torch.cuda.device_count():
            raise SystemExit(
                f"--device {text}: there are {torch.cuda.device_count()} CUDA device(s)"
            )
        return device
    raise SystemExit(f"--device {text!r}: expected cpu, cuda or cuda:N")


class Clock:
    """Wall time of a region of work on `device`: on a GPU the queue is drained
    (torch.cuda.synchronize) before the clock is read, at both ends."""

    def __init__(self, device):
        self.device = device

    def now(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument(
        "--task",
        choices=["train", "sample"],
        default="train",
        help="what is timed: a training step, or (DDPMs) one DDIM sampling of --batch images",
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adam", choices=["default", "fused", "foreach"], default="default")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ddim-steps", type=int, default=50, help="--task sample: DDIM steps")
    parser.add_argument("--eta", type=float, default=0.0, help="--task sample: DDIM eta")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MNIST IDX folder")
    parser.add_argument("--compile", action="store_true", help="torch.compile the step's model")
    parser.add_argument(
        "--channels-last", action="store_true", help="4-d weights and inputs in NHWC"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--autocast",
        choices=["none", "bf16"],
        default="none",
        help="the forward under bfloat16 autocast (CUDA only)",
    )
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls/convs on CUDA")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="after the timing, run STEPS more steps under torch.profiler (CPU) and print "
        "the key_averages table, by self CPU time, to stderr (the JSON is unaffected)",
    )
    parser.add_argument("--profile-rows", type=int, default=30)
    args = parser.parse_args()
    if min(args.batch, args.threads, args.reps, args.steps) < 1 or args.warmup < 0:
        raise SystemExit("--batch, --threads, --reps and --steps must be at least 1")

    torch.set_num_interop_threads(1)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = parse_device(args.device)
    if args.autocast != "none" and device.type != "cuda":
        raise SystemExit(
            f"--autocast {args.autocast} runs on CUDA only (as elbo's), and --device is "
            f"{args.device}"
        )
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32

    spec = MODELS[args.model]
    if args.task not in spec.tasks:
        raise SystemExit(f"--model {args.model} supports --task {'|'.join(spec.tasks)}")
    model = spec.build()
    params = sum(p.numel() for p in model.parameters())
    assert params == spec.params, f"{args.model}: {params} parameters, elbo has {spec.params}"
    model.train(args.task == "train")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)

    x = spec.batch(args.batch, args.data, args.seed).to(device)
    if x.dim() == 4:
        x = x.contiguous(memory_format=memory_format)

    opt = make_adam(model.parameters(), args.adam, args.lr)
    loss_fn = torch.compile(model.loss) if args.compile else model.loss
    if args.compile and args.task == "sample":
        model.unet.compile()

    def forward():
        if args.autocast == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return loss_fn(x)
        return loss_fn(x)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = forward()
        loss.backward()
        opt.step()
        # The loss is not read here: elbo's loop reads it only at logged steps (its NaN
        # guard stays on the device), so neither side waits for each step's work.
        return loss

    if args.task == "sample":

        def step():  # noqa: F811
            with torch.no_grad(), torch.autocast(
                device.type, dtype=torch.bfloat16, enabled=args.autocast == "bf16"
            ):
                images = model.ddim_sample(
                    args.batch, steps=args.ddim_steps, eta=args.eta, memory_format=memory_format
                )
            # A stand-in "loss" for the finiteness check below.
            return images.float().abs().mean()

    clock = Clock(device)
    first_step_s = None
    for i in range(args.warmup):
        start = clock.now()
        loss = step()
        if i == 0:
            first_step_s = clock.now() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_ms = []
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(args.reps):
        start = clock.now()
        for _ in range(args.steps):
            loss = step()
        step_ms.append((clock.now() - start) / args.steps * 1000.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    faults_per_step = faults / (args.reps * args.steps)
    final_loss = loss.item()
    if not np.isfinite(final_loss):
        raise SystemExit(f"non-finite loss {final_loss}")
    peak_device_mib = (
        torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    )

    report = {
        "side": "pytorch",
        "model": args.model,
        "task": args.task,
        "params": params,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "reps": args.reps,
        "steps_per_rep": args.steps,
        "step_ms": step_ms,
        "faults_per_step": faults_per_step,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "torch_version": torch.__version__.split("+")[0],
        "adam": args.adam,
        "variant": variant_name(args.compile, args.channels_last),
        "compile": args.compile,
        "channels_last": args.channels_last,
        "device": str(device),
        "autocast": args.autocast,
        "tf32": args.tf32,
        "first_step_s": first_step_s,
        "peak_device_mib": peak_device_mib,
    }
    if spec.forward_flops is not None:
        report["forward_flops_per_example"] = spec.forward_flops()
    if args.task == "sample":
        report["ddim_steps"] = args.ddim_steps
        report["eta"] = args.eta
    what = "sampling" if args.task == "sample" else "step"
    print(
        f"{args.model} {args.task} ({report['variant']}, {device}): median "
        f"{statistics.median(step_ms):.3f} ms/{what} (min {min(step_ms):.3f}, max "
        f"{max(step_ms):.3f}); first step {first_step_s or 0.0:.1f} s; final loss "
        f"{final_loss:.3f}; adam {args.adam} -> {adam_implementation(opt)}; torch "
        f"{torch.__version__}",
        file=sys.stderr,
    )
    print(json.dumps(report))
    if args.profile > 0:
        profile(step, args.profile, args.profile_rows)


def profile(step, steps, rows):
    """Where a step's time goes: torch.profiler over `steps` steps (after the timed
    ones), ops by self CPU time. Profiling adds per-op overhead; read the shares, not the
    absolute times, and compare the total with the un-profiled step time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile, record_function

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("step"):
                step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    print(f"torch.profiler, {steps} steps, ops by self CPU time:", file=sys.stderr)
    print(table, file=sys.stderr)


if __name__ == "__main__":
    main()
