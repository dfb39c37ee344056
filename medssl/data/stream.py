"""Batches streamed from the memory-mapped uint8 dataset cache, for pretraining, fine-tuning and statistics passes.

A dataset's images live in ``images.npy``, memory-mapped (``datasets/cache.py``). Copying a split into RAM before
training (NIH ChestX-ray14 at 256 px: ~7 GB per process, MIMIC-CXR ~25 GB) is what this module avoids:

* :class:`MappedImages` is a split of the cache (its row numbers) that reads the rows a batch asks for, in file
  order (one forward pass over the file), and hands them back in the order asked. Pickled, it carries the file's
  name rather than its contents, so processes that Lightning spawns map the cache themselves (nothing is copied
  through ``/dev/shm``).
* :class:`ShuffledBatches` is an epoch's batches in exactly the order ``DataLoader(shuffle=True, generator=...)``
  gave them (the same draws from the same generator, so runs that used the DataLoader are reproduced bit for bit),
  read ahead by a background thread, pinned for an asynchronous copy to a GPU, or gathered from a copy of the
  whole split kept on the GPU when it fits (``resident``). Under DDP every process takes its share of each global
  batch, so the global batch is the one a single process would train on.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

from datasets.base import from_memmap_reference, memmap_reference

# a split is kept on the GPU when it needs at most this share of the GPU's free memory
RESIDENT_SHARE_OF_FREE_MEMORY = 0.25


def training_batches(order: torch.Tensor, batch_size: int) -> list:
    """``order`` in batches of ``batch_size`` with the remainder last, as ``DataLoader(drop_last=False)`` gives
    them, except that a remainder of **one** image joins the batch before it: BatchNorm in training mode cannot
    normalise one image whose last feature map is 1 x 1 ("Expected more than 1 value per channel", e.g. 32 px,
    batch 8, 33 images), and a one-image step is noise where it does run. Every evaluation protocol trains on
    these batches (fine-tuning, segmentation, the AdamW probe)."""
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def batches_per_epoch(n_images: int, batch_size: int) -> int:
    """How many batches :func:`training_batches` makes of ``n_images`` (at least one)."""
    full, remainder = divmod(n_images, batch_size)
    return max(1, full + (remainder > 1 or full == 0))


class MappedImages:
    """Rows ``rows`` of a uint8 image array (N x C x H x W, usually the memory-mapped cache), read on demand:
    ``len()`` and indexing by a position, a slice, or an array/tensor of positions return torch uint8 tensors.

    From a cache file the rows are read with ``os.preadv`` straight into the batch, in file order, rather than
    through the memory map: pages of a mapped file that a process has touched count in its resident memory until
    the kernel drops them, so an epoch over a 6 GB cache would show as 6 GB per process; read pages stay in the
    kernel's page cache, shared by all processes, and the process holds only its batches."""

    def __init__(self, array: np.ndarray, rows: Optional[Sequence[int]] = None):
        self.array = array
        self.rows = np.arange(len(array), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        reference = memmap_reference(array)
        self._file = reference if isinstance(reference, tuple) else None  # ("memmap", name, offset, dtype, shape)
        self._descriptor: Optional[int] = None

    @classmethod
    def of(cls, images) -> "MappedImages":
        """``images`` itself when it is a MappedImages already, else all rows of the array."""
        return images if isinstance(images, cls) else cls(images)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple:
        return (len(self.rows),) + tuple(self.array.shape[1:])

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.array.dtype.itemsize

    def __getitem__(self, positions: Union[int, slice, np.ndarray, torch.Tensor]) -> torch.Tensor:
        if isinstance(positions, torch.Tensor):
            positions = positions.cpu().numpy()
        if isinstance(positions, (int, np.integer)):
            return self[np.array([positions])][0]
        return torch.from_numpy(self._read(self.rows[positions]))

    def _read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows),) + tuple(self.array.shape[1:]), dtype=self.array.dtype)
        order = np.argsort(rows, kind="stable")  # increasing row numbers: one pass over the file
        if self._file is None:
            out[order] = self.array[rows[order]]
            return out
        if self._descriptor is None:
            self._descriptor = os.open(self._file[1], os.O_RDONLY)
        row_bytes = out[0].nbytes if len(out) else 0
        for position in order:
            start = self._file[2] + int(rows[position]) * row_bytes
            if os.preadv(self._descriptor, [memoryview(out[position]).cast("B")], start) != row_bytes:
                raise OSError(
                    f"{self._file[1]}: row {int(rows[position])} is cut short (the cache file is truncated); delete the cache folder and run again to rebuild it"
                )
        return out

    def __getstate__(self):
        # the file's name, not its contents, and no descriptor: another process opens the file itself
        return {**self.__dict__, "array": memmap_reference(self.array), "_descriptor": None}

    def __setstate__(self, state):
        self.__dict__.update({**state, "array": from_memmap_reference(state["array"])})

    def __del__(self):
        if getattr(self, "_descriptor", None) is not None:
            os.close(self._descriptor)


