#!/usr/bin/env python
"""medssl-bench: pretrain SSL methods and evaluate them with linear probing and fine-tuning.

Examples:
  python run_benchmark.py --suite quick                 # the embedded default (synthetic data, CPU, minutes)
  python run_benchmark.py --suite quick --dry-run       # print every job and whether it is done
  python run_benchmark.py --suite miccai2024 --data-root /data --device cuda
  python run_benchmark.py report --suite quick          # rebuild Table 1/2 from stored results only
  python run_benchmark.py --list                        # suites, methods, datasets
  python run_benchmark.py prepare --dataset nih_chestxray14 --data-root /data   # check the layout, build the cache
  python run_benchmark.py --suite quick --encoder imagenet=weights/resnet18-f37072fd.pth   # your own encoder as a row
  python run_benchmark.py export --suite quick --method coboom   # trunks as .safetensors for torchvision
  python run_benchmark.py COMMAND --help                # each command's options
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import List

COMMANDS = ("run", "report", "export", "examples", "prepare")
DESCRIPTIONS = {
    "run": "pretrain what the suite's evaluations need, evaluate, store one record per job and write the tables (the default command)",
    "report": "rebuild the tables, statistics and figures of a suite from its stored results only (every shard's records)",
    "export": "write a method's pretrained trunks as .safetensors in torchvision's key names (1-channel and 3-channel) with a JSON sidecar, pretraining first if needed",
    "examples": "draw sample images of a dataset",
    "prepare": "check a real dataset's layout and build its image cache",
}


class UsageError(Exception):
    """A command line argparse cannot read; reported as one line like every other input error."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message}; 'python {self.prog} --help' lists what it takes")


def suite_options(parser: argparse.ArgumentParser, narrowing: bool = True) -> None:
    """What selects a suite's jobs: the suite, its overrides (hashed), external rows and the narrowing lists (not hashed)."""
    parser.add_argument(
        "--suite", default="quick", help="suite name in benchmarks/suites/ or a path to a suite .yaml (default: quick)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        dest="settings",
        help="override one suite setting, e.g. --set pretrain.epochs=5 or --set 'tasks.0.fractions=[1,100]' (value read as YAML; repeatable); "
        "checked by the suite schema and hashed as if the suite file said so; the tables go to REPORTS/<suite>--set-<hash>/",
    )
    parser.add_argument(
        "--encoder",
        action="append",
        default=[],
        metavar="NAME=PATH[,mean=M,std=S,prefix=P,stem=S]",
        help="add an encoder you bring as a table row, evaluated like every method (repeatable): a torchvision/timm ResNet state dict, "
        "a Lightning checkpoint of a lightly or solo-learn model, or a .safetensors file (docs/own-encoder.md)",
    )
    if narrowing:
        parser.add_argument("--methods", help="comma-separated subset of the suite's methods, e.g. simclr,coboom")
        parser.add_argument("--seeds", help="comma-separated evaluation seeds, e.g. 0,1,2 (default: the suite's)")
        parser.add_argument(
            "--pretrain-seeds",
            help="comma-separated pretraining seeds, e.g. 0 for a fast demonstration run (default: the suite's); "
            "with one pretraining seed the tables carry no comparison marks (docs/statistics.md)",
        )
        parser.add_argument(
            "--fractions", help="comma-separated label fractions in percent, e.g. 1,10,100 (default: the suite's)"
        )
    parser.add_argument(
        "--out",
        help="results folder: records in OUT/<suite>/, checkpoints in OUT/checkpoints/, and reports in OUT/reports/ unless --reports is given (default: results)",
    )


def reports_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reports",
        help="reports folder: tables in REPORTS/<suite>/; a report narrowed by --methods/--seeds/--pretrain-seeds/--fractions "
        "or changed by --set goes to REPORTS/<suite>--<tag>/ and never replaces the suite's (default: reports, or OUT/reports with --out)",
    )


def data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        help="folder with the datasets, each in its folder (docs/getting-started.md); synthetic data is generated there (default: ./data)",
    )
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="DATASET=PATH",
        help="read one dataset from a folder of its own, e.g. --data nih_chestxray14=/downloads/archive (repeatable; not hashed: records carry the data's fingerprint)",
    )


