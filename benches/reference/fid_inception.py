#!/usr/bin/env python3
"""pytorch-fid's FID Inception (pool_3, 2048-d features) as the reference for elbo's
Rust port. Runs offline: the download in `fid_inception_v3()` is replaced by the freshly
built model's own state dict, and the weights we want are loaded afterwards.

    python fid_inception.py fixture OUT.safetensors [--compact]
    python fid_inception.py parity OUT_DIR
    python fid_inception.py check-features WEIGHTS.pth INPUTS.safetensors [--out F.safetensors]

`fixture` writes the frozen fixture of a Rust test: the network gets deterministic
weights from a hash formula (`formula_weights`, re-implemented in Rust), and the file
holds inputs `input_a` (2,3,32,32), `input_b` (1,3,299,299), `input_c` (1,3,45,61)
(numpy default_rng(0), uniform [0, 1), drawn in that order) and their pool features
`features_a`, `features_b`, `features_c` (N, 2048) float32. With `--compact`,
`input_b` is not drawn from numpy nor stored: it is the formula's u (see
`hash_uniform`) for the name "input_b", so the file stays small (~100 KB instead of
~1.2 MB); input_a and input_c are then drawn from default_rng(0) in that order.

`parity` writes evidence to OUT_DIR (not committed): a randomly initialised network
saved with torch.save in the zip and the legacy format, the features of MNIST digits
and of random images, and the FID of two sets of 200 random images. With PyTorch's
default init (`--init torch`) the features are the same for every input (the signal
dies out over the 94 conv layers: std ~0.07, identical for noise and digits), so the
default `--init he` re-draws conv and BatchNorm weights at a scale that keeps it.

`check-features` loads a .pth state dict (as `parity` writes it, or pytorch-fid's real
weights file) into the network and prints/saves the features of every `input_*`
tensor of INPUTS, compared with the `features_*` stored beside them if any.

The network is `pytorch_fid.inception.InceptionV3([3])` with its defaults
(use_fid_inception=True, resize_input=True, normalize_input=True), eval mode, 2 threads.
"""

import argparse
import gzip
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch

import pytorch_fid.inception as fid_inception
from pytorch_fid.fid_score import calculate_frechet_distance

HERE = Path(__file__).resolve().parent
MNIST = HERE.parent.parent / "data" / "mnist"

FNV_OFFSET = 2166136261
FNV_PRIME = 16777619
GOLDEN = 0x9E3779B9
M32 = np.uint64(0xFFFFFFFF)


# --------------------------------------------------------------------------- offline


def _own_state_dict(url, *args, **kwargs):
    """Stands in for `load_state_dict_from_url` inside `fid_inception_v3()`: returns the
    state dict of the network that function has just built (its local `inception`), so
    its `load_state_dict` is a no-op and nothing is downloaded."""
    frame = sys._getframe(1)
    inception = frame.f_locals.get("inception")
    if inception is None or frame.f_code.co_name != "fid_inception_v3":
        raise RuntimeError(
            "pytorch_fid changed: load_state_dict_from_url not called from "
            "fid_inception_v3 with a local `inception`"
        )
    return inception.state_dict()


fid_inception.load_state_dict_from_url = _own_state_dict


def build_network():
    """(InceptionV3([3]) in eval mode, the FID inception network underneath it).

    InceptionV3 keeps only the Inception3's submodules in `model.blocks`, not the
    Inception3 itself; wrapping `fid_inception_v3` while InceptionV3 is built captures
    it, so its state dict (the names of pytorch-fid's weights file) is at hand. The
    blocks share those modules: weights written into it are the model's."""
    holder = {}
    original = fid_inception.fid_inception_v3

    def capture():
        net = original()
        holder["net"] = net
        return net

    fid_inception.fid_inception_v3 = capture
    try:
        model = fid_inception.InceptionV3([3])
    finally:
        fid_inception.fid_inception_v3 = original
    net = holder["net"]
    model.eval()
    net.eval()
    return model, net


def features(model, x, batch=50):
    """Pool features (N, 2048) float32 of x (N, 3, H, W) in [0, 1]."""
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            f = model(x[i : i + batch])[0]
            out.append(f.squeeze(-1).squeeze(-1))
    return torch.cat(out, 0).contiguous()


# --------------------------------------------------------------------------- formula


def fnv1a32(name):
    h = FNV_OFFSET
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * FNV_PRIME) & 0xFFFFFFFF
    return h


