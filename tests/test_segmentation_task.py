"""A segmentation task through the whole path: plan -> decoder training -> Dice records with per-image Dice -> tables
and Wilcoxon statistics."""

import copy

import numpy as np
import pytest
import yaml

from medssl.plan.jobs import build_plan, evaluation_seeds
from medssl.record.store import ResultStore
from medssl.report.tables import write_reports
from medssl.run.image import run_plan
from medssl.runtime.options import RunOptions
from medssl.suite.config import load_suite
from medssl.suite.protocol import ConfigError

PTX_TASK = {
    "name": "PTX",
    "type": "segmentation",
    "dataset": {"name": "synthetic_cxr", "params": {"n_images": 96, "size": 32, "seed": 0}},
    "pretrain": "cxr",
    "protocols": ["linear", "finetune"],
    "fractions": [100],
}


def segmentation_suite():
    suite = load_suite("smoke")
    suite["methods"] = ["supervised", "simclr"]
    suite["tasks"] = suite["tasks"] + [copy.deepcopy(PTX_TASK)]
    suite["evaluation"]["segmentation"] = {"epochs": 1, "lr": 1.0e-3, "batch_size": 16, "seeds": [0, 1]}
    return suite


def test_segmentation_jobs_use_their_own_settings_and_keep_classification_keys():
    suite = segmentation_suite()
    plan = build_plan(suite)
    segmentation = [j for j in plan.eval_jobs if j.task["name"] == "PTX"]
    assert len(segmentation) == 2 * 2 * 2  # methods x protocols x seeds
    assert all(j.config["settings"] == {"epochs": 1, "lr": 1.0e-3, "batch_size": 16} for j in segmentation)
    assert evaluation_seeds(suite, "linear", PTX_TASK) == [0, 1]
    without = load_suite("smoke")
    without["methods"] = ["supervised", "simclr"]
    classification_keys = {j.key for j in build_plan(without).eval_jobs}
    assert classification_keys == {j.key for j in plan.eval_jobs if j.task["name"] == "CXR"}


def test_segmentation_task_needs_settings(tmp_path):
    suite = segmentation_suite()
    del suite["evaluation"]["segmentation"]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(ConfigError, match="evaluation.segmentation"):
        load_suite(str(path))
    suite = segmentation_suite()
    suite["tasks"][1]["type"] = "detection"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(ConfigError, match="expected one of classification, segmentation, got 'detection'"):
        load_suite(str(path))


def test_segmentation_records_tables_and_statistics(tmp_path, synthetic_root):
    suite = segmentation_suite()
    suite["tasks"] = [copy.deepcopy(PTX_TASK)]
    suite["statistics"] = {**(suite.get("statistics") or {}), "reference": "simclr"}  # the rows are compared with it
    plan = build_plan(suite)
    store = ResultStore(tmp_path / "results" / suite["name"])
    summary = run_plan(
        plan, synthetic_root, tmp_path / "results", RunOptions(progress=False, log=lambda _: None), store=store
    )
    assert summary["ran"] == 8
    records = store.records()
    assert {r["metric"] for r in records} == {"mean_dice"}
    for record in records:
        assert 0 <= record["value"] <= 1 and set(record["extra_metrics"]) == {
            "dice_positive",
            "n_positive",
            "dice_global",
            "false_positive_rate_empty",
        }
        predictions = store.load_predictions(record["key"])
        assert len(predictions["per_image_dice"]) == record["n_test"] and predictions[
            "per_image_dice"
        ].mean() == pytest.approx(record["value"], abs=1e-6)
    written = {p.name: p for p in write_reports(plan, store, tmp_path / "reports")}
    table1 = written["table1.md"].read_text()
    assert "mean Dice per image" in table1 and "| PTX 100% |" in table1
    statistics = written["statistics.csv"].read_text().splitlines()
    assert len(statistics) == 1 + 2 and all(
        ",wilcoxon," in line for line in statistics[1:]
    )  # Sup. vs SimCLR, per table
    # the details file shows, per cell, the tables' Dice next to the Dice over images with a mask (seed means)
    details = written["segmentation.md"].read_text()
    for method in suite["methods"]:
        cell = [r for r in records if r["method"] == method and r["protocol"] == "linear"]
        expected = f"{100 * np.mean([r['value'] for r in cell]):.1f} \\| {100 * np.mean([r['extra_metrics']['dice_positive'] for r in cell]):.1f} \\| "
        assert expected in details, (expected, details)
    assert "| PTX 100% linear | PTX 100% finetune |" in details
    # a frozen encoder's decoder and a fine-tuned one are different models: their Dice values differ
    by_protocol = {p: np.mean([r["value"] for r in records if r["protocol"] == p]) for p in ("linear", "finetune")}
    assert by_protocol["linear"] != by_protocol["finetune"]


def test_segmentation_on_a_dataset_without_masks_is_a_clear_error(tmp_path, synthetic_root):
    suite = segmentation_suite()
    fundus = {"name": "synthetic_fundus", "params": {"n_images": 40, "size": 32, "seed": 0}}
    suite["pretrain"]["datasets"]["fundus"] = {**fundus, "splits": ["train", "val"]}
    suite["methods"] = ["supervised"]
    suite["tasks"] = [{**copy.deepcopy(PTX_TASK), "name": "Fundus", "dataset": fundus, "pretrain": "fundus"}]
    plan = build_plan(suite)
    with pytest.raises(
        ConfigError, match="'Fundus' is a segmentation task but dataset 'synthetic_fundus' has no masks"
    ):
        run_plan(plan, synthetic_root, tmp_path / "results", RunOptions(progress=False, log=lambda _: None))
