"""The commands of an image suite (run, report, export, ``--dry-run``) and the two dataset commands (prepare,
examples), each called by :func:`medssl.cli.main.main` with the parsed command line."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

from datasets import load_dataset
from datasets.base import loader_function
from medssl.cli.inputs import (
    check_writable,
    reports_folder,
    resolve_data_roots,
    resolve_device,
    torch_device_count,
    yaml_value,
)
from medssl.cli.output import (
    check_report_has_records,
    log_run,
    print_plan,
    report_failures,
    split_without_positives,
    write_tables,
)
from medssl.data.examples import draw_examples
from medssl.plan.jobs import build_plan, parse_shard, shard_plan
from medssl.pretrain.export import export_method
from medssl.record.store import ResultStore
from medssl.run.checks import check_data
from medssl.run.image import run_plan
from medssl.runtime.cluster import check_batch_split, check_multi_node, single_node_launch
from medssl.runtime.options import RunOptions
from medssl.runtime.precision import lightning_devices
from medssl.runtime.progress import check_logger
from medssl.suite.checks import function_defaults
from medssl.suite.protocol import ConfigError

# torchrun starts this script once per device (--devices N)
SCRIPT = Path(__file__).resolve().parents[2] / "run_benchmark.py"


def examples_command(args) -> int:
    path = draw_examples(args.dataset, resolve_data_roots(args), Path(args.image))
    print(f"wrote {path}")
    return 0


def prepare_options(args) -> dict:
    """The loader's keyword arguments from --size, --spacing and --param, each checked against what it takes."""
    takes = function_defaults(loader_function(args.dataset))
    options = {"size": args.size} if "size" in takes else {}
    if args.spacing is not None:
        if "spacing" not in takes:
            raise ConfigError(f"--spacing is for CT datasets; {args.dataset} takes --size")
        try:
            options["spacing"] = [float(v) for v in args.spacing.split(",")]
        except ValueError:
            raise ConfigError(f"--spacing {args.spacing!r}: give three numbers in mm, x,y,z, e.g. 1,1,2") from None
    for text in args.params:
        key, sep, value = text.partition("=")
        if not sep or key not in takes or key in ("size", "spacing"):
            known = ", ".join(k for k in takes if k not in ("size", "spacing"))
            raise ConfigError(
                f"--param {text!r}: {args.dataset} takes KEY=VALUE with KEY one of {known} (--size and --spacing have options of their own)"
            )
        options[key] = yaml_value(value, f"--param {key}")
    return options


def prepare_command(args) -> int:
    dataset = load_dataset(
        args.dataset, resolve_data_roots(args), progress=not args.no_progress, **prepare_options(args)
    )
    summary = dataset.summary()
    if "volumes" in summary:  # a CT dataset (datasets/volumes.py)
        print(
            f"{summary['name']}: {summary['volumes']} volumes of {summary['patients']} patients; source spacing {summary['source_spacing_mm']['min']} - {summary['source_spacing_mm']['max']} mm, "
            f"resampled to {summary['working_spacing_mm']} mm, shapes {summary['shapes']['min']} - {summary['shapes']['max']}; splits {summary['splits']}"
        )
        if summary["voxels_per_organ"]:
            print("voxels per organ: " + ", ".join(f"{k} {v}" for k, v in summary["voxels_per_organ"].items()))
        if summary["not_annotated"]:
            print("not annotated in this dataset: " + ", ".join(summary["not_annotated"]))
        return 0
    print(
        f"{summary['name']}: {summary['images']} images of {summary['patients']} patients at {summary['size'][-1]} px; splits {summary['splits']}"
    )
    print("positives: " + ", ".join(f"{k} {v}" for k, v in summary["positives"].items()))
    for note in split_without_positives(dataset):
        print(f"warning: {note}")
    return 0


def export_command(args, plan, out_dir: Path) -> int:
    check_logger(args.logger)
    export_dir = Path(args.export_dir) if args.export_dir else out_dir / "exports" / plan.suite["name"]
    data_root = resolve_data_roots(args)
    check_writable(export_dir, out_dir / "checkpoints", *data_root.folders())
    options = RunOptions(
        device=resolve_device(args.device), progress=not args.no_progress, precision=args.precision, logger=args.logger
    )
    for path in export_method(plan, args.method, data_root, out_dir / "checkpoints", export_dir, options):
        print(f"wrote {path}")
    return 0