def hash_uniform(name, n):
    """u_i = (fmix32((fnv1a32(name) + i * 0x9E3779B9) mod 2^32) + 0.5) / 2^32, i < n,
    as float64."""
    h = np.uint64(fnv1a32(name))
    i = np.arange(n, dtype=np.uint64)
    x = (h + i * np.uint64(GOLDEN)) & M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & M32
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & M32
    x ^= x >> np.uint64(16)
    return (x.astype(np.float64) + 0.5) / 4294967296.0


def formula_value(name, shape):
    """The fixture's value of state-dict entry `name` (float32 numpy array)."""
    n = int(np.prod(shape)) if len(shape) else 1
    u = hash_uniform(name, n)
    if name.endswith(".conv.weight"):
        if len(shape) != 4:
            raise ValueError(f"{name}: conv weight of shape {shape}")
        fan_in = shape[1] * shape[2] * shape[3]
        v = (2.0 * u - 1.0) * np.sqrt(3.0) * np.sqrt(2.0 / fan_in)
    elif name.endswith(".bn.weight"):
        v = 0.5 + u
    elif name.endswith(".bn.bias"):
        v = 0.2 * (u - 0.5)
    elif name.endswith(".bn.running_mean"):
        v = 0.2 * (u - 0.5)
    elif name.endswith(".bn.running_var"):
        v = 0.5 + u
    else:
        raise ValueError(f"no formula for state-dict entry {name!r} {tuple(shape)}")
    return v.astype(np.float32).reshape(shape)


def formula_weights(net):
    """Fills every entry of the inception network's state dict but fc.* and
    *num_batches_tracked with the formula; returns (tensors, elements) filled."""
    sd = net.state_dict()
    tensors = elements = 0
    with torch.no_grad():
        for name, t in sd.items():
            if name.startswith("fc.") or name.endswith("num_batches_tracked"):
                continue
            v = formula_value(name, tuple(t.shape))
            t.copy_(torch.from_numpy(v))
            tensors += 1
            elements += v.size
    return tensors, elements


def stats(name, f):
    f = f.double()
    s = {
        "mean": f.mean().item(),
        "std": f.std().item(),
        "min": f.min().item(),
        "max": f.max().item(),
        "zero_fraction": (f == 0).double().mean().item(),
    }
    print(
        f"{name}: shape {tuple(f.shape)} mean {s['mean']:.6g} std {s['std']:.6g} "
        f"min {s['min']:.6g} max {s['max']:.6g} zeros {s['zero_fraction']:.4f}"
    )
    if not (1e-3 <= s["std"] <= 1e3):
        print(f"WARNING: {name} features look degenerate (std {s['std']:.3g})")
    return s


# --------------------------------------------------------------------------- commands


def cmd_fixture(args):
    from safetensors.torch import save_file

    t0 = time.time()
    model, net = build_network()
    tensors, elements = formula_weights(net)
    print(f"formula filled {tensors} tensors, {elements} elements ({time.time() - t0:.2f} s)")
    rng = np.random.default_rng(0)
    inputs = {}
    inputs["input_a"] = rng.random((2, 3, 32, 32))
    if args.compact:
        inputs["input_b"] = hash_uniform("input_b", 3 * 299 * 299).reshape(1, 3, 299, 299)
    else:
        inputs["input_b"] = rng.random((1, 3, 299, 299))
    inputs["input_c"] = rng.random((1, 3, 45, 61))
    out = {}
    for key, x in inputs.items():
        x = torch.from_numpy(x.astype(np.float32))
        t1 = time.time()
        f = features(model, x)
        suffix = key.split("_", 1)[1]
        print(f"features_{suffix}: {time.time() - t1:.2f} s")
        stats(f"features_{suffix}", f)
        if not (args.compact and key == "input_b"):
            out[key] = x.contiguous()
        out[f"features_{suffix}"] = f
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(out, args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes): {sorted(out)}")


def read_mnist_test(n):
    raw = gzip.open(MNIST / "t10k-images-idx3-ubyte.gz", "rb").read()
    magic, count, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != 2051:
        raise ValueError(f"bad IDX magic {magic}")
    data = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)
    return data[:n]


