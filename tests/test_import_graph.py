"""The package's import graph, read from the source with ``ast``: no cycle, no use of another module's private names.

Every import counts, at module level and inside functions (a deferred import still ties two modules together), with
relative imports resolved. ``from package import name`` is an edge to ``package.name`` when that is a module of the
package, else to ``package``. Only explicit imports are edges: importing ``a.b.c`` also runs ``a/__init__`` and
``a/b/__init__``, but that is Python's loading order, not a dependency the code chose. Imports under
``if TYPE_CHECKING:`` are not edges: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "nezha_kernels"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        found[_module_name(path)] = (path, ast.parse(path.read_text(), filename=str(path)))
    return found


MODULES = _modules()

# Uses of another module's underscore names that predate this test, in code other work owns; each is a debt to pay
# by making the name public (or moving it). The test fails on any new use, and on an entry here that is gone.
KNOWN_PRIVATE_USES = {
    # Triton's convention names @triton.jit kernels with a leading underscore; the launcher is their one user.
    ("nezha_kernels.triton_kernels.launch", "nezha_kernels.triton_kernels.backward._relattn_bwd_delta_kernel"),
    ("nezha_kernels.triton_kernels.launch", "nezha_kernels.triton_kernels.backward_dkdv._relattn_bwd_dkdv_kernel"),
    ("nezha_kernels.triton_kernels.launch", "nezha_kernels.triton_kernels.backward_dq._relattn_bwd_dq_kernel"),
    ("nezha_kernels.triton_kernels.launch", "nezha_kernels.triton_kernels.forward._relattn_fwd_kernel"),
}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` reads from."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


class _Imports(ast.NodeVisitor):
    """Edges of one module (to modules of the package) and its uses of other modules' private names."""

    def __init__(self, module: str, path: Path):
        self.module, self.path = module, path
        self.edges: dict[str, int] = {}  # target module -> first line
        self.private: dict[str, int] = {}  # "module.name" -> first line
        self.aliases: dict[str, str] = {}  # local name bound to a package module -> that module

    def _edge(self, target: str, line: int) -> None:
        if target in MODULES and target != self.module:
            self.edges.setdefault(target, line)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._edge(alias.name, node.lineno)
            if alias.asname and alias.name in MODULES:
                self.aliases[alias.asname] = alias.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _base(self.module, self.path, node)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in MODULES:
                self._edge(submodule, node.lineno)
                self.aliases[alias.asname or alias.name] = submodule
                continue
            self._edge(base, node.lineno)
            if base in MODULES and base != self.module and _is_private(alias.name):
                self.private.setdefault(f"{base}.{alias.name}", node.lineno)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.aliases and _is_private(node.attr):
            target = self.aliases[node.value.id]
            if target != self.module:
                self.private.setdefault(f"{target}.{node.attr}", node.lineno)
        self.generic_visit(node)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks (annotations only; never executed)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def _scan() -> dict[str, _Imports]:
    scans = {}
    for module, (path, tree) in MODULES.items():
        visitor = _Imports(module, path)
        skipped = _type_checking_only(tree)
        # Imports first (aliases bound anywhere in the file), then attribute uses.
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                visitor.visit_Import(node)
            elif isinstance(node, ast.ImportFrom):
                visitor.visit_ImportFrom(node)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                visitor.visit_Attribute(node)
        scans[module] = visitor
    return scans


def _find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_scan_sees_the_package():
    """The scan itself works: it finds the modules, resolves relative imports and reads deferred ones."""
    scans = _scan()
    assert f"{PACKAGE}.inputs" in MODULES and f"{PACKAGE}.backends" in MODULES
    assert f"{PACKAGE}.inputs" in scans[f"{PACKAGE}.attention"].edges  # from .inputs import ...
    assert f"{PACKAGE}.backends" in scans[f"{PACKAGE}.varlen"].edges  # from .backends import resolve_backend
    assert f"{PACKAGE}.models" in scans[PACKAGE].edges  # inside __getattr__


def test_find_cycle_reports_a_cycle():
    assert _find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1}}) is None


def test_no_import_cycle():
    scans = _scan()
    cycle = _find_cycle({module: scan.edges for module, scan in scans.items()})
    if cycle:
        steps = [f"{a} (line {scans[a].edges[b]}) -> {b}" for a, b in zip(cycle[:-1], cycle[1:], strict=True)]
        pytest.fail("import cycle: " + "; ".join(steps))


def test_no_private_names_across_modules():
    uses = {(module, name): line for module, scan in _scan().items() for name, line in scan.private.items()}
    new = sorted(
        f"{module} (line {line}) uses {name}"
        for (module, name), line in uses.items()
        if (module, name) not in KNOWN_PRIVATE_USES
    )
    assert not new, "modules using another module's underscore names:\n" + "\n".join(new)
    stale = sorted(KNOWN_PRIVATE_USES - set(uses))
    assert not stale, f"KNOWN_PRIVATE_USES lists uses that are gone (remove them): {stale}"


def test_type_checking_imports_are_not_edges():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\nfrom .c import Y\n")
    skipped = _type_checking_only(tree)
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert [node.module for node in imports if id(node) in skipped] == ["b"]