def training_options(parser: argparse.ArgumentParser) -> None:
    data_options(parser)
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto = cuda if available)"
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "32", "bf16"),
        help="training precision: auto = bf16 autocast where the hardware runs it natively (recent GPUs, CPUs with AVX512-BF16), fp16 on older GPUs, else fp32; 32 forces fp32 (default: auto)",
    )
    parser.add_argument(
        "--logger",
        choices=("csv", "tensorboard"),
        help="Lightning logger for pretraining and fine-tuning, its logs kept next to the checkpoint: "
        "OUT/checkpoints/<pretraining>/logs/ and .../finetune/<evaluation>/ (default: CSV logs of pretraining only; tensorboard needs tensorboardX or tensorboard)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and CI)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="run_benchmark.py",
        description="Pretrain self-supervised methods on medical images and evaluate them on downstream tasks "
        "(linear probing, kNN and fine-tuning at several label fractions), then write Table 1/2. "
        "Finished work is stored and never redone: re-running a command resumes it.",
        epilog="Without a command, 'run' is meant (python run_benchmark.py --suite quick). 'python run_benchmark.py COMMAND --help' lists a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    run = commands.add_parser("run", help=DESCRIPTIONS["run"], description=DESCRIPTIONS["run"])
    suite_options(run)
    reports_option(run)
    training_options(run)
    run.add_argument(
        "--shard",
        help="K/N: run only the K-th of N disjoint parts of the job grid (whole pretrainings with their evaluations), e.g. one per cluster array task; each shard writes OUT/<suite>/records.shard-K-of-N.jsonl and 'report' merges them",
    )
    run.add_argument(
        "--devices",
        type=int,
        default=1,
        help="pretrain on this many devices of this machine with DDP: the command starts itself once per device through torchrun "
        "(the suite's batch size is the global batch; BatchNorm synchronised; rank 0 evaluates) (default: 1)",
    )
    run.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="pretrain across this many nodes with DDP; start one process per device on every node with srun or torchrun, e.g. 'srun --nodes 2 --ntasks-per-node 4 python run_benchmark.py --suite miccai2024 --nodes 2 --devices 4' (default: 1)",
    )
    run.add_argument(
        "--compile",
        action="store_true",
        help="compile each pretraining step's loss computation (trunk, heads, EMA targets, decoders, loss) with torch.compile (GPU; needs a C++ compiler on CPU)",
    )
    run.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each finished pretraining's last.ckpt (optimizer and method state, "
        "several times the encoder) instead of deleting it once encoder.pt is stored; benchmarks/exported_batchnorm.py reads it",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (every pretraining and evaluation job with its key and status) and exit",
    )
    run.add_argument("--list", action="store_true", help="list suites, methods and datasets and exit")
    report = commands.add_parser("report", help=DESCRIPTIONS["report"], description=DESCRIPTIONS["report"])
    suite_options(report)
    reports_option(report)
    export = commands.add_parser(
        "export",
        help=DESCRIPTIONS["export"],
        description=DESCRIPTIONS["export"] + ". Each pretraining of the method in the suite "
        "(corpus x pretraining seed) gives KEY.safetensors (as trained), KEY-3ch.safetensors (conv1 repeated over 3 channels and divided by 3: "
        "torchvision.models.<backbone>().load_state_dict(sd, strict=False) loads it with only fc missing) and a JSON sidecar next to each.",
    )
    suite_options(export, narrowing=False)
    export.add_argument("--method", required=True, help="the suite method to export, e.g. coboom")
    export.add_argument("--pretrain-seeds", help="comma-separated pretraining seeds to export (default: the suite's)")
    export.add_argument("--export-dir", help="where the files go (default: OUT/exports/<suite>/)")
    training_options(export)
    examples = commands.add_parser("examples", help=DESCRIPTIONS["examples"], description=DESCRIPTIONS["examples"])
    examples.add_argument("--dataset", default="synthetic_cxr", help="the dataset (default: synthetic_cxr)")
    data_options(examples)
    examples.add_argument(
        "--image",
        default="docs/synthetic_cxr_examples.png",
        help="output PNG path (default: docs/synthetic_cxr_examples.png)",
    )
    prepare = commands.add_parser("prepare", help=DESCRIPTIONS["prepare"], description=DESCRIPTIONS["prepare"])
    prepare.add_argument(
        "--dataset", default="synthetic_cxr", help="the dataset, e.g. nih_chestxray14 (default: synthetic_cxr)"
    )
    data_options(prepare)
    prepare.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="params",
        help="a loader parameter as a suite's dataset params give it, e.g. --param labels=patient for odir (value read as YAML; repeatable)",
    )
    prepare.add_argument(
        "--size",
        type=int,
        default=256,
        help="side of the cached square images in pixels (default: 256, what the miccai2024 suite reads)",
    )
    prepare.add_argument(
        "--spacing",
        help="for CT datasets: the voxel spacing in mm the volumes are resampled to, x,y,z (default: the loader's; 1,1,2 for BTCV, AMOS, FLARE22 as vox2vec)",
    )
    prepare.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and CI)")
    return parser


