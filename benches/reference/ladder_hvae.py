#!/usr/bin/env python3
"""PyTorch twin of elbo's ladder HVAE (`elbo train hvae --variant ladder` with its
defaults: convolutional networks of 64 channels, 2 latent layers of 4 and 2 channels
per 7x7 position, Bernoulli likelihood, 1x28x28 images), for the speed comparison of
issue 8.

    python ladder_hvae.py eval-elbo RUN_OR_CHECKPOINT [--repeats 20 --threads 1]

`eval-elbo` loads an elbo checkpoint of this configuration into the twin (names, shapes
and count asserted) and computes the one-sample test ELBO on elbo's own binary test set,
repeated with `--repeats` noise seeds to give the Monte Carlo standard error. Prints JSON.

The module mirrors crates/elbo-models/src/hvae/{ladder.rs,cells.rs,mod.rs},
gaussian.rs and likelihood.rs op for op:

    bottom-up:  e = stem(x); e_l = up_l(e_{l-1})                    (l = 1..L)
    top-down:   h = start (a learned (1, C, 7, 7) tensor, expanded); for l = L..1:
                  p(z_l | z_>l)    = N(halves(prior_head_l(prior_l(h))))    (N(0, I) at l = L)
                  q(z_l | z_>l, x) = prior + halves(posterior_head_l(posterior_l(merge_l(cat[h, e_l]))))
                  z_l = mean + exp(log_var / 2) * eps
                  h = cell_l(h + project_l(z_l))
                logits = out1(silu(out0(silu(out_cell(h)))))
    ELBO = log p(x | z) - KL(q(z_L) || N(0, I)) - sum_{l<L} KL(q(z_l) || p(z_l))

Every residual cell is `u + out(silu(mid1(silu(mid0(silu(in(silu(u))))))))` (VDVAE's
bottleneck: 1x1 to C/4, two 3x3, 1x1 back); "pointwise" maps are 1x1 convolutions under
`<name>.map`. Parameter names are elbo's VarStore names exactly (`layer1.cell.in.weight`,
`start`, `stem0.bias`, ...), so an elbo checkpoint's `model.*` tensors load with
`load_state_dict(strict=True)` after stripping the `model.` prefix.

Initialisation: PyTorch's defaults for Conv2d / ConvTranspose2d, then elbo's scalings
applied on top (the Gaussian heads' weights x0.1; each residual branch's last conv and
each `project` map x 1/sqrt(4L+1)); `start` is zeros. tch's default conv init differs
(its own Kaiming/bias defaults), which only matters for training curves, not for step
time or for evaluating loaded weights.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import elbo_compat

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "data" / "mnist"
# Parameter count of the default configuration (C=64, latent dims [4, 2], 1x28x28),
# equal to elbo's (the `model.*` tensors of its checkpoints).
PARAMS = 142_293
HEAD = 0.1  # ladder.rs: HEAD


class Residual(nn.Module):
    """cells.rs `residual` (conv): `u + branch(u)`, the branch pre-activated with SiLU."""

    def __init__(self, width, scale):
        super().__init__()
        mid = max(width // 4, 1)
        # `in` is a Python keyword: register by name so the parameter names are elbo's.
        self.add_module("in", nn.Conv2d(width, mid, 1))
        self.mid0 = nn.Conv2d(mid, mid, 3, padding=1)
        self.mid1 = nn.Conv2d(mid, mid, 3, padding=1)
        self.out = nn.Conv2d(mid, width, 1)
        with torch.no_grad():
            self.out.weight.mul_(scale)

    def forward(self, u):
        b = self._modules["in"](F.silu(u))
        b = self.mid0(F.silu(b))
        b = self.mid1(F.silu(b))
        b = self.out(F.silu(b))
        return u + b


class Pointwise(nn.Module):
    """cells.rs `pointwise` (conv): a 1x1 convolution under `<name>.map`."""

    def __init__(self, cin, cout, scale):
        super().__init__()
        self.map = nn.Conv2d(cin, cout, 1)
        with torch.no_grad():
            self.map.weight.mul_(scale)

    def forward(self, u):
        return self.map(u)


class Layer(nn.Module):
    """ladder.rs `Layer`: prior (absent at the top), merge, posterior, project, cell."""

    def __init__(self, width, d, top, scale):
        super().__init__()
        self.top = top
        if not top:
            self.prior = Residual(width, scale)
            self.prior_head = Pointwise(width, 2 * d, HEAD)
        self.merge = Pointwise(2 * width, width, 1.0)
        self.posterior = Residual(width, scale)
        self.posterior_head = Pointwise(width, 2 * d, HEAD)
        self.project = Pointwise(d, width, scale)
        self.cell = Residual(width, scale)


def sum_per_example(t):
    """gaussian.rs `sum_per_example`."""
    return t.flatten(1).sum(1)


def kl_to_standard_normal(mean, log_var):
    return sum_per_example((log_var.exp() - 1.0 - log_var + mean.square()) * 0.5)


def kl_divergence(mean_q, log_var_q, mean_p, log_var_p):
    d = log_var_q - log_var_p
    z2 = (mean_q - mean_p).square() * (-log_var_p).exp()
    return sum_per_example((d.exp() - 1.0 - d + z2) * 0.5)


def bernoulli_log_prob(logits, x):
    """likelihood.rs `bernoulli_log_prob`: minus BCE-with-logits summed per example."""
    return -sum_per_example(F.binary_cross_entropy_with_logits(logits, x, reduction="none"))


class LadderHVAE(nn.Module):
    """ladder.rs `LadderHvae` with `LadderArch::Conv` and a Bernoulli likelihood."""

    def __init__(self, channels=64, latent_dims=(4, 2), image=(1, 28, 28)):
        super().__init__()
        c, h, w = image
        assert h % 4 == 0 and w % 4 == 0, "the conv ladder needs sides divisible by 4"
        self.latent_dims = list(latent_dims)
        n = len(self.latent_dims)
        scale = 1.0 / math.sqrt(4 * n + 1)
        half = max(channels // 2, 1)
        # cells.rs `stem` (conv): two stride-2 4x4 convolutions, SiLU between.
        self.stem0 = nn.Conv2d(c, half, 4, stride=2, padding=1)
        self.stem1 = nn.Conv2d(half, channels, 4, stride=2, padding=1)
        for l in range(n):
            self.add_module(f"up{l + 1}", Residual(channels, scale))
        self.start = nn.Parameter(torch.zeros(1, channels, h // 4, w // 4))
        for l, d in enumerate(self.latent_dims):
            self.add_module(f"layer{l + 1}", Layer(channels, d, top=(l + 1 == n), scale=scale))
        self.out_cell = Residual(channels, scale)
        # cells.rs `output` (conv): SiLU, transposed conv, SiLU, transposed conv.
        self.out0 = nn.ConvTranspose2d(channels, half, 4, stride=2, padding=1)
        self.out1 = nn.ConvTranspose2d(half, c, 4, stride=2, padding=1)

    def ups(self):
        return [self._modules[f"up{l + 1}"] for l in range(len(self.latent_dims))]

    def layers(self):
        return [self._modules[f"layer{l + 1}"] for l in range(len(self.latent_dims))]

    def bottom_up(self, x):
        e = self.stem1(F.silu(self.stem0(x)))
        features = []
        for cell in self.ups():
            e = cell(e)
            features.append(e)
        return features

    def decode(self, h):
        """Bernoulli logits, (N, 1, 28, 28)."""
        h = self.out_cell(h)
        return self.out1(F.silu(self.out0(F.silu(h))))

    def infer(self, x):
        """The posterior top-down pass, one reparameterised draw per layer. Returns the
        final state and, top first, (q_mean, q_log_var, p_mean, p_log_var) with the prior
        `None` at the top."""
        features = self.bottom_up(x)
        h = self.start.expand(x.shape[0], -1, -1, -1)
        steps = []
        for l in reversed(range(len(self.latent_dims))):
            layer = self.layers()[l]
            p = None
            if not layer.top:
                p = layer.prior_head(layer.prior(h)).chunk(2, 1)
            u = layer.posterior(layer.merge(torch.cat([h, features[l]], 1)))
            d_mean, d_log_var = layer.posterior_head(u).chunk(2, 1)
            if p is None:
                q = (d_mean, d_log_var)
            else:
                q = (p[0] + d_mean, p[1] + d_log_var)
            eps = torch.randn_like(q[0])
            z = q[0] + (q[1] * 0.5).exp() * eps
            h = layer.cell(h + layer.project(z))
            steps.append((q, p))
        return h, steps

    def elbo_terms(self, x):
        """ladder.rs `elbo_terms`: (reconstruction, prior_matching, [kl_layer_1, ...
        kl_layer_{L-1}]) per example, one sample."""
        h, steps = self.infer(x)
        rec = bernoulli_log_prob(self.decode(h), x)
        prior_matching = None
        layers = []
        for q, p in reversed(steps):  # bottom first
            if p is None:
                prior_matching = kl_to_standard_normal(*q)
            else:
                layers.append(kl_divergence(q[0], q[1], p[0], p[1]))
        return rec, prior_matching, layers

    def elbo(self, x):
        """model.rs `ElboTerms::elbo`: reconstruction - prior_matching - layer terms."""
        rec, prior_matching, layers = self.elbo_terms(x)
        elbo = rec - prior_matching
        for t in layers:
            elbo = elbo - t
        return elbo

    def loss(self, x):
        """aids.rs with every aid off: -mean ELBO."""
        return -self.elbo(x).mean()


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def load_elbo_checkpoint(path):
    """An elbo ladder checkpoint (run folder or step-*.json) as a LadderHVAE with its
    weights; asserts the configuration, every name and shape, and the count."""
    meta, weights = elbo_compat.elbo_checkpoint_weights(path)
    cfg = meta["model_config"]
    if meta["model"] != "hvae" or cfg.get("variant") != "ladder" or cfg["arch"]["kind"] != "conv":
        raise SystemExit(f"{path}: not a conv ladder HVAE checkpoint: {cfg}")
    if cfg["likelihood"] != "bernoulli":
        raise SystemExit(f"{path}: likelihood {cfg['likelihood']}, the twin is Bernoulli only")
    ema = meta.get("train_config", {}).get("ema_decay")
    model = LadderHVAE(cfg["arch"]["channels"], cfg["latent_dims"], tuple(cfg["image"]))
    own = model.state_dict()
    assert set(own) == set(weights), (set(own) ^ set(weights))
    for name, array in weights.items():
        assert tuple(own[name].shape) == array.shape, (name, own[name].shape, array.shape)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    n_elbo = int(sum(v.size for v in weights.values()))
    assert count_params(model) == n_elbo, (count_params(model), n_elbo)
    return meta, model, {"params": n_elbo, "tensors": len(weights), "ema_decay": ema}


@torch.no_grad()
def evaluate(model, x, seed, batch=100):
    """Mean of each ELBO term over x (one sample per example), float64 sums, and the
    per-example ELBOs."""
    torch.manual_seed(seed)
    sums = None
    per_example = []
    for chunk in x.split(batch):
        rec, pm, layers = model.elbo_terms(chunk)
        terms = [rec, pm] + layers
        vals = [t.double().sum().item() for t in terms]
        sums = vals if sums is None else [a + b for a, b in zip(sums, vals)]
        elbo = rec - pm
        for t in layers:
            elbo = elbo - t
        per_example.append(elbo.double())
    n = x.shape[0]
    names = ["reconstruction", "prior_matching"] + [
        f"kl_layer_{l + 1}" for l in range(len(sums) - 2)
    ]
    out = {k: v / n for k, v in zip(names, sums)}
    out["elbo"] = out["reconstruction"] - sum(out[k] for k in names[1:])
    return out, torch.cat(per_example)


def eval_elbo(args):
    torch.set_num_threads(args.threads)
    meta, model, info = load_elbo_checkpoint(args.run)
    model.eval()
    _, test_images = elbo_compat.load_mnist_sample(args.data)
    x = torch.from_numpy(elbo_compat.elbo_fixed_binarisation(test_images))
    runs = []
    per_example = []
    for r in range(args.repeats):
        out, pe = evaluate(model, x, args.eval_seed + r)
        runs.append(out)
        per_example.append(pe)
        print(f"repeat {r}: elbo {out['elbo']:.3f}", file=sys.stderr)
    elbos = np.array([o["elbo"] for o in runs])
    pe = torch.stack(per_example)  # (repeats, n)
    # Monte Carlo noise of ONE one-sample evaluation over the n images: the spread of
    # each image's ELBO over the noise draws, pooled, / sqrt(n); cross-checked by the
    # standard deviation of the repeats' means.
    within_var = pe.var(0, unbiased=True).mean().item() if args.repeats > 1 else float("nan")
    n = x.shape[0]
    report = {
        "program": "elbo-ladder-weights-evaluated-in-pytorch-twin",
        "checkpoint_step": meta["step"],
        "checkpoint": info,
        "params_twin": count_params(model),
        "test_examples": n,
        "repeats": args.repeats,
        "first_repeat": runs[0],
        "mean_over_repeats": {k: float(np.mean([o[k] for o in runs])) for k in runs[0]},
        "elbo_sd_over_repeats": float(elbos.std(ddof=1)) if args.repeats > 1 else None,
        "mc_standard_error_one_eval": math.sqrt(within_var / n) if args.repeats > 1 else None,
        "per_image_elbo_sd": pe[0].std().item(),
    }
    print(json.dumps(report, indent=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval-elbo", help="evaluate an elbo ladder checkpoint in the twin")
    e.add_argument("run", type=Path, help="elbo run folder or step-*.json checkpoint")
    e.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MNIST IDX folder")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--repeats", type=int, default=20, help="noise seeds (for the MC error)")
    e.add_argument("--eval-seed", type=int, default=12345)
    args = parser.parse_args()
    {"eval-elbo": eval_elbo}[args.command](args)


if __name__ == "__main__":
    main()
