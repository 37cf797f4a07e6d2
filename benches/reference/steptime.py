#!/usr/bin/env python3
"""Training-step time of PyTorch eager on one fixed batch: the PyTorch side of issue 8's
side-by-side comparison. elbo's Rust harness follows the same protocol and prints the
same JSON line, so the two can be put in one table.

    python steptime.py --model vae-mlp|hvae-ladder|ddpm-mnist [--task train|sample] \
        --batch 128 --threads 1 --warmup 20 --reps 10 --steps 20 [--seed 0] \
        [--adam default|fused|foreach] [--ddim-steps 50]

Protocol:
1. torch.set_num_interop_threads(1), torch.set_num_threads(--threads), before any work.
2. torch.manual_seed(--seed); build the model (PyTorch default init; the parameter count
   is asserted equal to elbo's).
3. The batch: the first --batch images of the bundled training sample
   (data/mnist/train-images-idx3-ubyte.gz, read with elbo_compat), each model's
   `prepare` of them; for the Bernoulli models a fixed threshold, pixel >= 128 -> 1.0
   else 0.0, float32 (N, 1, 28, 28). Prepared once; no data work in the timed loop.
4. Optimiser torch.optim.Adam(lr=1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay):
   `default` leaves foreach/fused unset (on CPU that is the single-tensor, per-parameter
   implementation), `foreach` sets foreach=True, `fused` sets fused=True.
5. `--task train` (default). One step = zero_grad(set_to_none=True); loss = model's loss (for the VAEs minus the
   batch-mean ELBO with one reparameterised sample); loss.backward(); opt.step().
   --warmup steps untimed, then --reps repetitions, each timing --steps consecutive
   steps with time.perf_counter(); step_ms[r] = rep time / steps * 1000.
   `--task sample` (models with `ddim_sample`, i.e. ddpm-mnist): the same loop, but one
   "step" is one DDIM sampling of --batch images (`ddim_sample(batch, --ddim-steps,
   eta=0)`: uniform timesteps, x0 clipped, as elbo's DDIM-50 bench) under
   torch.no_grad() in eval mode; no optimiser step (Adam is still built, unused). Keep
   --warmup and --steps small: a sampling is --ddim-steps network calls.
6. One JSON line on stdout:
   {"side": "pytorch", "model", "task", "params", "batch", "threads", "warmup", "reps",
    "steps_per_rep", "step_ms": [reps floats], "peak_rss_mib", "torch_version", "adam"}
   plus, for ddpm-mnist, "forward_flops_per_example" (ddpm_unet.unet_flops: one UNet
   evaluation; a training step is about 3x that, a DDIM-S sampling S x) and, for
   --task sample, "ddim_steps" and "eta".
   peak_rss_mib = resource.getrusage(RUSAGE_SELF).ru_maxrss / 1024 (Linux: KiB -> MiB),
   of the whole process (interpreter and torch's libraries included).
Diagnostics (median, the final loss, which Adam implementation ran) go to stderr.

Adding a model: write its twin in its own module with a `loss(x)` method (and
`ddim_sample(n, steps, eta)` for --task sample), then add one `ModelSpec` to MODELS below
(its builder, the expected parameter count of elbo's model, `prepare`, which turns the
(N, 28, 28) uint8 images into the model's input, optionally `forward_flops` and `tasks`).
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


class VaeMlpLoss(vae_mlp.VAE):
    """vae_mlp.VAE with the training loss of elbo's vae-mlp: -mean(rec - kl)."""

    def loss(self, x):
        rec, kl = self.elbo_terms(x)
        return -(rec - kl).mean()


@dataclass
class ModelSpec:
    build: Callable[[], torch.nn.Module]  # a module with .loss(x) -> scalar
    params: int  # elbo's parameter count, asserted
    prepare: Callable[[np.ndarray], torch.Tensor]  # uint8 (N, 28, 28) -> model input
    # Analytic forward FLOPs of one example (reported when known).
    forward_flops: Optional[Callable[[], int]] = None
    # Tasks besides `train` (a `sample` model has ddim_sample(n, steps, eta)).
    tasks: tuple = ("train",)


# The extension point: one entry per elbo preset compared.
MODELS = {
    "vae-mlp": ModelSpec(VaeMlpLoss, vae_mlp.PARAMS, binarise_fixed),
    "hvae-ladder": ModelSpec(ladder_hvae.LadderHVAE, ladder_hvae.PARAMS, binarise_fixed),
    # elbo's ddpm-mnist preset (linear schedule, T = 1000, eps, L_simple); the input is
    # elbo's symmetric pixel scaling (2 p - 255) / 255 in [-1, 1].
    "ddpm-mnist": ModelSpec(
        ddpm_unet.DDPM,
        ddpm_unet.PARAMS,
        ddpm_unet.scale_to_pm1,
        forward_flops=ddpm_unet.unet_flops,
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument(
        "--task",
        choices=["train", "sample"],
        default="train",
        help="what is timed: a training step, or (ddpm-mnist) one DDIM sampling of --batch "
        "images",
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

    torch.set_num_interop_threads(1)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    spec = MODELS[args.model]
    if args.task not in spec.tasks:
        raise SystemExit(f"--model {args.model} supports --task {'|'.join(spec.tasks)}")
    model = spec.build()
    params = sum(p.numel() for p in model.parameters())
    assert params == spec.params, f"{args.model}: {params} parameters, elbo has {spec.params}"
    model.train(args.task == "train")

    train_images = elbo_compat.read_idx_gz(args.data / "train-images-idx3-ubyte.gz")
    if args.batch > train_images.shape[0]:
        raise SystemExit(f"--batch {args.batch} > {train_images.shape[0]} images")
    x = spec.prepare(train_images[: args.batch])

    opt = make_adam(model.parameters(), args.adam, args.lr)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.loss(x)
        loss.backward()
        opt.step()
        return loss

    if args.task == "sample":

        def step():  # noqa: F811
            with torch.no_grad():
                images = model.ddim_sample(args.batch, steps=args.ddim_steps, eta=args.eta)
            # A stand-in "loss" for the finiteness check below.
            return images.abs().mean()

    for _ in range(args.warmup):
        loss = step()
    step_ms = []
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(args.reps):
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        step_ms.append((time.perf_counter() - start) / args.steps * 1000.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    faults_per_step = faults / (args.reps * args.steps)
    final_loss = loss.item()
    if not np.isfinite(final_loss):
        raise SystemExit(f"non-finite loss {final_loss}")

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
    }
    if spec.forward_flops is not None:
        report["forward_flops_per_example"] = spec.forward_flops()
    if args.task == "sample":
        report["ddim_steps"] = args.ddim_steps
        report["eta"] = args.eta
    what = "sampling" if args.task == "sample" else "step"
    print(
        f"{args.model} {args.task}: median {statistics.median(step_ms):.3f} ms/{what} "
        f"(min {min(step_ms):.3f}, max {max(step_ms):.3f}); final loss {final_loss:.3f}; "
        f"adam {args.adam} -> {adam_implementation(opt)}; torch {torch.__version__}",
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
