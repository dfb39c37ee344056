"""docs/suite-format.md, written from the schema itself (medssl/suite/schema.py): every key of an image suite and of a
CT suite with what it accepts, then the settings of every registered method and the parameters of every dataset
loader with their defaults, read from their code. A key added to the schema, a method or a loader is in the
reference by construction; tests/test_suite_reference.py keeps the committed page equal to this output.

    python -m medssl.suite.reference > docs/suite-format.md
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, List, Tuple

from datasets.base import dataset_names, loader_function
from medssl.suite.checks import Check, function_defaults
from medssl.suite.schema import ct_suite_schema, suite_schema
from methods import REGISTRY, resolve_config

HEADER = """# Suite format

Reference: every key a suite file may hold. Generated from the schema by `python -m medssl.suite.reference >
docs/suite-format.md` (do not edit by hand). A suite is checked against it before any work, `--dry-run` and
`--set` included: an unknown key is named with the nearest known one. The shipped suites are in
`benchmarks/suites/`; `--set KEY=VALUE` addresses the same keys (list items by position, `tasks.0.fractions`).
"""


def schema_rows(check: Check, path: str = "") -> Iterator[Tuple[str, str, bool]]:
    """(key path, what it accepts, required) for each key under a mapping check, depth first; a list of mappings
    (``tasks``) is entered as ``key[]``."""
    required = set(getattr(check, "required", ()))
    for key, field in getattr(check, "fields", {}).items():
        where = f"{path}.{key}" if path else key
        yield where, getattr(field, "doc", "any (checked by the code that reads it)"), key in required
        item = getattr(field, "item", None)
        if hasattr(field, "fields"):
            yield from schema_rows(field, where)
        elif item is not None and hasattr(item, "fields"):
            yield from schema_rows(item, f"{where}[]")


def _table(check: Check) -> List[str]:
    lines = ["| key | accepts | required |", "|---|---|---|"]
    return lines + [f"| `{key}` | {doc} | {'yes' if required else ''} |" for key, doc, required in schema_rows(check)]


def _value(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def _defaults_table(what: str, rows: Iterator[Tuple[str, dict]]) -> List[str]:
    lines = [f"| {what} | settings (default) |", "|---|---|"]
    for name, defaults in rows:
        settings = ", ".join(f"`{key}` {_value(value)}" for key, value in defaults.items())
        lines.append(f"| `{name}` | {settings or '(none)'} |")
    return lines


def reference() -> str:
    """The text of docs/suite-format.md."""
    methods = ((name, dataclasses.asdict(resolve_config(name))) for name in REGISTRY)
    loaders = ((name, function_defaults(loader_function(name))) for name in dataset_names())
    sections = [
        HEADER,
        "## Image suites\n",
        "The default track (`track: 2d`, or no `track`): pretraining on 2D images, then the tasks' protocols.\n",
        *_table(suite_schema()),
        "\n## CT suites\n",
        "`track: ct` (docs/track-3d.md): pretraining and evaluation in steps on CT volumes.\n",
        *_table(ct_suite_schema()),
        "\n## Method settings\n",
        "`method_params.METHOD.SETTING`: each registered method's settings as the suite's methods get them "
        "(the registry's overrides applied); a setting's type and sign follow its default.\n",
        *_defaults_table("method", methods),
        "\n## Dataset parameters\n",
        "`params` of a dataset (a corpus in `pretrain.datasets` or a task's `dataset`): each loader's parameters; "
        "a parameter's type and sign follow its default.\n",
        *_defaults_table("dataset", loaders),
    ]
    return "\n".join(sections) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
