"""The layer rules of docs/ARCHITECTURE.md, read from every library module's imports with `ast`.

Every ``import`` counts, also those inside functions (lazy imports hide a dependency but do not remove it). The
test fails on an import that points up or sideways across layers, on any import cycle between modules, and on a
private name (``_x``) taken from another module. The rules are data (`ALLOWED`), so a reader sees the whole
architecture in one table.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hpa_zoo", "zoo_models", "tfds_hpa")

#: The core: what every layer may use (no TensorFlow-heavy code, no knowledge of models or runs).
CORE = {"hpa_zoo.constants", "hpa_zoo.errors", "hpa_zoo.atomic", "hpa_zoo.recipe", "hpa_zoo.registry", "hpa_zoo.safepaths",
        "hpa_zoo.checks", "hpa_zoo.runlock", "hpa_zoo.interrupt", "hpa_zoo.remote"}
#: The application: the CLI, the demo and the package's public facade (``import hpa_zoo``).
APP = {"hpa_zoo", "hpa_zoo.cli", "hpa_zoo.demo"}
#: Old import paths kept for one release (each only re-exports its new home, with a DeprecationWarning).
SHIMS = {"hpa_zoo.pipeline", "hpa_zoo.metrics", "hpa_zoo.losses", "zoo_models.team1_bestfitting"}

#: layer -> the layers its modules may import (a layer may always import itself, except `teams`).
ALLOWED = {
    "core": {"core"},
    "data": {"core"},
    "augment": {"core", "data"},
    "nn": {"core", "data"},
    "models": {"core", "data", "augment", "nn"},
    "teams": {"core", "data", "augment", "nn", "models"},
    "zoo": {"core", "data", "augment", "nn", "models"},
    "infer": {"core", "data", "augment", "nn", "models", "zoo"},
    "train": {"core", "data", "augment", "nn", "models", "zoo", "infer"},
    "analysis": {"core", "data", "augment", "nn", "models", "zoo", "infer"},
    "tfds": {"core", "data"},
    "app": {"core", "data", "augment", "nn", "models", "zoo", "infer", "train", "analysis", "tfds", "shim"},
    "shim": {"core", "data", "nn", "teams"},
}


def layer_of(module: str) -> str:
    """The layer of a dotted module name (see `ALLOWED`)."""
    if module in SHIMS:
        return "shim"
    if module in CORE:
        return "core"
    if module in APP:
        return "app"
    parts = module.split(".")
    if parts[0] == "tfds_hpa":
        return "tfds"
    if parts[0] == "zoo_models":
        return "teams" if len(parts) > 1 and parts[1] == "teams" else "models"
    if len(parts) > 1 and parts[1] in {"data", "augment", "nn", "zoo", "infer", "train", "analysis"}:
        return parts[1]
    raise AssertionError(f"{module}: not in any layer; add it to docs/ARCHITECTURE.md and tests/test_architecture.py")


def _library_modules() -> dict[str, Path]:
    mods = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            rel = path.relative_to(REPO)
            if "dummy_data" in rel.parts or path.name.endswith("_test.py"):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = _library_modules()


def _imports(module: str, path: Path) -> list[tuple[str, int, list[str]]]:
    """(imported module, line, names taken from it) for every import of our packages in ``module``."""
    out = []
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] not in PACKAGES:
                continue
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            for sub in submodules:
                out.append((sub, node.lineno, []))
            rest = [n for n in names if f"{target}.{n}" not in MODULES]
            if rest or not submodules:
                out.append((target, node.lineno, rest))
        elif isinstance(node, ast.Import):
            out.extend((a.name, node.lineno, []) for a in node.names if a.name.split(".")[0] in PACKAGES)
    return out


EDGES = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_import_points_down_the_layers():
    bad = []
    for module, imports in EDGES.items():
        src = layer_of(module)
        for target, line, _ in imports:
            if target not in MODULES:
                bad.append(f"{module}:{line} imports {target}, which does not exist")
                continue
            dst = layer_of(target)
            if dst == src and src != "teams":
                continue
            if dst == "teams" and src == "teams":
                if target != module:
                    bad.append(f"{module}:{line} imports another team's module {target}: share through zoo_models.common")
                continue
            if dst not in ALLOWED[src]:
                bad.append(f"{module}:{line} ({src}) imports {target} ({dst})")
    assert not bad, "layer rule broken:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in imps if t in MODULES and t != m} for m, imps in EDGES.items()}
    # Tarjan's strongly connected components; a component of more than one module is a cycle.
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    # A package __init__ importing its own submodules is not a cycle of concepts.
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_names_across_modules():
    bad = []
    for module, imports in EDGES.items():
        for target, line, names in imports:
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != module:
                bad.append(f"{module}:{line} takes private {private} from {target}")
    assert not bad, "\n".join(bad)


def test_the_rules_see_the_known_layers():
    """The table is not vacuous: real modules land in the layers the docs name, and a planted upward import of a
    team module into the trainer would be caught."""
    assert layer_of("zoo_models.teams.team2_wair") == "teams"
    assert layer_of("hpa_zoo.infer.predict") == "infer"
    assert layer_of("hpa_zoo.data.pipeline") == "data"
    assert "teams" not in ALLOWED["train"] and "teams" not in ALLOWED["infer"]
    assert sum(len(v) for v in EDGES.values()) > 200
    with pytest.raises(AssertionError):
        layer_of("hpa_zoo.unknown_module")


def test_architecture_page_lists_every_module_and_only_real_ones():
    """docs/ARCHITECTURE.md is true of the tree: every library module (or a folder above it) is named there, and
    every ``.py`` path it names exists."""
    import re

    page = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`([\w/]+(?:\.py|/))`", page))
    folders = {n for n in named if n.endswith("/")}
    missing = []
    for path in MODULES.values():
        rel = path.relative_to(REPO).as_posix()
        if path.name == "__init__.py" and rel != "hpa_zoo/__init__.py":
            continue
        if rel not in named and not any(rel.startswith(f) for f in folders):
            missing.append(rel)
    assert not missing, f"docs/ARCHITECTURE.md does not mention {missing}"
    ghosts = [n for n in named if n.endswith(".py") and "/" in n and not (REPO / n).is_file()]
    assert not ghosts, f"docs/ARCHITECTURE.md names files that do not exist: {ghosts}"
