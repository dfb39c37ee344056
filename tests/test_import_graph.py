"""The engine's imports run one way: no cycle among the project's modules, and no project module imported inside
a function (where an import hides a cycle until the function runs). Third-party imports inside functions remain
where a heavy or optional dependency is needed by one path only (matplotlib, MONAI, pydicom, safetensors)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("medssl", "methods", "datasets")


def project_modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imported(node, module, known):
    """The project modules an import statement loads (``from pkg import mod`` counts ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolved against the importing module's package
            base = ".".join(module.split(".")[: -node.level] + ([node.module] if node.module else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    return {name for name in names if name in known}


def import_graph():
    modules = dict(project_modules())
    graph, inner = {}, []
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= imported(node, module, modules)
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and imported(node, module, modules):
                    inner.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        # a package's __init__ is imported with each of its modules; a module importing its own package is no cycle
        graph[module] = {m for m in edges if m != module and not module.startswith(m + ".")}
    return graph, inner


def test_no_project_module_is_imported_inside_a_function():
    _, inner = import_graph()
    assert not inner, f"imports of project modules inside functions (move them to the top): {inner}"


def test_the_project_imports_have_no_cycle():
    graph, _ = import_graph()
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycle = stack[stack.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
