"""The checks a schema is built from: each takes (value, key path, problems) and adds a line per problem, with the
key path, what was expected and, for an unknown key or choice, the nearest known one; checks of a dataclass's or a
function's settings are made from their defaults."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
from typing import Any, Callable, Dict, List, Optional, Sequence

# Seeds feed numpy's and torch's generators, which take 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1


class Problems:
    """Collects schema violations as ``path: message`` lines."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{path or '(top level)'}: {message}")


def describe(value: Any) -> str:
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


def documented(doc: str, **parts: Any) -> Callable[[Check], Check]:
    """Mark a check with what it accepts, in words (``doc``), and its parts (a mapping's ``fields``, a list's
    ``item``): medssl/suite/reference.py writes docs/suite-format.md from them, so the reference is the schema."""

    def mark(check: Check) -> Check:
        check.doc = doc
        for name, value in parts.items():
            setattr(check, name, value)
        return check

    return mark


def _range(kind: str, low, high, low_open: bool) -> str:
    shown = lambda bound: str(int(bound)) if float(bound).is_integer() else f"{bound:g}"
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{shown(low)}, {shown(high)}]"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {shown(low)}"
    return f"{kind} <= {shown(high)}" if high is not None else kind


def number(
    low: Optional[float] = None, high: Optional[float] = None, integer: bool = False, low_open: bool = False
) -> Check:
    def check(value, path, problems):
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            problems.add(path, f"expected {kind}, got {describe(value)}")
            return
        if not math.isfinite(value):  # NaN passes every comparison below; inf is no setting's value
            problems.add(path, f"expected a finite number, got {value!r}")
            return
        if low is not None and (value <= low if low_open else value < low):
            problems.add(path, f"expected {kind} {'>' if low_open else '>='} {low:g}, got {value!r}")
        if high is not None and value > high:
            problems.add(path, f"expected {kind} <= {high:g}, got {value!r}")

    return documented(_range("integer" if integer else "number", low, high, low_open))(check)


def text(choices: Optional[Sequence[str]] = None) -> Check:
    def check(value, path, problems):
        if not isinstance(value, str):
            problems.add(
                path,
                f"expected a string{' (one of ' + ', '.join(choices) + ')' if choices else ''}, got {describe(value)}",
            )
        elif choices is not None and value not in choices:
            problems.add(path, f"expected one of {', '.join(choices)}, got {value!r}{nearest(value, choices)}")

    return documented(f"one of {', '.join(f'`{c}`' for c in choices)}" if choices else "string")(check)


@documented("name of the results and reports folders: letters, digits, `_ . + -`")
def folder_name(value, path, problems):
    """A name that becomes a folder (results/<suite>/, reports/<suite>/): letters, digits and _ . + - only, so it
    can never point outside the results folder (``../../x``)."""
    if not isinstance(value, str):
        problems.add(path, f"expected a string, got {describe(value)}")
    elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", value) or ".." in value:
        problems.add(
            path,
            f"{value!r} names the suite's results and reports folders: use letters, digits and _ . + - (no / or ..)",
        )


@documented("true or false")
def flag(value, path, problems):
    if not isinstance(value, bool):
        problems.add(path, f"expected true or false, got {describe(value)}")


def sequence(item: Check, min_length: int = 0, length: Optional[int] = None, unique: bool = False) -> Check:
    def check(value, path, problems):
        if not isinstance(value, (list, tuple)):
            problems.add(path, f"expected a list, got {describe(value)}")
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

    size = f"{length} values" if length is not None else f"at least {min_length}" if min_length else ""
    constraints = ", ".join(filter(None, [size, "each once" if unique else ""]))
    doc = f"list of {getattr(item, 'doc', 'values')}" + (f" ({constraints})" if constraints else "")
    return documented(doc, item=item)(check)


def mapping(fields: Dict[str, Check], required: Sequence[str] = (), what: str = "") -> Check:
    """A dict whose keys are all known: unknown keys are named with the nearest known one."""

    def check(value, path, problems):
        if not isinstance(value, dict):
            problems.add(
                path, f"expected a mapping of {what or 'settings'} ({', '.join(fields)}), got {describe(value)}"
            )
            return
        for key in required:
            if key not in value:
                problems.add(join_path(path, key), "missing (required)")
        for key, element in value.items():
            if key not in fields:
                problems.add(
                    join_path(path, key), f"unknown key{nearest(key, list(fields))} (known: {', '.join(fields)})"
                )
            else:
                fields[key](element, join_path(path, key), problems)

    return documented(f"mapping of {what or 'settings'}", fields=fields, required=tuple(required))(check)


def join_path(path: str, key: Any) -> str:
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
