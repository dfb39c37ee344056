"""Two result folders side by side, record by record: which evaluations with the same key (the same configuration,
hence the same pretraining seed and evaluation seed) gave the same value, and by how much the others differ, with
where and how each side ran (docs/reproducibility.md).

    python benchmarks/compare_records.py results/quick results/quick-seeds

Typical uses: the same command on two machines, or at two precisions; a re-run on the same machine (every value
should be identical).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medssl.record.store import ResultStore  # noqa: E402


def _runs_on(store: ResultStore, records: List[Dict]) -> str:
    """The machines the records were made on and the precisions their encoders were pretrained with, in words."""
    pretrained_in = {row.get("hash"): row.get("precision") for row in store.pretraining_records().values()}
    kinds = sorted(
        {
            (
                (r.get("hardware") or {}).get("cpu_model") or (r.get("hardware") or {}).get("cpu", "?"),
                (r.get("hardware") or {}).get("device", "?"),
                pretrained_in.get(r.get("pretrain_hash")) or "?",
            )
            for r in records
        }
    )
    return "; ".join(f"{cpu} ({device}), pretraining precision {precision}" for cpu, device, precision in kinds)


def compare(first: Path, second: Path) -> str:
    stores = ResultStore(first), ResultStore(second)
    a = {r["key"]: r for r in stores[0].records()}
    b = {r["key"]: r for r in stores[1].records()}
    shared = sorted(set(a) & set(b))
    if not shared:
        return f"{first} and {second} share no evaluation (no record key in common)."
    lines = [
        f"{len(shared)} evaluations in both {first} ({_runs_on(stores[0], [a[k] for k in shared])}) and {second} ({_runs_on(stores[1], [b[k] for k in shared])}); "
        f"{sum(a[k]['value'] == b[k]['value'] for k in shared)} identical.",
        "",
        "| method | task | protocol | evaluations | identical | mean abs. difference (points) | largest (points) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    groups: Dict[tuple, List[str]] = {}
    for key in shared:
        groups.setdefault((a[key]["method"], a[key]["task"], a[key]["protocol"]), []).append(key)
    for (method, task, protocol), keys in sorted(groups.items()):
        differences = np.abs([100 * (a[k]["value"] - b[k]["value"]) for k in keys])
        lines.append(
            f"| {method} | {task} | {protocol} | {len(keys)} | {int((differences == 0).sum())} | {differences.mean():.2f} | {differences.max():.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    for folder in (args.first, args.second):
        if not folder.is_dir():
            raise SystemExit(f"{folder} is not a results folder (results/<suite>/ with records.jsonl)")
    print(compare(args.first, args.second))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
