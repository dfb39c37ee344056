#!/usr/bin/env python
"""medssl-bench: pretrain SSL methods and evaluate them with linear probing and fine-tuning.

Examples:
  python run_benchmark.py --suite quick                 # the embedded default (synthetic data, CPU, minutes)
  python run_benchmark.py --suite quick --dry-run       # print every job and whether it is done
  python run_benchmark.py --suite miccai2024 --data-root /data --device cuda
  python run_benchmark.py report --suite quick          # rebuild Table 1/2 from stored results only
  python run_benchmark.py --list                        # suites, methods, datasets
  python run_benchmark.py prepare --dataset nih_chestxray14 --data-root /data   # check the layout, build the cache
"""
from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("run", "report", "examples", "prepare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_benchmark.py",
        description="Pretrain self-supervised methods on medical images and evaluate them on downstream tasks "
        "(linear probing and fine-tuning at several label fractions), then write Table 1/2. "
        "Finished work is stored and never redone: re-running a command resumes it.",
        epilog="Commands: 'run' (default) pretrains and evaluates; 'report' rebuilds the tables from stored results; "
        "'examples' draws sample images of a dataset; 'prepare' checks a real dataset's layout and builds its image cache. 'python run_benchmark.py COMMAND --help' for details.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", choices=COMMANDS, default="run", help="what to do (default: run)")
    parser.add_argument("--suite", default="quick", help="suite name in benchmarks/suites/ or a path to a suite .yaml (default: quick)")
    parser.add_argument("--methods", help="comma-separated subset of the suite's methods, e.g. simclr,coboom")
    parser.add_argument("--seeds", help="comma-separated evaluation seeds, e.g. 0,1,2 (default: the suite's)")
    parser.add_argument("--pretrain-seeds", help="comma-separated pretraining seeds, e.g. 0 for a fast demonstration run (default: the suite's); "
                        "with one pretraining seed the tables carry no comparison marks (README \"Statistics\")")
    parser.add_argument("--fractions", help="comma-separated label fractions in percent, e.g. 1,10,100 (default: the suite's)")
    parser.add_argument("--data-root", help="folder with the datasets; synthetic data is generated there (default: ./data)")
    parser.add_argument("--out", help="results folder: records in OUT/<suite>/, checkpoints in OUT/checkpoints/, and reports in OUT/reports/ unless --reports is given (default: results)")
    parser.add_argument("--reports", help="reports folder: tables in REPORTS/<suite>/; a report narrowed by --methods/--seeds/--pretrain-seeds/--fractions goes to "
                        "REPORTS/<suite>--<narrowing>/ and never replaces the suite's (default: reports, or OUT/reports with --out)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto = cuda if available)")
    parser.add_argument("--precision", default="auto", choices=("auto", "32", "bf16"), help="training precision: auto = bf16 autocast where the hardware runs it natively (recent GPUs, CPUs with AVX512-BF16), fp16 on older GPUs, else fp32; 32 forces fp32 (default: auto)")
    parser.add_argument("--shard", help="K/N: run only the K-th of N disjoint parts of the job grid (whole pretrainings with their evaluations), e.g. one per cluster array task; each shard writes OUT/<suite>/records.shard-K-of-N.jsonl and 'report' merges them")
    parser.add_argument("--devices", type=int, default=1, help="pretrain on this many devices of this machine with DDP: the command starts itself once per device through torchrun "
                        "(the suite's batch size is the global batch; BatchNorm synchronised; rank 0 evaluates) (default: 1)")
    parser.add_argument("--nodes", type=int, default=1, help="pretrain across this many nodes with DDP; start one process per device on every node with srun or torchrun, e.g. 'srun --nodes 2 --ntasks-per-node 4 python run_benchmark.py --suite miccai2024 --nodes 2 --devices 4' (default: 1)")
    parser.add_argument("--compile", action="store_true", help="compile each pretraining step's loss computation (trunk, heads, EMA targets, decoders, loss) with torch.compile (GPU; needs a C++ compiler on CPU)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (every pretraining and evaluation job with its key and status) and exit")
    parser.add_argument("--list", action="store_true", help="list suites, methods and datasets and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and CI)")
    parser.add_argument("--dataset", default="synthetic_cxr", help="for 'examples' and 'prepare': the dataset (default: synthetic_cxr)")
    parser.add_argument("--size", type=int, default=256, help="for 'prepare': side of the cached square images in pixels (default: 256, what the miccai2024 suite reads)")
    parser.add_argument("--image", default="docs/synthetic_cxr_examples.png", help="for 'examples': output PNG path")
    return parser


def resolve_device(name: str) -> str:
    import torch

    from medssl.config import ConfigError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return name


def torch_device_count() -> int:
    import torch

    return torch.cuda.device_count()


