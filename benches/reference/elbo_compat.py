"""Reading what elbo reads and writes, from Python, for the parity benchmark.

- `read_idx_gz`: the bundled MNIST sample's gzip IDX files.
- `elbo_fixed_binarisation`: the exact binary test set elbo evaluates on
  (`elbo_models::data::fixed_tensor`: dynamic binarisation keyed by
  `TEST_BINARISATION_SEED`, epoch 0), re-derived from elbo-data's documented
  ChaCha8 streams (crates/elbo-data/src/rng.rs, transform.rs). `chacha8_golden_check`
  pins the stream against the golden words of elbo-data's own test.
- `read_png_gray` / `check_against_reconstruction_grid`: compares the reproduction
  with the test inputs elbo draws in `samples/reconstructions-epoch-*.png`.
- `read_safetensors`: the weights of an elbo checkpoint, without the safetensors
  package.

numpy only; no torch here.
"""

import gzip
import json
import struct
import zlib
from pathlib import Path

import numpy as np

# elbo_models::data::TEST_BINARISATION_SEED
TEST_BINARISATION_SEED = 0x7E57B1A5


def read_idx_gz(path):
    """An IDX file (gzip-compressed) as a numpy array of its u8 values."""
    raw = gzip.open(path, "rb").read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not a u8 IDX file")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} values for dims {dims}")
    return data.reshape(dims)


def load_mnist_sample(folder):
    """(train images (N, 28, 28) u8, test images (M, 28, 28) u8)."""
    folder = Path(folder)
    train = read_idx_gz(folder / "train-images-idx3-ubyte.gz")
    test = read_idx_gz(folder / "t10k-images-idx3-ubyte.gz")
    return train, test


# --- ChaCha8 as rand_chacha's ChaCha8Rng: 64-bit block counter in words 12-13, the
# --- 64-bit stream id in words 14-15, output words in order, a u64 is (low, high).

_M32 = np.uint64(0xFFFFFFFF)


def _rotl(x, r):
    return ((x << np.uint32(r)) | (x >> np.uint32(32 - r))).astype(np.uint32)


def _quarter(s, a, b, c, d):
    s[a] = s[a] + s[b]
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = s[c] + s[d]
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = s[a] + s[b]
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = s[c] + s[d]
    s[b] = _rotl(s[b] ^ s[c], 7)


def chacha8_keystream(key32, streams, blocks):
    """The first `blocks` 64-byte blocks of ChaCha8 under the 32-byte `key32`, for each
    stream id in `streams`: uint8 array (len(streams), 64 * blocks)."""
    streams = np.asarray(streams, dtype=np.uint64)
    n = streams.size
    key = np.frombuffer(bytes(key32), dtype="<u4")
    const = np.frombuffer(b"expand 32-byte k", dtype="<u4")
    counter = np.arange(blocks, dtype=np.uint64)
    init = np.empty((16, n, blocks), dtype=np.uint32)
    init[0:4] = const[:, None, None]
    init[4:12] = key[:, None, None]
    init[12] = (counter & _M32).astype(np.uint32)[None, :]
    init[13] = (counter >> np.uint64(32)).astype(np.uint32)[None, :]
    init[14] = (streams & _M32).astype(np.uint32)[:, None]
    init[15] = (streams >> np.uint64(32)).astype(np.uint32)[:, None]
    s = [init[i].copy() for i in range(16)]
    with np.errstate(over="ignore"):
        for _ in range(4):  # 8 rounds = 4 double rounds
            _quarter(s, 0, 4, 8, 12)
            _quarter(s, 1, 5, 9, 13)
            _quarter(s, 2, 6, 10, 14)
            _quarter(s, 3, 7, 11, 15)
            _quarter(s, 0, 5, 10, 15)
            _quarter(s, 1, 6, 11, 12)
            _quarter(s, 2, 7, 8, 13)
            _quarter(s, 3, 4, 9, 14)
        out = np.stack([s[i] + init[i] for i in range(16)], axis=-1)  # (n, blocks, 16)
    return out.astype("<u4").view(np.uint8).reshape(n, 64 * blocks)


def elbo_stream_key(seed, epoch, purpose):
    """elbo-data's 32-byte key: seed u64 LE | epoch u64 LE | 8-byte purpose tag | zeros."""
    tag = purpose.encode().ljust(8, b"\0")
    return struct.pack("<QQ", seed, epoch) + tag + bytes(8)


def chacha8_golden_check():
    """elbo-data's rng::tests::golden_words_of_one_stream: seed 1, epoch 2, "shuffle",
    stream 0, first two u64 words."""
    ks = chacha8_keystream(elbo_stream_key(1, 2, "shuffle"), [0], 1)[0]
    words = np.frombuffer(ks[:16].tobytes(), dtype="<u8").tolist()
    want = [13_511_079_772_802_106_515, 5_915_169_712_543_305_960]
    if words != want:
        raise AssertionError(f"ChaCha8 stream mismatch: {words} vs {want}")


