"""benchmarks/gpu_check.py without a GPU: its dry run on the CPU drives every stage it can at toy sizes (every SSL
row's step in Lightning's order with its checks, the data path, two-run ends to end through run_benchmark.py of an
image and a CT suite),
writes summary.md and the CSVs, and says SKIP for what needs CUDA."""

import csv

from benchmarks.gpu_check import main


def test_dry_run_checks_every_method_and_skips_what_needs_cuda(tmp_path):
    assert main(["--out", str(tmp_path)]) == 0, (tmp_path / "summary.md").read_text()
    summary = (tmp_path / "summary.md").read_text()
    assert "**FAIL**" not in summary
    for stage in ("[2]", "[5]"):
        assert f"**SKIP** {stage}" in summary, f"stage {stage} needs CUDA"
    with open(tmp_path / "steps.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and all(float(r["images_per_s"]) > 0 for r in rows), "one row per SSL method of miccai2024"
    assert {r["method"] for r in rows if int(r["host_sync_ops"]) == 0} >= {"byol", "swav", "dira", "caid", "coboom"}
    assert "the re-run adds no evaluation" in summary and (tmp_path / "data.csv").exists()
    assert (
        "**PASS** [6 CT track] the organ table is written" in summary and "[6 CT track] 12 records of 6 rows" in summary
    )
