"""--shard K/N: disjoint, complete, deterministic parts of the job grid; shards' records are merged by 'report'."""

import pytest

from medssl.plan.jobs import build_plan, parse_shard, shard_plan
from medssl.record.store import ResultStore
from medssl.suite.config import load_suite
from medssl.suite.protocol import ConfigError
from run_benchmark import main


def test_shards_partition_the_grid_by_pretraining():
    plan = build_plan(load_suite("quick"))
    shards = [shard_plan(plan, k, 4) for k in range(1, 5)]
    eval_keys = [{j.key for j in s.eval_jobs} for s in shards]
    pretrain_keys = [{j.key for j in s.pretrain_jobs} for s in shards]
    assert set().union(*eval_keys) == {j.key for j in plan.eval_jobs}
    assert sum(len(k) for k in eval_keys) == len(plan.eval_jobs), "no job in two shards"
    assert sum(len(k) for k in pretrain_keys) == len(plan.pretrain_jobs)
    assert all(j.pretrain.key in pretrain_keys[i] for i, s in enumerate(shards) for j in s.eval_jobs)
    assert [len(k) for k in pretrain_keys] == [7, 7, 6, 6]  # 26 pretrainings (13 methods x 2 corpora) dealt round-robin
    again = shard_plan(build_plan(load_suite("quick")), 2, 4)
    assert [j.key for j in again.eval_jobs] == [j.key for j in shards[1].eval_jobs]


def test_bad_shard_specifications():
    assert parse_shard("3/8") == (3, 8)
    for text, message in (("0/4", "1 <= K <= N"), ("5/4", "1 <= K <= N"), ("two/4", "write K/N"), ("1", "write K/N")):
        with pytest.raises(ConfigError, match=message):
            parse_shard(text)


def test_sharded_run_then_report(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    common = [
        "--suite",
        "smoke",
        "--methods",
        "supervised,simclr",
        "--fractions",
        "100",
        "--seeds",
        "0",
        "--data-root",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "results"),
        "--reports",
        str(tmp_path / "reports"),
        "--no-progress",
    ]
    assert main(common + ["--shard", "1/2"]) == 0
    assert "when every shard has, write the tables with" in capsys.readouterr().out
    assert not (tmp_path / "reports").exists()
    assert main(common + ["--shard", "2/2"]) == 0
    store = ResultStore(tmp_path / "results" / "smoke")
    assert sorted(p.name for p in store.files()) == ["records.shard-1-of-2.jsonl", "records.shard-2-of-2.jsonl"]
    assert len(store.records()) == 4 and len(store.keys()) == 4
    assert main(common + ["--shard", "1/2"]) == 0  # a finished shard redoes nothing
    assert "0 to run" in capsys.readouterr().out
    report = [
        a for i, a in enumerate(common) if a not in ("--data-root", "--no-progress") and common[i - 1] != "--data-root"
    ]  # what 'report' takes
    assert main(["report"] + report) == 0
    table = (
        tmp_path / "reports" / "smoke--methods-supervised-simclr--seeds-0--fractions-100" / "table1.md"
    ).read_text()  # a narrowed report's own folder
    assert "| Sup. |" in table and "| SimCLR |" in table and "–" not in table.split("\n\n")[1]
    assert main(["report"] + report + ["--shard", "1/2"]) == 2