def elbo_dynamic_binarisation(images, seed, epoch, indices=None):
    """elbo-data's `Pixels::DynamicBinarised` of `images[indices]` (u8, (N, H, W)) for
    epoch (seed, epoch): pixel k of image i is 1 iff byte k of the stream
    ("pixels", i) is below p, ties (byte == p) decided by the bytes after the image's
    first n, in pixel order (`Bytes::bernoulli_255`). float32 (N, 1, H, W)."""
    if indices is None:
        indices = np.arange(images.shape[0])
    indices = np.asarray(indices)
    flat = images[indices].reshape(len(indices), -1)
    n_pix = flat.shape[1]
    extra_blocks = 16  # 1,024 bytes for ties; a tie takes ~1 byte, ~3 ties per image
    blocks = -(-n_pix // 64) + extra_blocks
    key = elbo_stream_key(seed, epoch, "pixels")
    out = np.empty(flat.shape, dtype=np.float32)
    for start in range(0, len(indices), 1000):
        idx = indices[start : start + 1000]
        ks = chacha8_keystream(key, idx, blocks)
        pix = flat[start : start + 1000]
        first = ks[:, :n_pix]
        ones = first < pix
        ties = first == pix
        for row in np.nonzero(ties.any(axis=1))[0]:
            pos = n_pix
            for col in np.nonzero(ties[row])[0]:
                p = pix[row, col]
                one = False
                for _ in range(8):
                    if pos >= ks.shape[1]:
                        raise RuntimeError("ran out of tie bytes; raise extra_blocks")
                    b = ks[row, pos]
                    pos += 1
                    if b != p:
                        one = b < p
                        break
                ones[row, col] = one
        out[start : start + 1000] = ones
    return out.reshape(len(indices), 1, *images.shape[1:])


def elbo_fixed_binarisation(test_images):
    """The binary test set elbo evaluates every run on (`fixed_tensor`)."""
    chacha8_golden_check()
    return elbo_dynamic_binarisation(test_images, TEST_BINARISATION_SEED, 0)


# --- PNG (8-bit grayscale, non-interlaced, as elbo's image::save_grid writes).


def read_png_gray(path):
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or color != 0 or interlace != 0:
        raise ValueError(f"{path}: expected 8-bit grayscale, found {header}")
    raw = zlib.decompress(idat)
    img = np.zeros((height, width), dtype=np.int32)
    prev = np.zeros(width, dtype=np.int32)
    stride = width + 1
    for y in range(height):
        ftype = raw[y * stride]
        line = np.frombuffer(raw, dtype=np.uint8, count=width, offset=y * stride + 1).astype(
            np.int32
        )
        cur = np.zeros(width, dtype=np.int32)
        for x in range(width):
            a = cur[x - 1] if x > 0 else 0
            b = prev[x]
            c = prev[x - 1] if x > 0 else 0
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            else:
                raise ValueError(f"PNG filter {ftype}")
            cur[x] = (line[x] + pred) & 0xFF
        img[y] = cur
        prev = cur
    return img.astype(np.uint8)


def check_against_reconstruction_grid(binary_test, png_path, n=32, cols=8, pad=2, side=28):
    """elbo's reconstruction grids hold rows of 8 test inputs, each followed by a row of
    their reconstructions. Returns how many of the first `n` input pixels differ from
    `binary_test` (0 means the reproduction is exact)."""
    grid = read_png_gray(png_path)
    mismatches = 0
    for i in range(n):
        grid_row = 2 * (i // cols)  # inputs on even grid rows
        col = i % cols
        top = grid_row * (side + pad) + pad
        left = col * (side + pad) + pad
        tile = grid[top : top + side, left : left + side]
        want = (binary_test[i, 0] * 255).astype(np.uint8)
        mismatches += int((tile != want).sum())
    return mismatches


# --- safetensors (header length u64 LE, JSON header, raw little-endian data).

_DTYPES = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "U8": "u1", "F16": "<f2"}


def read_safetensors(path):
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[base + start : base + end], dtype=_DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def elbo_checkpoint(run_or_json):
    """An elbo checkpoint: a run folder's newest, its checkpoints/ folder's, or a
    step-*.json itself, as (meta, tensors by name)."""
    path = Path(run_or_json)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        candidates = sorted(folder.glob("step-*.json"))
        if not candidates:
            raise FileNotFoundError(f"{path}: no step-*.json checkpoint")
        path = candidates[-1]
    meta = json.loads(path.read_text())
    return meta, read_safetensors(path.parent / meta["tensors"])


def load_strict(model, weights):
    """`weights` (name -> array) into the torch module `model` after asserting the same
    names and shapes on both sides; returns load_state_dict(strict=True)'s report."""
    import torch

    own = model.state_dict()
    missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    for name, array in weights.items():
        assert tuple(own[name].shape) == array.shape, (name, own[name].shape, array.shape)
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}
    return str(model.load_state_dict(tensors, strict=True))


def elbo_checkpoint_weights(run_or_json):
    """The `model.*` weights of an elbo run's newest checkpoint (or of a step-*.json)."""
    meta, tensors = elbo_checkpoint(run_or_json)
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    return meta, weights
