#!/usr/bin/env python3
"""diffusers' UNet2DModel / DDPMScheduler / DDIMScheduler as the reference for elbo's
import and export of diffusers checkpoints. Offline: models are built from configs here,
never downloaded.

    python diffusers_unet.py fixture OUT_DIR
    python diffusers_unet.py parity OUT_DIR
    python diffusers_unet.py check-export DIR INPUTS.safetensors OUT.safetensors

`fixture` writes the frozen fixture of a Rust test (crates/elbo-models/tests/fixtures/
diffusers-tiny): a tiny UNet2DModel (sample 8, channels (16, 32), one resnet per
block, attention at the second level and in the middle, GroupNorm with 4 groups) with
every parameter perturbed, saved with `save_pretrained` (config.json,
diffusion_pytorch_model.safetensors), the DDPM scheduler's scheduler_config.json,
`expected.safetensors` (x (3,3,8,8), t = [0, 421, 999] int64 in diffusers' 0-based
time, eps = model(x, t).sample) and `legacy-names.safetensors` (the same state dict
under the old attention names query/key/value/proj_attn). The names and shapes are
printed.

`parity` writes evidence (not committed) for the google/ddpm-cifar10-32 architecture with
random weights: the model folder, eps at two timesteps, and DDIM-50 trajectories
(trailing spacing, eta 0) with and without sample clipping, checked against
DDIMPipeline.

`check-export` loads a folder written by elbo with UNet2DModel.from_pretrained and
DDPMPipeline.from_pretrained and saves the model's eps on INPUTS' x, t. The pipeline
needs a model_index.json beside config.json, diffusion_pytorch_model.safetensors and
scheduler_config.json (the flat layout of google/ddpm-cifar10-32).
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

LEGACY = [(".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")]

TINY = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    norm_eps=1e-6,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    attention_head_dim=None,
    act_fn="silu",
    time_embedding_type="positional",
    center_input_sample=False,
)

CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    # Up blocks run deepest first: index 2 is the 16x16 level, as down index 1.
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=32,
    norm_eps=1e-6,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    attention_head_dim=None,
)


def ddpm_scheduler():
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.0001,
        beta_end=0.02,
        variance_type="fixed_large",
        clip_sample=True,
    )


def perturbed(config, scale):
    """UNet2DModel(config) after torch.manual_seed(0), every parameter += scale * randn."""
    torch.manual_seed(0)
    model = UNet2DModel(**config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def legacy_names(sd):
    out = {}
    for k, v in sd.items():
        for new, old in LEGACY:
            if new in k and ".attentions." in k:
                k = k.replace(new, old)
        out[k] = v
    return out


def name_patterns(sd):
    """Distinct names with block/layer indices replaced by {i}, {j}, with the shapes seen."""
    pats = {}
    for k, v in sd.items():
        parts = k.split(".")
        idx = iter("ijk")
        pat = []
        for n, part in enumerate(parts):
            # indices of ModuleLists: blocks, resnets, attentions, samplers; `to_out.0`
            # stays literal
            if part.isdigit() and parts[n - 1] != "to_out":
                pat.append("{" + next(idx) + "}")
            else:
                pat.append(part)
        pats.setdefault(".".join(pat), []).append((k, tuple(v.shape)))
    return pats


def print_names(sd):
    total = 0
    for k, v in sd.items():
        print(f"  {k} {tuple(v.shape)}")
        total += v.numel()
    print(f"{len(sd)} tensors, {total} elements")
    print("patterns:")
    for pat, items in name_patterns(sd).items():
        shapes = sorted({s for _, s in items})
        print(f"  {pat}  x{len(items)}  {' '.join(str(s) for s in shapes)}")


def cmd_fixture(args):
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(TINY)
    if args.block_out_channels:
        config["block_out_channels"] = tuple(int(c) for c in args.block_out_channels.split(","))
    model = perturbed(config, 0.05)
    model.save_pretrained(out, safe_serialization=True)
    ddpm_scheduler().save_pretrained(out)
    sd = model.state_dict()
    print_names(sd)
    zeros = [k for k, v in sd.items() if (v == 0).any()]
    print(f"tensors with an exact zero: {zeros}")

    g = torch.Generator().manual_seed(1)
    x = torch.randn((3, 3, 8, 8), generator=g)
    t = torch.tensor([0, 421, 999], dtype=torch.int64)
    with torch.no_grad():
        eps = model(x, t).sample
    save_file({"x": x.contiguous(), "t": t, "eps": eps.contiguous()}, str(out / "expected.safetensors"))
    print(f"eps: shape {tuple(eps.shape)} mean {eps.mean():.6g} std {eps.std():.6g}")

    legacy = {k: v.contiguous() for k, v in legacy_names(sd).items()}
    save_file(legacy, str(out / "legacy-names.safetensors"))
    renamed = sorted(set(legacy) - set(sd))
    print(f"legacy-names.safetensors: {len(renamed)} renamed tensors: {renamed}")

    # diffusers' own conversion of the old names (ModelMixin._fix_state_dict_keys_on_load)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text((out / "config.json").read_text())
        save_file(legacy, str(Path(tmp) / "diffusion_pytorch_model.safetensors"))
        reloaded = UNet2DModel.from_pretrained(tmp).eval()
        with torch.no_grad():
            eps2 = reloaded(x, t).sample
        d = (eps2 - eps).abs().max().item()
        print(f"legacy names loaded by UNet2DModel.from_pretrained: max |eps diff| = {d}")
        if d != 0:
            raise SystemExit("legacy-name load does not reproduce eps")

    # the folder loads as it is
    again = UNet2DModel.from_pretrained(out).eval()
    with torch.no_grad():
        d = (again(x, t).sample - eps).abs().max().item()
    print(f"reload of {out}: max |eps diff| = {d}")
    for f in sorted(out.iterdir()):
        print(f"  {f.name}: {f.stat().st_size} bytes")
    print(f"total {sum(f.stat().st_size for f in out.iterdir())} bytes")
    print("config.json:\n" + (out / "config.json").read_text())
    print("scheduler_config.json:\n" + (out / "scheduler_config.json").read_text())


def ddim_loop(unet, scheduler, start, use_clipped):
    x = start.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(x, t).sample
            x = scheduler.step(eps, t, x, eta=0.0, use_clipped_model_output=use_clipped).prev_sample
    return x


def cmd_parity(args):
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.time()
    unet = perturbed(CIFAR10, 0.02)
    timings["build"] = time.time() - t0
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"parameters: {n_params}")
    ddpm = ddpm_scheduler()
    t0 = time.time()
    unet.save_pretrained(out / "model", safe_serialization=True)
    ddpm.save_pretrained(out / "model")
    timings["save"] = time.time() - t0

    g = torch.Generator().manual_seed(1)
    x = torch.randn((2, 3, 32, 32), generator=g)
    t = torch.tensor([17, 803], dtype=torch.int64)
    t0 = time.time()
    with torch.no_grad():
        eps = unet(x, t).sample
    timings["eps_batch2"] = time.time() - t0
    save_file({"x": x, "t": t, "eps": eps.contiguous()}, str(out / "eps.safetensors"))
    print(f"eps: mean {eps.mean():.6g} std {eps.std():.6g}")

    # the pipeline's own draw of its start noise, with the same generator seed
    start = randn_tensor((2, 3, 32, 32), generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    assert torch.equal(start, torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(2)))
    sched_clip = DDIMScheduler.from_config(ddpm.config, timestep_spacing="trailing")
    sched_clip.set_timesteps(50)
    sched_noclip = DDIMScheduler.from_config(ddpm.config, timestep_spacing="trailing", clip_sample=False)
    sched_noclip.set_timesteps(50)
    timesteps = sched_clip.timesteps.clone()
    print(f"DDIM timesteps ({len(timesteps)}): {timesteps.tolist()}")
    print(
        f"DDIM config: clip_sample {sched_clip.config.clip_sample}, clip_sample_range "
        f"{sched_clip.config.clip_sample_range}, set_alpha_to_one {sched_clip.config.set_alpha_to_one}, "
        f"steps_offset {sched_clip.config.steps_offset}, prediction_type {sched_clip.config.prediction_type}, "
        f"final_alpha_cumprod {float(sched_clip.final_alpha_cumprod)}"
    )
    results = {}
    for key, sched, use in [
        ("ddim_clip", sched_clip, False),
        ("ddim_clip_recomputed_eps", sched_clip, True),
        ("ddim_noclip", sched_noclip, False),
    ]:
        t0 = time.time()
        results[key] = ddim_loop(unet, sched, start, use)
        timings[key] = time.time() - t0
        r = results[key]
        print(f"{key}: mean {r.mean():.6g} std {r.std():.6g} min {r.min():.6g} max {r.max():.6g}")
    d = (results["ddim_clip"] - results["ddim_clip_recomputed_eps"]).abs().max().item()
    print(f"max |ddim_clip - ddim_clip_recomputed_eps| = {d:.6g}")
    d = (results["ddim_clip"] - results["ddim_noclip"]).abs().max().item()
    print(f"max |ddim_clip - ddim_noclip| = {d:.6g}")
    save_file(
        {"start": start, "timesteps": timesteps.to(torch.int64), **{k: v.contiguous() for k, v in results.items()}},
        str(out / "ddim.safetensors"),
    )

    # DDIMPipeline with the same seed: it draws `start` itself with randn_tensor
    pipe = DDIMPipeline(unet=unet, scheduler=sched_clip)
    pipe.set_progress_bar_config(disable=True)
    t0 = time.time()
    img = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(2), eta=0.0, num_inference_steps=50, output_type="pt"
    ).images
    timings["pipeline"] = time.time() - t0
    print(f"pipeline scheduler: {type(pipe.scheduler).__name__}, timesteps equal: "
          f"{torch.equal(pipe.scheduler.timesteps, timesteps)}")
    manual = (results["ddim_clip"] / 2 + 0.5).clamp(0, 1)
    d = (img - manual).abs().max().item()
    print(f"DDIMPipeline vs manual loop (clip, use_clipped_model_output False), both mapped "
          f"by (x/2+0.5).clamp(0,1): max |diff| = {d}, bitwise equal: {torch.equal(img, manual)}")
    timings = {k: round(v, 3) for k, v in timings.items()}
    (out / "timings.json").write_text(json.dumps({"parameters": n_params, "pipeline_vs_manual_max_diff": d,
                                                  "seconds": timings}, indent=2) + "\n")
    print("timings (s):", json.dumps(timings))


def cmd_check_export(args):
    model = UNet2DModel.from_pretrained(args.dir).eval()
    if not (Path(args.dir) / "model_index.json").exists():
        # DiffusionPipeline.from_pretrained reads model_index.json first; with it, a flat
        # folder works (each component is loaded from DIR/<name>/ if that folder exists,
        # else from DIR itself), as in google/ddpm-cifar10-32.
        raise SystemExit(
            f"{args.dir}: no model_index.json, DDPMPipeline.from_pretrained cannot load it; "
            'it needs {"_class_name": "DDPMPipeline", "_diffusers_version": "...", '
            '"scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}'
        )
    pipe = DDPMPipeline.from_pretrained(args.dir)
    print(f"pipeline scheduler: {type(pipe.scheduler).__name__}")
    print(json.dumps(dict(pipe.scheduler.config), indent=2, default=str))
    data = load_file(args.inputs)
    x, t = data["x"].float(), data["t"].to(torch.int64)
    with torch.no_grad():
        eps = model(x, t).sample
        eps_pipe = pipe.unet(x, t).sample
    print(f"eps: shape {tuple(eps.shape)}, pipeline's unet agrees: {torch.equal(eps, eps_pipe)}")
    if "eps" in data:
        d = (eps - data["eps"].float()).abs().max().item()
        print(f"vs eps stored in {args.inputs}: max |diff| = {d:.6g}")
    save_file({"eps": eps.contiguous()}, args.out)
    print(f"wrote {args.out}")


def main():
    torch.set_num_threads(2)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixture")
    f.add_argument("out_dir")
    f.add_argument(
        "--block-out-channels",
        help="e.g. 8,16 for a smaller fixture (default 16,32: ~0.7 MB per copy of the weights)",
    )
    q = sub.add_parser("parity")
    q.add_argument("out_dir")
    c = sub.add_parser("check-export")
    c.add_argument("dir")
    c.add_argument("inputs")
    c.add_argument("out")
    args = p.parse_args()
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}")
    {"fixture": cmd_fixture, "parity": cmd_parity, "check-export": cmd_check_export}[args.cmd](args)


if __name__ == "__main__":
    main()
