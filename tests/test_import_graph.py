"""The modules of infosft import one another one way: no module imports, however indirectly, a
module that imports it.

Every import statement counts: at module level, inside a function (a deferred import still
makes the two modules depend on each other; it only hides the circle from Python) and under
``if TYPE_CHECKING:``. A submodule's implicit import of its parent package does not count (every
package's ``__init__`` would close a circle with the submodules it re-exports), nor do imports
by name in a string (``infosft.training``'s lazy attributes).
"""

from __future__ import annotations

import ast
from pathlib import Path

import infosft

SOURCE_ROOT = Path(infosft.__file__).parent.parent


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """The modules among ``known`` that the file ``path`` (module ``name``) imports anywhere;
    ``from package import name`` is an import of the submodule ``package.name`` when that is a
    module, else of ``package``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known
            found.update(submodules or {base})
    return (found & known) - {name}


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module name -> the package's modules it imports, for every module of ``package``."""
    paths = {module_name(path, root): path for path in (root / package).rglob("*.py")}
    return {name: imported_modules(path, name, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as [a, b, ..., a], or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph[module]):
            cycle = visit(imported)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    return next(filter(None, map(visit, sorted(graph))), None)


def test_no_module_of_infosft_imports_itself_through_others():
    cycle = find_cycle(import_graph(SOURCE_ROOT, "infosft"))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_graph_covers_the_package():
    graph = import_graph(SOURCE_ROOT, "infosft")
    assert "infosft.training.model_card" in graph["infosft.training.trainer"]
    assert "infosft.training.outputs" in graph["infosft.training.card_evaluation"]


def test_an_import_inside_a_function_closes_a_circle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import g\n")
    (package / "b.py").write_text("def g():\n    from . import a\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.a", "pkg.b", "pkg.a"]


def test_an_import_for_type_checking_closes_a_circle(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for init in (package / "__init__.py", package / "sub" / "__init__.py"):
        init.write_text("")
    (package / "sub" / "a.py").write_text("import pkg.b\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.a import X\n"
    )
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.b", "pkg.sub.a", "pkg.b"]
