#!/usr/bin/env python3
"""PyTorch twin of elbo's variational diffusion model (`elbo train vdm`, crates/
elbo-models/src/models/vdm/), for checking elbo's checkpoints and bound.

    python vdm.py bound RUN_OR_CHECKPOINT [--examples 4] [--seed 0] [--points N] [--weights ema.]

`bound` loads an elbo `vdm` checkpoint into the twin (every name and shape asserted,
then `load_state_dict(strict=True)`), seeds libtorch's generator with --seed, and
evaluates the bound of the first --examples test images of the bundled MNIST sample
drawing in the order `elbo eval RUN --examples N --seed S` does, so the two print the
same terms (JSON here); the differences are float32 rounding.

The model, as vdm/mod.rs and vdm/schedule.rs write it:

- gamma(t) = gamma_0 + (gamma_1 - gamma_0) s(t). `fixed`: s(t) = t between the
  configured ends; `learned-endpoints`: s(t) = t between the parameters `gamma.min`,
  `gamma.max`; `monotone`: those, and s(t) = (phi(t) - phi(0)) / (phi(1) - phi(0)) with
  phi(t) = l1(t) + l3(sigmoid(l2(l1(t)))) / F, every weight taken in absolute value
  (`gamma.l1.weight` [1, 1], `gamma.l1.bias` [1], `gamma.l2.weight` [F, 1],
  `gamma.l2.bias` [F], `gamma.l3.weight` [1, F]). The twin takes gamma'(t) from
  autograd; elbo writes it out by hand.
- z_t = sqrt(sigmoid(-gamma)) x + sqrt(sigmoid(gamma)) eps; the UNet (ddpm_unet.py's,
  with `extra_inputs`) sees cat[z, sin(2^n pi z), cos(2^n pi z) for n in the
  exponents] and the time 1000 (gamma - gamma_min) / (gamma_max - gamma_min) with the
  configured ends.
- Diffusion loss at t: 1/2 gamma'(t) |eps - eps_hat|^2 (continuous), or with T steps
  i = floor(t T) + 1: 1/2 T expm1(gamma(i/T) - gamma((i-1)/T)) |eps - eps_hat(z at i/T)|^2.
- Prior: KL(N(alpha_1 x, sigma_1^2) || N(0, 1)), summed. Decoder: the discretized
  Gaussian (8-bit bins of [-1, 1], the ends open) of mean z_0 / alpha_0 and log-scale
  gamma_0 / 2.
- The evaluation (`ExactBound`): for k = 0..K-1 the diffusion loss at t = (k + 0.5) / K
  with a fresh eps each (randn_like(x), in that order), divided by K and reported in ten
  groups of consecutive k; then the decoder's eps; the prior draws nothing.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.special import log_ndtr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import elbo_compat  # noqa: E402
from ddpm_unet import UNet, UnetConfig, count_params, scale_to_pm1  # noqa: E402

DEFAULT_DATA = HERE.parent.parent / "data" / "mnist"


class GammaNet(nn.Module):
    """schedule.rs `GammaNet`: gamma(t) and gamma'(t) for times (B,)."""

    def __init__(self, kind, gamma_min, gamma_max, features):
        super().__init__()
        self.kind = kind
        self.ends = (gamma_min, gamma_max)
        if kind != "fixed":
            self.min = nn.Parameter(torch.tensor(float(gamma_min)))
            self.max = nn.Parameter(torch.tensor(float(gamma_max)))
        if kind == "monotone":
            self.l1 = nn.Linear(1, 1)
            self.l2 = nn.Linear(1, features)
            self.l3 = nn.Linear(features, 1, bias=False)

    def phi(self, t):
        u = t[:, None] @ self.l1.weight.abs().T + self.l1.bias
        h = torch.sigmoid(u @ self.l2.weight.abs().T + self.l2.bias)
        return (u + h @ self.l3.weight.abs().T / self.l2.weight.shape[0])[:, 0]

    def shape(self, t):
        if self.kind != "monotone":
            return t
        ends = self.phi(torch.tensor([0.0, 1.0]))
        return (self.phi(t) - ends[0]) / (ends[1] - ends[0]).clamp_min(1e-12)

    def endpoints(self):
        if self.kind == "fixed":
            return torch.tensor(self.ends[0]), torch.tensor(self.ends[1])
        return self.min, self.max

    def forward(self, t):
        """(gamma, gamma') at t, gamma' by autograd."""
        with torch.enable_grad():
            t = t.detach().clone().requires_grad_(True)
            g0, g1 = self.endpoints()
            gamma = g0 + (g1 - g0) * self.shape(t)
            (derivative,) = torch.autograd.grad(gamma.sum(), t)
        return gamma.detach(), derivative.detach()


