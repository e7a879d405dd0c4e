"""The project's imports go one way: a module imports only modules of its own layer or below, and no two modules
import each other, directly or round a loop.

Every `import` in every module of align/, data/, stages/ and ui/ counts — at module level and inside functions
alike (an import hidden in a function is still a dependency; it only moves the failure to run time). The layers,
lowest first (the README's "Architecture" says the same in prose):

0. core utilities (align.errors, align.paths, align.hashing, align.log): no project imports at all, so anything may use them;
1. data (align.data.*): rows and files — readers, converters, the registry, the label store;
2. core (the rest of align/*): config, runs, models, generation, log-probs, gates, evaluation, serving, the
   driver; it knows nothing of a particular stage or app;
3. stages and apps: align.stages.*, align.ui.*, and the command modules inside align/ that drive stages
   (the pipeline, sweeps, benchmarks, and the eval / gate / candidates / serve commands);
4. the CLI: align.run, which parses and dispatches to all of them.

Config does not import the sections it validates: stages and apps register their option schemas under the
`align.sections` entry point (pyproject.toml) and align.config looks them up when it builds the recipe schema.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: where each package's source lives in the repository (pyproject.toml's package-dir)
SOURCES = {"align": ROOT / "align", "align.data": ROOT / "data", "align.stages": ROOT / "stages",
           "align.ui": ROOT / "ui"}

#: module prefix → layer; the longest matching prefix wins
LAYERS = {
    "align": 2,
    "align.errors": 0,
    "align.paths": 0,
    "align.hashing": 0,
    "align.manifests": 0,
    "align.log": 0,
    "align.offline": 0,
    "align.data": 1,
    "align.data.curate": 2,  # curation steps: they use the gates' scorer and the policy's tokenizer (core)
    "align.stages": 3,
    "align.ui": 3,
    "align.pipeline": 3,
    "align.sweep": 3,
    "align.bench": 3,
    "align.candidates": 3,
    "align.evaluation.command": 3,
    "align.gates.command": 3,
    "align.serving": 3,  # an app like align.ui (it serves the chat app's models)
    "align.run": 4,
}
LAYER_NAMES = {0: "core utility", 1: "data", 2: "core", 3: "stage/app", 4: "CLI"}


def layer(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(module)


def project_modules() -> dict[str, Path]:
    """Every module of the project by its installed name (align.data.registry ← data/registry.py)."""
    found: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder).with_suffix("")
            parts = list(relative.parts)
            if any(p.startswith(".") or p == "__pycache__" for p in parts):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """Project modules that `module` imports → the line of the first such import (anywhere in the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        # `import a.b.c` binds a, and runs a/__init__, a/b/__init__ and a/b/c: the deepest project module counts
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != module:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                for name in _legacy(alias.name):
                    add(name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            for name in _legacy(base):
                for alias in node.names:
                    full = f"{name}.{alias.name}"
                    add(full if full in modules else name, node.lineno)
    return found


def _legacy(name: str) -> list[str]:
    """The installed name of an import; the pre-packaging top-level names (data.x, stages.x, ui.x) count as the
    modules they would have meant, so that an old-style import cannot slip past the rule."""
    head = name.split(".", 1)[0]
    if head in ("data", "stages", "ui"):
        return ["align." + name]
    return [name] if head == "align" else []


def graph() -> dict[str, dict[str, int]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(edges: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (an iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(edges):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(edges[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, {}))))
    return None


def upward_imports(edges: dict[str, dict[str, int]], modules: dict[str, Path]) -> list[str]:
    wrong = []
    for module, targets in sorted(edges.items()):
        for target, line in sorted(targets.items()):
            if layer(target) > layer(module):
                where = modules[module].relative_to(ROOT)
                wrong.append(f"{where}:{line}: {module} ({LAYER_NAMES[layer(module)]}) imports {target} "
                             f"({LAYER_NAMES[layer(target)]})")
    return wrong


def test_the_walk_sees_the_whole_project_and_imports_inside_functions():
    modules = project_modules()
    assert {"align.config", "align.run", "align.data.registry", "align.data.curate.dedup", "align.stages.sft",
            "align.ui.label"} <= set(modules)
    assert not any(name.startswith(("data.", "stages.", "ui.")) for name in modules)
    edges = graph()
    # align.run imports the stage registry inside main(), not at the top of the file
    assert "align.stages" in edges["align.run"]
    for module in modules:
        layer(module)  # every module has a layer


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    """The rule itself, on a made-up graph: a core module importing a stage, and a loop of three."""
    modules = {"align.config": ROOT / "align/config.py", "align.stages.sft": ROOT / "stages/sft.py",
               "align.runs": ROOT / "align/runs.py", "align.models": ROOT / "align/models.py"}
    edges = {"align.config": {"align.stages.sft": 7}, "align.stages.sft": {"align.runs": 3},
             "align.runs": {"align.models": 1}, "align.models": {"align.runs": 2}}
    assert upward_imports(edges, modules) == [
        "align/config.py:7: align.config (core) imports align.stages.sft (stage/app)"]
    assert find_cycle(edges) == ["align.runs", "align.models", "align.runs"]
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {}}) is None
    # a relative import inside a function, and the old top-level names, are seen
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from ..stages import sft\n    import ui.label\n", encoding="utf-8")
    assert imports_of("align.data.probe", source, {**project_modules()}) == {
        "align.stages.sft": 2, "align.ui.label": 3}


def test_no_module_imports_a_higher_layer():
    modules = project_modules()
    wrong = upward_imports(graph(), modules)
    assert not wrong, "imports against the layers (lowest first: core utility, data, core, stage/app, CLI):\n" + \
        "\n".join(wrong)


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


@pytest.mark.parametrize("package", ["data", "stages", "ui"])
def test_no_module_imports_the_old_top_level_names(package):
    """`from data.registry import ...` would load a second copy of the module (tests put the repository on
    sys.path), with its own globals; the installed name is align.<package>."""
    wrong = []
    for name, path in project_modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            wrong += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                      if n == package or n.startswith(package + ".")]
    assert not wrong, "\n".join(wrong)


if __name__ == "__main__":  # python tests/core/test_layers.py: print the violations without pytest
    found = graph()
    print("\n".join(upward_imports(found, project_modules())) or "no upward imports")
    print(find_cycle(found) or "no cycles", file=sys.stderr)
