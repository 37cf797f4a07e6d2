#!/usr/bin/env python3
"""PyTorch twin of elbo's `ddpm-mnist` DDPM (UNet noise predictor, linear schedule,
T = 1000, eps objective, L_simple), for the speed comparison of issue 8.

    python ddpm_unet.py check-checkpoint RUN_OR_CHECKPOINT [--threads 1] [--label K --guidance W]
    python ddpm_unet.py compare-samples RUN_OR_CHECKPOINT GRID.png [--n 8] [--label K --guidance W]
    python ddpm_unet.py flops [--batch 4]
    python ddpm_unet.py bound RUN_OR_CHECKPOINT [--examples 4] [--seed 0] [--weights ema.]

`check-checkpoint` loads an elbo `ddpm` checkpoint into the twin (`load_state_dict`
with strict=True after asserting every name, shape and the count), then evaluates
L_simple on the first 256 training images with the raw and the EMA weights, and draws a
few DDIM-50 samples (of class --label with guidance --guidance for a class-conditional
checkpoint). `compare-samples` draws the twin's DDIM samples with the seed, class and
guidance `elbo sample --seed S --sampler ddim-50 --class K --guidance W` used and
compares them with elbo's grid, grey level by grey level. `flops` prints the analytic forward FLOPs of one UNet evaluation
(`unet_flops`) beside torch.utils.flop_counter.FlopCounterMode's count. Both print JSON.
`bound` evaluates the full T-step bound of the first --examples test images of the
bundled MNIST sample with the checkpoint's reverse variance (fixed-large, fixed-small,
or improved DDPM's learned range from the network's second half of channels), seeding
libtorch's generator with --seed and drawing in the order `elbo eval RUN --examples N
--seed S` does, so the two print the same terms (the differences are float32 rounding).
The bound is written out here from Ho et al.'s eq. 5 and Nichol & Dhariwal's eq. 15,
not from elbo's code.

The module mirrors crates/elbo-models/src/ddpm/{unet.rs,embedding.rs,model.rs,
schedule.rs,sampler.rs,vlb.rs} (branch `ddpm`) op for op:

- Time embedding (embedding.rs): for `dim = 2h` base channels, `[sin(t w), cos(t w)]`
  with `w_k = exp(-k ln(10000) / (h - 1))`, then `time2(silu(time1(.)))` to 4x base.
- ResBlock (unet.rs): `h = conv1(silu(norm1(x))) + time(silu(temb))[..., None, None]`,
  `h = conv2(dropout(silu(norm2(h))))`, output `skip(x) + h` (1x1 `skip` only when the
  channels change). `conv2` weights start at zero.
- Attention: GroupNorm, 1x1 q/k/v, single head, softmax(q^T k / sqrt(C)), 1x1 `out`
  (zero-initialised weights), residual.
- Down path: per level `res_blocks` blocks (+ attention where the side is in
  `attention_resolutions`), then a stride-2 3x3 conv except at the last level; every
  activation (the input conv's too) is pushed on the skip stack. Middle: res, attn, res.
  Up path: per level `res_blocks + 1` blocks on cat[h, skip.pop()] (+ attention), then
  nearest 2x upsampling and a 3x3 conv except at level 0; a crop restores odd sides.
  Out: conv(silu(GroupNorm(h))), weights zero-initialised.
- Parameter names are elbo's VarStore paths (`unet.down.0_0.res.conv1.weight`,
  `unet.up.1_up.weight`, `unet.time1.bias`, ...), so the `model.*` tensors of an elbo
  checkpoint (prefix stripped) load with strict=True. ddpm-mnist: 1,623,169 parameters.

Initialisation: PyTorch's Conv2d/Linear/GroupNorm defaults, with the zero-initialised
weights elbo zeroes. tch's default convolution init differs (matters for training
curves only, not for step time or loaded weights).
"""

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import elbo_compat  # noqa: E402

DEFAULT_DATA = HERE.parent.parent / "data" / "mnist"
# elbo-models/tests/ddpm.rs DDPM_MNIST_PARAMETERS (and the README's preset table).
PARAMS = 1_623_169


