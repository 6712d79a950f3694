"""Write an ImageFolder of Imagenette's size and image sizes, for timing the workflow where the
real archive cannot be downloaded (bench/imagenette_timing.sh).

Imagenette 320 px (fast.ai): 10 classes, 9,469 train and 3,925 val JPEGs, shorter side 320 px,
mostly 4:3 landscape. The images here are smooth colour fields with texture and a class-coloured
blob (a guide model can learn them), saved at JPEG quality 90 so that files and decoding costs are
of a natural photo's order (about 30 kB).
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN, VAL, CLASSES = 9469, 3925, 10
SIZES = ((426, 320), (320, 426), (480, 320), (320, 320))  # (width, height), landscape first


def _one(job: tuple[Path, int, int]) -> None:
    path, label, seed = job
    rng = np.random.default_rng(seed)
    width, height = SIZES[rng.choice(len(SIZES), p=(0.7, 0.15, 0.1, 0.05))]
    small = rng.random((height // 16 + 1, width // 16 + 1, 3))
    base = np.asarray(
        Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC),
        dtype=np.float32,
    )
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.15 * height) ** 2)))[..., None]
    colour = np.array([(label * 37) % 256, (label * 91) % 256, (label * 151) % 256], np.float32)
    img = base * (1 - 0.6 * blob) + colour * 0.6 * blob + rng.normal(0, 5, base.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--train", type=int, default=TRAIN, help="training images")
    parser.add_argument("--val", type=int, default=VAL, help="validation images")
    args = parser.parse_args()
    jobs = []
    for s, (split, n) in enumerate((("train", args.train), ("val", args.val))):
        for i in range(n):
            label = i % CLASSES
            path = args.dest / split / f"class{label}" / f"n{label:08d}_{i:05d}.JPEG"
            jobs.append((path, label, s * 100_000 + i))
    with ProcessPoolExecutor(args.workers) as pool:
        list(pool.map(_one, jobs, chunksize=64))
    print(f"wrote {len(jobs)} images under {args.dest}")


if __name__ == "__main__":
    main()