def resolve_data_root(arg) -> Path:
    from medssl.config import ConfigError

    if arg is None:
        root = Path("data")
        root.mkdir(exist_ok=True)
        return root
    root = Path(arg)
    if not root.is_dir():
        raise ConfigError(f"data root {root} does not exist; create it, point --data-root at your datasets, or omit --data-root to use ./data")
    return root


def list_everything() -> None:
    from datasets import describe_datasets
    from medssl.config import load_suite, suite_names
    from methods import REGISTRY

    print("Suites (benchmarks/suites/):")
    for name in suite_names():
        print(f"  {name:<14} {load_suite(name).get('description', '').strip().splitlines()[0]}")
    print("Methods:")
    for name, entry in REGISTRY.items():
        print(f"  {name:<14} {entry.description}")
    print("Datasets:")
    for name, text in describe_datasets().items():
        print(f"  {name:<14} {text}")


def print_plan(plan, store, out_dir: Path) -> None:
    from medssl.config import fraction_label
    from medssl.pretrain import ENCODER_FILE, encoder_status

    done = store.keys()
    print(f"Suite {plan.suite['name']}: {len(plan.pretrain_jobs)} pretraining jobs, {len(plan.eval_jobs)} evaluation jobs")
    print("Pretraining:")
    for job in plan.pretrain_jobs:
        status = {"done": "done", "corrupt": "damaged: will be redone"}.get(encoder_status(out_dir / "checkpoints" / job.key / ENCODER_FILE), "pending" if job.trains else "random init")
        print(f"  {job.key:<40} seed={job.seed} [{status}]")
    print("Evaluation:")
    for job in plan.eval_jobs:
        status = "done" if job.key in done else "pending"
        print(f"  {job.key}  {job.pretrain.method:<14} {job.task['name']:<10} {job.protocol:<9} {fraction_label(job.fraction):>5} seed={job.seed} [{status}]")
    pending = sum(1 for j in plan.eval_jobs if j.key not in done)
    print(f"{len(plan.eval_jobs) - pending} done, {pending} pending")


