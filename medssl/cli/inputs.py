"""What a command line names, resolved and checked before any work: the device, the data folders, the suite with
its ``--set`` changes, ``--encoder`` rows and narrowing lists, and the folders a run writes to."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import yaml

from datasets import dataset_names
from datasets.base import DataRoots
from medssl.evaluate.external import parse_encoder_option
from medssl.plan.jobs import with_encoders
from medssl.suite.config import apply_overrides, load_suite, parse_list, read_yaml
from medssl.suite.protocol import ConfigError, stable_hash
from methods import method_names


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return name


def torch_device_count() -> int:
    return torch.cuda.device_count()


def resolve_data_root(arg) -> Path:
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
    try:
        return read_yaml(text, option)
    except yaml.YAMLError:
        return text


def check_writable(*folders: Path) -> None:
    """Each folder exists or can be made, and takes a file: checked before any work, so nothing is computed that
    cannot be stored."""
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


def reports_folder(args, out_dir: Path) -> Path:
    """--reports, else OUT/reports with --out, else reports/."""
    return Path(args.reports) if args.reports else (out_dir / "reports" if args.out else Path("reports"))


def selected_suite(args) -> tuple:
    """(the suite with --set and --encoder applied, the same narrowed by --methods/--seeds/..., the tag of a
    narrowed or changed report): what 'run', 'report' and 'export' read. --set changes the suite (hashed as if
    written in it); the narrowing lists only select jobs."""
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
