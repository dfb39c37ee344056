"""Suite definitions (YAML in ``benchmarks/suites/``) and their canonical hashes.

A suite fixes the shared protocol (backbone, image size, epochs, batch, optimiser, schedule, augmentations,
pretraining data), the method roster, the downstream tasks with their label fractions and protocols, and the
seeds. Every pretraining run and every evaluation is identified by a hash of exactly the settings that
determine its result, so a changed setting never reuses a stale checkpoint or record.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from datasets.base import loader_function
from medssl.nn.optim import check_optimizer
from medssl.suite.checks import MAX_SEED, function_defaults
from medssl.suite.protocol import PROTOCOLS, STATISTICS_DEFAULTS, ConfigError
from medssl.suite.schema import check_suite

REPO_ROOT = Path(__file__).resolve().parents[2]
SUITES_DIR = REPO_ROOT / "benchmarks" / "suites"


def suite_names() -> List[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


# a suite holds a few hundred values a few levels deep; far more is a YAML alias bomb or a mistake
MAX_VALUES, MAX_DEPTH = 100_000, 64


def check_size(value: Any, what: str) -> None:
    """ConfigError when ``value`` expands to more than :data:`MAX_VALUES` values or nests deeper than
    :data:`MAX_DEPTH`: a few hundred characters of nested YAML aliases (a "billion laughs" value) stand for hundreds of
    millions of items, which the schema check, the hash and every copy would walk. Counted with the aliases
    expanded, and stopped at the limit, so the check itself stays cheap."""
    count, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            limit = f"more than {MAX_VALUES} values" if count > MAX_VALUES else f"deeper than {MAX_DEPTH} levels"
            raise ConfigError(
                f"{what}: expands to {limit} (YAML aliases *name repeat what they point to); write the value out"
            )
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)


def read_yaml(stream, what: str):
    """``yaml.safe_load`` of a suite or a --set value, refused (ConfigError naming ``what``) when it is too large or
    too deep (:func:`check_size`), including nesting too deep for the parser itself."""
    try:
        value = yaml.safe_load(stream)
    except RecursionError:
        raise ConfigError(f"{what}: nested too deeply to read; a suite needs a few levels only") from None
    check_size(value, what)
    return value


def apply_settings(suite: Dict[str, Any], assignments: Sequence[str]) -> Dict[str, Any]:
    """``--set key.path=value`` overrides applied to a suite as read from its file, before the schema check: the
    value is read as YAML (``5``, ``1.0e-3``, ``[1, 100]``, ``{k: 20, temperature: 0.07}``), list items are addressed
    by position (``tasks.0.fractions``), and missing sections are created. The result is what the suite file would
    hold with that edit, so it is checked and hashed like it."""
    suite = copy.deepcopy(suite)
    for text in assignments:
        key, eq, raw = text.partition("=")
        parts = key.strip().split(".")
        if not eq or not all(parts):
            raise ConfigError(f"--set {text!r}: write KEY.PATH=VALUE, e.g. --set pretrain.epochs=5")
        try:
            value = read_yaml(raw, f"--set {key.strip()}")
        except yaml.YAMLError:
            raise ConfigError(
                f"--set {text!r}: the value is not valid YAML; quote it for the shell, e.g. --set 'tasks.0.fractions=[1,100]'"
            ) from None
        node: Any = suite
        for depth, part in enumerate(parts):
            where = ".".join(parts[: depth + 1])
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"--set {key}: {'.'.join(parts[:depth]) or 'the suite'} is a list of {len(node)}; address an item by its position 0-{len(node) - 1}, got {part!r}"
                    )
                index: Any = int(part)
            elif isinstance(node, dict):
                index = part
                if not last:
                    node.setdefault(part, {})
            else:
                raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is a value ({node!r}), not a section")
            if last:
                node[index] = value
            else:
                node = node[index]
                if node is None:
                    raise ConfigError(
                        f"--set {key}: {where} is empty in the suite; set the whole section, e.g. --set '{where}={{...}}'"
                    )
    return suite


def load_suite(name_or_path: str, settings: Sequence[str] = ()) -> Dict[str, Any]:
    """A suite from benchmarks/suites/ or a .yaml path, with ``--set`` overrides (:func:`apply_settings`) applied,
    checked against the schema."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SUITES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(
            f"unknown suite {name_or_path!r}; known suites: {', '.join(suite_names())} (or pass a path to a .yaml file)"
        )
    try:
        with open(path) as fh:
            suite = read_yaml(fh, str(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(
            f"{path}: not valid YAML{where} ({getattr(err, 'problem', None) or err}); fix the file (indentation, colons, brackets)"
        ) from None
    if suite is None:
        raise ConfigError(f"{path}: the suite file is empty; copy one of benchmarks/suites/*.yaml as a start")
    if settings:
        if not isinstance(suite, dict):
            raise ConfigError(f"{path}: not a suite (a mapping of sections); --set cannot apply")
        suite = apply_settings(suite, settings)
    source = f"{path} with --set {' '.join(settings)}" if settings else str(path)
    if isinstance(suite, dict) and "primary" in (suite.get("statistics") or {}):
        raise ConfigError(
            f"{source}: statistics.primary is no longer a setting: the marks' test always takes the pretraining run as its unit "
            "(docs/statistics.md); delete the line"
        )
    problems = check_suite(suite)
    if problems:
        raise ConfigError(
            f"{source}: "
            + ("\n  ".join([f"{len(problems)} problems:", *problems]) if len(problems) > 1 else problems[0])
        )
    suite.setdefault("name", path.stem)
    _validate(suite, source)
    return suite


def _validate(suite: Dict[str, Any], path) -> None:
    """What the schema (``medssl/suite/schema.py``) cannot say: rules across keys."""
    if suite.get("track") == "ct":
        for task in suite["tasks"]:
            if task.get("folds") is not None and "fold" not in function_defaults(
                loader_function(task["dataset"]["name"])
            ):
                raise ConfigError(
                    f"{path}: task {task['name']!r} lists folds but dataset {task['dataset']['name']!r} has no official fold split; remove folds (its split is by patient)"
                )
        return
    try:
        check_optimizer(suite["pretrain"]["optimizer"] or {})
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    for task in suite["tasks"]:
        if task.get("type", "classification") == "segmentation" and "segmentation" not in suite["evaluation"]:
            raise ConfigError(
                f"{path}: task {task['name']!r} is a segmentation task but the suite has no evaluation.segmentation settings (epochs, lr, batch_size)"
            )
        if "knn" in task["protocols"] and task.get("type", "classification") == "segmentation":
            raise ConfigError(
                f"{path}: task {task['name']!r} lists the knn protocol, which classifies images; remove it from this segmentation task"
            )
        if "knn" in task["protocols"] and "knn" not in suite["evaluation"]:
            raise ConfigError(
                f"{path}: task {task['name']!r} lists the knn protocol but the suite has no evaluation.knn settings; add e.g. knn: {{k: 20, temperature: 0.07}}"
            )


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


def parse_list(text: Optional[str], kind=str, option: str = "the list") -> Optional[List[Any]]:
    """A comma-separated command-line list; None when the option was not given. An empty list is refused (it
    would run nothing and report success) and repeats are dropped (each job runs once)."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{option} is empty; give at least one value or leave the option out to use the suite's")
    try:
        values = [kind(t) for t in items]
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as a comma-separated list of {kind.__name__}") from None
    return list(dict.fromkeys(values))


def check_seeds(seeds: Sequence[int], what: str) -> List[int]:
    """A seed list from a suite or the command line: at least one, no repeats (a repeated seed would count one run
    twice), each a valid generator seed (0 <= seed < 2**32)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError(f"{what}: give at least one seed, e.g. 0")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"{what} repeats {repeated}: each seed is one independent run; list each once, e.g. 0,1,2")
    invalid = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if invalid:
        raise ConfigError(f"{what}: seeds must be integers from 0 to {MAX_SEED}, got {invalid}")
    return seeds


def apply_overrides(
    suite: Dict[str, Any], methods=None, seeds=None, fractions=None, pretrain_seeds=None
) -> Dict[str, Any]:
    """Narrow a suite from the command line; the result hashes the same as a suite written that way. ``fractions``
    keeps, in each task, those of its own fractions that are listed (a fraction no task has is an error)."""
    suite = copy.deepcopy(suite)
    if fractions is not None and suite.get("track") == "ct":
        raise ConfigError(
            "--fractions: a CT suite has no label fractions (every labelled training CT is used); leave --fractions out"
        )
    if methods is not None:
        if not methods:
            raise ConfigError("--methods is empty; name at least one of the suite's methods")
        suite["methods"] = list(dict.fromkeys(methods))
    if pretrain_seeds is not None:
        suite["pretrain"]["seeds"] = check_seeds(pretrain_seeds, "--pretrain-seeds")
    if seeds is not None:
        suite["evaluation"]["seeds"] = check_seeds(seeds, "--seeds")
        for protocol in PROTOCOLS:
            suite["evaluation"].get(protocol, {}).pop("seeds", None)
        suite["evaluation"].get("segmentation", {}).pop("seeds", None)
        suite["evaluation"].get("segmentation3d", {}).pop("seeds", None)
    if fractions is not None:
        wanted = set(validate_fractions(fractions))
        offered = {float(f) for task in suite["tasks"] for f in task["fractions"]}
        missing = sorted(wanted - offered)
        if missing:
            raise ConfigError(
                f"--fractions {', '.join(f'{f:g}' for f in missing)}: no task of suite {suite.get('name', '?')!r} has "
                f"{'this fraction' if len(missing) == 1 else 'these fractions'}; its tasks have {', '.join(f'{f:g}' for f in sorted(offered))}"
            )
        for task in suite["tasks"]:
            task["fractions"] = [f for f in task["fractions"] if float(f) in wanted]
        suite["tasks"] = [task for task in suite["tasks"] if task["fractions"]]
    return suite


def statistics_settings(suite: Dict[str, Any]) -> Dict[str, Any]:
    settings = {**STATISTICS_DEFAULTS, **(suite.get("statistics") or {})}
    if settings["variants"] is None:
        settings["variants"] = [m for m in suite["methods"] if m.startswith(f"{settings['reference']}-")]
    return settings


def fraction_label(fraction: float) -> str:
    return "100%" if float(fraction) == 100 else f"{float(fraction):g}%"
