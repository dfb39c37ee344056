"""The preprocessing cache of the real datasets: decoded, resized uint8 images in one memory-mapped array.

Training never decodes PNG/JPEG/DICOM files. ``build_cache`` decodes every source file once, resizes it to
``size`` x ``size`` and writes, under ``<cache dir>``:

* ``images.npy`` (N x channels x size x size uint8, read memory-mapped), ``labels.npy``, ``patient_ids.npy``, ``split.npy``
  and optionally ``masks.npy``;
* ``manifest.json``, written **last**: image and patient counts, split sizes, positives per class, the loader
  parameters, the **input fingerprint** (names and byte sizes of every source file plus the parameters) and the
  **content hash** (SHA-256 of the cached arrays). A cache without a manifest is incomplete and never read.

Building is resumable: images go into ``images.partial.npy`` with a ``done.npy`` bitmap saved every few hundred
images, so an interrupted ``prepare`` continues where it stopped. A cache (complete or partial) made from a
different fingerprint is never overwritten: the error says to delete it or use another data root. Unreadable files
are collected and reported together (the first ones by name), and then nothing is finalised.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from datasets.base import DatasetError, ImageDataset, progress_bar

CACHE_DIRNAME = ".medssl-cache"
_LAYOUT_ONLY = False


class LayoutChecked(Exception):
    """Raised inside :func:`layout_only` where a loader, its layout checks passed, would start building its cache."""


@contextlib.contextmanager
def layout_only():
    """Within this block a real dataset's loader stops (:class:`LayoutChecked`) after checking the layout, instead
    of decoding every image into its cache: the cheap check of every dataset that a run does before any work."""
    global _LAYOUT_ONLY
    previous, _LAYOUT_ONLY = _LAYOUT_ONLY, True
    try:
        yield
    finally:
        _LAYOUT_ONLY = previous
_CHECKPOINT_EVERY = 256


def fingerprint(files: Sequence[Path], root: Path, params: Dict) -> str:
    """Names (relative to ``root``) and byte sizes of the source files, plus the parameters that shape the cache."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for path in sorted(files, key=lambda p: str(p)):
        digest.update(f"{Path(path).relative_to(root)}\t{os.path.getsize(path)}\n".encode())
    return digest.hexdigest()[:16]


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """2-D (H x W) or colour (H x W x 3) image -> size x size uint8 (same channels): area averaging (PIL ``BOX``)
    when shrinking, bilinear when enlarging. Non-uint8 input is min-max scaled to 0-255 first. Non-square images
    are stretched, as the official loaders' ``Resize((size, size))`` does."""
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8:
        lo, hi = float(array.min()), float(array.max())
        array = np.zeros(array.shape, np.uint8) if hi <= lo else np.round((array - lo) / (hi - lo) * 255).astype(np.uint8)
    pil = Image.fromarray(array)
    method = Image.Resampling.BOX if min(pil.size) >= size else Image.Resampling.BILINEAR
    return np.asarray(pil.resize((size, size), method), dtype=np.uint8)


def channels_first(image: np.ndarray) -> np.ndarray:
    return image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """0/1 mask -> size x size 0/1 uint8 by nearest neighbour (no interpolated labels)."""
    from PIL import Image

    pil = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8))
    return np.asarray(pil.resize((size, size), Image.Resampling.NEAREST), dtype=np.uint8)


def _flush(*arrays) -> None:
    for array in arrays:
        if array is not None:
            array.flush()