def log_run(directory: Path, argv, summary, device: str, wall_time_s: float, precision: str = "auto") -> None:
    """Append one line per invocation to OUT/<suite>/runs.jsonl: what ran, how long it took, where."""
    import datetime

    from medssl import provenance
    from medssl.precision import precision_for

    from medssl.records import append_line

    entry = {"finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "argv": list(argv), "ran": summary["ran"], "skipped": summary["skipped"], "wall_time_s": round(wall_time_s, 1), "git_commit": provenance.git_commit(), "hardware": provenance.hardware(device), "precision": precision_for(device, precision)}
    directory.mkdir(parents=True, exist_ok=True)
    append_line(directory / "runs.jsonl", entry)


def check_writable(*folders: Path) -> None:
    """Each folder exists or can be made, and takes a file: checked before any work, so nothing is computed that
    cannot be stored."""
    import os
    import tempfile

    from medssl.config import ConfigError

    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise ConfigError(f"cannot write to {folder} ({err.strerror}); make it writable or choose another folder (--out, --reports, --data-root)") from None


def narrowing_tag(narrowing) -> str:
    """'' for the whole suite, else e.g. 'methods-simclr--fractions-100': the name suffix of a narrowed report, from
    the parsed command-line lists (``apply_overrides``'s keywords)."""
    return "--".join(f"{name.replace('_', '-')}-{'-'.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)}"
                     for name, values in narrowing.items() if values is not None)


def write_suite_reports(full_plan, store, reports_root: Path) -> None:
    """The suite's reports from every stored record of it (rows of methods that have records), whatever part of the
    suite this command ran."""
    from medssl.plan import recorded_plan
    from medssl.report import write_reports

    plan = recorded_plan(full_plan, store.records())
    if plan is None:
        return
    for path in write_reports(plan, store, reports_root / full_plan.suite["name"], store.pretraining_records()):
        print(f"wrote {path}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from datasets import DatasetError
    from medssl.config import ConfigError, apply_overrides, load_suite, parse_list
    from medssl.pretrain import CorruptCheckpoint
    from medssl.records import Busy

    store = None

    try:
        if args.list:
            list_everything()
            return 0
        if args.command == "examples":
            from medssl.examples import draw_examples

            path = draw_examples(args.dataset, resolve_data_root(args.data_root), Path(args.image))
            print(f"wrote {path}")
            return 0
        if args.command == "prepare":
            from datasets import load_dataset

            dataset = load_dataset(args.dataset, resolve_data_root(args.data_root), size=args.size, progress=not args.no_progress)
            summary = dataset.summary()
            print(f"{summary['name']}: {summary['images']} images of {summary['patients']} patients at {summary['size'][-1]} px; splits {summary['splits']}")
            print("positives: " + ", ".join(f"{k} {v}" for k, v in summary["positives"].items()))
            return 0
        from medssl.plan import build_plan, parse_shard, shard_plan
        from medssl.records import ResultStore
        from medssl.report import write_reports

        full_suite = load_suite(args.suite)
        narrowing = {"methods": parse_list(args.methods, option="--methods"), "pretrain_seeds": parse_list(args.pretrain_seeds, int, "--pretrain-seeds"),
                     "seeds": parse_list(args.seeds, int, "--seeds"), "fractions": parse_list(args.fractions, float, "--fractions")}
        suite = apply_overrides(full_suite, **narrowing)
        plan = build_plan(suite)
        full_plan = build_plan(full_suite)
        out_dir = Path(args.out or "results")
        reports_root = Path(args.reports) if args.reports else (out_dir / "reports" if args.out else Path("reports"))
        tag = narrowing_tag(narrowing)
        shard = parse_shard(args.shard) if args.shard else None
        if shard is not None and args.command == "report":
            raise ConfigError("'report' reads every shard's records; run it without --shard")
        if shard is not None:
            plan = shard_plan(plan, *shard)
        store = ResultStore(out_dir / suite["name"], shard=f"shard-{shard[0]}-of-{shard[1]}" if shard else None)
        if args.dry_run:
            print_plan(plan, store, out_dir)
            return 0
        if args.command == "report":
            if not store.files():
                raise ConfigError(f"no stored results in {store.directory}; run 'python run_benchmark.py --suite {suite['name']}' first")
            check_writable(reports_root)
            if not tag:
                write_suite_reports(full_plan, store, reports_root)
                return 0
            # a narrowed report has its own folder: it never replaces the suite's full report
            for path in write_reports(plan, store, reports_root / f"{suite['name']}--{tag}", store.pretraining_records()):
                print(f"wrote {path}")
            return 0
        from medssl.cluster import check_batch_split, check_multi_node, single_node_launch
        from medssl.runner import run_plan

        device = resolve_device(args.device)
        from medssl.precision import lightning_devices

        wanted = lightning_devices(device, args.devices)
        last = (wanted[-1] + 1) if isinstance(wanted, list) else args.devices
        if args.devices < 1 or (device.startswith("cuda") and last > torch_device_count()):
            raise ConfigError(f"--device {device} --devices {args.devices}: this machine has {torch_device_count()} CUDA devices (numbered from 0)" if device.startswith("cuda") and args.devices >= 1 else f"--devices must be at least 1, got {args.devices}")
        check_batch_split(int(plan.suite["pretrain"].get("batch_size", 1)), args.devices * args.nodes)
        relaunch = single_node_launch(args.nodes, args.devices, str(Path(__file__).resolve()), list(argv if argv is not None else sys.argv[1:]))
        if relaunch:
            print(f"starting {args.devices} processes (torchrun, one per device)", flush=True)
            return subprocess.call(relaunch)
        global_rank = check_multi_node(args.nodes, args.devices)
        data_root = resolve_data_root(args.data_root)
        if global_rank == 0:
            check_writable(store.directory, out_dir / "checkpoints", data_root, *([reports_root] if shard is None else []))
        started = time.time()
        with store.lock() if global_rank == 0 else contextlib.nullcontext():
            summary = run_plan(plan, data_root, out_dir, device=device, progress=not args.no_progress, store=store, precision=args.precision, devices=args.devices, compile_loss=args.compile,
                               nodes=args.nodes, global_rank=global_rank)
        if global_rank != 0:
            return 0  # rank 0 evaluates, writes the records and the reports
        if shard is None:
            write_suite_reports(full_plan, store, reports_root)
        else:
            print(f"shard {shard[0]}/{shard[1]} finished; when every shard has, write the tables with: python run_benchmark.py report --suite {args.suite} --out {out_dir}")
        log_run(store.directory, argv if argv is not None else sys.argv[1:], summary, device, time.time() - started, args.precision)
        print(f"done: {summary['ran']} evaluations run, {summary['skipped']} reused from {store.directory} ({(time.time() - started) / 60:.1f} min)")
        if summary["failed"]:
            print(f"{len(summary['failed'])} pretraining{'s' if len(summary['failed']) > 1 else ''} failed; everything else is stored:\n  " + "\n  ".join(summary["failed"]), file=sys.stderr)
            return 1
        return 0
    except Busy as err:
        print(f"error: another run is using {store.directory}: {err}. Wait for it to finish, or give this run another --out "
              "(the shards of one grid, --shard K/N, may share a folder)", file=sys.stderr)
        return 2
    except (ConfigError, DatasetError, CorruptCheckpoint) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished results are kept in {args.out or 'results'}/; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of ours
        sys.stderr.close()
        sys.exit(0)
