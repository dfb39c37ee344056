"""The suite file's schema: every key a suite may hold, with its type and range, checked before any work.

A typo must never pass quietly: ``weigth_decay`` would otherwise leave weight decay at its default of 0 and
``method_param`` would drop every method setting. :func:`check_suite` walks the loaded YAML against the schema
below and reports every problem at once, each with its key path, what was expected and, for an unknown key, the
nearest known one ("did you mean weight_decay?"). Keys whose set depends on code (a method's settings, a dataset
loader's parameters) are read from that code, so a new method or loader needs no schema edit.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
from typing import Any, Callable, Dict, List, Optional, Sequence

from datasets.base import dataset_names, loader_function
from medssl.nn.augment import AugmentConfig
from medssl.suite.protocol import CT_PROTOCOLS, MONITOR_DEFAULTS, PROTOCOLS, STATISTICS_DEFAULTS, TASK_TYPES
from methods import REGISTRY, method_class

# Seeds feed numpy's and torch's generators, which take 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1


class Problems:
    """Collects schema violations as ``path: message`` lines."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{path or '(top level)'}: {message}")


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def nearest(name: str, known: Sequence[str]) -> str:
    """' (did you mean X?)' for the closest known name, or '' when none is close."""
    known = [str(k) for k in known]
    match = (
        difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        or [k for k in known if k.startswith(str(name)) or str(name).startswith(k)][:1]
    )
    return f"; did you mean {match[0]!r}?" if match else ""


# --- leaf checkers: each takes (value, path, problems) -------------------------------------------------------------
Check = Callable[[Any, str, Problems], None]


def number(
    low: Optional[float] = None, high: Optional[float] = None, integer: bool = False, low_open: bool = False
) -> Check:
    def check(value, path, problems):
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            problems.add(path, f"expected {kind}, got {_describe(value)}")
            return
        if not math.isfinite(value):  # NaN passes every comparison below; inf is no setting's value
            problems.add(path, f"expected a finite number, got {value!r}")
            return
        if low is not None and (value <= low if low_open else value < low):
            problems.add(path, f"expected {kind} {'>' if low_open else '>='} {low:g}, got {value!r}")
        if high is not None and value > high:
            problems.add(path, f"expected {kind} <= {high:g}, got {value!r}")

    return check


def text(choices: Optional[Sequence[str]] = None) -> Check:
    def check(value, path, problems):
        if not isinstance(value, str):
            problems.add(
                path,
                f"expected a string{' (one of ' + ', '.join(choices) + ')' if choices else ''}, got {_describe(value)}",
            )
        elif choices is not None and value not in choices:
            problems.add(path, f"expected one of {', '.join(choices)}, got {value!r}{nearest(value, choices)}")

    return check


def folder_name(value, path, problems):
    """A name that becomes a folder (results/<suite>/, reports/<suite>/): letters, digits and _ . + - only, so it
    can never point outside the results folder (``../../x``)."""
    if not isinstance(value, str):
        problems.add(path, f"expected a string, got {_describe(value)}")
    elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", value) or ".." in value:
        problems.add(
            path,
            f"{value!r} names the suite's results and reports folders: use letters, digits and _ . + - (no / or ..)",
        )


def flag(value, path, problems):
    if not isinstance(value, bool):
        problems.add(path, f"expected true or false, got {_describe(value)}")


def sequence(item: Check, min_length: int = 0, length: Optional[int] = None, unique: bool = False) -> Check:
    def check(value, path, problems):
        if not isinstance(value, (list, tuple)):
            problems.add(path, f"expected a list, got {_describe(value)}")
            return
        if length is not None and len(value) != length:
            problems.add(path, f"expected a list of {length} values, got {len(value)}")
        elif len(value) < min_length:
            problems.add(
                path, f"expected a list of at least {min_length} value{'s' if min_length > 1 else ''}, got {len(value)}"
            )
        for position, element in enumerate(value):
            item(element, f"{path}[{position}]", problems)
        if unique:
            repeated = sorted({str(v) for v in value if list(value).count(v) > 1})
            if repeated:
                problems.add(path, f"repeats {', '.join(repeated)}; list each once")

    return check


