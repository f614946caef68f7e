"""The package's import graph (issue 20): no cycle, no upward arrow, lazy imports only where the CLI needs them.

The graph is read from the source with `ast` (nothing is imported): every
``import`` / ``from ... import`` of a headkit module, at module level or inside a
function, plus the implicit edge to each parent package (importing ``a.b.c`` runs
``a/__init__`` and ``a/b/__init__`` first). docs/architecture.md draws the layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "headkit"

# bottom to top: a module may import its own layer's modules (acyclically) and the layers below
LAYERS = [
    ["errors"],
    ["checks", "distributed"],
    ["io", "memory"],
    ["tasks", "model_types", "model_config"],
    ["gptj_hf", "bridge"],
    ["models", "loading"],
    ["evaluation"],
    ["training"],
    ["interventions"],
    ["scores", "plots"],
    ["report"],
    ["cli"],
    ["__main__"],
]
# function-local imports of headkit modules are for `headkit --help`'s start-up only: commands load
# their heavy modules when they run (benchmarks/cli_startup.py measures it); metrics' names are
# read by the CLI's argument parser, torch loads when a metric is built
LAZY_ALLOWED = ("headkit.cli", "headkit.interventions.metrics")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = module.split(".") if is_package else module.split(".")[:-1]
        if node.level:
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [target] + [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES]
    found = []
    for name in names:
        if name == "headkit" or name.startswith("headkit."):
            while name not in MODULES and "." in name:
                name = name.rsplit(".", 1)[0]
            parts = name.split(".")
            found += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]  # parents run first
    return [name for name in found if name != module and not module.startswith(name + ".")]


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(every edge, the function-local edges), module -> the headkit modules it imports."""
    edges: dict[str, set[str]] = defaultdict(set)
    local: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inside = {id(m) for f in functions for m in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if _under_type_checking(tree, node):
                    continue
                targets = _targets(module, node, path.name == "__init__.py")
                edges[module].update(targets)
                if id(node) in inside:
                    local[module].update(targets)
    return edges, local


def _under_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for block in ast.walk(tree):
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test):
            if any(child is node for child in ast.walk(block)):
                return True
    return False


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return -1  # headkit/__init__.py: lazy exports only (checked below)
    for index, layer in enumerate(LAYERS):
        if parts[1] in layer:
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add it to LAYERS and docs/architecture.md")


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a path of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(MODULES):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    edges, _ = _graph()
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_no_module_imports_a_layer_above_its_own():
    edges, _ = _graph()
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in edges.items() for target in targets
        if _layer(module) >= 0 and _layer(target) > _layer(module)
    ]  # fmt: skip
    assert not upward, "\n".join(upward)


def test_function_local_imports_only_in_the_cli():
    _, local = _graph()
    elsewhere = {m: sorted(t) for m, t in local.items() if t and not m.startswith(LAZY_ALLOWED) and m != "headkit"}
    assert not elsewhere, elsewhere


@pytest.mark.parametrize("package", ["training", "report", "loading"])
def test_layered_subpackages_import_nothing_in_their_init(package):
    """These packages span layers (training's torch-free layout under its loop; loading's files under
    its loaders): an ``__init__`` importing its modules would make importing the lightest load them all
    (and was how loading <-> bridge became a cycle at run time)."""
    for module, path in MODULES.items():
        if module == f"headkit.{package}":
            imports = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
            heavy = [ast.unparse(n) for n in imports if not ast.unparse(n).startswith("from __future__")]
            assert not heavy, f"{module}: {heavy}"


def test_the_graph_reader_sees_an_edge_and_a_cycle():
    """The checks above are only as good as the reader: it finds a known edge, and `_cycle` finds a planted cycle."""
    edges, local = _graph()
    assert "headkit.training.layout" in edges["headkit.training.loop"]
    assert "headkit.training" in edges["headkit.report.demo"]  # the parent package runs first
    assert "headkit.training.loop" in local["headkit.cli.cmd_train"]  # loaded when the command runs
    planted = {**edges, "headkit.errors": {"headkit.report.demo"}}
    assert _cycle(planted) is not None


@pytest.mark.parametrize(
    "code", ["import headkit.training.layout", "import headkit.checks", "from headkit.cli import build_parser; build_parser()"]
)
def test_light_modules_do_not_import_torch(code):
    """``headkit --help`` (every command's parser built) and ``headkit info`` answer without loading
    torch (a fresh interpreter)."""
    check = f"import sys; {code}; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0, f"{code} loads torch"
