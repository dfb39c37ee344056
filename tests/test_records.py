import json

import numpy as np
import pytest

from medssl.record.store import RECORD_FIELDS, ResultStore


def make_record(key="k1", value=0.7):
    record = {field: None for field in RECORD_FIELDS}
    record.update(
        key=key,
        suite="s",
        method="simclr",
        task="CXR",
        protocol="linear",
        fraction=10.0,
        seed=0,
        value=value,
        per_class={"Mass": 0.6},
        packages={"torch": "x"},
    )
    return record


def test_records_round_trip_with_predictions(tmp_path):
    store = ResultStore(tmp_path / "suite")
    scores = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    store.append(make_record("a", 0.71), predictions={"scores": scores, "test_indices": np.arange(5)})
    store.append(make_record("b", 0.72))
    records = ResultStore(tmp_path / "suite").records()
    assert [r["key"] for r in records] == ["a", "b"]
    assert records[0] == json.loads(json.dumps(make_record("a", 0.71), sort_keys=True))
    np.testing.assert_array_equal(store.load_predictions("a")["scores"], scores)
    assert store.keys() == {"a", "b"}


def test_incomplete_last_line_is_skipped_not_fatal(tmp_path):
    store = ResultStore(tmp_path)
    store.append(make_record("a"))
    with open(store.path, "a") as fh:
        fh.write('{"key": "torn", "val')
    with pytest.warns(UserWarning, match="incomplete line"):
        assert store.keys() == {"a"}


def test_record_missing_fields_is_refused(tmp_path):
    with pytest.raises(ValueError, match="lacks fields"):
        ResultStore(tmp_path).append({"key": "x"})


def test_shard_files_are_merged(tmp_path):
    ResultStore(tmp_path, shard="0-of-2").append(make_record("a"))
    ResultStore(tmp_path, shard="1-of-2").append(make_record("b"))
    assert ResultStore(tmp_path).keys() == {"a", "b"}
