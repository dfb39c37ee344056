"""Paste a suite's generated report into README.md between its markers (no number is typed by hand).

    python benchmarks/readme_results.py --suite quick

Reads reports/<suite>/*.md (written by run_benchmark.py) and the last complete run in results/<suite>/runs.jsonl.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def last_complete_run(results: Path):
    runs = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines() if line.strip()] if (results / "runs.jsonl").exists() else []
    complete = [r for r in runs if r["skipped"] == 0 and r["ran"] > 0]
    return complete[-1] if complete else None


def block(suite: str) -> str:
    reports, results = ROOT / "reports" / suite, ROOT / "results" / suite
    parts = []
    run = last_complete_run(results)
    if run:
        hw = run["hardware"]
        pretrainings = results / "pretraining.jsonl"
        rows = [json.loads(line) for line in pretrainings.read_text().splitlines() if line.strip()] if pretrainings.exists() else []
        precisions = sorted({r["precision"] for r in rows if r.get("precision")})
        trained_in = f", pretraining precision {', '.join(precisions)}" if precisions else ""
        parts.append(f"Last complete run: `python run_benchmark.py {' '.join(run['argv'])}` — {run['ran']} evaluations plus pretraining in **{run['wall_time_s'] / 60:.1f} min** on {hw['cpu_count']} CPU cores ({hw['platform']}, torch threads {hw['torch_threads']}, device {hw['device']}{trained_in}), commit `{run['git_commit'][:12]}`.")
    for name in ("table1.md", "table2.md", "random_init_margins.md", "pretraining.md"):
        if (reports / name).exists():
            parts.append((reports / name).read_text().strip())
    return "\n\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="quick")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = f"<!-- {args.suite}-results:start -->", f"<!-- {args.suite}-results:end -->"
    if start not in text or end not in text:
        print(f"README.md has no {start} ... {end} markers", file=sys.stderr)
        return 2
    new = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{block(args.suite)}\n{end}", text, flags=re.S)
    readme.write_text(new)
    print(f"updated README.md from reports/{args.suite}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