@dataclass
class UnetConfig:
    """unet.rs `UnetConfig`; the defaults are the `ddpm-mnist` preset on 1x28x28."""

    in_channels: int = 1
    image_size: int = 28
    base_channels: int = 32
    channel_mults: list = field(default_factory=lambda: [1, 2, 2])
    res_blocks: int = 2
    attention_resolutions: list = field(default_factory=lambda: [7])
    dropout: float = 0.0
    norm_groups: int = 8
    # unet.rs `num_classes`: class-conditional when set (absent from an unconditional
    # checkpoint's JSON).
    num_classes: int = None
    # unet.rs `extra_inputs`: channels concatenated to the image at the input only (a
    # VDM's Fourier features); absent from a DDPM's checkpoint.
    extra_inputs: int = 0
    # unet.rs `out_channels`: twice in_channels for learned variances (improved DDPM's
    # head: the second half is v in [-1, 1]); absent (= in_channels) otherwise.
    out_channels: int = None


def ddpm_mnist_config():
    return UnetConfig()


# elbo-models/tests/ddpm.rs (and the README's preset table): Ho et al.'s 35.7 M.
CIFAR10_PARAMS = 35_746_307


def ddpm_cifar10_config():
    """elbo's `ddpm-cifar10` preset (DdpmConfig::preset): Ho et al.'s CIFAR-10 UNet."""
    return UnetConfig(
        in_channels=3,
        image_size=32,
        base_channels=128,
        channel_mults=[1, 2, 2, 2],
        res_blocks=2,
        attention_resolutions=[16],
        dropout=0.1,
        norm_groups=32,
    )


def timestep_embedding(t, dim):
    """embedding.rs `timestep_embedding`: (B,) timesteps -> (B, dim) float32."""
    half = dim // 2
    scale = math.log(10_000.0) / max(half - 1, 1)
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = (k * -scale).exp()
    angles = t.to(torch.float32).unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([angles.sin(), angles.cos()], 1)


def conv3(c_in, c_out, stride=1, zero=False):
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
    if zero:
        nn.init.zeros_(conv.weight)
    return conv


def conv1(c_in, c_out, zero=False):
    conv = nn.Conv2d(c_in, c_out, 1)
    if zero:
        nn.init.zeros_(conv.weight)
    return conv


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, temb, config):
        super().__init__()
        g = config.norm_groups
        self.norm1 = nn.GroupNorm(g, c_in)
        self.conv1 = conv3(c_in, c_out)
        self.time = nn.Linear(temb, c_out)
        self.norm2 = nn.GroupNorm(g, c_out)
        self.conv2 = conv3(c_out, c_out, zero=True)
        self.skip = conv1(c_in, c_out) if c_in != c_out else None
        self.dropout = config.dropout

    def forward(self, x, temb, train):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(F.silu(temb)).unsqueeze(-1).unsqueeze(-1)
        h = self.conv2(F.dropout(F.silu(self.norm2(h)), self.dropout, train))
        if self.skip is not None:
            return self.skip(x) + h
        return x + h


