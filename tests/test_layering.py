"""Every module of xopt imports, there are no import cycles, and a lower layer never imports a
higher one (not even inside a function).

LAYERS below is the one list of layers (README, "Architecture"): module-name prefixes mapped to
layer numbers, the longest prefix wins. A module that matches no prefix fails the test: give it
a layer. Prefixes of modules that do not exist (yet) cost nothing: only modules found by
walking the packages are checked.

Imports are read statically with `ast` (top-level and inside functions), so a lazy import that
goes upwards is found even when no test happens to run it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil

import pytest

# prefix -> layer (bottom = 0). A module of layer L may import modules of layers <= L.
LAYERS: dict[str, int] = {
    # 0 util
    "xopt": 0,                     # the package itself: __version__ only
    "xopt.errors": 0, "xopt.progress": 0, "xopt.quiet": 0, "xopt.cache": 0, "xopt.host": 0, "xopt.dist": 0,
    # 1 files
    "xopt.manifest": 1,
    # 2 records
    "xopt.records": 2, "xopt.comparison": 2,
    # 3 model
    "xopt.modeling": 3, "xopt.hf": 3, "xopt.importers": 3, "xopt.batching": 3,
    # 4 tasks
    "xopt.tasks": 4,
    # 5 calibration
    "xopt.calibration": 5,
    # 6 variants and kernels
    "xopt.variants": 6, "xopt.kernels": 6,
    # 7 measure
    "xopt.measure": 7, "xopt.scenarios": 7,
    # 8 work
    "xopt.plan": 8, "xopt.train": 8, "xopt.stagerun": 8, "xopt.trainloop": 8, "xopt.trainee": 8, "xopt.schedule": 8,
    "xopt.evaluate": 8, "xopt.eval_units": 8, "xopt.bench": 8, "xopt.invariance": 8,
    # 9 analysis
    "xopt.analysis": 9,
    # 10 present
    "xopt.report": 10, "xopt.pick": 10, "xopt.export": 10, "xopt.triton_tokenizer": 10,
    # 11 top
    "xopt.pipeline": 11, "xopt.cli": 11, "xopt.__main__": 11,
    "xopt.cli_options": 11, "xopt.cli_train": 11, "xopt.cli_compile": 11, "xopt.cli_measure": 11,
    "xopt.cli_results": 11,
}

PACKAGES = ("xopt", "xopt.kernels", "xopt.calibration")


def _modules() -> list[str]:
    names = set()
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.add(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
            names.add(info.name)
    return sorted(names)


MODULES = _modules()


def layer_of(module: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    with open(spec.origin, encoding="utf-8") as f:
        return f.read()


def _resolve_relative(module: str, level: int, target: str | None) -> str:
    is_pkg = importlib.util.find_spec(module).submodule_search_locations is not None
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(module: str) -> set[str]:
    """The xopt modules `module` imports anywhere in its source (names resolved to modules:
    `from xopt import manifest` is an import of xopt.manifest)."""
    known = set(MODULES)
    found = set()
    for node in ast.walk(ast.parse(_source(module))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, node.level, node.module) if node.level else node.module
            subs = {f"{base}.{a.name}" for a in node.names} & known
            found |= subs
            if len(subs) < len(node.names):
                found.add(base)
    # the longest existing module each name lies in (xopt.kernels.encoder.X -> xopt.kernels.encoder)
    out = set()
    for name in found:
        parts = name.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts and ".".join(parts) != module:
            out.add(".".join(parts))
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def _violations() -> set[tuple[str, str]]:
    return {(m, d) for m, deps in GRAPH.items() for d in deps
            if layer_of(m) is not None and layer_of(d) is not None and layer_of(d) > layer_of(m)}


@pytest.mark.parametrize("module", MODULES)
def test_module_imports(module):
    importlib.import_module(module)


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if layer_of(m) is None]
    assert not missing, f"give these modules a layer in tests/test_layering.py LAYERS: {missing}"


def test_no_new_upward_imports():
    new = sorted(_violations())
    lines = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})" for a, b in new]
    assert not new, "a lower layer imports a higher one:\n" + "\n".join(lines)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    """No cycle among the static imports. A module importing its own parent package is not an
    edge here (Python initialises the parent first in any case)."""
    graph = {m: {d for d in deps if not m.startswith(d + ".")}
             for m, deps in GRAPH.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_checker_sees_lazy_and_from_imports():
    assert "xopt.errors" in GRAPH["xopt.dist"]
    assert "xopt.manifest" in GRAPH["xopt.modeling"]
    assert layer_of("xopt.tasks.demo") == 4 and layer_of("xopt.kernels.encoder") == 6
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