def save_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` under a per-process temporary name, then renamed: a reader never sees half a file, and two
    processes building the same cache never write into one temporary file."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def build_cache(
    cache_dir: Path,
    sources: Sequence[Path],
    decode: Callable[[Path], np.ndarray],
    size: int,
    input_fingerprint: str,
    make_arrays: Callable[[], Dict[str, np.ndarray]],
    class_names: List[str],
    params: Dict,
    progress: bool = False,
    masks: Optional[Callable[[int], np.ndarray]] = None,
    channels: int = 1,
) -> Path:
    """Decode ``sources`` (one per image, in order) into ``cache_dir`` unless a matching complete cache exists.

    ``decode(path)`` returns a 2-D image (``channels`` 1) or an H x W x 3 one (``channels`` 3); ``make_arrays()``
    returns ``labels``, ``patient_ids`` and ``split`` in the same order and is called only when the cache has to be
    built (reading metadata such as DICOM patient ids is skipped for a complete cache); ``masks(i)`` (optional)
    returns image i's 0/1 mask at any resolution (resized here by nearest neighbour).
    """
    cache_dir = Path(cache_dir)
    manifest_path = cache_dir / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("input_fingerprint") != input_fingerprint:
            raise DatasetError(f"the cache {cache_dir} was built from different input files (fingerprint {manifest.get('input_fingerprint')}, now {input_fingerprint}); delete that folder to rebuild it, or point --data-root at the copy it was made from")
        return cache_dir
    arrays = make_arrays()
    cache_dir.mkdir(parents=True, exist_ok=True)
    n = len(sources)
    partial = cache_dir / "images.partial.npy"
    mask_partial = cache_dir / "masks.partial.npy"
    done_path = cache_dir / "done.npy"
    entries = source_entries(sources, cache_dir)
    owner = cache_dir / "fingerprint.txt"
    if owner.exists() and owner.read_text().strip() != input_fingerprint:
        # some input files changed since the partial cache was started (typically: a file that could not be read was
        # fixed): keep the images of unchanged files, redo the rest
        _reuse_partial(cache_dir, entries, size, channels, masks is not None)
    owner.write_text(input_fingerprint)
    save_json(cache_dir / "sources.json", entries)
    if partial.exists() and done_path.exists() and (masks is None or mask_partial.exists()):
        images = np.load(partial, mmap_mode="r+")
        mask_array = np.load(mask_partial, mmap_mode="r+") if masks is not None else None
        done = np.load(done_path)
    else:
        images = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(n, channels, size, size))
        mask_array = np.lib.format.open_memmap(mask_partial, mode="w+", dtype=np.uint8, shape=(n, size, size)) if masks is not None else None
        done = np.zeros(n, dtype=bool)
    failures: List[str] = []
    bar = progress_bar(int((~done).sum()), f"caching {n} images at {size} px", progress)
    try:
        for count, i in enumerate(np.flatnonzero(~done)):
            try:
                images[i] = channels_first(resize_square(decode(Path(sources[i])), size))
                if mask_array is not None:
                    mask_array[i] = resize_mask(masks(i), size)
                done[i] = True
            except Exception as err:  # noqa: BLE001 - every unreadable file is reported together below
                failures.append(f"{sources[i]}: {type(err).__name__}: {err}")
            if (count + 1) % _CHECKPOINT_EVERY == 0:
                _flush(images, mask_array)
                save_array(done_path, done)
            if bar is not None:
                bar.advance(0)
    finally:
        _flush(images, mask_array)
        save_array(done_path, done)
        if bar is not None:
            bar.stop()
    if failures:
        shown = "\n  ".join(failures[:10])
        raise DatasetError(f"{len(failures)} of {n} images could not be read (the others are cached in {cache_dir} and kept for the next attempt); fix or remove these files and run again:\n  {shown}")
    digest = hashlib.sha256()
    for start in range(0, n, 1024):
        digest.update(np.ascontiguousarray(images[start : start + 1024]).tobytes())
    if mask_array is not None:
        for start in range(0, n, 1024):
            digest.update(np.ascontiguousarray(mask_array[start : start + 1024]).tobytes())
    del images, mask_array
    for name in ("labels", "patient_ids", "split"):
        save_array(cache_dir / f"{name}.npy", np.asarray(arrays[name]))
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    if masks is not None:
        os.replace(mask_partial, cache_dir / "masks.npy")
    os.replace(partial, cache_dir / "images.npy")
    split = np.asarray(arrays["split"])
    labels = np.asarray(arrays["labels"])
    manifest = {
        "images": n,
        "patients": int(len(np.unique(arrays["patient_ids"]))),
        "size": size,
        "splits": {s: int((split == s).sum()) for s in ("train", "val", "test")},
        "classes": list(class_names),
        "positives": {c: int(v) for c, v in zip(class_names, labels.sum(0))},
        "params": params,
        "input_fingerprint": input_fingerprint,
        "content_hash": digest.hexdigest()[:16],
    }
    save_json(manifest_path, manifest, indent=1)  # written last: its presence marks a complete cache
    done_path.unlink(missing_ok=True)
    return cache_dir


def source_entries(sources: Sequence[Path], cache_dir: Path) -> List[str]:
    """'path relative to the cache<TAB>byte size' per source file: what identifies an already decoded image."""
    return [f"{os.path.relpath(source, cache_dir)}\t{os.path.getsize(source)}" for source in sources]


def save_json(path: Path, payload, indent: Optional[int] = None) -> None:
    """JSON written as :func:`save_array` writes arrays."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    tmp.write_text(json.dumps(payload, indent=indent))
    os.replace(tmp, path)


def _reuse_partial(cache_dir: Path, entries: List[str], size: int, channels: int, has_masks: bool) -> None:
    """Rewrite a partial cache for a changed list of source files: images of files whose name and size are unchanged
    stay done (moved to their new position), every other image is marked to decode again. Masks come from the label
    files, which may have changed too, so a partial cache with masks starts over. Without the record of which file
    each image came from (a partial cache older than it), nothing can be matched: the error says what to delete."""
    partial, done_path = cache_dir / "images.partial.npy", cache_dir / "done.npy"
    try:
        old_entries = json.loads((cache_dir / "sources.json").read_text())
        old_done = np.load(done_path)
        old_images = np.load(partial, mmap_mode="r")
    except (OSError, ValueError):
        raise DatasetError(f"{cache_dir} holds a partial cache of different input files that cannot be matched file by file; delete that folder to start over") from None
    position = {entry: i for i, entry in enumerate(old_entries)}
    keep = [(new, position[entry]) for new, entry in enumerate(entries) if entry in position and not has_masks and old_done[position[entry]]]
    fresh = cache_dir / "images.rebuild.npy"
    images = np.lib.format.open_memmap(fresh, mode="w+", dtype=np.uint8, shape=(len(entries), channels, size, size))
    done = np.zeros(len(entries), dtype=bool)
    for new, old in keep:
        images[new] = old_images[old]
        done[new] = True
    images.flush()
    del images, old_images
    os.replace(fresh, partial)
    (cache_dir / "masks.partial.npy").unlink(missing_ok=True)
    save_array(done_path, done)
    if has_masks:  # no mask partial: the loop below starts the masks (and so every image) over
        done_path.unlink()


def cached_dataset(
    name: str,
    root: Path,
    sources: Sequence[Path],
    label_files: Sequence[Path],
    decode: Callable[[Path], np.ndarray],
    params: Dict,
    make_arrays: Callable[[], Dict[str, np.ndarray]],
    class_names: List[str],
    progress: bool = False,
    masks: Optional[Callable[[int], np.ndarray]] = None,
    channels: int = 1,
    mask_name: Optional[str] = None,
) -> ImageDataset:
    """A real dataset's cache, built if needed, then read: the common tail of every loader. The cache lives in
    ``<root>/.medssl-cache/<name>/<hash of params>/``; its fingerprint covers the images, the label files and
    ``params`` (which must hold ``size``)."""
    inputs = fingerprint(list(sources) + list(label_files), root, params)
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    if _LAYOUT_ONLY and not (root / CACHE_DIRNAME / name / key / "manifest.json").exists():
        raise LayoutChecked(name)
    cache = build_cache(root / CACHE_DIRNAME / name / key, sources, decode, int(params["size"]), inputs, make_arrays, class_names, params, progress=progress, masks=masks, channels=channels)
    return read_cache(cache, name, mask_name=mask_name)


def read_cache(cache_dir: Path, name: str, mask_name: Optional[str] = None) -> ImageDataset:
    """The cached dataset, images (and masks) memory-mapped."""
    cache_dir = Path(cache_dir)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    has_masks = (cache_dir / "masks.npy").exists()
    return ImageDataset(
        name=name,
        images=np.load(cache_dir / "images.npy", mmap_mode="r"),
        labels=np.load(cache_dir / "labels.npy"),
        class_names=list(manifest["classes"]),
        patient_ids=np.load(cache_dir / "patient_ids.npy"),
        split=np.load(cache_dir / "split.npy"),
        masks=np.load(cache_dir / "masks.npy", mmap_mode="r") if has_masks else None,
        mask_name=mask_name if has_masks else None,
    )
