"""Sizes a reader can hold (issue 33): no function over 80 lines and no module over 500, across the engine, the
methods, the datasets, the benchmarks, the tests and the command. A longer one is split where its steps separate
(docs/layout.md says where things are)."""

import ast
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("medssl", "methods", "datasets", "benchmarks", "tests", "run_benchmark.py")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def oversized(root: Path) -> List[str]:
    """``path: what`` for each module over MAX_MODULE_LINES and each function (methods and nested ones included)
    over MAX_FUNCTION_LINES, counted from its ``def`` (decorators left out) to its last line."""
    found = []
    for source in SOURCES:
        top = root / source
        for path in [top] if top.is_file() else sorted(top.rglob("*.py")):
            text = path.read_text()
            name = path.relative_to(root)
            if len(text.splitlines()) > MAX_MODULE_LINES:
                found.append(f"{name}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_function_over_80_lines_and_no_module_over_500():
    assert oversized(ROOT) == []


def test_the_check_sees_long_functions_methods_and_modules(tmp_path):
    (tmp_path / "methods").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "methods" / "long.py").write_text(
        f"class A:\n    def step(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n"
    )
    padding = "\n" * MAX_MODULE_LINES
    (tmp_path / "run_benchmark.py").write_text(f"def main():\n    pass\n{padding}")
    assert oversized(tmp_path) == [
        "methods/long.py:2 step: 81 lines",
        f"run_benchmark.py: {MAX_MODULE_LINES + 2} lines",
    ]
