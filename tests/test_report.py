"""Tables from a hand-made results file: layout, mean +- sd, bold best, byte-for-byte regeneration."""
from medssl.config import load_suite
from medssl.plan import build_plan
from medssl.records import RECORD_FIELDS, ResultStore
from medssl.report import write_reports


def hand_made_store(tmp_path, plan, values):
    store = ResultStore(tmp_path / "results")
    for job in plan.eval_jobs:
        value = values.get((job.pretrain.method, job.protocol, job.fraction))
        if value is None:
            continue
        record = {f: None for f in RECORD_FIELDS}
        record.update(key=job.key, method=job.pretrain.method, task=job.task["name"], protocol=job.protocol, fraction=job.fraction, seed=job.seed, value=value + 0.01 * job.seed)
        store.append(record)
    return store


def test_report_layout_bold_and_byte_identical(tmp_path):
    plan = build_plan(load_suite("smoke"))
    values = {(m, p, f): v for (m, v) in [("supervised", 0.60), ("simclr", 0.70), ("byol", 0.65), ("coboom", 0.72)] for p in ("linear", "finetune") for f in (30.0, 100.0)}
    values[("simclr", "linear", 100.0)] = 0.80  # SimCLR wins this one column
    del values[("byol", "finetune", 30.0)]  # a missing cell
    store = hand_made_store(tmp_path, plan, values)
    first = {p.name: p.read_bytes() for p in write_reports(plan, store, tmp_path / "r1")}
    second = {p.name: p.read_bytes() for p in write_reports(plan, ResultStore(tmp_path / "results"), tmp_path / "r2")}
    assert first == second
    table1 = first["table1.md"].decode()
    lines = {line.split("|")[1].strip(): line for line in table1.splitlines() if line.startswith("| ") and "Method" not in line}
    assert list(lines) == ["Sup.", "SimCLR", "BYOL", "CoBooM w/ Dec."]
    # seeds 0 and 1 give v and v + 0.01: mean v + 0.005, sd 0.00707 -> "72.5 ± 0.7"
    assert "| **72.5 ± 0.7** | 72.5 ± 0.7 |" in lines["CoBooM w/ Dec."]
    assert "**80.5 ± 0.7**" in lines["SimCLR"]
    assert "| CXR 30% | CXR 100% |" in table1
    table2 = first["table2.md"].decode()
    assert "| BYOL | – |" in table2 and "1 cells have no finished result" in table2
    deterministic = "At 100 % labels every seed trains on the same images"
    assert deterministic in table1 and deterministic not in table2  # only the exact linear probe is deterministic
    csv_text = first["table1.csv"].decode().splitlines()
    assert csv_text[0] == "method,label,task,fraction,n,mean,sd,best"
    assert "simclr,SimCLR,CXR,100,2,80.5000,0.7071,1" in csv_text
