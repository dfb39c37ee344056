"""The cheapest complete runs the fault drills start from (tests/test_faults.py, tests/test_data_faults.py,
tests/test_storage_faults.py)."""

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def tiny_suite(tmp_path, name="tiny", **changes):
    """The smoke suite cut to one linear-probed column and one seed: the cheapest complete run. ``changes`` maps a
    dotted key path to a new value."""
    suite = copy.deepcopy(yaml.safe_load((ROOT / "benchmarks" / "suites" / "smoke.yaml").read_text()))
    suite["name"] = name
    suite["methods"] = ["supervised", "simclr"]
    suite["tasks"][0].update(protocols=["linear"], fractions=[100])
    suite["evaluation"]["seeds"] = [0]
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = suite
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def cli(tmp_path, suite_path, *extra):
    (tmp_path / "data").mkdir(exist_ok=True)
    return [
        "--suite",
        str(suite_path),
        "--data-root",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "results"),
        "--no-progress",
        *extra,
    ]


def nih_suite(tmp_path, **changes):
    """The tiny suite on a fake NIH ChestX-ray14 (tests/test_nih_chestxray14.py): random init, linear probe."""
    nih = {"name": "nih_chestxray14", "params": {"size": 16, "val_fraction": 0.25}}
    return tiny_suite(
        tmp_path,
        **{
            "methods": ["supervised"],
            "pretrain.datasets": {"nih": {**nih, "splits": ["train", "val"]}},
            "pretrain.image_size": 16,
            "tasks.0.dataset": nih,
            "tasks.0.pretrain": "nih",
            **changes,
        },
    )