class Attention(nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.q = conv1(channels, channels)
        self.k = conv1(channels, channels)
        self.v = conv1(channels, channels)
        self.out = conv1(channels, channels, zero=True)

    def forward(self, x):
        b, c, h, w = x.shape
        n = self.norm(x)
        q = self.q(n).reshape(b, c, h * w).transpose(1, 2)
        k = self.k(n).reshape(b, c, h * w)
        v = self.v(n).reshape(b, c, h * w).transpose(1, 2)
        weights = (torch.bmm(q, k) * c ** -0.5).softmax(-1)
        attended = torch.bmm(weights, v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.out(attended)


class Stage(nn.Module):
    """One entry of the down or up path: a residual block, optionally attention
    (named `res` and `attn` as in elbo)."""

    def __init__(self, res, attn=None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, h, temb, train):
        h = self.res(h, temb, train)
        if self.attn is not None:
            h = self.attn(h)
        return h


class UNet(nn.Module):
    """unet.rs `Unet`; `forward(x, t, train)` has the shape of x."""

    def __init__(self, config=None):
        super().__init__()
        config = config or ddpm_mnist_config()
        self.config = config
        ch = config.base_channels
        temb = 4 * ch
        g = config.norm_groups
        self.time1 = nn.Linear(ch, temb)
        self.time2 = nn.Linear(temb, temb)
        # unet.rs `label`: num_classes + 1 embeddings (the last the null label's) added
        # to the time embedding; unconditional networks have none.
        if config.num_classes is not None:
            self.label = nn.Embedding(config.num_classes + 1, temb)
        self.input = conv3(config.in_channels + config.extra_inputs, ch)
        levels = len(config.channel_mults)
        # (name, kind) in forward order; kind "stage", "down" or "up".
        self.down = nn.ModuleDict()
        self.down_order = []
        skip_channels = [ch]
        c = ch
        side = config.image_size
        for level, mult in enumerate(config.channel_mults):
            c_out = ch * mult
            for block in range(config.res_blocks):
                res = ResBlock(c, c_out, temb, config)
                c = c_out
                attn = Attention(c, g) if side in config.attention_resolutions else None
                name = f"{level}_{block}"
                self.down[name] = Stage(res, attn)
                self.down_order.append((name, "stage"))
                skip_channels.append(c)
            if level + 1 < levels:
                name = f"{level}_down"
                self.down[name] = conv3(c, c, stride=2)
                self.down_order.append((name, "down"))
                skip_channels.append(c)
                side = (side + 1) // 2
        self.middle = nn.ModuleDict(
            {
                "res1": ResBlock(c, c, temb, config),
                "attn": Attention(c, g),
                "res2": ResBlock(c, c, temb, config),
            }
        )
        self.up = nn.ModuleDict()
        self.up_order = []
        for level in reversed(range(levels)):
            c_out = ch * config.channel_mults[level]
            for block in range(config.res_blocks + 1):
                skip = skip_channels.pop() if skip_channels else 0
                res = ResBlock(c + skip, c_out, temb, config)
                c = c_out
                attn = Attention(c, g) if side in config.attention_resolutions else None
                name = f"{level}_{block}"
                self.up[name] = Stage(res, attn)
                self.up_order.append((name, "stage"))
            if level > 0:
                name = f"{level}_up"
                self.up[name] = conv3(c, c)
                self.up_order.append((name, "up"))
                side *= 2
        self.out_norm = nn.GroupNorm(g, c)
        self.output = conv3(c, config.out_channels or config.in_channels, zero=True)

    def forward(self, x, t, train, labels=None):
        """`labels` (B,) int64 in 0..=num_classes of a class-conditional network; None is
        the null label (unet.rs `forward_labelled`)."""
        temb = self.time2(F.silu(self.time1(timestep_embedding(t, self.config.base_channels))))
        if self.config.num_classes is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.config.num_classes,
                                    dtype=torch.int64, device=x.device)
            temb = temb + self.label(labels)
        h = self.input(x)
        skips = [h]
        for name, kind in self.down_order:
            layer = self.down[name]
            h = layer(h) if kind == "down" else layer(h, temb, train)
            skips.append(h)
        h = self.middle["res1"](h, temb, train)
        h = self.middle["attn"](h)
        h = self.middle["res2"](h, temb, train)
        for name, kind in self.up_order:
            layer = self.up[name]
            if kind == "up":
                size = h.shape
                h = layer(F.interpolate(h, size=(size[2] * 2, size[3] * 2), mode="nearest"))
                continue
            skip = skips.pop() if skips else torch.zeros_like(h)
            sh, sw = skip.shape[2], skip.shape[3]
            if h.shape[2] != sh or h.shape[3] != sw:
                h = h.narrow(2, 0, sh).narrow(3, 0, sw)
            h = layer(torch.cat([h, skip], 1), temb, train)
        return self.output(F.silu(self.out_norm(h)))


# --- The schedule (elbo-math's NoiseSchedule::linear, in float64, as schedule.rs does).


def linear_betas(timesteps=1000):
    """schedule.rs `ScheduleKind::Linear.build(T)`: NoiseSchedule::linear(T, 1e-4 s,
    min(0.02 s, 0.999)) with s = 1000 / T; betas evenly spaced, f64."""
    scale = 1000.0 / max(timesteps, 1)
    start, end = 1e-4 * scale, min(0.02 * scale, 0.999)
    step = (end - start) / (timesteps - 1) if timesteps > 1 else 0.0
    return np.array([start + step * i for i in range(timesteps)], dtype=np.float64)


def log_alpha_bar(betas):
    """elbo-math: a running sum of ln(1 - beta) (index t - 1 for step t)."""
    return np.cumsum(np.log1p(-betas))


def ddim_timesteps(big_t, steps):
    """elbo_math::schedule::evenly_spaced_timesteps: round(i T / S), i = 1..=S (Rust's
    round, half away from zero)."""
    if not 1 <= steps <= big_t:
        raise ValueError(f"DDIM steps must be in 1..={big_t}, found {steps}")
    step = big_t / steps
    return [int(math.floor(i * step + 0.5)) for i in range(1, steps + 1)]


class DDPM(nn.Module):
    """model.rs `Ddpm` with the ddpm-mnist defaults (linear schedule, T = 1000, eps
    objective, L_simple). State-dict names: `unet.*` (an elbo checkpoint's `model.*`)."""

    def __init__(self, config=None, timesteps=1000, cond_drop=0.0, variance="fixed-large"):
        super().__init__()
        self.unet = UNet(config)
        self.timesteps = timesteps
        self.cond_drop = cond_drop
        self.variance = variance
        self.image = (self.unet.config.in_channels, self.unet.config.image_size,
                      self.unet.config.image_size)
        self.lab = log_alpha_bar(linear_betas(timesteps))  # f64, index t - 1
        # schedule.rs DiffusionTensors, entry t for timestep t (entry 0: no noise).
        signal = np.concatenate([[1.0], np.sqrt(np.exp(self.lab))])
        noise = np.concatenate([[0.0], np.sqrt(-np.expm1(self.lab))])
        self.register_buffer("signal", torch.tensor(signal).float(), persistent=False)
        self.register_buffer("noise", torch.tensor(noise).float(), persistent=False)

    @staticmethod
    def at(coef, t, like):
        """schedule.rs `at`: coef[t] shaped (B, 1, ..., 1)."""
        return coef.index_select(0, t).reshape([-1] + [1] * (like.dim() - 1))

    def loss(self, x0, labels=None):
        """model.rs `Ddpm::training_loss`, LossKind::Simple, Objective::Eps: t ~ U{1..T},
        eps ~ N(0, I), mean over every element of (eps_theta(x_t, t, label) - eps)^2. A
        class-conditional network sees each label, or with probability cond_drop the null
        label (drawn after t and eps, as elbo does)."""
        b = x0.shape[0]
        t = torch.randint(1, self.timesteps + 1, (b,), dtype=torch.int64, device=x0.device)
        eps = torch.randn_like(x0)
        x_t = self.at(self.signal, t, x0) * x0 + self.at(self.noise, t, x0) * eps
        if self.unet.config.num_classes is not None and labels is not None and self.cond_drop > 0:
            dropped = torch.rand(labels.shape, device=x0.device) < self.cond_drop
            labels = labels.masked_fill(dropped, self.unet.config.num_classes)
        prediction = self.unet(x_t, t, self.training, labels)
        return (prediction - eps).square().mean()

    def guided(self, x, t, labels, w):
        """guidance.rs `Guided::output`: (1 + w) eps(x, label) - w eps(x, null) from one
        call on the doubled batch (w = 0: the conditional network alone)."""
        if w == 0:
            return self.unet(x, t, False, labels)
        null = torch.full_like(labels, self.unet.config.num_classes)
        both = self.unet(torch.cat([x, x]), torch.cat([t, t]), False, torch.cat([labels, null]))
        cond, uncond = both.chunk(2)
        return (1.0 + w) * cond - w * uncond

    def alpha_bar(self, timesteps, i):
        """The respaced schedule's alpha_bar(i) (NoiseSchedule::respace): 1 at i = 0."""
        return 1.0 if i == 0 else math.exp(self.lab[timesteps[i - 1] - 1])

    def respaced_posterior_variance(self, timesteps, i):
        """The respaced schedule's beta_tilde_i (0 at i = 1)."""
        l_i = self.lab[timesteps[i - 1] - 1]
        l_prev = self.lab[timesteps[i - 2] - 1] if i >= 2 else 0.0
        beta = -math.expm1(l_i - l_prev)
        return beta * (-math.expm1(l_prev)) / (-math.expm1(l_i))

    # --- The bound (Ho et al. 2020 eq. 5; improved DDPM's learned variance, their eq. 15).

    def reverse_tables(self):
        """Per step t (index t, entry 0 unused), in float64: beta_t, the posterior
        variance beta_tilde_t (at t = 1, where it is 0, beta_tilde_2: Ho et al.'s and
        improved DDPM's clipping) and the posterior mean's coefficients on x_0 and x_t."""
        betas = linear_betas(self.timesteps)
        ab = np.exp(self.lab)
        ab_prev = np.concatenate([[1.0], ab[:-1]])
        tilde = betas * (1.0 - ab_prev) / (1.0 - ab)
        tilde[0] = tilde[1]
        coef_x0 = np.sqrt(ab_prev) * betas / (1.0 - ab)
        coef_xt = np.sqrt(1.0 - betas) * (1.0 - ab_prev) / (1.0 - ab)
        pad = lambda v: torch.tensor(np.concatenate([[1.0], v])).float()  # noqa: E731
        return pad(betas), pad(tilde), pad(coef_x0), pad(coef_xt)

    def reverse(self, x_t, t, tables):
        """p(x_{t-1} | x_t): its mean (the posterior mean at x0 predicted from the eps
        half of the output) and log-variance (fixed, or f ln beta + (1 - f) ln
        beta_tilde with f = (v + 1) / 2 from the second half)."""
        betas, tilde, coef_x0, coef_xt = tables
        out = self.unet(x_t, t, False)
        c = x_t.shape[1]
        eps_hat = out[:, :c]
        x0_hat = (x_t - self.at(self.noise, t, x_t) * eps_hat) / self.at(self.signal, t, x_t)
        mean = self.at(coef_x0, t, x_t) * x0_hat + self.at(coef_xt, t, x_t) * x_t
        log_beta, log_tilde = self.at(betas, t, x_t).log(), self.at(tilde, t, x_t).log()
        if self.variance == "learned-range":
            f = (out[:, c:] + 1.0) / 2.0
            log_var = f * log_beta + (1.0 - f) * log_tilde
        elif self.variance == "fixed-small":
            log_var = log_tilde.expand_as(x_t)
        else:
            # fixed-large: beta_t, but beta_tilde_2 at t = 1 (the decoder's variance).
            first = (t == 1).reshape([-1] + [1] * (x_t.dim() - 1))
            log_var = torch.where(first, log_tilde, log_beta).expand_as(x_t)
        return mean, log_var

    @torch.no_grad()
    def bound(self, x0):
        """The T-step bound of each example, term by term (nats), drawing as elbo's
        `bound_terms` does: for t = 2..T in the groups 2..10, 11..100, 101..T one
        standard normal of x0's shape per step, then one for L_0 at t = 1."""
        tables = self.reverse_tables()
        b = x0.shape[0]
        _, tilde, coef_x0, coef_xt = tables

        def kl(mean_q, log_var_q, mean_p, log_var_p):
            return 0.5 * (log_var_p - log_var_q
                          + (log_var_q.exp() + (mean_q - mean_p) ** 2) / log_var_p.exp()
                          - 1.0).flatten(1).sum(1)

        terms = {}
        groups, lo, hi = [], 2, 10
        while lo <= self.timesteps:
            groups.append((lo, min(hi, self.timesteps)))
            lo, hi = hi + 1, hi * 10
        for lo, hi in groups:
            total = torch.zeros(b)
            for step in range(lo, hi + 1):
                t = torch.full((b,), step, dtype=torch.int64)
                eps = torch.randn_like(x0)
                x_t = self.at(self.signal, t, x0) * x0 + self.at(self.noise, t, x0) * eps
                mean_p, log_var_p = self.reverse(x_t, t, tables)
                mean_q = self.at(coef_x0, t, x0) * x0 + self.at(coef_xt, t, x0) * x_t
                log_var_q = self.at(tilde, t, x0).log().expand_as(x0)
                total += kl(mean_q, log_var_q, mean_p, log_var_p)
            terms[f"denoising_matching t={lo}..{hi}"] = total
        one = torch.ones(b, dtype=torch.int64)
        x_1 = self.at(self.signal, one, x0) * x0 + self.at(self.noise, one, x0) * torch.randn_like(x0)
        mean, log_var = self.reverse(x_1, one, tables)
        from vdm import discretized_log_prob
        terms["reconstruction"] = discretized_log_prob(x0, mean, 0.5 * log_var).flatten(1).sum(1)
        s_T, n_T = self.signal[self.timesteps].item(), self.noise[self.timesteps].item()
        zeros = torch.zeros_like(x0)
        terms["prior_matching"] = kl(s_T * x0, torch.full_like(x0, math.log(n_T * n_T)),
                                     zeros, zeros)
        return terms

    @torch.no_grad()
    def ddim_sample(self, n, steps=50, eta=0.0, clip_x0=True, label=None, w=0.0,
                    memory_format=torch.contiguous_format):
        """sampler.rs `sample` with SamplerKind::Ddim { steps, eta, Spacing::Uniform }
        and clip_x0 (the preview / bench setting): x_T ~ N(0, I), then for i = S..1 one
        network call at t = round(i T / S), a standard normal z drawn every step (also
        when eta = 0, as elbo does), x0 clipped to [-1, 1] and eps recomputed from it.
        Returns the final x (not clamped again; with clipping it is the clipped x0).
        `memory_format`: the layout of x (torch.channels_last for a channels-last
        UNet); the draws are the same."""
        device = self.signal.device
        x = torch.randn(n, *self.image, device=device).contiguous(memory_format=memory_format)
        timesteps = ddim_timesteps(self.timesteps, steps)
        for i in range(len(timesteps), 0, -1):
            t = torch.full((n,), timesteps[i - 1], dtype=torch.int64, device=device)
            if label is None:
                prediction = self.unet(x, t, False)
            else:
                labels = torch.full((n,), label, dtype=torch.int64, device=device)
                prediction = self.guided(x, t, labels, w)
            z = torch.randn_like(x)
            s, nz = self.at(self.signal, t, x), self.at(self.noise, t, x)
            x0 = (x - nz * prediction) / s
            eps = prediction
            ab, ab_prev = self.alpha_bar(timesteps, i), self.alpha_bar(timesteps, i - 1)
            if clip_x0:
                x0 = x0.clamp(-1.0, 1.0)
                eps = (x - x0 * math.sqrt(ab)) / math.sqrt(1.0 - ab)
            variance = eta * eta * self.respaced_posterior_variance(timesteps, i)
            direction = math.sqrt(max(1.0 - ab_prev - variance, 0.0))
            x = x0 * math.sqrt(ab_prev) + eps * direction + z * math.sqrt(variance)
        return x


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# --- FLOPs.


def unet_flops(config=None):
    """Forward FLOPs of one UNet evaluation on one example, counted analytically:
    2 FLOPs per multiply-add of every convolution (k*k*C_in*C_out per output position),
    linear layer (in*out; the time MLP and each block's time projection) and attention
    matmul (q^T k and weights v: 2 x (HW)^2 C each). Biases, GroupNorm, SiLU, softmax,
    additions, upsampling and concatenation are ignored. A training step costs about
    3x this (forward + backward of the inputs and of the weights)."""
    config = config or ddpm_mnist_config()
    if isinstance(config, dict):
        config = UnetConfig(**config)
    ch = config.base_channels
    temb = 4 * ch

    def conv(c_in, c_out, k, side_out):
        return 2 * c_in * c_out * k * k * side_out * side_out

    def linear(i, o):
        return 2 * i * o

    def res(c_in, c_out, side):
        f = conv(c_in, c_out, 3, side) + linear(temb, c_out) + conv(c_out, c_out, 3, side)
        if c_in != c_out:
            f += conv(c_in, c_out, 1, side)
        return f

    def attn(c, side):
        n = side * side
        return 4 * conv(c, c, 1, side) + 2 * (2 * n * n * c)

    side = config.image_size
    total = linear(ch, temb) + linear(temb, temb) + conv(config.in_channels, ch, 3, side)
    levels = len(config.channel_mults)
    skips = [(ch, side)]
    c = ch
    for level, mult in enumerate(config.channel_mults):
        c_out = ch * mult
        for _ in range(config.res_blocks):
            total += res(c, c_out, side)
            c = c_out
            if side in config.attention_resolutions:
                total += attn(c, side)
            skips.append((c, side))
        if level + 1 < levels:
            side = (side + 1) // 2  # stride 2, padding 1, kernel 3
            total += conv(c, c, 3, side)
            skips.append((c, side))
    total += 2 * res(c, c, side) + attn(c, side)
    # `built` is the side unet.rs's constructor tracks on the way up (doubled at each
    # upsampling, never cropped): it decides where attention goes, as in elbo; `side`
    # is the real one (cropped back to the skip's side when the doubling overshoots).
    built = side
    for level in reversed(range(levels)):
        c_out = ch * config.channel_mults[level]
        for _ in range(config.res_blocks + 1):
            skip_c, skip_side = skips.pop()
            side = skip_side  # the crop
            total += res(c + skip_c, c_out, side)
            c = c_out
            if built in config.attention_resolutions:
                total += attn(c, side)
        if level > 0:
            side *= 2
            built *= 2
            total += conv(c, c, 3, side)
    total += conv(c, config.in_channels, 3, side)
    return total


def flop_counter_flops(model, batch=4):
    """torch.utils.flop_counter.FlopCounterMode's total for one forward at `batch`,
    per example, and its per-operator breakdown."""
    from torch.utils.flop_counter import FlopCounterMode

    c, h, w = model.image
    x = torch.randn(batch, c, h, w)
    t = torch.randint(1, model.timesteps + 1, (batch,))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.unet(x, t, False)
    by_op = {str(k): v // batch for k, v in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() / batch, by_op


# --- Loading elbo checkpoints.


def load_elbo_checkpoint(path, weights_prefix="model."):
    """An elbo `ddpm` checkpoint (run folder or step-*.json) as a DDPM twin with its
    `weights_prefix` tensors (`model.` raw, `ema.` the EMA weights); asserts the
    configuration, every name and shape, and the count, then loads with strict=True."""
    meta, tensors = elbo_compat.elbo_checkpoint(path)
    cfg = meta["model_config"]
    if meta["model"] != "ddpm":
        raise SystemExit(f"{path}: not a ddpm checkpoint ({meta['model']})")
    expected = {"schedule": ["linear"], "objective": ["eps"],
                "loss": ["simple", "vlb", "hybrid"],
                "variance": ["fixed-large", "fixed-small", "learned-range"]}
    for key, values in expected.items():
        if cfg[key] not in values:
            raise SystemExit(f"{path}: {key} {cfg[key]}, the twin has {values}")
    model = DDPM(UnetConfig(**cfg["unet"]), cfg["timesteps"], cfg.get("cond_drop", 0.0),
                 variance=cfg["variance"])
    weights = {k[len(weights_prefix):]: v for k, v in tensors.items()
               if k.startswith(weights_prefix)}
    result = elbo_compat.load_strict(model, weights)
    n_elbo = int(sum(v.size for v in weights.values()))
    assert count_params(model) == n_elbo, (count_params(model), n_elbo)
    return meta, model, {
        "params": n_elbo,
        "tensors": len(weights),
        "prefix": weights_prefix,
        "strict_load": result,
    }


def scale_to_pm1(images_u8):
    """elbo-data's Pixels::Scaled(Scale::Symmetric): (2 p - 255) / 255 in f32, as
    (N, 1, 28, 28)."""
    x = (2.0 * images_u8.astype(np.float32) - 255.0) / 255.0
    return torch.from_numpy(x.astype(np.float32)).unsqueeze(1).contiguous()


def check_checkpoint(args):
    torch.set_num_threads(args.threads)
    images = elbo_compat.read_idx_gz(args.data / "train-images-idx3-ubyte.gz")
    x = scale_to_pm1(images[: args.examples])
    out = {"checkpoint": str(args.checkpoint)}
    for prefix in ["model.", "ema."]:
        try:
            meta, model, info = load_elbo_checkpoint(args.checkpoint, prefix)
        except AssertionError as e:
            out[prefix] = {"error": str(e)}
            continue
        model.eval()
        torch.manual_seed(args.seed)
        with torch.no_grad():
            losses = [model.loss(x).item() for _ in range(args.repeats)]
            torch.manual_seed(args.seed)
            conditional = model.unet.config.num_classes is not None
            samples = model.ddim_sample(args.samples, steps=50,
                                        label=args.label if conditional else None,
                                        w=args.guidance if conditional else 0.0)
        info.update(
            step=meta["step"],
            l_simple_mean=float(np.mean(losses)),
            l_simple_sd=float(np.std(losses, ddof=1)) if len(losses) > 1 else None,
            ddim50_samples={"n": args.samples, "mean": samples.mean().item(),
                            "std": samples.std().item(), "min": samples.min().item(),
                            "max": samples.max().item(),
                            "fraction_below_0": (samples < 0).float().mean().item()},
        )
        out[prefix] = info
    out["data_pixels"] = {"mean": x.mean().item(), "fraction_below_0": (x < 0).float().mean().item()}
    print(json.dumps(out))


def compare_samples(args):
    """The twin's DDIM samples beside a grid `elbo sample` wrote with the same seed,
    sampler, class and guidance (EMA weights, as elbo samples): both draw from
    libtorch's generator in the same order, so the images agree to the grey level unless
    the network, the guidance or the sampler differ."""
    torch.set_num_threads(args.threads)
    _, model, _ = load_elbo_checkpoint(args.checkpoint, "ema.")
    model.eval()
    torch.manual_seed(args.seed)
    conditional = model.unet.config.num_classes is not None
    x = model.ddim_sample(args.n, steps=args.steps,
                          label=args.label if conditional else None,
                          w=args.guidance if conditional else 0.0).clamp(-1.0, 1.0)
    twin = np.round((x.numpy() + 1.0) / 2.0 * 255.0)[:, 0]
    grid = elbo_compat.read_png_gray(args.png).astype(np.float64)
    side, pad, columns = twin.shape[-1], 2, min(args.n, 8)
    elbo = np.stack([grid[pad + (side + pad) * (i // columns):][:side,
                          pad + (side + pad) * (i % columns):][:, :side]
                     for i in range(args.n)])
    difference = np.abs(elbo - twin)
    print(json.dumps({"checkpoint": str(args.checkpoint), "png": str(args.png),
                      "label": args.label, "guidance": args.guidance, "steps": args.steps,
                      "max_grey_level_difference": float(difference.max()),
                      "mean_grey_level_difference": float(difference.mean()),
                      "pixels_differing": int((difference > 0).sum()),
                      "saturated_fraction": float(((twin == 0) | (twin == 255)).mean())}))


def flops_command(args):
    torch.manual_seed(0)
    model = DDPM()
    assert count_params(model) == PARAMS, count_params(model)
    analytic = unet_flops(model.unet.config)
    counted, by_op = flop_counter_flops(model, args.batch)
    print(json.dumps({"analytic_forward_flops_per_example": analytic,
                      "flop_counter_forward_flops_per_example": counted,
                      "flop_counter_by_op": by_op,
                      "relative_difference": (counted - analytic) / analytic}))


def bound_command(args):
    torch.set_num_threads(args.threads)
    meta, model, info = load_elbo_checkpoint(args.checkpoint, args.weights)
    model.eval()
    images = elbo_compat.read_idx_gz(args.data / "t10k-images-idx3-ubyte.gz")
    x = scale_to_pm1(images[: args.examples])
    torch.manual_seed(args.seed)
    terms = model.bound(x)
    means = {k: v.mean().item() for k, v in terms.items()}
    elbo = means["reconstruction"] - sum(v for k, v in means.items() if k != "reconstruction")
    dims = x[0].numel()
    print(json.dumps({"checkpoint": str(args.checkpoint), "step": meta["step"], **info,
                      "variance": model.variance, "examples": x.shape[0],
                      "terms_nats": means, "elbo_nats": elbo,
                      "bits_per_dim": -elbo / (dims * math.log(2))}, indent=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check-checkpoint", help="load an elbo ddpm checkpoint (strict)")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--examples", type=int, default=256)
    c.add_argument("--repeats", type=int, default=5)
    c.add_argument("--samples", type=int, default=16)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--label", type=int, default=0,
                   help="a class-conditional checkpoint's class for the DDIM samples")
    c.add_argument("--guidance", type=float, default=0.0,
                   help="and its classifier-free guidance w")
    c.add_argument("--data", type=Path, default=DEFAULT_DATA)
    s = sub.add_parser("compare-samples",
                       help="the twin's DDIM samples vs a grid of `elbo sample` (same seed)")
    s.add_argument("checkpoint", type=Path)
    s.add_argument("png", type=Path)
    s.add_argument("--n", type=int, default=8)
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--label", type=int, default=0)
    s.add_argument("--guidance", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=1)
    b = sub.add_parser("bound", help="the full bound of an elbo ddpm checkpoint, elbo's draws")
    b.add_argument("checkpoint", type=Path)
    b.add_argument("--examples", type=int, default=4)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--weights", default="ema.")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--data", type=Path, default=DEFAULT_DATA)
    f = sub.add_parser("flops", help="analytic vs FlopCounterMode forward FLOPs")
    f.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    {"check-checkpoint": check_checkpoint, "compare-samples": compare_samples,
     "flops": flops_command, "bound": bound_command}[args.command](args)


if __name__ == "__main__":
    main()
