"""The package's layout as a specification: one concern per module (size), no import cycles, and each outside
library imported where the architecture says (decord only in ``video/decode.py``, open_clip only in
``encoder/towers.py``, ...). Read from the source with ``ast``: nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "slowfast_cli"
MAX_LINES = 400  # "one concern per module, about 400 lines at most"
# outside library -> the modules (paths under slowfast_cli/) allowed to import it; a folder allows its modules
OWNERS = {
    "decord": {"video/decode.py"},
    "open_clip": {"encoder/towers.py"},
    "timm": {"encoder/towers.py"},
    "huggingface_hub": {"encoder/weights.py"},
    "PIL": {"encoder/preprocess.py", "sheet.py"},  # exact squash; drawing `slowfast show`'s sheets
    "safetensors": {"checkpoints/files.py"},
    "ray": {
        "batch/engines/ray.py",
        "batch/engines/ray_tasks.py",
        "batch/engines/ray_checks.py",
        "batch/engines/ray_plan.py",
        "batch/engines/ray_watch.py",
    },
    "typer": {"cli/"},
    "rich": {"cli/output.py"},
    "transformers": {"encoder/hfvl/"},
    "fsspec": {"remote.py"},  # URLs for batch's IN_DIR, OUT_DIR and --files-from
    "s3fs": set(),  # loaded by fsspec for s3://, never imported by name
    "botocore": set(),
}


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(package modules, outside top-level packages) that ``path`` imports anywhere in it (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (inside if alias.name.startswith("slowfast_cli") else outside).add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("slowfast_cli"):
                target = node.module
            else:
                outside.add((node.module or "").split(".")[0])
                continue
            for alias in node.names:  # `from . import towers` names a module; `from .x import y` names x
                sub = f"{target}.{alias.name}"
                inside.add(sub if sub in known else target)
    inside.discard("slowfast_cli") if name == "slowfast_cli" else None
    return {m for m in inside if m in known and m != name}, outside


@pytest.fixture(scope="module")
def graph() -> dict[str, tuple[set[str], set[str]]]:
    known = modules()
    return {name: imports(path, name, known) for name, path in known.items()}


def test_every_module_is_small():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    assert len(sizes) > 30  # the walk found the package
    too_big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_big, f"modules over {MAX_LINES} lines: {too_big}"


def test_no_import_cycles(graph):
    """Depth-first search over every import, lazy ones included; the first cycle found is named."""
    edges = {name: deps for name, (deps, _) in graph.items()}
    assert edges["slowfast_cli.pipeline"] >= {"slowfast_cli.aggregate", "slowfast_cli.config"}  # the walk reads imports
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_each_outside_library_is_imported_where_the_layout_says(graph, library):
    owners = OWNERS[library]
    importers = sorted(
        str(modules()[name].relative_to(PACKAGE)) for name, (_, outside) in graph.items() if library in outside
    )
    allowed = [p for p in importers if p in owners or any(o.endswith("/") and p.startswith(o) for o in owners)]
    assert importers == allowed, f"{library} imported outside {sorted(owners)}: {sorted(set(importers) - set(allowed))}"
    if owners and library not in ("timm", "transformers"):
        assert importers, f"{library}: no module imports it any more; update OWNERS"


def test_a_new_engine_or_tower_family_has_one_place_each(graph):
    """The seams are declared: engines by name in one registry, tower families as adapters in one tuple."""
    from slowfast_cli.batch.engines import ENGINES
    from slowfast_cli.encoder.towers import ADAPTERS, TowerAdapter

    assert set(ENGINES) == {"local", "ray"}
    assert all(issubclass(a, TowerAdapter) for a in ADAPTERS) and len(ADAPTERS) == 2
    engines = {name for name in graph if name.startswith("slowfast_cli.batch.engines.")}
    outside = {name: deps & engines for name, (deps, _) in graph.items() if not name.startswith("slowfast_cli.batch.")}
    assert not any(outside.values()), f"only the registry names engines: {outside}"
