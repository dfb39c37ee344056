"""Suite definitions (YAML in ``benchmarks/suites/``) and their canonical hashes.

A suite fixes the shared protocol (backbone, image size, epochs, batch, optimiser, schedule, augmentations,
pretraining data), the method roster, the downstream tasks with their label fractions and protocols, and the
seeds. Every pretraining run and every evaluation is identified by a hash of exactly the settings that
determine its result, so a changed setting never reuses a stale checkpoint or record.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITES_DIR = REPO_ROOT / "benchmarks" / "suites"
# Bump when a code change alters what a pretraining or evaluation with the same settings produces.
PROTOCOL_VERSION = 2
PROTOCOLS = ("linear", "finetune")
# classification: multi-label linear head, macro AUC; segmentation: U-Net decoder on the trunk, per-image Dice
# (medssl/segment.py). Under "linear" a segmentation task freezes the encoder and trains only the decoder.
TASK_TYPES = ("classification", "segmentation")


class ConfigError(ValueError):
    """The suite or the command line asks for something impossible; the message says what to change."""


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash of a JSON-serialisable object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def suite_names() -> List[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name_or_path: str) -> Dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SUITES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown suite {name_or_path!r}; known suites: {', '.join(suite_names())} (or pass a path to a .yaml file)")
    with open(path) as fh:
        suite = yaml.safe_load(fh)
    suite.setdefault("name", path.stem)
    _validate(suite, path)
    return suite


# Defaults of the learning-signal monitor (medssl/monitor.py), the settings a suite may give under pretrain.monitor.
MONITOR_DEFAULTS = {"every_epochs": 1, "fraction": 10, "seed": 0, "l2": [1e-3, 1e-2, 1e-1, 1.0]}

# Paired comparisons in the reports (medssl/compare.py), the settings a suite may give under ``statistics``.
# reference: the method every other row is tested against (the suite's proposed method); variants: rows that are
# ablations of the reference, not baselines (default: every suite method named "<reference>-..."); adjust: holm or
# bh, across each table. The test behind the marks is not a setting: it takes the pretraining run as its unit.
STATISTICS_DEFAULTS = {"reference": "coboom", "variants": None, "adjust": "holm", "alpha": 0.05,
                       "resamples": 2000, "confidence": 0.95, "seed": 0}

_REQUIRED = {
    "pretrain": ("datasets", "backbone", "image_size", "epochs", "batch_size", "optimizer", "schedule", "augment", "seeds"),
    "evaluation": ("seeds", "linear", "finetune"),
}


def _validate(suite: Dict[str, Any], path: Path) -> None:
    for section, keys in _REQUIRED.items():
        if section not in suite:
            raise ConfigError(f"{path}: missing section {section!r}")
        missing = [k for k in keys if k not in suite[section]]
        if missing:
            raise ConfigError(f"{path}: section {section!r} lacks {missing}")
    try:
        check_optimizer(suite["pretrain"]["optimizer"] or {})
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    try:
        check_seeds(suite["pretrain"]["seeds"] or [], "pretrain.seeds")
        check_seeds(suite["evaluation"]["seeds"] or [], "evaluation.seeds")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    unknown_monitor = set(suite["pretrain"].get("monitor") or {}) - set(MONITOR_DEFAULTS)
    if unknown_monitor:
        raise ConfigError(f"{path}: pretrain.monitor has unknown settings {sorted(unknown_monitor)}; known: {list(MONITOR_DEFAULTS)}")
    statistics = suite.get("statistics") or {}
    if "primary" in statistics:
        raise ConfigError(f"{path}: statistics.primary is no longer a setting: the marks' test always takes the pretraining run as its unit "
                          "(README \"Statistics\"); delete the line")
    unknown_statistics = set(statistics) - set(STATISTICS_DEFAULTS)
    if unknown_statistics:
        raise ConfigError(f"{path}: statistics has unknown settings {sorted(unknown_statistics)}; known: {list(STATISTICS_DEFAULTS)}")
    if statistics.get("adjust", "holm") not in ("holm", "bh"):
        raise ConfigError(f"{path}: statistics.adjust must be 'holm' or 'bh', got {statistics['adjust']!r}")
    if not suite.get("methods"):
        raise ConfigError(f"{path}: 'methods' must list at least one method")
    if not suite.get("tasks"):
        raise ConfigError(f"{path}: 'tasks' must list at least one downstream task")
    for task in suite["tasks"]:
        for key in ("name", "dataset", "protocols", "fractions"):
            if key not in task:
                raise ConfigError(f"{path}: task {task.get('name', '?')!r} lacks {key!r}")
        bad = [p for p in task["protocols"] if p not in PROTOCOLS]
        if bad:
            raise ConfigError(f"{path}: task {task['name']!r} has unknown protocols {bad}; use {PROTOCOLS}")
        validate_fractions(task["fractions"])
        kind = task.get("type", "classification")
        if kind not in TASK_TYPES:
            raise ConfigError(f"{path}: task {task['name']!r} has unknown type {kind!r}; use one of {TASK_TYPES}")
        if kind == "segmentation" and "segmentation" not in suite["evaluation"]:
            raise ConfigError(f"{path}: task {task['name']!r} is a segmentation task but the suite has no evaluation.segmentation settings (epochs, lr, batch_size)")


def check_optimizer(optimizer: Dict[str, Any]) -> None:
    """LARS needs a non-zero weight decay: lightly's LARS applies the trust ratio only to parameter groups with weight
    decay (its way of excluding biases and norms), so without it every weight would train by plain SGD at the LARS
    lr, silently."""
    if optimizer.get("name", "lars") == "lars" and float(optimizer.get("weight_decay") or 0.0) == 0.0:
        raise ConfigError("pretrain.optimizer is lars without weight_decay: lightly's LARS applies its trust ratio only where weight decay is "
                          "non-zero, so every weight would train by plain SGD at the LARS lr; set weight_decay (the CoBooM paper's 1.5e-6) or use sgd")


def validate_fractions(fractions: Sequence[float]) -> List[float]:
    """Label fractions are percentages of the training split, 0 < f <= 100."""
    out = []
    for f in fractions:
        try:
            value = float(f)
        except (TypeError, ValueError):
            raise ConfigError(f"label fraction {f!r} is not a number; give percentages such as 1,10,100") from None
        if not 0 < value <= 100:
            raise ConfigError(f"label fraction {value:g}% is impossible; fractions are percentages in (0, 100]")
        out.append(value)
    return out


def parse_list(text: Optional[str], kind=str) -> Optional[List[Any]]:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as a comma-separated list of {kind.__name__}") from None


def check_seeds(seeds: Sequence[int], what: str) -> List[int]:
    """A seed list from a suite or the command line: at least one, no repeats (a repeated seed would count one run twice)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError(f"{what}: give at least one seed, e.g. 0")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"{what} repeats {repeated}: each seed is one independent run; list each once, e.g. 0,1,2")
    return seeds


