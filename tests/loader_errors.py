"""Shared check of the loader tests: loading a broken fake copy fails with a message that names the problem."""

import pytest

from datasets import DatasetError, load_dataset


def expect_load_error(data_root, dataset: str, message: str, **params) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(dataset, data_root, size=16, **params)
