"""Paste a suite's generated report into README.md and docs/ between its markers (no number is typed by hand).

    python benchmarks/readme_results.py --suite quick      # or quick-long, quick-seeds, vox2vec3d
    python benchmarks/readme_results.py --paste NAME --source FILE   # FILE's text, headed by the command that wrote it

Reads reports/<suite>/*.md (written by run_benchmark.py) and the runs logged in results/<suite>/runs.jsonl; with
--paste, a benchmark's saved output (e.g. reports/benchmarks/suite_cost-miccai2024.md) between the NAME markers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def runs_behind(results: Path):
    """The runs that produced the suite's report: every logged run that ran something, except --set runs. A suite
    that grew (new methods, seeds) is finished by a later run that reuses the earlier records, so there can be several."""
    lines = (results / "runs.jsonl").read_text().splitlines() if (results / "runs.jsonl").exists() else []
    # a --set run stores its records in the same folder but reports them elsewhere (REPORTS/<suite>--set-<hash>/)
    return [
        run
        for run in (json.loads(line) for line in lines if line.strip())
        if run["ran"] > 0 and "--set" not in run["argv"]
    ]


def describe_run(run, precisions) -> str:
    """One logged run; its own training precision when the run log has it, else every precision of the stored
    pretrainings (run logs before the precision was logged)."""
    hw = run["hardware"]
    model = (
        f"{hw['cpu_model']}{' with' if hw.get('cpu_bf16') else ' without'} native bf16, " if hw.get("cpu_model") else ""
    )
    precisions = [run["precision"]] if run.get("precision") else precisions
    trained_in = f", pretraining precision {', '.join(precisions)}" if precisions else ""
    reused = f", reusing {run['skipped']} stored" if run["skipped"] else ""
    return (
        f"`python run_benchmark.py {' '.join(run['argv'])}` at commit `{run['git_commit'][:12]}`: {run['ran']} evaluations{reused}, "
        f"with their pretraining, in **{run['wall_time_s'] / 60:.1f} min** on {hw['cpu_count']} CPU cores ({model}{hw['platform']}, "
        f"torch threads {hw['torch_threads']}, device {hw['device']}{trained_in})"
    )


def block(suite: str) -> str:
    reports, results = ROOT / "reports" / suite, ROOT / "results" / suite
    parts = []
    runs = runs_behind(results)
    if runs:
        pretrainings = results / "pretraining.jsonl"
        rows = (
            [json.loads(line) for line in pretrainings.read_text().splitlines() if line.strip()]
            if pretrainings.exists()
            else []
        )
        precisions = sorted({r["precision"] for r in rows if r.get("precision")})
        if len(runs) == 1:
            parts.append(f"Produced by {describe_run(runs[0], precisions)}.")
        else:
            total = sum(run["wall_time_s"] for run in runs) / 60
            lines = "\n".join(f"{i}. {describe_run(run, precisions)}" for i, run in enumerate(runs, 1))
            parts.append(f"Produced by {len(runs)} runs, {total:.1f} min in all:\n\n{lines}")
    for name in (
        "table1.md",
        "table2.md",
        "random_init_margins.md",
        "random_init_batchnorm.md",
        "exported_batchnorm.md",
        "finetune_gap.md",
        "segmentation.md",
        "ct_table.md",
        "ct_statistics.md",
        "pretraining.md",
    ):
        if (reports / name).exists():
            parts.append((reports / name).read_text().strip())
    statistics = (reports / "statistics.md").read_text() if (reports / "statistics.md").exists() else ""
    components = (
        statistics[statistics.find("## Variance components") :] if "## Variance components" in statistics else ""
    )
    if re.search(r"\| \d+\.\d / ", components):  # shown once the pretraining runs are replicated
        parts.append(
            components.replace("## Variance components\n\n", "Variance components (from `statistics.md`): ", 1).strip()
        )
    figures = [name for name in ("label_efficiency.png", "ablation.png", "ct_organs.png") if (reports / name).exists()]
    parts += [f"![{name[:-4].replace('_', ' ')}](reports/{suite}/{name})" for name in figures]
    if (reports / "ct_table.md").exists():  # a CT suite (medssl/report/ct.py)
        parts.append(
            f"CSV and LaTeX tables `reports/{suite}/ct_table.csv`/`.tex`, the tests as CSV `ct_statistics.csv`; all of it on one page: `reports/{suite}/index.html`."
        )
    elif (reports / "index.html").exists():
        parts.append(
            f"Every paired comparison with its p-values: `reports/{suite}/statistics.md` (per-class DeLong tests in "
            f"`statistics_per_class.csv`); LaTeX tables `table1.tex`/`table2.tex`; all of it on one page: `reports/{suite}/index.html`."
        )
    return "\n\n".join(parts)


def marked_files():
    """The pages that may hold markers: README.md and every page of docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(content: str, page: Path) -> str:
    """Image links written from the repository root (``](reports/...``) made relative to ``page``'s folder."""
    prefix = Path(os.path.relpath(ROOT, page.parent)).as_posix()
    return content if prefix == "." else content.replace("](reports/", f"]({prefix}/reports/")


def paste(name: str, content: str) -> bool:
    """Replace what README.md or a page of docs/ holds between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
    with ``content`` (every page that has the markers); False (and a message) when none has them."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pasted = False
    for page in marked_files():
        text = page.read_text()
        if start in text and end in text:
            block = f"{start}\n{relative_links(content, page)}\n{end}"
            page.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S))
            pasted = True
    if not pasted:
        print(f"neither README.md nor docs/ has {start} ... {end} markers", file=sys.stderr)
    return pasted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--paste", help="marker name of a README block to fill with --source's text")
    parser.add_argument("--source", type=Path, help="with --paste: the saved output to paste")
    parser.add_argument("--command", help="with --paste: the command that wrote --source, named above the pasted text")
    args = parser.parse_args()
    if args.paste:
        if args.source is None or not args.source.exists():
            print(
                f"--paste {args.paste} needs --source FILE, an existing file with the output to paste", file=sys.stderr
            )
            return 2
        header = f"`{args.command}`:\n\n" if args.command else ""
        return 0 if paste(args.paste, header + args.source.read_text().strip()) else 2
    if not paste(f"{args.suite}-results", block(args.suite)):
        return 2
    table1 = ROOT / "reports" / args.suite / "table1.md"
    if table1.exists() and any(f"<!-- {args.suite}-table1:start -->" in page.read_text() for page in marked_files()):
        paste(f"{args.suite}-table1", table1.read_text().strip())  # the README's front-door table
    print(f"updated the pages that show reports/{args.suite}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
