"""How much faster training reads the preprocessing cache than the source PNGs (issue 4 acceptance: >= 10x).

    python benchmarks/cache_speed.py [--images 200] [--source-size 1024] [--size 256]

Writes a temporary NIH ChestX-ray14-layout copy with ``--images`` 8-bit PNGs of ``--source-size`` px (smooth
anatomy-like fields plus noise, so they compress like radiographs), builds the cache through the real loader, then
times one pass over all images both ways, in a shuffled order as training reads them:

* source: PIL decode + resize to ``--size`` (what a loader without a cache does every epoch);
* cache: rows of the memory-mapped ``images.npy`` (a cold read is approximated by dropping the file from the page
  cache where the OS allows it; otherwise the figure is for a warm cache).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets import load_dataset  # noqa: E402
from datasets.cache import resize_square  # noqa: E402
from datasets.imageio import decode_image  # noqa: E402


def write_fake_copy(root: Path, n_images: int, source_size: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True)
    names, rows = (
        [],
        [
            "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
        ],
    )
    for i in range(n_images):
        field = ndimage.gaussian_filter(rng.standard_normal((source_size // 8, source_size // 8)), 6)
        field = np.kron(field / (np.abs(field).max() + 1e-8), np.ones((8, 8)))
        image = np.clip(128 + 90 * field + rng.normal(0, 6, field.shape), 0, 255).astype(np.uint8)
        name = f"{i // 2 + 1:08d}_{i % 2:03d}.png"
        Image.fromarray(image, "L").save(folder / name)
        names.append(name)
        rows.append(f"{name},No Finding,{i % 2},{i // 2 + 1},50,M,PA,{source_size},{source_size},0.143,0.143")
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(rows) + "\n")
    cut = int(0.8 * len(names)) // 2 * 2  # patient-disjoint: both films of a patient on one side
    (root / "train_val_list.txt").write_text("\n".join(names[:cut]) + "\n")
    (root / "test_list.txt").write_text("\n".join(names[cut:]) + "\n")
    return [folder / n for n in names]


def drop_from_page_cache(path: Path) -> bool:
    if not hasattr(os, "posix_fadvise"):
        return False
    with open(path, "rb") as fh:
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--source-size", type=int, default=1024)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "nih_chestxray14"
        paths = write_fake_copy(root, args.images, args.source_size)
        dataset = load_dataset("nih_chestxray14", Path(tmp), size=args.size)
        order = np.random.default_rng(1).permutation(len(paths))
        for path in paths:
            drop_from_page_cache(path)
        start = time.perf_counter()
        for i in order:
            resize_square(decode_image(paths[i]), args.size)
        source_s = time.perf_counter() - start
        cache_file = Path(dataset.images.filename)
        cold = drop_from_page_cache(cache_file)
        images = np.load(cache_file, mmap_mode="r")
        start = time.perf_counter()
        total = 0
        for i in order:
            total += int(np.asarray(images[i])[0, 0, 0])
        cache_s = time.perf_counter() - start
    print(f"{args.images} images, {args.source_size} px PNG -> {args.size} px, one shuffled pass:")
    print(f"  decode + resize PNGs: {source_s:.3f} s ({1e3 * source_s / args.images:.2f} ms/image)")
    print(
        f"  read cache ({'page cache dropped' if cold else 'warm'}): {cache_s:.4f} s ({1e3 * cache_s / args.images:.3f} ms/image)"
    )
    print(f"  speed-up: {source_s / cache_s:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
