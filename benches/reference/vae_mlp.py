#!/usr/bin/env python3
"""PyTorch reference of elbo's `vae-mlp` (pytorch/examples' VAE architecture) with a
Bernoulli likelihood on dynamically binarised MNIST, for the parity benchmark.

    python vae_mlp.py train --seed 0 [--epochs 10 --batch-size 128 --lr 1e-3 --iw 1000
                                      --threads 2 --init torch]
    python vae_mlp.py eval-elbo RUN_DIR [--iw 1000 --threads 2]

`train` trains from scratch on the bundled sample (data/mnist: 9,000 train, 1,000 test)
and evaluates; `eval-elbo` evaluates the weights of an elbo run's newest checkpoint with
the same evaluation code. Both print one JSON object on stdout.

Evaluation test sets (`--test-sets`, comma-separated):
- `elbo`: the exact binary test set elbo evaluates on, re-derived from elbo-data's
  ChaCha8 streams (see elbo_compat.py; checked against elbo's golden words).
- `torch:N`: the test images binarised once with a torch.Generator seeded N.

Needs torch==2.13.0 (the libtorch elbo links) and numpy; see README.md.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import elbo_compat

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "data" / "mnist"
PARAMS = 652_824
LN_2PI = math.log(2 * math.pi)


class VAE(nn.Module):
    """pytorch/examples/vae: fc1 784-400, fc21/fc22 400-20, fc3 20-400, fc4 400-784."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h = F.relu(self.fc1(x.flatten(1)))
        return self.fc21(h), self.fc22(h)

    def decode(self, z):
        """Bernoulli logits, (N, 784)."""
        return self.fc4(F.relu(self.fc3(z)))

    def elbo_terms(self, x):
        """Per-example reconstruction log p(x | z) (one reparameterised z) and
        KL(q(z | x) || N(0, I)) in closed form."""
        x = x.flatten(1)
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = -F.binary_cross_entropy_with_logits(self.decode(z), x, reduction="none").sum(1)
        kl = 0.5 * (logvar.exp() - 1.0 - logvar + mu.square()).sum(1)
        return rec, kl

    def log_weights(self, x, k):
        """log p(x, z_k) - log q(z_k | x), shape (k, batch)."""
        x = x.flatten(1)
        mu, logvar = self.encode(x)
        eps = torch.randn(k, *mu.shape)
        z = mu + torch.exp(0.5 * logvar) * eps  # (k, b, d)
        logits = self.decode(z.reshape(-1, z.shape[-1])).reshape(k, x.shape[0], -1)
        log_px = -F.binary_cross_entropy_with_logits(
            logits, x.expand(k, -1, -1), reduction="none"
        ).sum(-1)
        log_pz = -0.5 * (z.square() + LN_2PI).sum(-1)
        log_qz = -0.5 * (eps.square() + logvar + LN_2PI).sum(-1)
        return log_px + log_pz - log_qz


# elbo's variable names (tch VarStore) -> this module's.
ELBO_NAMES = {"enc0": "fc1", "mean": "fc21", "log_var": "fc22", "dec0": "fc3", "dec_out": "fc4"}


