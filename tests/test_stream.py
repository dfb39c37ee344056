"""medssl/data/stream.py: batches read from the cache file give what the DataLoader over an in-memory copy gave (same
order, same generator draws, so stored encoders are reproduced), pickle as a file reference (ddp_spawn), and a cut
cache file is named."""

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medssl.data.stream import MappedImages, ShuffledBatches, batches_per_epoch, training_batches


@pytest.fixture
def cache_file(tmp_path):
    array = np.lib.format.open_memmap(tmp_path / "images.npy", mode="w+", dtype=np.uint8, shape=(37, 1, 4, 4))
    array[:] = np.random.default_rng(0).integers(0, 256, size=array.shape, dtype=np.uint8)
    array.flush()
    return tmp_path / "images.npy"


@pytest.mark.parametrize("n, batch, drop_last", [(37, 8, True), (37, 8, False), (32, 8, True), (32, 8, False)])
def test_batches_and_generator_draws_are_the_dataloaders(cache_file, n, batch, drop_last):
    """Lightning takes exactly len(loader) batches per epoch; the old DataLoader's sampler then drew a second
    permutation only when it had to run to its end for a kept partial batch."""
    mapped = np.load(cache_file, mmap_mode="r")[:n] if n < 37 else np.load(cache_file, mmap_mode="r")
    rows = np.arange(n)
    old_generator, new_generator = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    old = DataLoader(
        TensorDataset(torch.from_numpy(np.array(mapped))),
        batch_size=batch,
        shuffle=True,
        drop_last=drop_last,
        generator=old_generator,
    )
    new = ShuffledBatches(MappedImages(mapped, rows), batch, new_generator, drop_last=drop_last)
    assert len(new) == len(old)
    for _ in range(3):
        batches = iter(old)
        expected = [next(batches)[0] for _ in range(len(old))]
        got = [b[0] for b in new]
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
        assert torch.equal(old_generator.get_state(), new_generator.get_state())


def test_reads_any_order_and_pickles_as_a_file_reference(cache_file):
    array = np.load(cache_file, mmap_mode="r")
    images = MappedImages(array, [30, 2, 17, 5])
    positions = np.array([3, 0, 2, 0])
    assert np.array_equal(images[positions].numpy(), np.asarray(array)[[5, 30, 17, 30]])
    assert np.array_equal(images[1].numpy(), array[2]) and np.array_equal(
        images[1:3].numpy(), np.asarray(array)[[2, 17]]
    )
    payload = pickle.dumps(images)
    assert len(payload) < 2000, "the file's name travels, not its images"
    assert np.array_equal(pickle.loads(payload)[positions].numpy(), images[positions].numpy())
    in_memory = MappedImages(np.asarray(array)[:10])
    assert np.array_equal(in_memory[np.array([4, 1])].numpy(), np.asarray(array)[[4, 1]])


def test_a_cut_cache_file_is_named(cache_file):
    images = MappedImages(np.load(cache_file, mmap_mode="r"))
    with open(cache_file, "r+b") as fh:
        fh.truncate(cache_file.stat().st_size - 8)
    with pytest.raises(OSError, match="truncated.*delete the cache folder"):
        images[np.array([36])]


def test_a_last_batch_of_one_image_joins_the_one_before(cache_file):
    """33 images in batches of 8: the DataLoader's last batch holds one image, which BatchNorm cannot train on at
    32 px; it joins the batch before it, with the same generator draws (issue 31)."""
    mapped = np.load(cache_file, mmap_mode="r")[:33]
    old_generator, new_generator = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    old = list(
        DataLoader(
            TensorDataset(torch.from_numpy(np.array(mapped))),
            batch_size=8,
            shuffle=True,
            drop_last=False,
            generator=old_generator,
        )
    )
    new = ShuffledBatches(MappedImages(mapped, np.arange(33)), 8, new_generator, drop_last=False)
    got = [b[0] for b in new]
    assert len(new) == len(got) == 4 and [len(b) for b in got] == [8, 8, 8, 9]
    assert torch.equal(torch.cat(got), torch.cat([b[0] for b in old])) and torch.equal(
        old_generator.get_state(), new_generator.get_state()
    )
    assert [len(b) for b in training_batches(torch.arange(9), 8)] == [9] and [
        len(b) for b in training_batches(torch.arange(1), 8)
    ] == [1]
    assert [batches_per_epoch(n, 8) for n in (1, 7, 8, 9, 10, 17)] == [1, 1, 1, 1, 2, 2]
