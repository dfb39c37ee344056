"""The suite file's schema: every key a suite may hold, with its type and range, checked before any work.

A typo must never pass quietly: ``weigth_decay`` would otherwise leave weight decay at its default of 0 and
``method_param`` would drop every method setting. :func:`check_suite` walks the loaded YAML against the schema
below and reports every problem at once, each with its key path, what was expected and, for an unknown key, the
nearest known one ("did you mean weight_decay?"). Keys whose set depends on code (a method's settings, a dataset
loader's parameters) are read from that code, so a new method or loader needs no schema edit.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from datasets.base import dataset_names, loader_function
from medssl.nn.augment import AugmentConfig
from medssl.suite.checks import (
    MAX_SEED,
    Check,
    Problems,
    dataclass_defaults,
    describe,
    documented,
    folder_name,
    from_defaults,
    function_defaults,
    join_path,
    mapping,
    nearest,
    number,
    sequence,
    text,
)
from medssl.suite.protocol import CT_PROTOCOLS, MONITOR_DEFAULTS, PROTOCOLS, STATISTICS_DEFAULTS, TASK_TYPES
from methods import REGISTRY, method_class

# --- the suite ----------------------------------------------------------------------------------------------------
# checked against the loader's own parameters by _dataset_spec
_DATASET_PARAMS = documented("mapping of the loader's parameters (see Dataset parameters)")(lambda v, p, pr: None)


def _dataset_spec(value, path, problems, splits: bool) -> None:
    fields: Dict[str, Check] = {"name": text(dataset_names()), "params": _DATASET_PARAMS}
    if splits:
        fields["splits"] = sequence(text(("train", "val", "test")), min_length=1, unique=True)
    mapping(fields, required=("name",), what="dataset settings")(value, path, problems)
    if isinstance(value, dict) and value.get("name") in dataset_names() and value.get("params") is not None:
        from_defaults(function_defaults(loader_function(value["name"])), f"{value['name']} parameters")(
            value["params"], join_path(path, "params"), problems
        )


_TASK_DATASET = documented("dataset (`name`, `params`)")(lambda v, p, pr: _dataset_spec(v, p, pr, splits=False))


@documented("mapping from a corpus name to its dataset (`name`, `params`, `splits`: which of train, val, test)")
def _corpora(value, path, problems) -> None:
    if not isinstance(value, dict) or not value:
        problems.add(
            path,
            f"expected a mapping of named pretraining corpora, e.g. {{cxr: {{name: synthetic_cxr}}}}, got {describe(value)}",
        )
        return
    for name, spec in value.items():
        _dataset_spec(spec, join_path(path, name), problems, splits=True)


@documented("mapping from a method name to its settings (see Method settings)")
def _method_params(value, path, problems) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping from method name to its settings, got {describe(value)}")
        return
    for method, params in value.items():
        where = join_path(path, method)
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

    return sequence(
        documented("registered method (image suites: or a row of `encoders`)")(known), min_length=1, unique=True
    )


@documented("number >= 0, or a list of them (one per channel)")
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


@documented("mapping from a row name to an encoder file (`path`; optional `mean`, `std`, `prefix`)")
def _encoders(value, path, problems) -> None:
    if not isinstance(value, dict):
        problems.add(
            path,
            f"expected a mapping from row name to an encoder file, e.g. {{imagenet: {{path: weights/resnet18.pth}}}}, got {describe(value)}",
        )
        return
    for name, spec in value.items():
        mapping(ENCODER_FIELDS, required=("path",), what="encoder settings")(spec, join_path(path, name), problems)


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


def image_pretrain_schema() -> Check:
    """``pretrain``: the corpora, the shared protocol every method trains with, and the optional probe monitor."""
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
    return mapping(
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


def image_evaluation_schema() -> Check:
    """``evaluation``: the evaluation seeds and each protocol's settings."""
    seeds, positive_int, rate, _ = _shared_checks()
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
    return mapping(
        {"seeds": seeds, "linear": linear, "finetune": finetune, "knn": knn, "segmentation": segmentation},
        required=("seeds", "linear", "finetune"),
        what="evaluation settings",
    )


def image_task_schema() -> Check:
    """One entry of ``tasks``: a dataset, its protocols and label fractions."""
    fraction = number(low=0, high=100, low_open=True)
    return mapping(
        {
            "name": text(),
            "dataset": _TASK_DATASET,
            "pretrain": text(),
            "type": text(TASK_TYPES),
            "protocols": sequence(text(PROTOCOLS), min_length=1, unique=True),
            "fractions": sequence(fraction, min_length=1, unique=True),
        },
        required=("name", "dataset", "protocols", "fractions"),
        what="task settings",
    )


def statistics_schema() -> Check:
    """``statistics``: the reference method, the adjustment and the bootstrap behind the marks."""
    positive_int = number(low=1, integer=True)
    statistics = mapping(
        {
            "reference": text(),
            "variants": documented("list of strings, or null")(
                lambda v, p, pr: v is None or sequence(text())(v, p, pr)
            ),
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
    return statistics


def suite_schema(encoder_names: Sequence[str] = ()) -> Check:
    """An image suite (the default track): every section, each checked by its own schema."""
    return mapping(
        {
            "name": folder_name,
            "description": text(),
            "track": text(("2d", "ct")),
            "pretrain": image_pretrain_schema(),
            "methods": _methods(encoder_names),
            "method_params": _method_params,
            "encoders": _encoders,
            "tasks": sequence(image_task_schema(), min_length=1),
            "evaluation": image_evaluation_schema(),
            "statistics": statistics_schema(),
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
            "dataset": _TASK_DATASET,
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
            "", f"a suite is a mapping of sections (pretrain, methods, tasks, evaluation), got {describe(suite)}"
        )
        return problems.lines
    if suite.get("track") == "ct":
        ct_suite_schema()(suite, "", problems)
        return problems.lines
    encoders = suite.get("encoders")
    suite_schema(list(encoders) if isinstance(encoders, dict) else [])(suite, "", problems)
    return problems.lines