def apply_overrides(suite: Dict[str, Any], methods=None, seeds=None, fractions=None, pretrain_seeds=None) -> Dict[str, Any]:
    """Narrow a suite from the command line; the result hashes the same as a suite written that way."""
    suite = copy.deepcopy(suite)
    if methods is not None:
        suite["methods"] = list(methods)
    if pretrain_seeds is not None:
        suite["pretrain"]["seeds"] = check_seeds(pretrain_seeds, "--pretrain-seeds")
    if seeds is not None:
        suite["evaluation"]["seeds"] = check_seeds(seeds, "--seeds")
        for protocol in PROTOCOLS:
            suite["evaluation"][protocol].pop("seeds", None)
    if fractions is not None:
        fractions = validate_fractions(fractions)
        for task in suite["tasks"]:
            task["fractions"] = fractions
    return suite


def statistics_settings(suite: Dict[str, Any]) -> Dict[str, Any]:
    settings = {**STATISTICS_DEFAULTS, **(suite.get("statistics") or {})}
    if settings["variants"] is None:
        settings["variants"] = [m for m in suite["methods"] if m.startswith(f"{settings['reference']}-")]
    return settings


def fraction_label(fraction: float) -> str:
    return "100%" if float(fraction) == 100 else f"{float(fraction):g}%"
