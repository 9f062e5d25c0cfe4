"""The package's layers (``docs/architecture.md``): every import in daskgen, function-local ones
included (not those under ``if TYPE_CHECKING:``, which never run), goes downward, sibling
folders never import each other, and no import circle exists.

Layers, bottom to top:

0. ``exceptions``, ``_protocol``, ``_options``, ``_dask_internals``, ``_runtime``, ``_waiting``,
   ``_buffers``, ``_job``
1. ``_cluster``, ``_scheduler`` (siblings)
2. ``_objects``
3. ``_worker``
4. ``_client``
5. the public face: ``daskgen`` itself and its public modules (``util``, ``dask``, ``actor``,
   ``remote_function``), whatever their depth
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.daskgen_only

PACKAGE = Path(__file__).resolve().parent.parent / "daskgen"
BOTTOM = {
    "exceptions",
    "_protocol",
    "_options",
    "_dask_internals",
    "_runtime",
    "_waiting",
    "_buffers",
    "_job",
}
RANKS = {"_cluster": 1, "_scheduler": 1, "_objects": 2, "_worker": 3, "_client": 4}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The daskgen modules ``module`` imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for child in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue  # `if TYPE_CHECKING:` imports never run
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from .x import y`: y may be a submodule of x, or a name in x
            names = [f"{prefix}.{alias.name}" for alias in node.names]
            names = [n if n in modules else prefix for n in names]
        else:
            continue
        found.update(n for n in names if n in modules and n != module)
    return found


def _rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 5  # daskgen itself
    if parts[1] in BOTTOM:
        return 0
    return RANKS.get(parts[1], 5)  # other names are public modules


def _folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANKS else None


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks the layer rules, and every import circle."""
    found = []
    for importer, imported in sorted(graph.items()):
        for target in sorted(imported):
            low, high = _rank(target), _rank(importer)
            same_folder = _folder(importer) is not None and _folder(importer) == _folder(target)
            if low > high:
                found.append(f"{importer} imports {target}, a layer above it")
            elif low == high and _folder(importer) and not same_folder:
                found.append(f"{importer} imports {target}, a sibling folder")
    found += [f"import circle: {' -> '.join(c)}" for c in _cycles(graph)]
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles (one path around each strongly connected group, Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group) + [sorted(group)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_import_goes_down_a_layer_and_none_forms_a_circle():
    graph = _graph()
    assert "daskgen._client.api" in graph and "daskgen._objects.refs" in graph  # it sees them
    assert violations(graph) == []


def test_the_check_sees_function_local_imports_and_skips_typing_only_ones(tmp_path):
    source = tmp_path / "refs.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from .generators import ObjectRefGenerator\n"
        "def future(ref):\n"
        "    from .._client.api import get\n"
        "    return get(ref)\n"
    )
    modules = dict.fromkeys(
        ["daskgen._objects.refs", "daskgen._objects.generators", "daskgen._client.api"]
    )
    found = _imports("daskgen._objects.refs", source, modules)  # type: ignore[arg-type]
    assert found == {"daskgen._client.api"}
    assert violations({"daskgen._objects.refs": found}) == [
        "daskgen._objects.refs imports daskgen._client.api, a layer above it"
    ]


def test_the_check_reports_each_kind_of_breach():
    broken = {
        "daskgen._objects.refs": {"daskgen._client.api"},  # upward
        "daskgen._cluster.embedded": {"daskgen._scheduler.plugin"},  # sibling folders
        "daskgen._worker.run": {"daskgen._worker.publish"},  # a circle inside a folder
        "daskgen._worker.publish": {"daskgen._worker.run"},
    }
    found = violations(broken)
    assert any("a layer above it" in v for v in found)
    assert any("a sibling folder" in v for v in found)
    assert any("import circle" in v for v in found)


def test_every_folder_states_its_process_and_its_rule():
    for folder in RANKS:
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert doc and "Layer rule" in doc and "Runs in" in doc, f"{folder}/__init__.py"
