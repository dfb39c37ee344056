"""benchmarks/suite_cost.py: counted pretraining FLOPs of a suite and GPU-hours at stated throughputs."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import suite_cost  # noqa: E402


def test_cost_is_counted_flops_times_steps_over_the_stated_rate(capsys):
    # rates of a millionth of a TFLOP/s keep the tiny smoke suite's hours readable at one decimal
    assert (
        suite_cost.main(
            [
                "--suite",
                "smoke",
                "--methods",
                "supervised,simclr",
                "--corpus-images",
                "cxr=96",
                "--sustained-tflops",
                "1e-6,2e-6",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\| (supervised|simclr) \|", line)]
    assert len(rows) == 1 and "| simclr |" in rows[0]  # nothing to pretrain for the random-init row
    per_image, _, hours_1, hours_2 = (float(x.replace(",", "")) for x in rows[0].strip("| ").split(" | ")[1:])
    # smoke: batch 16, 1 epoch, 96 images -> 6 steps of 16 images; GFLOP per image is printed to one decimal
    assert hours_1 == pytest.approx(per_image * 1e9 * 96 / 1e6 / 3600, rel=0.15)
    assert hours_1 == pytest.approx(2 * hours_2, abs=0.2)
    assert "the suite's 1 pretraining seeds" in out
    with pytest.raises(SystemExit, match="lacks the suite's corpora"):
        suite_cost.main(["--suite", "smoke", "--corpus-images", "nih=10"])
    with pytest.raises(SystemExit, match="not in suite smoke"):
        suite_cost.main(["--suite", "smoke", "--methods", "swav", "--corpus-images", "cxr=96"])