def mapping(fields: Dict[str, Check], required: Sequence[str] = (), what: str = "") -> Check:
    """A dict whose keys are all known: unknown keys are named with the nearest known one."""

    def check(value, path, problems):
        if not isinstance(value, dict):
            problems.add(
                path, f"expected a mapping of {what or 'settings'} ({', '.join(fields)}), got {_describe(value)}"
            )
            return
        for key in required:
            if key not in value:
                problems.add(_join(path, key), "missing (required)")
        for key, element in value.items():
            if key not in fields:
                problems.add(_join(path, key), f"unknown key{nearest(key, list(fields))} (known: {', '.join(fields)})")
            else:
                fields[key](element, _join(path, key), problems)

    return check


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def from_defaults(defaults: Dict[str, Any], what: str) -> Check:
    """Settings whose names and types are those of ``defaults`` (a dataclass's or a function's): a setting of a
    numeric default takes a finite number, a list or tuple default a list, a string one a string, a boolean one a
    boolean. Ranges follow the default's sign: a positive default (a size, a temperature) takes a positive number, a
    zero default (a seed, a weight decay) a non-negative one, a negative one (BTCV's ``fold: -1``) any."""

    def check_one(default):
        if isinstance(default, bool):
            return flag
        bound = {"low": 0, "low_open": default > 0} if isinstance(default, (int, float)) and default >= 0 else {}
        if isinstance(default, int):
            return number(integer=True, **bound)
        if isinstance(default, float):
            return number(**bound)
        if isinstance(default, str):
            return text()
        if isinstance(default, (list, tuple)):
            return sequence(lambda v, p, pr: None)
        return lambda v, p, pr: None  # no default type to check against (None): the code checks the value

    return mapping({name: check_one(default) for name, default in defaults.items()}, what=what)


