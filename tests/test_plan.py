"""Job identity: a key changes exactly when something that determines the job's result changes."""

import copy

import pytest
import yaml

import datasets.base as dataset_base
from medssl.plan.jobs import build_plan
from medssl.suite.config import load_suite


def keys_by_method(suite):
    plan = build_plan(suite)
    return {job.method: job.hash for job in plan.pretrain_jobs}, {job.key for job in plan.eval_jobs}


def test_method_setting_changes_only_that_method():
    suite = load_suite("smoke")
    before, _ = keys_by_method(suite)
    changed = copy.deepcopy(suite)
    changed["method_params"]["simclr"]["temperature"] = 0.1
    after, _ = keys_by_method(changed)
    assert after["simclr"] != before["simclr"]
    assert all(after[m] == before[m] for m in before if m != "simclr")


def test_random_init_does_not_depend_on_training_protocol():
    suite = load_suite("smoke")
    before, _ = keys_by_method(suite)
    changed = copy.deepcopy(suite)
    changed["pretrain"]["epochs"] = 7
    changed["pretrain"]["optimizer"]["lr"] = 0.5
    after, _ = keys_by_method(changed)
    assert after["supervised"] == before["supervised"]
    assert after["byol"] != before["byol"]
    # ... but its BatchNorm statistics are estimated through the suite's views: their size and augmentation count
    for key, value in (("image_size", 40), ("augment", {**suite["pretrain"]["augment"], "hflip_p": 0.0})):
        changed = copy.deepcopy(suite)
        changed["pretrain"][key] = value
        assert keys_by_method(changed)[0]["supervised"] != before["supervised"], key


def test_dataset_loader_version_is_part_of_every_key(monkeypatch):
    suite = load_suite("smoke")
    pretrain_before, evals_before = keys_by_method(suite)
    monkeypatch.setitem(dataset_base._VERSIONS, "synthetic_cxr", 999)
    pretrain_after, evals_after = keys_by_method(suite)
    assert all(pretrain_after[m] != pretrain_before[m] for m in pretrain_before)
    assert not evals_after & evals_before


def test_pretraining_is_shared_by_all_evaluations_of_a_method():
    plan = build_plan(load_suite("smoke"))
    by_method = {}
    for job in plan.eval_jobs:
        by_method.setdefault(job.pretrain.method, set()).add(job.pretrain.key)
    assert all(len(keys) == 1 for keys in by_method.values())


def test_method_code_version_changes_only_that_method(monkeypatch):
    from methods.byol import BYOL

    suite = load_suite("smoke")
    before, evals_before = keys_by_method(suite)
    monkeypatch.setattr(BYOL, "version", BYOL.version + 1)
    after, evals_after = keys_by_method(suite)
    assert after["byol"] != before["byol"]
    assert all(after[m] == before[m] for m in before if m != "byol")
    assert {k for k in evals_before if k not in evals_after}, "the method's evaluations must get new keys too"


def test_statistics_settings_are_checked_and_do_not_change_job_keys(tmp_path):
    import pytest
    import yaml

    from medssl.suite.config import statistics_settings
    from medssl.suite.protocol import ConfigError

    suite = load_suite("smoke")
    assert statistics_settings(suite)["reference"] == "coboom" and statistics_settings(suite)["variants"] == []
    quick = load_suite("quick")
    assert statistics_settings(quick)["variants"] == ["coboom-nodec", "coboom-nodf"]
    with_stats = copy.deepcopy(suite)
    with_stats["statistics"] = {"reference": "simclr", "adjust": "bh"}
    assert [j.key for j in build_plan(with_stats).eval_jobs] == [j.key for j in build_plan(suite).eval_jobs]
    for bad, message in (
        ({"referense": "simclr"}, "statistics.referense: unknown key; did you mean .reference."),
        ({"adjust": "bonferroni"}, "holm"),
        ({"primary": "images"}, "pretraining run as its unit"),
    ):
        broken = copy.deepcopy(suite)
        broken["statistics"] = bad
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(broken))
        with pytest.raises(ConfigError, match=message):
            load_suite(str(path))


def test_quick_long_is_quick_with_more_steps_only():
    """quick-long answers "does a method learn with 10x the steps": everything but the length must stay quick's."""
    quick, long = load_suite("quick"), load_suite("quick-long")
    assert long["pretrain"]["epochs"] == 10 * quick["pretrain"]["epochs"]
    same = ("backbone", "image_size", "batch_size", "optimizer", "schedule", "augment", "seeds")
    assert {k: long["pretrain"][k] for k in same} == {k: quick["pretrain"][k] for k in same}
    assert long["pretrain"]["datasets"]["cxr"] == quick["pretrain"]["datasets"]["cxr"]
    assert long["methods"] == quick["methods"]
    # SwAV's prototype freeze and queue start are shares of training, so the same settings scale with the length
    assert long["method_params"] == quick["method_params"]
    # the random-init floor is the same job in both suites
    floor = [
        {job.key for job in build_plan(s).pretrain_jobs if job.method == "supervised" and job.corpus == "cxr"}
        for s in (quick, long)
    ]
    assert floor[0] == floor[1]


def test_pretraining_seeds_from_the_command_line_narrow_the_plan(tmp_path):
    """--pretrain-seeds 0 is the fast demonstration run of a replicated suite: the same jobs (same keys) as seed 0 of
    the full plan, nothing more; a repeated or empty seed list is refused before any work starts."""
    from medssl.suite.config import apply_overrides
    from medssl.suite.protocol import ConfigError

    suite = apply_overrides(load_suite("smoke"), pretrain_seeds=[0, 1, 2])
    full = build_plan(suite)
    assert sorted({j.seed for j in full.pretrain_jobs}) == [0, 1, 2]
    narrowed = build_plan(apply_overrides(suite, pretrain_seeds=[0]))
    assert {j.key for j in narrowed.eval_jobs} == {j.key for j in full.eval_jobs if j.pretrain.seed == 0}
    for bad in ([0, 0], [], [-1]):
        with pytest.raises(ConfigError, match="--pretrain-seeds"):
            apply_overrides(suite, pretrain_seeds=bad)
    broken = copy.deepcopy(load_suite("smoke"))
    broken["pretrain"]["seeds"] = [1, 1]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(ConfigError, match="pretrain.seeds: repeats 1"):
        load_suite(str(path))


def test_miccai2024_pretrains_three_seeds():
    assert load_suite("miccai2024")["pretrain"]["seeds"] == [0, 1, 2]