class VDM(nn.Module):
    """vdm/mod.rs `Vdm` with its `model_config`."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.unet = UNet(UnetConfig(**cfg["unet"]))
        self.gamma = GammaNet(cfg["gamma"], cfg["gamma_min"], cfg["gamma_max"],
                              cfg.get("gamma_features", 1024))

    def network_input(self, z):
        parts = [z]
        for n in self.cfg["fourier_exponents"]:
            angle = z * (2.0 ** n * math.pi)
            parts += [angle.sin(), angle.cos()]
        return torch.cat(parts, 1)

    def eps_hat(self, z, gamma):
        span = self.cfg["gamma_max"] - self.cfg["gamma_min"]
        time = (gamma - self.cfg["gamma_min"]) * (1000.0 / span)
        return self.unet(self.network_input(z), time, False)

    def diffusion_term(self, x, t, eps):
        steps = self.cfg.get("timesteps")
        if steps is None:
            gamma, weight = self.gamma(t)
        else:
            i = (t * steps).floor().clamp(0, steps - 1) + 1
            gamma, _ = self.gamma(i / steps)
            previous, _ = self.gamma((i - 1) / steps)
            weight = torch.expm1(gamma - previous) * steps
        g = gamma[:, None, None, None]
        z = torch.sigmoid(-g).sqrt() * x + torch.sigmoid(g).sqrt() * eps
        error = (eps - self.eps_hat(z, gamma)).square().flatten(1).sum(1)
        return 0.5 * weight * error

    def prior(self, x):
        _, g1 = self.gamma.endpoints()
        alpha2, log_var = torch.sigmoid(-g1), -torch.nn.functional.softplus(-g1)
        per_dim = 0.5 * (log_var.exp() - 1.0 - log_var + alpha2 * x.square())
        return per_dim.flatten(1).sum(1)

    def reconstruction(self, x):
        g0, _ = self.gamma.endpoints()
        alpha, sigma = torch.sigmoid(-g0).sqrt(), torch.sigmoid(g0).sqrt()
        z0 = alpha * x + sigma * torch.randn_like(x)
        return discretized_log_prob(x, z0 / alpha, 0.5 * g0).flatten(1).sum(1)


def discretized_log_prob(x, mean, log_scale):
    """likelihood.rs `discretized_gaussian_log_prob`, per pixel, in float64."""
    x, mean = x.double(), mean.double()
    half_bin = 1.0 / 255.0
    inv = torch.exp(-torch.as_tensor(log_scale, dtype=torch.float64))
    upper, lower = (x - mean + half_bin) * inv, (x - mean - half_bin) * inv
    reflect = lower > 0
    b = torch.where(reflect, -lower, upper)
    a = torch.where(reflect, -upper, lower)
    interior = log_ndtr(b) + torch.log1p(-torch.exp(log_ndtr(a) - log_ndtr(b)))
    edge = 1.0 - half_bin
    out = torch.where(x > edge, log_ndtr(-lower), interior)
    return torch.where(x < -edge, log_ndtr(upper), out)


def load_elbo_vdm(path, weights_prefix="ema."):
    """An elbo `vdm` checkpoint (run folder or step-*.json) as the twin, strict."""
    meta, tensors = elbo_compat.elbo_checkpoint(path)
    if meta["model"] != "vdm":
        raise SystemExit(f"{path}: not a vdm checkpoint ({meta['model']})")
    model = VDM(meta["model_config"])
    weights = {k[len(weights_prefix):]: v for k, v in tensors.items()
               if k.startswith(weights_prefix)}
    result = elbo_compat.load_strict(model, weights)
    return meta, model, {"params": count_params(model), "tensors": len(weights),
                         "strict_load": result}


def bound(args):
    torch.set_num_threads(args.threads)
    meta, model, info = load_elbo_vdm(args.checkpoint, args.weights)
    model.eval()
    images = elbo_compat.read_idx_gz(args.data / "t10k-images-idx3-ubyte.gz")
    x = scale_to_pm1(images[: args.examples])
    cfg = meta["model_config"]
    points = args.points or cfg.get("timesteps") or cfg["sampling_steps"]
    torch.manual_seed(args.seed)
    with torch.no_grad():
        rows = []
        for k in range(points):
            t = torch.full((x.shape[0],), (k + 0.5) / points, dtype=torch.float32)
            eps = torch.randn_like(x)
            rows.append(model.diffusion_term(x, t, eps))
        profile = torch.stack(rows) / points
        groups = min(10, points)
        terms = {"reconstruction": model.reconstruction(x).mean().item(),
                 "prior_matching": model.prior(x).mean().item()}
        for g in range(groups):
            lo, hi = g * points // groups, (g + 1) * points // groups
            name = f"diffusion t={lo / points:.1f}..{hi / points:.1f}"
            terms[name] = profile[lo:hi].sum(0).mean().item()
    elbo = terms["reconstruction"] - sum(v for k, v in terms.items() if k != "reconstruction")
    dims = x[0].numel()
    print(json.dumps({"checkpoint": str(args.checkpoint), "step": meta["step"], **info,
                      "examples": x.shape[0], "points": points, "terms_nats": terms,
                      "elbo_nats": elbo, "bits_per_dim": -elbo / (dims * math.log(2))},
                     indent=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bound", help="the bound of test images, drawn as elbo eval draws")
    b.add_argument("checkpoint", type=Path)
    b.add_argument("--examples", type=int, default=4)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--points", type=int, default=None)
    b.add_argument("--weights", default="ema.", help="ema. (what elbo eval uses) or model.")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    {"bound": bound}[args.command](args)


if __name__ == "__main__":
    main()
