#!/usr/bin/env python3
"""Small torch.save files for the Rust reader of .pth checkpoints
(crates/elbo-data/tests/fixtures/pth/).

    python pth_fixtures.py [OUT_DIR] [--describe]

Writes, from one state dict (an OrderedDict):

    a.weight             float32 arange(6).reshape(2, 3) / 4
    b.bias               float32 [1.5, -2.25, 3, 0.125]
    c.running_var        float64 [0.5, 2]
    d.num_batches_tracked int64 scalar 7
    e.view               arange(12, float32).reshape(3, 4).t()[1:]: shape (3, 3),
                         stride (1, 4), storage offset 1, storage of 12 elements
    f.half               float16 [1, 0.5]
    g.shared             the same tensor object as a.weight (one storage, two names)

- state-zip.pth     torch.save(sd) (zip format, the default)
- state-legacy.pth  torch.save(sd, _use_new_zipfile_serialization=False)
- model-zip.pth     torch.save({"state_dict": sd, "epoch": 3})

`--describe` prints each file's first 64 bytes, the zip members, and the pickle opcodes
(the legacy file is split into its magic, protocol, sys_info, main and storage-keys
pickles, then per storage an 8-byte little-endian element count and the raw data, and
checked to end exactly there).
"""

import argparse
import io
import pickle
import pickletools
import struct
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent.parent / "crates" / "elbo-models" / "tests" / "fixtures" / "pth"


def state_dict():
    a = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 4
    sd = OrderedDict()
    sd["a.weight"] = a
    sd["b.bias"] = torch.tensor([1.5, -2.25, 3, 0.125], dtype=torch.float32)
    sd["c.running_var"] = torch.tensor([0.5, 2], dtype=torch.float64)
    sd["d.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    sd["e.view"] = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()[1:]
    sd["f.half"] = torch.tensor([1, 0.5], dtype=torch.float16)
    sd["g.shared"] = a
    assert not sd["e.view"].is_contiguous()
    return sd


def write(out):
    out.mkdir(parents=True, exist_ok=True)
    sd = state_dict()
    e = sd["e.view"]
    print(
        f"e.view: shape {tuple(e.shape)} stride {e.stride()} offset {e.storage_offset()} "
        f"storage elements {e.untyped_storage().nbytes() // 4} values {e.tolist()}"
    )
    torch.save(sd, out / "state-zip.pth")
    torch.save(sd, out / "state-legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({"state_dict": sd, "epoch": 3}, out / "model-zip.pth")
    for name in ["state-zip.pth", "state-legacy.pth", "model-zip.pth"]:
        p = out / name
        back = torch.load(p, weights_only=True)
        back_sd = back["state_dict"] if "state_dict" in back else back
        for k, v in sd.items():
            w = back_sd[k]
            assert w.dtype == v.dtype and torch.equal(w, v), (name, k)
        assert back_sd["e.view"].stride() == (1, 4) and back_sd["e.view"].storage_offset() == 1
        assert back_sd["g.shared"].untyped_storage().data_ptr() == back_sd["a.weight"].untyped_storage().data_ptr()
        print(f"{name}: {p.stat().st_size} bytes, reloads equal (strides, offset, sharing kept)")


def opcodes(data):
    """(Counter of opcode names, pickletools.dis text, end position) of the pickle at the
    start of `data`."""
    counts = Counter()
    end = 0
    for op, arg, pos in pickletools.genops(data):
        counts[op.name] += 1
        end = pos + 1
        if op.name == "STOP":
            break
    text = io.StringIO()
    pickletools.dis(data[:end], out=text)
    return counts, text.getvalue(), end


def describe_legacy(p):
    raw = p.read_bytes()
    pos = 0
    parts = ["magic number", "protocol version", "sys_info", "main (state dict)", "storage keys"]
    values = {}
    all_ops = Counter()
    starts = {}
    for part in parts:
        starts[part] = pos
        counts, text, n = opcodes(raw[pos:])
        value = pickle.loads(raw[pos : pos + n]) if part != "main (state dict)" else None
        print(f"--- pickle {part}: bytes [{pos}, {pos + n}), opcodes {dict(counts)}")
        if value is not None:
            print(f"    value: {value!r}")
        print(text.rstrip())
        all_ops.update(counts)
        values[part] = value
        pos += n
    keys = values["storage keys"]
    # the element sizes from the main pickle's persistent ids: ('storage', class, key,
    # location, numel)
    pids = {}

    class Reader(pickle.Unpickler):
        def persistent_load(self, pid):
            pids[pid[2]] = pid
            return None

        def find_class(self, module, name):
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return lambda *a, **k: None
            if module == "torch":
                return name  # a storage class name
            return super().find_class(module, name)

    Reader(io.BytesIO(raw[starts["main (state dict)"] :])).load()
    sizes = {"FloatStorage": 4, "DoubleStorage": 8, "LongStorage": 8, "HalfStorage": 2}
    for key in keys:
        (count,) = struct.unpack("<q", raw[pos : pos + 8])
        pid = pids[key]
        size = sizes[pid[1]]
        print(
            f"--- storage {key!r}: at byte {pos}, count {count} ({pid[1]}, {pid[3]}, "
            f"numel in pid {pid[4]}), data bytes [{pos + 8}, {pos + 8 + count * size})"
        )
        pos += 8 + count * size
    print(f"end of storages at byte {pos}, file size {len(raw)}: {'exact' if pos == len(raw) else 'MISMATCH'}")
    print(f"legacy opcode set (all five pickles): {sorted(all_ops)}")


def describe_zip(p):
    raw = p.read_bytes()
    with zipfile.ZipFile(p) as z:
        print("members:")
        for info in z.infolist():
            # the local header's own name and extra lengths (the central directory's
            # extra field may differ)
            h = info.header_offset
            name_len, extra_len = struct.unpack("<HH", raw[h + 26 : h + 30])
            data_at = h + 30 + name_len + extra_len
            print(
                f"  {info.filename}: {info.file_size} bytes, compress_type {info.compress_type}, "
                f"local header at {h}, data at {data_at} (data_at % 64 = {data_at % 64})"
            )
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
        data = z.read(pkl)
    counts, text, _ = opcodes(data)
    print(f"--- {pkl}: opcodes {dict(counts)}")
    print(text.rstrip())
    print(f"opcode set: {sorted(counts)}")


def describe(out):
    for name in ["state-zip.pth", "state-legacy.pth", "model-zip.pth"]:
        p = out / name
        head = p.read_bytes()[:64]
        print(f"===== {name} ({p.stat().st_size} bytes)")
        print(f"first 64 bytes: {head.hex()}")
        print(f"                {head!r}")
        if zipfile.is_zipfile(p):
            describe_zip(p)
        else:
            describe_legacy(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default=str(DEFAULT_OUT))
    ap.add_argument("--describe", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    write(out)
    if args.describe:
        describe(out)


if __name__ == "__main__":
    main()
