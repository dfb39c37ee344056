"""What a command prints and writes besides the records: the plan, the list of suites/methods/datasets, the run
log (runs.jsonl), the reports of a suite's stored records and the exit status of a run with failures."""

from __future__ import annotations

import datetime
import shlex
import sys
from pathlib import Path
from typing import List

import numpy as np

from datasets import describe_datasets
from medssl.plan.jobs import recorded_plan
from medssl.pretrain.encoder import ENCODER_FILE, encoder_status
from medssl.record import provenance
from medssl.record.store import append_line, read_lines
from medssl.report.tables import write_reports
from medssl.runtime.precision import precision_for
from medssl.suite.config import fraction_label, load_suite, suite_names
from medssl.suite.protocol import ConfigError
from methods import REGISTRY


def split_without_positives(dataset) -> List[str]:
    """Per split, the classes without a positive image: a macro AUC leaves them out (warned by ``prepare``)."""
    notes = []
    for split in ("train", "val", "test"):
        rows = dataset.indices(split)
        if len(rows):
            empty = [
                name for name, count in zip(dataset.class_names, np.asarray(dataset.labels)[rows].sum(0)) if count == 0
            ]
            if empty:
                notes.append(
                    f"{len(empty)} classes have no positive {split} image{' (left out of the test macro AUC)' if split == 'test' else ''}: {', '.join(empty)}"
                )
    return notes


def list_everything() -> None:
    print("Suites (benchmarks/suites/):")
    for name in suite_names():
        print(f"  {name:<14} {load_suite(name).get('description', '').strip().splitlines()[0]}")
    print("Methods:")
    for name, entry in REGISTRY.items():
        print(f"  {name:<14} {entry.description}")
    print("Datasets:")
    for name, text in describe_datasets().items():
        print(f"  {name:<14} {text}")
    print(
        "Your own encoders (docs/own-encoder.md): --encoder NAME=PATH[,mean=M,std=S,prefix=P,stem=S] adds a row. The ImageNet-supervised\n"
        "  row from torchvision's weights file (download it where you have a network; nothing is downloaded here):\n"
        "    python run_benchmark.py --suite quick --encoder imagenet=resnet18-f37072fd.pth   (ImageNet's mean/std by default; a grey image is fed as three channels)"
    )


def print_plan(plan, store, out_dir: Path) -> None:
    done = store.keys()
    print(
        f"Suite {plan.suite['name']}: {len(plan.pretrain_jobs)} pretraining jobs, {len(plan.eval_jobs)} evaluation jobs"
    )
    print("Pretraining:")
    for job in plan.pretrain_jobs:
        if job.external is not None:
            print(f"  {job.key:<40} external file {job.external['path']} (SHA-256 {job.external['sha256'][:12]})")
            continue
        status = {"done": "done", "corrupt": "damaged: will be redone"}.get(
            encoder_status(out_dir / "checkpoints" / job.key / ENCODER_FILE), "pending" if job.trains else "random init"
        )
        print(f"  {job.key:<40} seed={job.seed} [{status}]")
    print("Evaluation:")
    for job in plan.eval_jobs:
        status = "done" if job.key in done else "pending"
        print(
            f"  {job.key}  {job.pretrain.method:<14} {job.task['name']:<10} {job.protocol:<9} {fraction_label(job.fraction):>5} seed={job.seed} [{status}]"
        )
    pending = sum(1 for j in plan.eval_jobs if j.key not in done)
    print(f"{len(plan.eval_jobs) - pending} done, {pending} pending")


def log_run(directory: Path, argv, summary, device: str, wall_time_s: float, precision: str = "auto") -> None:
    """Append one line per invocation to OUT/<suite>/runs.jsonl: what ran, how long it took, where."""
    entry = {
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv),
        "ran": summary["ran"],
        "skipped": summary["skipped"],
        "wall_time_s": round(wall_time_s, 1),
        "git_commit": provenance.git_commit(),
        "hardware": provenance.hardware(device),
        "precision": precision_for(device, precision),
    }
    directory.mkdir(parents=True, exist_ok=True)
    append_line(directory / "runs.jsonl", entry)


def write_suite_reports(full_plan, store, reports_root: Path) -> None:
    """The suite's reports from every stored record of it (rows of methods that have records), whatever part of the
    suite this command ran."""
    plan = recorded_plan(full_plan, store.records())
    if plan is None:
        return
    for path in write_reports(plan, store, reports_root / full_plan.suite["name"], store.pretraining_records()):
        print(f"wrote {path}")


def write_tables(plan, full_plan, store, reports_root: Path, tag: str) -> None:
    """The suite's report (REPORTS/<suite>/, from every stored record of it) or, for a narrowed or --set run, the
    report of what was asked for (REPORTS/<suite>--<tag>/, which never replaces the suite's)."""
    if not tag:
        write_suite_reports(full_plan, store, reports_root)
        return
    for path in write_reports(plan, store, reports_root / f"{plan.suite['name']}--{tag}", store.pretraining_records()):
        print(f"wrote {path}")


def run_variants(directory: Path) -> List[str]:
    """The ``--set`` changes of the runs that stored results in ``directory`` (from its runs.jsonl), each written as
    on the command line, in the order first used; "no --set" for a run without any."""
    path = Path(directory) / "runs.jsonl"
    variants: List[str] = []
    for entry in read_lines(path) if path.exists() else []:
        if not entry.get("ran"):
            continue
        argv, changes = list(entry.get("argv") or []), []
        for i, word in enumerate(argv):
            if word == "--set" and i + 1 < len(argv):
                changes.append(argv[i + 1])
            elif word.startswith("--set="):
                changes.append(word[len("--set=") :])
        text = " ".join(f"--set {shlex.quote(change)}" for change in changes) or "no --set"
        if text not in variants:
            variants.append(text)
    return variants


def check_report_has_records(keys: List[str], store, suite_name: str) -> None:
    """A report whose jobs match none of the stored records (other --set changes, or an edited suite file: job keys
    hash the settings) is refused with the settings the stored runs used, instead of writing empty tables."""
    done = store.keys()
    if any(key in done for key in keys):
        return
    variants = run_variants(store.directory)
    used = f"; the runs stored there used: {' | '.join(variants)}" if variants else ""
    raise ConfigError(
        f"none of the {len(done)} results stored in {store.directory} was made with these settings of suite {suite_name} "
        f"(job keys hash the suite with its --set changes, so an edited suite file or other --set values match nothing){used}. "
        "Give report the same --set as the run, or restore the suite file"
    )


def report_failures(summary) -> int:
    """The run's exit status: 1, with each failed pretraining and evaluation listed, if any failed; else 0."""
    failures = [
        (what, summary.get(field) or [])
        for what, field in (("pretraining", "failed"), ("evaluation", "failed_evaluations"))
    ]
    for what, items in failures:
        if items:
            print(
                f"{len(items)} {what}{'s' if len(items) > 1 else ''} failed; everything else is stored:\n  "
                + "\n  ".join(items),
                file=sys.stderr,
            )
    return 1 if any(items for _, items in failures) else 0
