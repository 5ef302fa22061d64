"""The layering rules of docs/architecture.md, checked on the source: the library never imports the
orchestration (Ray, MLflow, ``pipelines``), no two modules import each other in a circle, and the
training path does not pull in albumentations."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORCHESTRATION = ("ray", "mlflow", "pipelines")


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> Iterator[str]:
    """Every absolute module name an import statement in the file names (at any depth: lazy ones count)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the project modules it imports, counting the packages whose ``__init__`` runs on the way."""
    files = {module_name(root, p): p for package in packages for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(path):
            if name not in files:
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                prefix = ".".join(parts[:i])
                if prefix in files and prefix != module and not module.startswith(prefix + "."):
                    targets.add(prefix)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_library_never_imports_ray_mlflow_or_the_pipelines() -> None:
    offending = [
        f"{path.relative_to(REPO)}: {name}"
        for path in sorted((REPO / "yolov2").rglob("*.py"))
        for name in imported_names(path)
        if name.split(".")[0] in ORCHESTRATION
    ]
    assert offending == []


def test_no_module_imports_itself_through_others() -> None:
    assert cycles(import_graph(REPO, ("yolov2", "pipelines"))) == []


def test_the_cycle_check_finds_a_cycle_through_a_package_init(tmp_path: Path) -> None:
    """The check can fail: a.x imports b.y, and b/__init__ imports a.z (a cycle only via the package)."""
    for name, text in {
        "a/__init__.py": "",
        "a/x.py": "from b.y import f\n",
        "a/z.py": "",
        "b/__init__.py": "from a import z\n",
        "b/y.py": "def f(): pass\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, ("a", "b"))
    assert graph["a.x"] == {"b", "b.y"}
    assert cycles(graph) == []  # b imports a.z, not a.x: no cycle yet
    (tmp_path / "a/__init__.py").write_text("from a import x\n")
    assert cycles(graph := import_graph(tmp_path, ("a", "b"))) == [["a", "a.x", "b"]], graph


@pytest.mark.parametrize("module", ["yolov2.data.stream", "yolov2.data.row_batches", "yolov2.engine.trainer"])
def test_the_training_path_does_not_load_albumentations(module: str) -> None:
    code = f"import sys, {module}; print('albumentations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