def _process_share() -> tuple:
    """(rank, world size) of this process in torch.distributed's default group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShuffledBatches:
    """The batches of one epoch per ``iter()``: ``images`` (and ``labels``, when given: batches are then
        ``(images, labels)`` tuples, else ``[images]``) in the order of ``DataLoader(..., shuffle=True,
        drop_last=drop_last, generator=generator)`` (without ``drop_last``, a last batch of one image joins the one
    before it: :func:`training_batches`); ``batch_size`` is the global batch, split over DDP's processes.

        ``pin``: batches in page-locked memory (for a non-blocking copy to the GPU). ``resident``: ``"auto"`` keeps the
        split on the current CUDA device when it takes at most a quarter of its free memory and gathers batches there
        (no host reads or copies during training); True forces it on ``resident_device``; False never."""

    def __init__(
        self,
        images: MappedImages,
        batch_size: int,
        generator: torch.Generator,
        labels: Optional[np.ndarray] = None,
        drop_last: bool = True,
        pin: bool = False,
        resident: Union[bool, str] = False,
        resident_device: Optional[str] = None,
        prefetch: int = 2,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.images, self.batch_size, self.generator = images, int(batch_size), generator
        self.labels = None if labels is None else torch.from_numpy(np.ascontiguousarray(labels))
        self.drop_last, self.pin, self.resident, self.resident_device, self.prefetch = (
            drop_last,
            pin,
            resident,
            resident_device,
            max(1, prefetch),
        )
        self._on_device: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else batches_per_epoch(n, self.batch_size)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_on_device"] = None  # a spawned process makes its own copy on its own device
        return state

    def epoch_order(self) -> list:
        """This epoch's batches as tensors of positions in ``images``, drawn as a DataLoader that Lightning iterates
        draws them: one int64 for its workers' base seed, then the sampler's ``randperm``. Lightning stops after the
        epoch's last batch; RandomSampler draws a second ``randperm`` (for a remainder of no samples) only when
        the batch sampler must run it to the end, i.e. to complete a last, partial batch that is kept."""
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        order = torch.randperm(len(self.images), generator=self.generator)
        if not self.drop_last and len(self.images) % self.batch_size:
            torch.randperm(len(self.images), generator=self.generator)
        batches = list(order.split(self.batch_size)) if self.drop_last else training_batches(order, self.batch_size)
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        rank, world = _process_share()
        if world > 1:
            if self.batch_size % world:
                raise ValueError(f"batch size {self.batch_size} does not split over {world} processes")
            share = self.batch_size // world
            batches = [b[rank * share : (rank + 1) * share] for b in batches]
        return batches

    def _device_copy(self) -> Optional[torch.Tensor]:
        """The whole split on the GPU (copied in chunks, never whole in host memory), or None."""
        if self._on_device is not None or self.resident is False:
            return self._on_device
        if self.resident == "auto":
            if not torch.cuda.is_available():
                return None
            device = torch.device("cuda", torch.cuda.current_device())
            free, _ = torch.cuda.mem_get_info(device)
            if self.images.nbytes > RESIDENT_SHARE_OF_FREE_MEMORY * free:
                return None
        else:
            device = torch.device(self.resident_device or "cuda")
        copy = torch.empty(self.images.shape, dtype=torch.uint8, device=device)
        chunk = 4096
        for start in range(0, len(self.images), chunk):
            copy[start : start + chunk] = self.images[slice(start, start + chunk)].to(device)
        self._on_device = copy
        return copy

    def _read(self, positions: torch.Tensor, on_device: Optional[torch.Tensor]):
        if on_device is not None:
            images = on_device[positions.to(on_device.device)]
        else:
            images = self.images[positions]
            if self.pin:
                images = images.pin_memory()
        if self.labels is None:
            return [images]
        labels = self.labels[positions]
        return images, (labels.to(images.device) if on_device is not None else labels)

    def __iter__(self) -> Iterator:
        batches = self.epoch_order()
        on_device = self._device_copy()
        if on_device is not None:  # gathering on the GPU is asynchronous already
            for positions in batches:
                yield self._read(positions, on_device)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches") as reader:
            pending = [reader.submit(self._read, b, None) for b in batches[: self.prefetch]]
            for k in range(len(batches)):
                batch = pending.pop(0).result()
                if k + self.prefetch < len(batches):
                    pending.append(reader.submit(self._read, batches[k + self.prefetch], None))
                yield batch
