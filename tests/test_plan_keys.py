"""Every job key of every shipped suite, as committed in ``tests/data/plan_keys.json``.

A key is what marks a result as done: a refactoring that changes one silently reruns (or, worse, reuses) work.
A change of keys is intended only with a method or protocol version bump; then rewrite the file with
``python -m tests.test_plan_keys`` and say why in the commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medssl.plan.jobs import build_plan
from medssl.run.ct import build_ct_plan, is_ct_suite
from medssl.suite.config import load_suite

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = Path(__file__).with_name("data") / "plan_keys.json"
SUITES = sorted(path.stem for path in (ROOT / "benchmarks" / "suites").glob("*.yaml"))


def suite_keys(name: str) -> dict:
    suite = load_suite(name)
    plan = build_ct_plan(suite) if is_ct_suite(suite) else build_plan(suite)
    evaluations = [key for job in plan.eval_jobs for key in getattr(job, "record_keys", [job.key])]
    return {"pretrain": sorted(job.key for job in plan.pretrain_jobs), "evaluate": sorted(evaluations)}


@pytest.mark.parametrize("name", SUITES)
def test_job_keys_of_shipped_suites_are_unchanged(name):
    expected = json.loads(SNAPSHOT.read_text())
    assert name in expected, f"suite {name} is new: add it with python -m tests.test_plan_keys"
    got = suite_keys(name)
    for stage in ("pretrain", "evaluate"):
        gone = sorted(set(expected[name][stage]) - set(got[stage]))
        new = sorted(set(got[stage]) - set(expected[name][stage]))
        assert not gone and not new, (
            f"{name} {stage} keys changed: {len(gone)} gone (e.g. {gone[:3]}), {len(new)} new (e.g. {new[:3]})"
        )


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps({name: suite_keys(name) for name in SUITES}, indent=0, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