def tch_default_init(model, generator):
    """Re-initialise the weights as tch's `nn::linear` does (Kaiming uniform with the ReLU
    gain: U(-sqrt(6 / fan_in), +sqrt(6 / fan_in))); biases stay U(-1/sqrt(fan_in), ...),
    which tch and torch.nn.Linear share."""
    with torch.no_grad():
        for layer in [model.fc1, model.fc21, model.fc22, model.fc3, model.fc4]:
            bound = math.sqrt(6.0 / layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def parse_test_sets(text, test_images):
    """name -> binary float tensor (N, 1, 28, 28)."""
    sets = {}
    for name in [t for t in text.split(",") if t]:
        if name == "elbo":
            sets[name] = torch.from_numpy(elbo_compat.elbo_fixed_binarisation(test_images))
        elif name.startswith("torch:"):
            g = torch.Generator().manual_seed(int(name.split(":", 1)[1]))
            grey = torch.from_numpy(test_images.astype(np.float32) / 255.0)
            sets[name] = torch.bernoulli(grey, generator=g).unsqueeze(1)
        else:
            raise SystemExit(f"unknown test set {name!r}: expected elbo or torch:N")
    return sets


@torch.no_grad()
def evaluate(model, x, iw, eval_seed, batch=100):
    """Mean ELBO terms (one sample per example) and the IWAE-`iw` bound, nats/example."""
    torch.manual_seed(eval_seed)
    rec_sum = kl_sum = 0.0
    for chunk in x.split(batch):
        rec, kl = model.elbo_terms(chunk)
        rec_sum += rec.double().sum().item()
        kl_sum += kl.double().sum().item()
    n = x.shape[0]
    out = {"reconstruction": rec_sum / n, "kl": kl_sum / n, "elbo": (rec_sum - kl_sum) / n}
    if iw > 0:
        start = time.perf_counter()
        total = 0.0
        for chunk in x.split(batch):
            b = chunk.shape[0]
            per_call = max(1, min(iw, (1 << 24) // (b * 784)))  # ~2^24 logits per call
            parts, done = [], 0
            while done < iw:
                now = min(per_call, iw - done)
                parts.append(model.log_weights(chunk, now))
                done += now
            log_w = torch.cat(parts, 0).double()
            total += (torch.logsumexp(log_w, 0) - math.log(iw)).sum().item()
        out[f"iwae_{iw}"] = total / n
        out["iwae_seconds"] = time.perf_counter() - start
    return out


def mean_elbo(model, x, batch=500):
    with torch.no_grad():
        total = 0.0
        for chunk in x.split(batch):
            rec, kl = model.elbo_terms(chunk)
            total += (rec - kl).double().sum().item()
        return total / x.shape[0]


def train(args):
    torch.set_num_threads(args.threads)
    train_images, test_images = elbo_compat.load_mnist_sample(args.data)
    torch.manual_seed(args.seed)
    model = VAE()
    if args.init == "tch":
        tch_default_init(model, torch.Generator().manual_seed(args.seed + 1))
    assert count_params(model) == PARAMS, count_params(model)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)

    grey = torch.from_numpy(train_images.astype(np.float32) / 255.0).unsqueeze(1)
    n = grey.shape[0]
    data_gen = torch.Generator().manual_seed(10_000 + args.seed)
    # The per-epoch test ELBO, as elbo logs it, on elbo's own test binarisation.
    epoch_test = torch.from_numpy(elbo_compat.elbo_fixed_binarisation(test_images))
    steps, epoch_elbos, losses = 0, [], []
    train_seconds = 0.0
    loop_start = time.perf_counter()
    for epoch in range(args.epochs):
        # Dynamic binarisation: every pixel resampled each epoch, Bernoulli(p / 255).
        binary = torch.bernoulli(grey, generator=data_gen)
        order = torch.randperm(n, generator=data_gen)
        model.train()
        t0 = time.perf_counter()
        for start in range(0, n, args.batch_size):  # last partial batch kept
            x = binary[order[start : start + args.batch_size]]
            rec, kl = model.elbo_terms(x)
            loss = -(rec - kl).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if steps % 10 == 0:
                losses.append((steps, loss.item()))
        train_seconds += time.perf_counter() - t0
        model.eval()
        epoch_elbos.append(mean_elbo(model, epoch_test))
        print(f"epoch {epoch + 1}: test elbo {epoch_elbos[-1]:.3f}", file=sys.stderr)
    loop_seconds = time.perf_counter() - loop_start

    sets = parse_test_sets(args.test_sets, test_images)
    results = {name: evaluate(model, x, args.iw, args.eval_seed) for name, x in sets.items()}
    report = {
        "program": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "init": args.init,
        "params": count_params(model),
        "epochs": args.epochs,
        "steps": steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_seconds": train_seconds,
        "train_steps_per_s": steps / train_seconds,
        "loop_seconds": loop_seconds,
        "loop_steps_per_s": steps / loop_seconds,
        "epoch_test_elbo": epoch_elbos,
        "final_train_loss": losses[-1][1] if losses else None,
        "eval": results,
    }
    if args.save:
        torch.save(model.state_dict(), args.save)
    print(json.dumps(report, indent=1))


def eval_elbo(args):
    torch.set_num_threads(args.threads)
    _, test_images = elbo_compat.load_mnist_sample(args.data)
    meta, weights = elbo_compat.elbo_checkpoint_weights(args.run)
    model = VAE()
    state = {}
    for name, array in weights.items():
        layer, kind = name.split(".")
        state[f"{ELBO_NAMES[layer]}.{kind}"] = torch.from_numpy(array)
    model.load_state_dict(state, strict=True)
    assert count_params(model) == PARAMS
    model.eval()
    sets = parse_test_sets(args.test_sets, test_images)
    results = {name: evaluate(model, x, args.iw, args.eval_seed) for name, x in sets.items()}
    report = {
        "program": "elbo-weights-evaluated-in-pytorch",
        "run": str(args.run),
        "step": meta["step"],
        "seed": meta["seed"],
        "eval": results,
    }
    print(json.dumps(report, indent=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MNIST IDX folder")
    common.add_argument("--iw", type=int, default=1000, help="IWAE samples (0: none)")
    common.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    common.add_argument(
        "--test-sets",
        default="elbo,torch:0,torch:1,torch:2",
        help="comma-separated: elbo (elbo's exact binarisation) and/or torch:SEED",
    )
    common.add_argument("--eval-seed", type=int, default=12345, help="seed of the eval noise")
    t = sub.add_parser("train", parents=[common], help="train and evaluate")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument(
        "--init",
        choices=["torch", "tch"],
        default="torch",
        help="torch: nn.Linear's default; tch: tch's nn::linear default (He uniform)",
    )
    t.add_argument("--save", type=Path, help="write the trained state_dict here")
    e = sub.add_parser("eval-elbo", parents=[common], help="evaluate an elbo run's weights")
    e.add_argument("run", type=Path, help="elbo run folder or step-*.json checkpoint")
    args = parser.parse_args()
    {"train": train, "eval-elbo": eval_elbo}[args.command](args)


if __name__ == "__main__":
    main()
