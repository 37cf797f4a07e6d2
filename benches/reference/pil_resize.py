"""The frozen fixture of elbo-data's image-folder resize test: torchvision's
Resize(S) + CenterCrop(S) on PIL images (BILINEAR, antialiased), computed here with
PIL itself for a few synthetic images, written as hex to
crates/elbo-data/src/folder/pil-resize.txt. The input images are a formula (the test
builds the same ones), so the fixture holds only PIL's outputs.

Run: python benches/reference/pil_resize.py  (needs Pillow; written with 13.0)
"""
from pathlib import Path

from PIL import Image


def source(w, h):
    """A smooth gradient with a sharp 4-pixel checkerboard in one corner."""
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        for x in range(w):
            r = (x * 255) // (w - 1)
            g = (y * 255) // (h - 1)
            b = 255 if (x < w // 2 and y < h // 2 and ((x // 4) + (y // 4)) % 2 == 0) else (x + y) * 3 % 256
            px[x, y] = (r, g, b)
    return img


def torchvision_resize_crop(img, s):
    """torchvision.transforms.Resize(s) then CenterCrop(s), for PIL images."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = s, int(s * long / short)
    nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    img = img.resize((nw, nh), Image.BILINEAR)
    left = int(round((nw - s) / 2.0))
    top = int(round((nh - s) / 2.0))
    return img.crop((left, top, left + s, top + s))


lines = []
for (w, h, s) in [(37, 23, 8), (23, 37, 16), (30, 30, 12), (9, 7, 20)]:
    out = torchvision_resize_crop(source(w, h), s)
    lines.append(f"{w} {h} {s} {out.tobytes().hex()}")
    grey = torchvision_resize_crop(source(w, h).convert("L"), s)
    lines.append(f"{w} {h} {s}L {grey.tobytes().hex()}")
path = Path(__file__).resolve().parents[2] / "crates/elbo-data/src/folder/pil-resize.txt"
path.write_text("\n".join(lines) + "\n")
print(f"wrote {path}")
