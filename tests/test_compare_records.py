"""benchmarks/compare_records.py: two result folders matched by record key."""

import sys
from pathlib import Path

from medssl.record.store import RECORD_FIELDS, ResultStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from compare_records import compare, main  # noqa: E402


def _store(path, values, precision):
    store = ResultStore(path)
    for key, (method, value) in values.items():
        record = {f: None for f in RECORD_FIELDS}
        record.update(
            key=key,
            method=method,
            task="CXR",
            protocol="linear",
            fraction=10.0,
            seed=0,
            value=value,
            precision="32-true",
            hardware={"cpu": "x86_64", "device": "cpu"},
            pretrain_hash=f"h-{method}",
        )
        store.append(record)
    for method in {m for m, _ in values.values()}:
        store.append_pretraining({"key": f"{method}-cxr-h-{method}", "hash": f"h-{method}", "precision": precision})
    return path


def test_records_are_matched_by_key_and_differences_reported_in_points(tmp_path):
    first = _store(
        tmp_path / "a",
        {"k1": ("simclr", 0.70), "k2": ("simclr", 0.66), "k3": ("supervised", 0.55), "only-a": ("byol", 0.6)},
        "bf16-mixed",
    )
    second = _store(
        tmp_path / "b", {"k1": ("simclr", 0.70), "k2": ("simclr", 0.63), "k3": ("supervised", 0.55)}, "32-true"
    )
    text = compare(first, second)
    assert text.startswith(
        f"3 evaluations in both {first} (x86_64 (cpu), pretraining precision bf16-mixed) and {second} (x86_64 (cpu), pretraining precision 32-true); 2 identical."
    )
    assert (
        "| simclr | CXR | linear | 2 | 1 | 1.50 | 3.00 |" in text
        and "| supervised | CXR | linear | 1 | 1 | 0.00 | 0.00 |" in text
    )
    assert "share no evaluation" in compare(first, _store(tmp_path / "c", {"other": ("simclr", 0.7)}, "32-true"))


def test_a_folder_that_is_not_a_results_folder_is_refused(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="is not a results folder"):
        main([str(tmp_path / "missing"), str(tmp_path)])