def cmd_parity(args):
    from safetensors.torch import save_file

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    torch.manual_seed(0)
    t0 = time.time()
    model, net = build_network()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d) and args.init == "he":
                fan_in = m.weight[0].numel()
                bound = (6.0 / fan_in) ** 0.5
                m.weight.copy_((2 * torch.rand(m.weight.shape, generator=g) - 1) * bound)
            if isinstance(m, torch.nn.BatchNorm2d):
                if args.init == "he":
                    m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    timings["build"] = time.time() - t0
    sd = net.state_dict()
    torch.save(sd, out / "random-inception-zip.pth")
    torch.save(sd, out / "random-inception-legacy.pth", _use_new_zipfile_serialization=False)
    print(
        f"saved state dict: {len(sd)} entries, "
        f"{sum(t.numel() for t in sd.values())} elements, "
        f"{sum(1 for k in sd if k.endswith('num_batches_tracked'))} num_batches_tracked, "
        f"fc: {[(k, tuple(v.shape)) for k, v in sd.items() if k.startswith('fc.')]}"
    )

    rng = np.random.default_rng(0)
    mnist = read_mnist_test(8).astype(np.float32) / 255.0
    inputs = {
        "mnist": np.repeat(mnist[:, None], 3, axis=1),
        "r32": rng.random((4, 3, 32, 32)),
        "r64": rng.random((2, 3, 64, 64)),
        "r299": rng.random((1, 3, 299, 299)),
    }
    tensors = {}
    for key, x in inputs.items():
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        t1 = time.time()
        f = features(model, x)
        timings[f"features_{key}"] = time.time() - t1
        stats(f"features_{key}", f)
        tensors[f"input_{key}"] = x
        tensors[f"features_{key}"] = f
    save_file(tensors, str(out / "features.safetensors"))

    set_a = torch.from_numpy(np.random.default_rng(1).random((200, 3, 32, 32)).astype(np.float32))
    set_b = torch.from_numpy(
        (np.random.default_rng(2).random((200, 3, 32, 32)) * 0.8).astype(np.float32)
    )
    save_file({"set_a": set_a, "set_b": set_b}, str(out / "fid_sets.safetensors"))
    t1 = time.time()
    # pytorch-fid's get_activations collects float32 features in a float64 array
    fa = features(model, set_a, batch=50).numpy().astype(np.float64)
    fb = features(model, set_b, batch=50).numpy().astype(np.float64)
    timings["fid_features_400"] = time.time() - t1
    t1 = time.time()
    mu_a, sigma_a = np.mean(fa, axis=0), np.cov(fa, rowvar=False)
    mu_b, sigma_b = np.mean(fb, axis=0), np.cov(fb, rowvar=False)
    fid = float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))
    timings["fid_statistics_and_distance"] = time.time() - t1
    result = {
        "fid": fid,
        "mean_diff_sq": float(np.sum((mu_a - mu_b) ** 2)),
        "trace_sigma_a": float(np.trace(sigma_a)),
        "trace_sigma_b": float(np.trace(sigma_b)),
        "feature_extraction_seconds": timings["fid_features_400"],
        "statistics_and_distance_seconds": timings["fid_statistics_and_distance"],
        "init": args.init,
        "n": 200,
        "batch": 50,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (out / "fid.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print("timings (s):", json.dumps({k: round(v, 3) for k, v in timings.items()}))


def cmd_check_features(args):
    from safetensors.torch import load_file, save_file

    model, net = build_network()
    sd = torch.load(args.pth, map_location="cpu", weights_only=True)
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    missing, unexpected = net.load_state_dict(sd, strict=False)
    print(f"loaded {len(sd)} entries; missing {missing}; unexpected {unexpected}")
    data = load_file(args.inputs)
    result = {}
    for key in sorted(data):
        if not key.startswith("input_"):
            continue
        suffix = key[len("input_") :]
        t1 = time.time()
        f = features(model, data[key].float())
        print(f"features_{suffix}: {time.time() - t1:.2f} s")
        stats(f"features_{suffix}", f)
        result[f"features_{suffix}"] = f
        ref = data.get(f"features_{suffix}")
        if ref is not None:
            d = (f - ref.float()).abs()
            rel = d.max().item() / max(ref.abs().max().item(), 1e-30)
            print(f"  vs stored features_{suffix}: max abs diff {d.max().item():.3g}, rel {rel:.3g}")
    if args.out:
        save_file(result, args.out)
        print(f"wrote {args.out}")


def main():
    torch.set_num_threads(2)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixture")
    f.add_argument("out")
    f.add_argument("--compact", action="store_true", help="input_b from the hash formula, not stored")
    q = sub.add_parser("parity")
    q.add_argument("out_dir")
    q.add_argument(
        "--init",
        choices=["he", "torch"],
        default="he",
        help="he (default): conv weights U(+-sqrt(6/fan_in)), bn weight U(0.5, 1.5), bias "
        "N(0, 0.1^2); torch: PyTorch's default init, whose features hardly depend on the "
        "input (activations shrink layer by layer). Running stats are randomised in both.",
    )
    c = sub.add_parser("check-features")
    c.add_argument("pth")
    c.add_argument("inputs")
    c.add_argument("--out")
    args = p.parse_args()
    {"fixture": cmd_fixture, "parity": cmd_parity, "check-features": cmd_check_features}[args.cmd](args)


if __name__ == "__main__":
    main()
