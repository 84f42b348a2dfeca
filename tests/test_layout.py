"""The package layout: folders are layers, imports only go down, and no module imports
itself back through another (README › Layout)."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import airv

PACKAGE = Path(airv.__file__).parent
# Lowest first. A module may import from its own folder or from folders earlier in this list;
# the package's top-level modules (the CLI) sit above every folder.
LAYERS = ("core", "engines", "demo", "adapt", "run", "tools", "kaggle")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """airv modules imported anywhere in the file, function-level imports included."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("airv"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("airv"))
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 3 and (len(parts) < 2 or parts[1] not in LAYERS):
        return len(LAYERS)  # airv, airv.cli, airv.__main__
    return LAYERS.index(parts[1])


def test_every_folder_is_a_known_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders <= set(LAYERS), folders - set(LAYERS)


def test_imports_only_go_down() -> None:
    wrong = [
        f"{mod} imports {dep}"
        for mod, deps in _graph().items()
        for dep in deps
        if _layer(dep) > _layer(mod)
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for dep in sorted(graph[node]):
            if dep in path:
                cycles.append([*path[path.index(dep) :], dep])
            elif len(path) < 30:
                visit(dep, [*path, dep])

    for start in sorted(graph):
        visit(start, [start])
    # Package __init__ re-exports are not cycles of logic: a module importing its own package.
    real = [c for c in cycles if not any(a.startswith(b + ".") for a, b in itertools.pairwise(c))]
    assert not real, "\n".join(" -> ".join(c) for c in real[:10])


# Module sizes: a run is composed of small parts, not grown in one class (README › Layout).
LOOP_MODULES = ("src/airv/run/pipeline.py", "bench/run_bench.py")
LOOP_LINES = 350  # the run's loop and the bench's entry: composition only
MODULE_LINES = 450  # any module of run/ and bench/


def test_the_run_and_the_bench_stay_in_small_modules() -> None:
    root = PACKAGE.parents[1]
    lines = {
        str(p.relative_to(root)): len(p.read_text().splitlines())
        for folder in (PACKAGE / "run", root / "bench")
        for p in folder.glob("*.py")
    }
    assert set(LOOP_MODULES) <= lines.keys()
    too_long = {p: n for p, n in lines.items() if n >= LOOP_LINES and p in LOOP_MODULES}
    too_long |= {p: n for p, n in lines.items() if n > MODULE_LINES}
    assert not too_long, f"split these by concept: {too_long}"
