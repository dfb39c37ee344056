"""benchmarks/report_changes.py: cells of two versions of a table CSV side by side, with the change."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from report_changes import changes_table  # noqa: E402

HEADER = "method,label,task,fraction,n,mean,sd,best\n"


def test_cells_show_before_after_and_change_and_missing_sides():
    before = HEADER + "byol,BYOL,CXR,10,3,57.6000,1.0,0\nswav,SwAV,CXR,10,3,58.0,1.7,0\n"
    after = (
        HEADER + "byol,BYOL,CXR,10,3,60.1000,0.5,1\nbyol,BYOL,CXR,100,3,70.0,0.0,1\nvicreg,VICReg,CXR,10,3,69.0,0.7,0\n"
    )
    lines = changes_table(before, after, ["CXR 10%", "CXR 100%"], "Linear probing").splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ") and "Method" not in line}
    assert rows["BYOL"] == "| BYOL | 57.6 -> 60.1 (+2.5) | - -> 70.0 |"
    assert rows["VICReg"] == "| VICReg | - -> 69.0 | - -> - |"
    assert rows["SwAV"] == "| SwAV | 58.0 -> - | - -> - |"  # a row that disappeared is still shown
    assert lines[0].startswith("Linear probing: before -> after")
