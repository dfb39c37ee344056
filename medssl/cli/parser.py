"""The command line: one parser per command, every option documented in its ``--help`` (docs/cli.md), and errors
argparse finds reported as one line like every other input error."""

from __future__ import annotations

import argparse

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
    add_run_command(commands)
    report = commands.add_parser("report", help=DESCRIPTIONS["report"], description=DESCRIPTIONS["report"])
    suite_options(report)
    reports_option(report)
    add_export_command(commands)
    add_data_commands(commands)
    return parser


def add_run_command(commands) -> None:
    """``run``: the suite's options, where the reports go, how it trains and how it scales out."""
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


def add_export_command(commands) -> None:
    """``export``: one method's pretrained trunks as .safetensors (medssl/pretrain/export.py)."""
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


def add_data_commands(commands) -> None:
    """``examples`` and ``prepare``: one dataset, without a suite."""
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
