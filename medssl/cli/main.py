"""``python run_benchmark.py``: parse the command line, run the command, and turn every input error into one line
on stderr (exit code 2; a full disk 1; an interrupt 130) instead of a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

from datasets import DatasetError
from datasets.storage import FULL, DiskFull, disk_full
from medssl.cli.commands import examples_command, image_command, prepare_command
from medssl.cli.ct import ct_command
from medssl.cli.inputs import selected_suite
from medssl.cli.output import list_everything
from medssl.cli.parser import UsageError, parse_args
from medssl.pretrain.encoder import CorruptCheckpoint
from medssl.record.store import Busy
from medssl.suite.protocol import ConfigError


def dispatch(args, argv) -> int:
    if args.command == "run" and args.list:
        list_everything()
        return 0
    if args.command == "examples":
        return examples_command(args)
    if args.command == "prepare":
        return prepare_command(args)
    full_suite, suite, tag = selected_suite(args)
    if full_suite.get("track") == "ct":
        return ct_command(args, argv, full_suite, suite, tag)
    return image_command(args, argv, full_suite, suite, tag)


def main(argv=None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    args = None
    try:
        args = parse_args(argv)
        return dispatch(args, argv)
    except Busy as err:
        print(
            f"error: another run is using {err.directory or 'this results folder'}: {err}. Wait for it to finish, or give this run another --out "
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
