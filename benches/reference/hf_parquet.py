"""The frozen fixture of elbo-data's Hugging Face parquet test: a tiny data set made
with `datasets` itself (an Image column and a ClassLabel), written with its
`to_parquet` as the Hub's shards are (pyarrow, snappy, the `huggingface` schema
metadata). The test checks that elbo reads its images, labels and class names.

Run: python benches/reference/hf_parquet.py  (needs datasets and Pillow)
"""
from pathlib import Path

from datasets import ClassLabel, Dataset, Features, Image as ImageFeature
from PIL import Image

out = Path(__file__).resolve().parents[2] / "crates/elbo-data/src/folder/hf-tiny-train.parquet"
images, labels = [], []
for i in range(6):
    img = Image.new("RGB", (8, 8), (40 * i, 255 - 40 * i, 7 * i))
    img.putpixel((i, i), (255, 255, 255))
    images.append(img)
    labels.append(i % 2)
features = Features({"img": ImageFeature(), "label": ClassLabel(names=["even", "odd"])})
ds = Dataset.from_dict({"img": images, "label": labels}, features=features)
ds.to_parquet(str(out))
print(f"wrote {out} ({out.stat().st_size} bytes)")
for i, img in enumerate(images):
    print(i, img.getpixel((0, 0)), img.getpixel((i, i)))
