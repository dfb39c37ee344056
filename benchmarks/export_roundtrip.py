"""Does an exported encoder, evaluated as an external row (``--encoder``), score what the method's own row scored?

Pairs the records of a method (its latest record per task, protocol, fraction and evaluation seed) with those of an
external row evaluated on the same suite, and prints one Markdown line per pair with both values and whether they
are equal. Used for docs/own-encoder.md:

    python run_benchmark.py export --suite quick --method dira
    python run_benchmark.py --suite quick --methods dira-export --encoder dira-export=results/exports/quick/dira-cxr-050d6f26d188.safetensors --out /tmp/demo
    python benchmarks/export_roundtrip.py --method results/quick:dira --external /tmp/demo/quick:dira-export --tasks CXR,PTX-seg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medssl.record.store import ResultStore  # noqa: E402


def latest(store_and_row: str, tasks):
    folder, _, row = store_and_row.rpartition(":")
    out = {}
    for record in ResultStore(Path(folder)).records():  # in append order: a re-run replaces an earlier record
        if record["method"] == row and record["task"] in tasks:
            out[(record["task"], record["protocol"], record["fraction"], record["seed"])] = record
    if not out:
        raise SystemExit(f"no records of {row!r} for tasks {', '.join(tasks)} in {folder}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help="RESULTS_FOLDER:METHOD, e.g. results/quick:dira")
    parser.add_argument(
        "--external", required=True, help="RESULTS_FOLDER:ROW of the external row, e.g. /tmp/demo/quick:dira-export"
    )
    parser.add_argument(
        "--tasks", required=True, help="comma-separated tasks pretrained on the exported corpus, e.g. CXR,PTX-seg"
    )
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    own, external = latest(args.method, tasks), latest(args.external, tasks)
    shared = sorted(set(own) & set(external))
    print("| task | protocol | fraction | seed | method's row | external row | equal |")
    print("|---|---|---:|---:|---:|---:|:---:|")
    for key in shared:
        a, b = own[key]["value"], external[key]["value"]
        print(f"| {key[0]} | {key[1]} | {key[2]:g}% | {key[3]} | {a:.6f} | {b:.6f} | {'yes' if a == b else 'NO'} |")
    equal = sum(own[k]["value"] == external[k]["value"] for k in shared)
    print(f"\n{equal} of {len(shared)} paired evaluations equal to the last bit.")
    return 0 if equal == len(shared) else 1


if __name__ == "__main__":
    sys.exit(main())