def parse_args(argv):
    """Argparse's namespace; a command line without a command is a 'run' (``--suite quick`` as before)."""
    argv = list(argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["run"] + argv
    args, extra = build_parser().parse_known_args(argv)
    if extra:
        raise UsageError(
            f"'{args.command}' does not take {' '.join(extra)}; 'python run_benchmark.py {args.command} --help' lists its options"
        )
    return args


def resolve_device(name: str) -> str:
    import torch

    from medssl.suite.protocol import ConfigError

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
    from medssl.suite.protocol import ConfigError

    if arg is None:
        root = Path("data")
        root.mkdir(exist_ok=True)
        return root
    root = Path(arg)
    if not root.is_dir():
        raise ConfigError(
            f"data root {root} does not exist; create it, point --data-root at your datasets, or omit --data-root to use ./data"
        )
    return root


def resolve_data_roots(args, create: bool = True):
    """--data-root (see :func:`resolve_data_root`; a dry run does not create ./data) with each --data DATASET=PATH."""
    from datasets import dataset_names
    from datasets.base import DataRoots
    from medssl.suite.protocol import ConfigError

    default = resolve_data_root(args.data_root) if create or args.data_root is not None else Path("data")
    folders = {}
    for text in args.data:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--data {text!r}: write DATASET=PATH, e.g. --data nih_chestxray14=/downloads/archive")
        if name not in dataset_names():
            raise ConfigError(
                f"--data {text!r}: unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}"
            )
        if not Path(path).is_dir():
            raise ConfigError(f"--data {text!r}: folder {path} does not exist")
        folders[name] = Path(path)
    return DataRoots(default, folders)


def yaml_value(text: str, option: str):
    """A command-line value read as YAML (``labels=patient`` -> 'patient', ``seed=3`` -> 3) with the size and depth
    limits of --set values (``config.read_yaml``); text that is not YAML stays text."""
    import yaml

    from medssl.suite.config import read_yaml

    try:
        return read_yaml(text, option)
    except yaml.YAMLError:
        return text


def split_without_positives(dataset) -> List[str]:
    """Per split, the classes without a positive image: a macro AUC leaves them out (warned by ``prepare``)."""
    import numpy as np

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
    from datasets import describe_datasets
    from medssl.suite.config import load_suite, suite_names
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
    print(
        "Your own encoders (docs/own-encoder.md): --encoder NAME=PATH[,mean=M,std=S,prefix=P,stem=S] adds a row. The ImageNet-supervised\n"
        "  row from torchvision's weights file (download it where you have a network; nothing is downloaded here):\n"
        "    python run_benchmark.py --suite quick --encoder imagenet=resnet18-f37072fd.pth   (ImageNet's mean/std by default; a grey image is fed as three channels)"
    )


def print_plan(plan, store, out_dir: Path) -> None:
    from medssl.pretrain.train import ENCODER_FILE, encoder_status
    from medssl.suite.config import fraction_label

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
    import datetime

    from medssl.record import provenance
    from medssl.record.store import append_line
    from medssl.runtime.precision import precision_for

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


def check_writable(*folders: Path) -> None:
    """Each folder exists or can be made, and takes a file: checked before any work, so nothing is computed that
    cannot be stored."""
    import os
    import tempfile

    from medssl.suite.protocol import ConfigError

    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise ConfigError(
                f"cannot write to {folder} ({err.strerror}); make it writable or choose another folder (--out, --reports, --data-root, --export-dir)"
            ) from None


def narrowing_tag(narrowing) -> str:
    """'' for the whole suite, else e.g. 'methods-simclr--fractions-100': the name suffix of a narrowed report, from
    the parsed command-line lists (``apply_overrides``'s keywords)."""
    return "--".join(
        f"{name.replace('_', '-')}-{'-'.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)}"
        for name, values in narrowing.items()
        if values is not None
    )


def write_suite_reports(full_plan, store, reports_root: Path) -> None:
    """The suite's reports from every stored record of it (rows of methods that have records), whatever part of the
    suite this command ran."""
    from medssl.plan.jobs import recorded_plan
    from medssl.report.tables import write_reports

    plan = recorded_plan(full_plan, store.records())
    if plan is None:
        return
    for path in write_reports(plan, store, reports_root / full_plan.suite["name"], store.pretraining_records()):
        print(f"wrote {path}")


def run_variants(directory: Path) -> List[str]:
    """The ``--set`` changes of the runs that stored results in ``directory`` (from its runs.jsonl), each written as
    on the command line, in the order first used; "no --set" for a run without any."""
    from medssl.record.store import read_lines

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
    from medssl.suite.protocol import ConfigError

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


def reports_folder(args, out_dir: Path) -> Path:
    """--reports, else OUT/reports with --out, else reports/."""
    return Path(args.reports) if args.reports else (out_dir / "reports" if args.out else Path("reports"))


def selected_suite(args) -> tuple:
    """(the suite with --set and --encoder applied, the same narrowed by --methods/--seeds/..., the tag of a
    narrowed or changed report): what 'run', 'report' and 'export' read. --set changes the suite (hashed as if
    written in it); the narrowing lists only select jobs."""
    from medssl.evaluate.external import parse_encoder_option
    from medssl.plan.jobs import with_encoders
    from medssl.suite.config import apply_overrides, load_suite, parse_list
    from medssl.suite.protocol import stable_hash
    from methods import method_names

    full_suite = load_suite(args.suite, settings=args.settings)
    for text in args.encoder:
        full_suite = with_encoders(full_suite, dict([parse_encoder_option(text, method_names())]))
    narrowing = {
        "methods": parse_list(getattr(args, "methods", None), option="--methods"),
        "pretrain_seeds": parse_list(args.pretrain_seeds, int, "--pretrain-seeds"),
        "seeds": parse_list(getattr(args, "seeds", None), int, "--seeds"),
        "fractions": parse_list(getattr(args, "fractions", None), float, "--fractions"),
    }
    suite = apply_overrides(full_suite, **narrowing)
    tag = "--".join(
        part
        for part in (narrowing_tag(narrowing), f"set-{stable_hash(args.settings, 8)}" if args.settings else "")
        if part
    )
    return full_suite, suite, tag


def main(argv=None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    from datasets import DatasetError
    from datasets.storage import FULL, DiskFull, disk_full
    from medssl.pretrain.train import CorruptCheckpoint
    from medssl.record.store import Busy
    from medssl.suite.protocol import ConfigError

    store = None
    args = None
    try:
        args = parse_args(argv)
        if args.command == "run" and args.list:
            list_everything()
            return 0
        if args.command == "examples":
            from medssl.data.examples import draw_examples

            path = draw_examples(args.dataset, resolve_data_roots(args), Path(args.image))
            print(f"wrote {path}")
            return 0
        if args.command == "prepare":
            from datasets import load_dataset
            from datasets.base import loader_function
            from medssl.suite.schema import function_defaults

            takes = function_defaults(loader_function(args.dataset))
            options = {"size": args.size} if "size" in takes else {}
            if args.spacing is not None:
                if "spacing" not in takes:
                    raise ConfigError(f"--spacing is for CT datasets; {args.dataset} takes --size")
                try:
                    options["spacing"] = [float(v) for v in args.spacing.split(",")]
                except ValueError:
                    raise ConfigError(
                        f"--spacing {args.spacing!r}: give three numbers in mm, x,y,z, e.g. 1,1,2"
                    ) from None
            for text in args.params:
                key, sep, value = text.partition("=")
                if not sep or key not in takes or key in ("size", "spacing"):
                    known = ", ".join(k for k in takes if k not in ("size", "spacing"))
                    raise ConfigError(
                        f"--param {text!r}: {args.dataset} takes KEY=VALUE with KEY one of {known} (--size and --spacing have options of their own)"
                    )
                options[key] = yaml_value(value, f"--param {key}")
            dataset = load_dataset(args.dataset, resolve_data_roots(args), progress=not args.no_progress, **options)
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
        from medssl.plan.jobs import build_plan, parse_shard, shard_plan
        from medssl.record.store import ResultStore
        from medssl.runtime.progress import check_logger

        full_suite, suite, tag = selected_suite(args)
        if full_suite.get("track") == "ct":
            return run_ct_command(args, argv, full_suite, suite, tag)
        plan = build_plan(suite)
        out_dir = Path(args.out or "results")
        if args.command == "export":
            from medssl.pretrain.export import export_method

            check_logger(args.logger)
            export_dir = Path(args.export_dir) if args.export_dir else out_dir / "exports" / suite["name"]
            data_root = resolve_data_roots(args)
            check_writable(export_dir, out_dir / "checkpoints", *data_root.folders())
            for path in export_method(
                plan,
                args.method,
                data_root,
                out_dir / "checkpoints",
                export_dir,
                device=resolve_device(args.device),
                precision=args.precision,
                progress=not args.no_progress,
                logger=args.logger,
            ):
                print(f"wrote {path}")
            return 0
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
            from medssl.run.image import check_data

            done = store.keys()
            check_data(
                [job for job in plan.eval_jobs if job.key not in done],
                plan.eval_jobs,
                resolve_data_roots(args, create=False),
                store,
                out_dir / "checkpoints",
            )
            return 0
        check_logger(args.logger)
        from medssl.run.image import run_plan
        from medssl.run.options import RunOptions
        from medssl.runtime.cluster import check_batch_split, check_multi_node, single_node_launch

        device = resolve_device(args.device)
        from medssl.runtime.precision import lightning_devices

        wanted = lightning_devices(device, args.devices)
        last = (wanted[-1] + 1) if isinstance(wanted, list) else args.devices
        if args.devices < 1 or (device.startswith("cuda") and last > torch_device_count()):
            raise ConfigError(
                f"--device {device} --devices {args.devices}: this machine has {torch_device_count()} CUDA devices (numbered from 0)"
                if device.startswith("cuda") and args.devices >= 1
                else f"--devices must be at least 1, got {args.devices}"
            )
        check_batch_split(int(plan.suite["pretrain"].get("batch_size", 1)), args.devices * args.nodes)
        relaunch = single_node_launch(args.nodes, args.devices, str(Path(__file__).resolve()), argv)
        if relaunch:
            print(f"starting {args.devices} processes (torchrun, one per device)", flush=True)
            return subprocess.call(relaunch)
        global_rank = check_multi_node(args.nodes, args.devices)
        data_root = resolve_data_roots(args)
        if global_rank == 0:
            check_writable(
                store.directory,
                out_dir / "checkpoints",
                *data_root.folders(),
                *([reports_root] if shard is None else []),
            )
        started = time.time()
        with store.lock() if global_rank == 0 else contextlib.nullcontext():
            summary = run_plan(
                plan,
                data_root,
                out_dir,
                RunOptions(
                    device=device,
                    progress=not args.no_progress,
                    precision=args.precision,
                    devices=args.devices,
                    nodes=args.nodes,
                    global_rank=global_rank,
                    compile_loss=args.compile,
                    logger=args.logger,
                    keep_checkpoints=args.keep_checkpoints,
                ),
                store=store,
            )
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
    except Busy as err:
        print(
            f"error: another run is using {err.directory or (store.directory if store is not None else 'this results folder')}: {err}. Wait for it to finish, or give this run another --out "
            "(the shards of one grid, --shard K/N, may share a folder)",
            file=sys.stderr,
        )
        return 2
    except (ConfigError, DatasetError, CorruptCheckpoint, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DiskFull as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in FULL:
            raise
        where = Path(err.filename).parent if err.filename else "a folder this run writes to"
        print(f"error: {disk_full(where, Path(err.filename).name if err.filename else 'a file', err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished results are kept in {(getattr(args, 'out', None) or 'results')}/; run the same command again to resume",
            file=sys.stderr,
        )
        return 130


def run_ct_command(args, argv, full_suite, suite, tag: str) -> int:
    """run / report of a CT suite (``track: ct``, medssl/run/ct.py): one device, its own plan, records and tables."""
    from medssl.record.store import ResultStore
    from medssl.report.ct import write_ct_reports
    from medssl.run.ct import build_ct_plan, run_ct_plan
    from medssl.run.options import RunOptions
    from medssl.runtime.progress import check_logger
    from medssl.suite.protocol import ConfigError

    name = suite["name"]
    if args.encoder:
        raise ConfigError(
            f"--encoder brings 2D ResNet encoders; suite {name} is a CT suite, whose rows are FPN3d encoders it pretrains (or initialises at random)"
        )
    if args.command == "export":
        raise ConfigError(
            f"'export' writes the ResNet encoders of image suites; the FPN3d encoders of CT suite {name} are OUT/checkpoints/<key>/encoder.pt (SHA-256 in encoder.json)"
        )
    refused = [
        option
        for option, given in (
            ("--shard", getattr(args, "shard", None)),
            ("--devices", getattr(args, "devices", 1) != 1),
            ("--nodes", getattr(args, "nodes", 1) != 1),
            ("--compile", getattr(args, "compile", False)),
            ("--precision bf16", getattr(args, "precision", "auto") == "bf16"),
        )
        if given
    ]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)}: CT suite {name} trains on one device in fp32, as the official vox2vec code; leave {'them' if len(refused) > 1 else 'it'} out"
        )
    plan = build_ct_plan(suite)
    out_dir = Path(args.out or "results")
    reports_root = reports_folder(args, out_dir)
    store = ResultStore(out_dir / name)
    # a narrowed report (--methods, --seeds, ...) or a changed suite (--set) never replaces the suite's own tables
    narrowed = bool(tag) and (args.command == "report" or bool(args.settings))
    report_plan, report_dir = (
        (plan, reports_root / f"{name}--{tag}") if narrowed else (build_ct_plan(full_suite), reports_root / name)
    )
    if args.command == "report":
        if not store.files():
            raise ConfigError(
                f"no stored results in {store.directory}; run 'python run_benchmark.py --suite {args.suite}' first"
            )
        check_report_has_records([key for job in report_plan.eval_jobs for key in job.record_keys], store, name)
        check_writable(reports_root)
        for path in write_ct_reports(report_plan, store, report_dir):
            print(f"wrote {path}")
        return 0
    if args.dry_run:
        done = store.keys()
        print(f"Suite {name} (CT): {len(plan.pretrain_jobs)} pretraining jobs, {len(plan.eval_jobs)} evaluation jobs")
        for job in plan.pretrain_jobs:
            print(f"  {job.key:<40} seed={job.seed}")
        for job in plan.eval_jobs:
            print(f"  {job.key}  {job.describe()} [{'done' if all(k in done for k in job.record_keys) else 'pending'}]")
        from medssl.run.image import check_data

        check_data(
            [job for job in plan.eval_jobs if not all(k in done for k in job.record_keys)],
            plan.eval_jobs,
            resolve_data_roots(args, create=False),
            store,
            out_dir / "checkpoints",
        )
        return 0
    check_logger(args.logger)
    device = resolve_device(args.device)
    data_root = resolve_data_roots(args)
    check_writable(store.directory, out_dir / "checkpoints", *data_root.folders(), reports_root)
    started = time.time()
    with store.lock():
        summary = run_ct_plan(
            plan,
            data_root,
            out_dir,
            RunOptions(
                device=device,
                progress=not args.no_progress,
                logger=args.logger,
                keep_checkpoints=args.keep_checkpoints,
            ),
            store=store,
        )
    for path in write_ct_reports(report_plan, store, report_dir):
        print(f"wrote {path}")
    log_run(store.directory, argv, summary, device, time.time() - started, "32")
    print(
        f"done: {summary['ran']} evaluations run, {summary['skipped']} reused from {store.directory} ({(time.time() - started) / 60:.1f} min)"
    )
    return report_failures(summary)


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


def write_tables(plan, full_plan, store, reports_root: Path, tag: str) -> None:
    """The suite's report (REPORTS/<suite>/, from every stored record of it) or, for a narrowed or --set run, the
    report of what was asked for (REPORTS/<suite>--<tag>/, which never replaces the suite's)."""
    from medssl.report.tables import write_reports

    if not tag:
        write_suite_reports(full_plan, store, reports_root)
        return
    for path in write_reports(plan, store, reports_root / f"{plan.suite['name']}--{tag}", store.pretraining_records()):
        print(f"wrote {path}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of ours
        sys.stderr.close()
        sys.exit(0)