def dataclass_defaults(cls) -> Dict[str, Any]:
    out = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            out[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[field.name] = field.default_factory()  # type: ignore[misc]
        else:
            out[field.name] = None
    return out


def function_defaults(fn, skip: Sequence[str] = ("data_root", "progress")) -> Dict[str, Any]:
    return {
        name: (p.default if p.default is not inspect.Parameter.empty else None)
        for name, p in inspect.signature(fn).parameters.items()
        if name not in skip
    }


# --- the suite ----------------------------------------------------------------------------------------------------
def _dataset_spec(value, path, problems, splits: bool) -> None:
    fields: Dict[str, Check] = {"name": text(dataset_names()), "params": lambda v, p, pr: None}
    if splits:
        fields["splits"] = sequence(text(("train", "val", "test")), min_length=1, unique=True)
    mapping(fields, required=("name",), what="dataset settings")(value, path, problems)
    if isinstance(value, dict) and value.get("name") in dataset_names() and value.get("params") is not None:
        from_defaults(function_defaults(loader_function(value["name"])), f"{value['name']} parameters")(
            value["params"], _join(path, "params"), problems
        )


def _corpora(value, path, problems) -> None:
    if not isinstance(value, dict) or not value:
        problems.add(
            path,
            f"expected a mapping of named pretraining corpora, e.g. {{cxr: {{name: synthetic_cxr}}}}, got {_describe(value)}",
        )
        return
    for name, spec in value.items():
        _dataset_spec(spec, _join(path, name), problems, splits=True)


def _method_params(value, path, problems) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping from method name to its settings, got {_describe(value)}")
        return
    for method, params in value.items():
        where = _join(path, method)
        if method not in REGISTRY:
            problems.add(where, f"unknown method{nearest(method, list(REGISTRY))} (known: {', '.join(REGISTRY)})")
            continue
        if params is not None:
            from_defaults(dataclass_defaults(method_class(method).Config), f"{method} settings")(
                params, where, problems
            )


def _methods(encoder_names: Sequence[str]) -> Check:
    """Registered methods, and the names of the suite's own ``encoders`` (rows placed among the methods)."""

    def known(name, where, problems):
        if not isinstance(name, str) or (name not in REGISTRY and name not in encoder_names):
            problems.add(
                where,
                f"unknown method {name!r}{nearest(str(name), list(REGISTRY) + list(encoder_names))} (known: {', '.join(REGISTRY)})",
            )

    return sequence(known, min_length=1, unique=True)


def _numbers_or_number(value, path, problems) -> None:
    if isinstance(value, (list, tuple)):
        sequence(number(low=0), min_length=1)(value, path, problems)
    else:
        number(low=0)(value, path, problems)


# an external encoder (medssl/evaluate/external.py): sha256 and normalisation are filled in when the suite is planned
ENCODER_FIELDS: Dict[str, Check] = {
    "path": text(),
    "mean": _numbers_or_number,
    "std": _numbers_or_number,
    "prefix": text(),
    "sha256": text(),
    "normalisation": text(),
}


def _encoders(value, path, problems) -> None:
    if not isinstance(value, dict):
        problems.add(
            path,
            f"expected a mapping from row name to an encoder file, e.g. {{imagenet: {{path: weights/resnet18.pth}}}}, got {_describe(value)}",
        )
        return
    for name, spec in value.items():
        mapping(ENCODER_FIELDS, required=("path",), what="encoder settings")(spec, _join(path, name), problems)


def _augment() -> Check:
    pair = sequence(number(), length=2)
    fields = {
        name: (pair if isinstance(default, tuple) else number(low=0))
        for name, default in dataclass_defaults(AugmentConfig).items()
    }
    return mapping(fields, what="augmentation settings")


def _shared_checks() -> tuple:
    """The checks both suite kinds use: (seed lists, positive integers, positive rates, the lr schedule)."""
    seeds = sequence(number(low=0, high=MAX_SEED, integer=True), min_length=1, unique=True)
    schedule = mapping(
        {
            "name": text(("warmup_cosine", "constant")),
            "warmup_epochs": number(low=0),
            "final_lr_ratio": number(low=0, high=1),
        },
        what="schedule settings",
    )
    return seeds, number(low=1, integer=True), number(low=0, low_open=True), schedule


def suite_schema(encoder_names: Sequence[str] = ()) -> Check:
    seeds, positive_int, rate, schedule = _shared_checks()
    fraction = number(low=0, high=100, low_open=True)
    optimizer = mapping(
        {
            "name": text(("lars", "sgd", "adam", "adamw")),
            "lr": rate,
            "weight_decay": number(low=0),
            "momentum": number(low=0, high=1),
            "trust_coefficient": rate,
        },
        required=("name", "lr"),
        what="optimiser settings",
    )
    monitor = mapping(
        {
            "every_epochs": positive_int,
            "fraction": fraction,
            "seed": number(low=0, high=MAX_SEED, integer=True),
            "l2": sequence(rate, min_length=1),
        },
        what="monitor settings",
    )
    assert set(MONITOR_DEFAULTS) == {"every_epochs", "fraction", "seed", "l2"}, (
        "keep the monitor schema in step with MONITOR_DEFAULTS"
    )
    pretrain = mapping(
        {
            "datasets": _corpora,
            "backbone": text(("resnet18", "resnet34", "resnet50")),
            "image_size": number(low=8, integer=True),
            "epochs": number(low=0, integer=True),
            "batch_size": positive_int,
            "optimizer": optimizer,
            "schedule": schedule,
            "augment": _augment(),
            "seeds": seeds,
            "monitor": monitor,
        },
        required=(
            "datasets",
            "backbone",
            "image_size",
            "epochs",
            "batch_size",
            "optimizer",
            "schedule",
            "augment",
            "seeds",
        ),
        what="pretraining settings",
    )
    common = {
        "epochs": number(low=0, integer=True),
        "lr": rate,
        "weight_decay": number(low=0),
        "batch_size": positive_int,
        "min_steps": number(low=0, integer=True),
        "validations": positive_int,
        "seeds": seeds,
    }
    linear = mapping(
        {**common, "solver": text(("lbfgs", "adamw")), "l2": sequence(rate, min_length=1)}, what="linear-probe settings"
    )
    finetune = mapping({**common, "augment": _augment()}, required=("epochs", "lr"), what="fine-tuning settings")
    segmentation = mapping(common, required=("epochs", "lr"), what="segmentation settings")
    knn = mapping(
        {"k": positive_int, "temperature": rate, "seeds": seeds}, required=("k", "temperature"), what="kNN settings"
    )
    evaluation = mapping(
        {"seeds": seeds, "linear": linear, "finetune": finetune, "knn": knn, "segmentation": segmentation},
        required=("seeds", "linear", "finetune"),
        what="evaluation settings",
    )
    task = mapping(
        {
            "name": text(),
            "dataset": lambda v, p, pr: _dataset_spec(v, p, pr, splits=False),
            "pretrain": text(),
            "type": text(TASK_TYPES),
            "protocols": sequence(text(PROTOCOLS), min_length=1, unique=True),
            "fractions": sequence(fraction, min_length=1, unique=True),
        },
        required=("name", "dataset", "protocols", "fractions"),
        what="task settings",
    )
    statistics = mapping(
        {
            "reference": text(),
            "variants": lambda v, p, pr: v is None or sequence(text())(v, p, pr),
            "adjust": text(("holm", "bh")),
            "alpha": number(low=0, high=1, low_open=True),
            "resamples": positive_int,
            "confidence": number(low=0, high=1, low_open=True),
            "seed": number(low=0, high=MAX_SEED, integer=True),
        },
        what="statistics settings",
    )
    assert set(STATISTICS_DEFAULTS) <= {
        "reference",
        "variants",
        "adjust",
        "alpha",
        "resamples",
        "confidence",
        "seed",
    }, "keep the statistics schema in step"
    return mapping(
        {
            "name": folder_name,
            "description": text(),
            "track": text(("2d", "ct")),
            "pretrain": pretrain,
            "methods": _methods(encoder_names),
            "method_params": _method_params,
            "encoders": _encoders,
            "tasks": sequence(task, min_length=1),
            "evaluation": evaluation,
            "statistics": statistics,
        },
        required=("pretrain", "methods", "tasks", "evaluation"),
        what="suite sections",
    )


def ct_suite_schema() -> Check:
    """A CT suite (``track: ct``, medssl/run/ct.py): steps instead of images, one segmentation protocol set."""
    seeds, positive_int, rate, schedule = _shared_checks()
    patch = sequence(number(low=1, integer=True), length=3)
    optimizer = mapping(
        {
            "name": text(("adam", "adamw", "sgd")),
            "lr": rate,
            "weight_decay": number(low=0),
            "momentum": number(low=0, high=1),
        },
        required=("name", "lr"),
        what="optimiser settings",
    )
    pretrain = mapping(
        {
            "datasets": _corpora,
            "epochs": positive_int,
            "steps_per_epoch": positive_int,
            "optimizer": optimizer,
            "schedule": schedule,
            "seeds": seeds,
        },
        required=("datasets", "epochs", "steps_per_epoch", "optimizer", "seeds"),
        what="CT pretraining settings",
    )
    segmentation3d = mapping(
        {
            "patch_size": patch,
            "epochs": positive_int,
            "steps_per_epoch": positive_int,
            "patches_per_step": positive_int,
            "validations": positive_int,
            "lr": rate,
            "freeze_epochs": number(low=0, integer=True),
            "warmup_epochs": positive_int,
            "inference_overlap": number(low=0, high=0.9),
            "inference_batch": positive_int,
            "seeds": seeds,
        },
        required=("patch_size", "epochs", "steps_per_epoch", "lr"),
        what="3D segmentation settings",
    )
    evaluation = mapping(
        {"seeds": seeds, "segmentation3d": segmentation3d},
        required=("seeds", "segmentation3d"),
        what="CT evaluation settings",
    )
    task = mapping(
        {
            "name": text(),
            "dataset": lambda v, p, pr: _dataset_spec(v, p, pr, splits=False),
            "pretrain": text(),
            "protocols": sequence(text(CT_PROTOCOLS), min_length=1, unique=True),
            "folds": sequence(number(low=0, integer=True), min_length=1, unique=True),
        },
        required=("name", "dataset", "protocols"),
        what="CT task settings",
    )
    statistics = mapping(
        {"adjust": text(("holm", "bh")), "alpha": number(low=0, high=1, low_open=True)}, what="statistics settings"
    )
    return mapping(
        {
            "name": folder_name,
            "description": text(),
            "track": text(("ct",)),
            "pretrain": pretrain,
            "methods": _methods(()),
            "method_params": _method_params,
            "tasks": sequence(task, min_length=1),
            "evaluation": evaluation,
            "statistics": statistics,
        },
        required=("track", "pretrain", "methods", "tasks", "evaluation"),
        what="CT suite sections",
    )


def check_suite(suite: Any) -> List[str]:
    """Every schema violation of a loaded suite, as ``key.path: what is wrong`` lines (empty when it is valid)."""
    problems = Problems()
    if not isinstance(suite, dict):
        problems.add(
            "", f"a suite is a mapping of sections (pretrain, methods, tasks, evaluation), got {_describe(suite)}"
        )
        return problems.lines
    if suite.get("track") == "ct":
        ct_suite_schema()(suite, "", problems)
        return problems.lines
    encoders = suite.get("encoders")
    suite_schema(list(encoders) if isinstance(encoders, dict) else [])(suite, "", problems)
    return problems.lines
