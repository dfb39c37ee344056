"""What re-estimating an exported trunk's BatchNorm statistics changes: the linear probes of a method whose trunk is
trained inside a larger network (``reestimate_exported_batchnorm``, MLVICX's attention blocks) with the statistics it
exports (re-estimated on the plain trunk: the suite's own stored records) against the same weights with the running
statistics of its training path, which it exported before issue 16.

    python benchmarks/exported_batchnorm.py --suite quick --method mlvicx

The second row needs the pretraining's ``last.ckpt`` (in results/checkpoints/, not committed): its backbone holds the
training path's statistics. A run deletes it once the encoder is stored unless given ``--keep-checkpoints``; to
make it again, delete the pretraining's folder and run the suite with ``--keep-checkpoints`` (the pretraining is
reproduced bit for bit). Weights are checked to be identical to the exported encoder's, so the two rows differ in
BatchNorm statistics alone. Same label subsets, seeds and probe as the suite; written to
reports/<suite>/exported_batchnorm.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import List

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medssl.data.loaded import DatasetCache  # noqa: E402
from medssl.data.splits import label_fraction_indices  # noqa: E402
from medssl.evaluate.classify import extract_features, linear_probe  # noqa: E402
from medssl.evaluate.metrics import multilabel_auc  # noqa: E402
from medssl.plan.jobs import build_plan, task_type  # noqa: E402
from medssl.pretrain.encoder import ENCODER_FILE, load_encoder  # noqa: E402
from medssl.record.store import ResultStore  # noqa: E402
from medssl.report.cells import aggregate, cell_text, replicates, table_header  # noqa: E402
from medssl.report.tables import table_rows  # noqa: E402
from medssl.suite.config import load_suite  # noqa: E402
from methods import (  # noqa: E402
    method_class,
    method_label,
)


def linear_plan(suite, method: str):
    """The suite narrowed to one method on its linear-probed classification tasks (job keys are the suite's)."""
    narrowed = copy.deepcopy(suite)
    narrowed["methods"] = [method]
    narrowed["tasks"] = [
        {**t, "protocols": ["linear"]}
        for t in suite["tasks"]
        if task_type(t) == "classification" and "linear" in t["protocols"]
    ]
    return build_plan(narrowed)


def training_path_encoder(run_dir: Path):
    """The exported encoder, and a copy whose BatchNorm running statistics are those of ``last.ckpt``'s backbone."""
    exported, meta = load_encoder(run_dir / ENCODER_FILE)
    state = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    for name, value in exported.state_dict().items():
        if "running_" not in name and "num_batches" not in name and not torch.equal(value, backbone[name]):
            raise SystemExit(
                f"{run_dir}: weight {name} of last.ckpt differs from the exported encoder's; the rows would not compare statistics alone"
            )
    trained_path = copy.deepcopy(exported)
    trained_path.load_state_dict(backbone)
    return trained_path, meta


def training_path_values(plan, out: Path, data_root: Path) -> List[dict]:
    """Each linear job's test macro AUC with the training path's running statistics, as ``{key, value}`` records."""
    datasets = DatasetCache(data_root)
    values = []
    for task in plan.suite["tasks"]:
        jobs = [job for job in plan.eval_jobs if job.task["name"] == task["name"]]
        encoder, meta = training_path_encoder(out / "checkpoints" / jobs[0].pretrain.key)
        dataset = datasets.get(task["dataset"])
        labels = np.asarray(dataset.labels)
        split = {s: dataset.indices(s) for s in ("train", "val", "test")}
        features = extract_features(
            encoder, dataset.images, int(jobs[0].config["image_size"]), meta["mean"], meta["std"]
        )
        for job in jobs:
            subset = label_fraction_indices(split["train"], labels, dataset.patient_ids, [job.fraction], job.seed)[
                job.fraction
            ]
            result = linear_probe(
                features,
                labels,
                subset,
                split["val"],
                split["test"],
                dataset.class_names,
                job.config["settings"],
                job.seed,
            )
            auc = multilabel_auc(labels[split["test"]], result["test_scores"], dataset.class_names)["macro_auc"]
            values.append({"key": job.key, "value": auc})
    return values


def comparison_table(plan, method: str, stored: List[dict], values: List[dict]) -> str:
    """The two rows (the tables' exported statistics, the training path's) in the layout of Table 1."""
    n_seeds = replicates(plan, "linear")
    cells = lambda records: [
        cell_text(r, n_seeds) if r["n"] else "–" for r in table_rows(plan, aggregate(plan, records), "linear")
    ]
    columns = [(t["name"], float(f)) for t in plan.suite["tasks"] for f in t["fractions"]]
    header = table_header(columns)
    label = method_label(method)
    return (
        "\n".join(
            [
                f"{label}'s exported BatchNorm statistics — suite `{plan.suite['name']}`: linear-probe macro AUC (%), mean ± sd over seeds, same weights in both rows.",
                "",
                header[0].replace("| Method |", f"| {label} trunk |", 1),
                header[1],
                "| statistics re-estimated on the plain trunk (exported; the tables' row) | "
                + " | ".join(cells(stored))
                + " |",
                "| running statistics of the training path (exported before issue 16) | "
                + " | ".join(cells(values))
                + " |",
            ]
        )
        + "\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--method", default="mlvicx")
    parser.add_argument("--data-root", default=str(ROOT / "data"))
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--reports", default=str(ROOT / "reports"))
    args = parser.parse_args()
    if not method_class(args.method).reestimate_exported_batchnorm:
        print(
            f"method {args.method!r} exports the statistics of its training: there is nothing to compare",
            file=sys.stderr,
        )
        return 2
    suite = load_suite(args.suite)
    plan = linear_plan(suite, args.method)
    stored = ResultStore(Path(args.out) / suite["name"]).records()
    missing = sorted(
        {
            job.pretrain.key
            for job in plan.eval_jobs
            if not (Path(args.out) / "checkpoints" / job.pretrain.key / "last.ckpt").exists()
        }
    )
    if missing or not any(r["key"] in {job.key for job in plan.eval_jobs} for r in stored):
        print(
            f"run the suite first: no stored records or last.ckpt for {', '.join(missing) or args.method} under {args.out} "
            "(a run deletes last.ckpt unless --keep-checkpoints: delete those folders under checkpoints/ and run the suite with it)",
            file=sys.stderr,
        )
        return 2
    values = training_path_values(plan, Path(args.out), Path(args.data_root))
    text = comparison_table(plan, args.method, stored, values)
    out = Path(args.reports) / suite["name"] / "exported_batchnorm.md"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
