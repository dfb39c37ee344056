"""Paste a suite's generated report into README.md between its markers (no number is typed by hand).

    python benchmarks/readme_results.py --suite quick

Reads reports/<suite>/*.md (written by run_benchmark.py) and the runs logged in results/<suite>/runs.jsonl.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def runs_behind(results: Path):
    """The runs that produced the stored records: every logged run that ran something. A suite that grew (new
    methods, seeds) is finished by a later run that reuses the earlier records, so there can be several."""
    lines = (results / "runs.jsonl").read_text().splitlines() if (results / "runs.jsonl").exists() else []
    return [run for run in (json.loads(line) for line in lines if line.strip()) if run["ran"] > 0]


def describe_run(run, precisions) -> str:
    hw = run["hardware"]
    model = f"{hw['cpu_model']}{' with' if hw.get('cpu_bf16') else ' without'} native bf16, " if hw.get("cpu_model") else ""
    trained_in = f", pretraining precision {', '.join(precisions)}" if precisions else ""
    reused = f", reusing {run['skipped']} stored" if run["skipped"] else ""
    return (f"`python run_benchmark.py {' '.join(run['argv'])}` at commit `{run['git_commit'][:12]}`: {run['ran']} evaluations{reused}, "
            f"with their pretraining, in **{run['wall_time_s'] / 60:.1f} min** on {hw['cpu_count']} CPU cores ({model}{hw['platform']}, "
            f"torch threads {hw['torch_threads']}, device {hw['device']}{trained_in})")


def block(suite: str) -> str:
    reports, results = ROOT / "reports" / suite, ROOT / "results" / suite
    parts = []
    runs = runs_behind(results)
    if runs:
        pretrainings = results / "pretraining.jsonl"
        rows = [json.loads(line) for line in pretrainings.read_text().splitlines() if line.strip()] if pretrainings.exists() else []
        precisions = sorted({r["precision"] for r in rows if r.get("precision")})
        if len(runs) == 1:
            parts.append(f"Produced by {describe_run(runs[0], precisions)}.")
        else:
            total = sum(run["wall_time_s"] for run in runs) / 60
            lines = "\n".join(f"{i}. {describe_run(run, precisions)}" for i, run in enumerate(runs, 1))
            parts.append(f"Produced by {len(runs)} runs, {total:.1f} min in all:\n\n{lines}")
    for name in ("table1.md", "table2.md", "random_init_margins.md", "random_init_batchnorm.md", "exported_batchnorm.md", "finetune_gap.md", "segmentation.md", "pretraining.md"):
        if (reports / name).exists():
            parts.append((reports / name).read_text().strip())
    figures = [name for name in ("label_efficiency.png", "ablation.png") if (reports / name).exists()]
    parts += [f"![{name[:-4].replace('_', ' ')}](reports/{suite}/{name})" for name in figures]
    if (reports / "index.html").exists():
        parts.append(f"Every paired comparison with its p-values: `reports/{suite}/statistics.md` (per-class DeLong tests in "
                     f"`statistics_per_class.csv`); LaTeX tables `table1.tex`/`table2.tex`; all of it on one page: `reports/{suite}/index.html`.")
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
