"""The whole path on the smoke suite: pretrain -> checkpoint -> evaluate -> records -> tables, then resume."""

import json

import pytest

from medssl.record.store import ResultStore
from run_benchmark import main


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    (root / "data").mkdir()
    common = [
        "--suite",
        "smoke",
        "--data-root",
        str(root / "data"),
        "--out",
        str(root / "results"),
        "--reports",
        str(root / "reports"),
        "--no-progress",
    ]
    # a first, partial run (as if the full run had been interrupted after these methods)
    assert main(common + ["--methods", "supervised,simclr"]) == 0
    partial = ResultStore(root / "results" / "smoke").records()
    assert main(common) == 0
    return root, common, partial


def report_options(common):
    """The run's options that 'report' takes (not --data-root, --no-progress)."""
    return [
        a for i, a in enumerate(common) if a not in ("--data-root", "--no-progress") and common[i - 1] != "--data-root"
    ]


def test_records_carry_provenance_and_metrics(smoke_run):
    root, _, _ = smoke_run
    records = ResultStore(root / "results" / "smoke").records()
    assert len(records) == 32 and len({r["key"] for r in records}) == 32
    r = records[0]
    for field in ("config_hash", "git_commit", "packages", "hardware", "wall_time_s", "per_class", "excluded_classes"):
        assert field in r
    assert r["packages"]["torch"] and r["hardware"]["cpu_count"]
    # timings are comparable only on the same CPU model with the same native bf16 support
    assert isinstance(r["hardware"]["cpu_model"], str) and isinstance(r["hardware"]["cpu_bf16"], bool)
    assert 0.0 <= r["value"] <= 1.0 and r["n_test"] > 0
    assert (root / "results" / "smoke" / "predictions" / f"{r['key']}.npz").exists()


def test_a_rerun_says_it_reuses_a_finished_pretraining(smoke_run, tmp_path, capsys):
    """New evaluations of a finished encoder: the log says "reusing", not "pretraining" (issue 31)."""
    import shutil

    root, common, _ = smoke_run
    shutil.copytree(root / "results", tmp_path / "results")
    out = [a if a != str(root / "results") else str(tmp_path / "results") for a in common]
    capsys.readouterr()
    assert (
        main(
            out + ["--methods", "simclr", "--fractions", "100", "--seeds", "2", "--reports", str(tmp_path / "reports")]
        )
        == 0
    )
    log = capsys.readouterr().out
    assert "reusing simclr-" in log and "pretraining simclr-" not in log


def test_resume_skips_finished_work(smoke_run, capsys):
    root, common, partial = smoke_run
    records = ResultStore(root / "results" / "smoke").records()
    assert records[: len(partial)] == partial, "finished records were rewritten"
    assert {r["method"] for r in partial} == {"supervised", "simclr"}
    checkpoints = sorted(p.name for p in (root / "results" / "checkpoints").iterdir())
    mtimes = {p: (root / "results" / "checkpoints" / p / "encoder.pt").stat().st_mtime for p in checkpoints}
    assert main(common) == 0
    assert "done: 0 evaluations run, 32 reused" in capsys.readouterr().out
    assert len(ResultStore(root / "results" / "smoke").records()) == 32
    assert mtimes == {p: (root / "results" / "checkpoints" / p / "encoder.pt").stat().st_mtime for p in checkpoints}


def test_report_command_reproduces_tables_byte_for_byte(smoke_run):
    root, common, _ = smoke_run
    written = {p.name: p.read_bytes() for p in (root / "reports" / "smoke").iterdir()}
    assert set(written) == {f"table{n}.{ext}" for n in (1, 2) for ext in ("md", "csv", "tex")} | {
        "random_init_margins.md",
        "pretraining.md",
        "finetune_gap.md",
        "statistics.md",
        "statistics.csv",
        "statistics_per_class.csv",
        "label_efficiency.png",
        "ablation.png",
        "index.html",
    } - {"ablation.png"}  # the smoke suite has no CoBooM ablations
    out = report_options(common)
    out[out.index("--reports") + 1] = str(root / "regenerated")
    assert main(["report"] + out) == 0
    regenerated = {p.name: p.read_bytes() for p in (root / "regenerated" / "smoke").iterdir()}
    assert regenerated == written
    assert b"**" in written["table1.md"]


def test_pretraining_history_is_stored(smoke_run):
    root, _, _ = smoke_run
    coboom = next((root / "results" / "checkpoints").glob("coboom-*"))
    history = [json.loads(line) for line in (coboom / "history.jsonl").read_text().splitlines()]
    assert history and "codebook_perplexity" in history[-1] and "loss" in history[-1]


def test_narrowed_report_never_replaces_the_suites_report(smoke_run, tmp_path):
    """`report --methods simclr --fractions 100` once rewrote reports/smoke as a one-row table; it now has its own
    folder, and the suite's report (also the one a narrowed *run* writes) covers every stored record."""
    root, common, _ = smoke_run
    suite_folder = root / "reports" / "smoke"
    before = {p.name: p.read_bytes() for p in suite_folder.iterdir()}
    args = report_options(common)
    assert main(["report", *args, "--methods", "simclr", "--fractions", "100"]) == 0
    assert {p.name: p.read_bytes() for p in suite_folder.iterdir()} == before
    narrowed = (root / "reports" / "smoke--methods-simclr--fractions-100" / "table1.md").read_text()
    rows = [line for line in narrowed.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 2 and "100%" in rows[0] and "30%" not in rows[0], rows  # header + SimCLR, only the 100 % column
    for method in ("Sup.", "SimCLR", "BYOL"):
        assert f"| {method}" in before["table1.md"].decode()


def test_reports_follow_out_when_no_reports_folder_is_given(smoke_run):
    root, common, _ = smoke_run
    args = report_options(common)
    position = args.index("--reports")
    del args[position : position + 2]
    assert main(["report", *args]) == 0
    assert (root / "results" / "reports" / "smoke" / "table1.md").exists()
