import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, os.cpu_count() or 1))

from medssl import quiet_lightning  # noqa: E402

quiet_lightning()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A data root shared by the tests, so each synthetic dataset is generated once per session."""
    return tmp_path_factory.mktemp("data")