def image_command(args, argv, full_suite, suite, tag: str) -> int:
    """run / report / export / --dry-run of an image suite."""
    plan = build_plan(suite)
    out_dir = Path(args.out or "results")
    if args.command == "export":
        return export_command(args, plan, out_dir)
    full_plan = build_plan(full_suite)
    reports_root = reports_folder(args, out_dir)
    shard = parse_shard(args.shard) if args.command == "run" and args.shard else None
    if shard is not None:
        plan = shard_plan(plan, *shard)
    store = ResultStore(out_dir / suite["name"], shard=f"shard-{shard[0]}-of-{shard[1]}" if shard else None)
    if args.command == "report":
        if not store.files():
            raise ConfigError(
                f"no stored results in {store.directory}; run 'python run_benchmark.py --suite {suite['name']}' first"
            )
        check_report_has_records([job.key for job in (plan if tag else full_plan).eval_jobs], store, suite["name"])
        check_writable(reports_root)
        write_tables(plan, full_plan, store, reports_root, tag)
        return 0
    if args.dry_run:
        print_plan(plan, store, out_dir)
        done = store.keys()
        check_data(
            [job for job in plan.eval_jobs if job.key not in done],
            plan.eval_jobs,
            resolve_data_roots(args, create=False),
            store,
            out_dir / "checkpoints",
        )
        return 0
    return run_command(args, argv, plan, full_plan, store, tag, shard)


def check_devices(args, device: str, batch_size: int) -> None:
    """--devices and --nodes against this machine's CUDA devices and the suite's (global) batch."""
    wanted = lightning_devices(device, args.devices)
    last = (wanted[-1] + 1) if isinstance(wanted, list) else args.devices
    if args.devices < 1 or (device.startswith("cuda") and last > torch_device_count()):
        raise ConfigError(
            f"--device {device} --devices {args.devices}: this machine has {torch_device_count()} CUDA devices (numbered from 0)"
            if device.startswith("cuda") and args.devices >= 1
            else f"--devices must be at least 1, got {args.devices}"
        )
    check_batch_split(batch_size, args.devices * args.nodes)


def run_command(args, argv, plan, full_plan, store: ResultStore, tag: str, shard) -> int:
    """Pretrain and evaluate what is pending (every process of a DDP run joins; rank 0 stores), then the tables."""
    check_logger(args.logger)
    out_dir = Path(args.out or "results")
    reports_root = reports_folder(args, out_dir)
    device = resolve_device(args.device)
    check_devices(args, device, int(plan.suite["pretrain"].get("batch_size", 1)))
    relaunch = single_node_launch(args.nodes, args.devices, str(SCRIPT), argv)
    if relaunch:
        print(f"starting {args.devices} processes (torchrun, one per device)", flush=True)
        return subprocess.call(relaunch)
    global_rank = check_multi_node(args.nodes, args.devices)
    data_root = resolve_data_roots(args)
    if global_rank == 0:
        check_writable(
            store.directory, out_dir / "checkpoints", *data_root.folders(), *([reports_root] if shard is None else [])
        )
    started = time.time()
    options = RunOptions(
        device=device,
        progress=not args.no_progress,
        precision=args.precision,
        devices=args.devices,
        nodes=args.nodes,
        global_rank=global_rank,
        compile_loss=args.compile,
        logger=args.logger,
        keep_checkpoints=args.keep_checkpoints,
    )
    with store.lock() if global_rank == 0 else contextlib.nullcontext():
        summary = run_plan(plan, data_root, out_dir, options, store=store)
    if global_rank != 0:
        return 0  # rank 0 evaluates, writes the records and the reports
    if shard is None:
        write_tables(plan, full_plan, store, reports_root, tag if args.settings else "")
    else:
        print(
            f"shard {shard[0]}/{shard[1]} finished; when every shard has, write the tables with: python run_benchmark.py report --suite {args.suite} --out {out_dir}"
        )
    log_run(store.directory, argv, summary, device, time.time() - started, args.precision)
    print(
        f"done: {summary['ran']} evaluations run, {summary['skipped']} reused from {store.directory} ({(time.time() - started) / 60:.1f} min)"
    )
    return report_failures(summary)
