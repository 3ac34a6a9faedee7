"""The import graph of ``hessquik_core`` runs one way (issue 21).

Every module is parsed with :mod:`ast` (imports inside functions included,
relative imports resolved, ``importlib.import_module("hessquik_core...")`` and
``sys.modules`` look-ups of package modules counted as imports), and

* no module imports a module of a *higher* tier than its own (:data:`TIERS`);
* the graph has no cycle.

How names are resolved: ``from .pkg import name`` is an edge to the submodule
that defines ``name`` when ``pkg/__init__.py`` re-exports it from one
(``from .sub import name``), else to the package itself; importing a package as
a module object (``from . import dask``) is an edge to every submodule its
``__init__`` imports at module level. A package's own ``__init__`` importing
its submodules (re-exports, a lazy plugin registry such as
``backends.get_backend``) is not counted for cycles: importing a submodule
executes its package first in any case, so those edges order nothing.
"""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

import hessquik_core as hq

ROOT = pathlib.Path(hq.__file__).parent
PKG = "hessquik_core"

#: the layer order, lowest first: a module may import its own tier and the tiers below.
#: Patterns are module names relative to the package; ``x.*`` is every module under ``x``.
TIERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # leaf utilities that import nothing of the package
    ("utilities", ("_special", "_progress", "_taylor", "_dask_hook")),
    # one object per array library and its capabilities; kernels take plain data
    ("backends", ("backends", "backends.*")),
    # typed carries and parameter bookkeeping (Module)
    ("carry", ("carry", "_module")),
    # σ and its derivatives
    ("activations", ("activations", "activations.*")),
    # the recurrences, pure functions of (carries, ops)
    ("rules", ("rules", "rules.*")),
    # one file per layer: maths, parameter passes, declared structure
    ("layers", ("layers", "layers.*")),
    # the resolved call, the planner, the routes and the sweeps
    ("engine", ("_array", "_inputs", "engine", "engine.*")),
    # NN and the factories: hand a call to the engine; the network registry (file-format names)
    ("networks", ("networks", "registry")),
    # what is built on networks
    (
        "applications",
        (
            "curvature",
            "curvature.*",
            "pinn",
            "pinn.*",
            "higher",
            "variable_coefficients",
            "estimators",
            "training",
            "checks",
            "_activation_check",
            "io",
            "interop",
            "interop_hessquik",
            "dask",
            "dask.*",
            "compat",
            "compat.*",
        ),
    ),
    # the public namespace and what uses it as a user would
    ("package", ("", "demo")),
)

#: edges against the order that other work items are removing (issue 21, items 3 and 4);
#: each entry names who removes it. The test fails when an entry is gone from the code,
#: so that the list only shrinks.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, tuple[pathlib.Path, bool]]:
    """Module name (relative to the package, ``""`` for the package) -> (path, is package)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _rel(absolute: str) -> str | None:
    """``hessquik_core.x.y`` -> ``x.y`` (``""`` for the package); ``None`` outside it."""
    if absolute == PKG:
        return ""
    if absolute.startswith(PKG + "."):
        return absolute[len(PKG) + 1 :]
    return None


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _base(module: str, is_pkg: bool, level: int) -> str:
    """The package a relative import of ``level`` dots in ``module`` starts from."""
    parts = module.split(".") if module else []
    if not is_pkg:
        parts = parts[:-1]
    return ".".join(parts[: len(parts) - (level - 1)] if level > 1 else parts)


def _raw_imports(module: str) -> list[tuple[str, str | None, bool]]:
    """``(target module, imported name or None, at module level)`` of every import in ``module``."""
    path, is_pkg = MODULES[module]
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found = []

    def visit(node, toplevel):
        for child in ast.iter_child_nodes(node):
            level = toplevel and id(child) in top
            if isinstance(child, ast.Import):
                for a in child.names:
                    rel = _rel(a.name)
                    if rel is not None:
                        found.append((rel, None, level))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    target = _join(_base(module, is_pkg, child.level), child.module or "")
                else:
                    target = _rel(child.module or "")
                    if target is None:
                        continue
                for a in child.names:
                    found.append((target, a.name, level))
            elif isinstance(child, ast.Call):
                # importlib.import_module("hessquik_core.x"), sys.modules.get("hessquik_core.x")
                fn = child.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if name in ("import_module", "get") and child.args:
                    arg = child.args[0]
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        rel = _rel(arg.value)
                        if rel is not None and (name == "import_module" or "modules" in ast.unparse(fn)):
                            found.append((rel, None, False))
            elif isinstance(child, ast.Subscript) and "sys.modules" in ast.unparse(child.value):
                sl = child.slice
                if isinstance(sl, ast.Constant) and isinstance(sl.value, str) and _rel(sl.value) is not None:
                    found.append((_rel(sl.value), None, False))
            visit(child, False)

    visit(tree, True)
    return found


RAW = {m: _raw_imports(m) for m in MODULES}


def _reexports(pkg: str) -> dict[str, str]:
    """Names a package's ``__init__`` takes from one of its submodules: name -> submodule."""
    out = {}
    for target, name, _ in RAW.get(pkg, ()):
        if name is None or target == pkg:
            continue
        if target.startswith(pkg + ".") or (pkg == "" and target):
            sub = _join(target, name)
            out[name] = sub if sub in MODULES else target
    return out


def _module_level_children(pkg: str) -> set[str]:
    out = set()
    for target, name, level in RAW.get(pkg, ()):
        if not level:
            continue
        sub = _join(target, name) if name else target
        mod = sub if sub in MODULES else target
        if mod != pkg and (pkg == "" or mod.startswith(pkg + ".")):
            out.add(mod)
    return out


def edges() -> dict[str, set[str]]:
    """``module -> modules it imports`` (names resolved as the module docstring says)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for module in MODULES:
        for target, name, _ in RAW[module]:
            if name is not None and _join(target, name) in MODULES:
                sub = _join(target, name)  # a submodule imported by name
                dest = {sub} | (_module_level_children(sub) if MODULES[sub][1] else set())
            elif name is not None and MODULES.get(target, (None, False))[1]:
                dest = {_reexports(target).get(name, target)}
            elif MODULES.get(target, (None, False))[1] and target != module:
                dest = {target} | _module_level_children(target)  # a package as a module object
            else:
                dest = {target}
            graph[module] |= {d for d in dest if d in MODULES and d != module}
    return graph


def tier_of(module: str) -> int:
    for rank, (_, patterns) in enumerate(TIERS):
        for pat in patterns:
            if module == pat or (pat.endswith(".*") and module.startswith(pat[:-1])):
                return rank
    raise AssertionError(f"module {module or PKG!r} is in no tier of TIERS: add it")


def _is_own_child(src: str, dst: str) -> bool:
    return MODULES[src][1] and (src == "" or dst.startswith(src + "."))


def upward_edges() -> list[tuple[str, str]]:
    return sorted((a, b) for a, bs in edges().items() for b in bs if tier_of(b) > tier_of(a))


def cycles(extra: dict[str, set[str]] | None = None) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), without a
    package's edges into itself (with the edges ``extra`` added: the checker's own test)."""
    full = {a: set(bs) for a, bs in edges().items()}
    for a, bs in (extra or {}).items():
        full.setdefault(a, set()).update(bs)
    graph = {a: sorted(b for b in bs if not _is_own_child(a, b)) for a, bs in full.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
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

    for v in sorted(MODULES):
        if v not in index:
            strong(v)
    return out


def _fmt(a: str, b: str) -> str:
    return f"{a or PKG} ({TIERS[tier_of(a)][0]}) -> {b or PKG} ({TIERS[tier_of(b)][0]})"


def test_every_module_has_a_tier():
    for module in MODULES:
        tier_of(module)


def test_no_upward_edge():
    bad = [(a, b) for a, b in upward_edges() if (a, b) not in KNOWN_UPWARD]
    assert not bad, "imports against the layer order (tests/test_import_graph.py TIERS):\n" + "\n".join(
        _fmt(a, b) for a, b in bad
    )


def test_known_upward_edges_are_still_there():
    """The list of known exceptions only shrinks: remove an entry once its edge is gone."""
    gone = sorted(set(KNOWN_UPWARD) - set(upward_edges()))
    assert not gone, f"remove these from KNOWN_UPWARD (the edges are gone): {gone}"


def _describe(comps: list[list[str]]) -> str:
    graph = edges()
    return "\n".join(
        "cycle: "
        + ", ".join(f"{a or PKG} -> {b}" for a in comp for b in sorted(graph.get(a, ())) if b in comp)
        for comp in comps
    )


def test_no_cycle():
    bad = cycles()
    assert not bad, "import cycles:\n" + _describe(bad)


def test_backends_import_nothing_above_the_carries():
    """What a route needs from a library is a capability of the backend object; the
    backends' kernels receive plain arrays and callables, never layers."""
    carry = tier_of("carry")
    bad = [(a, b) for a, bs in edges().items() if a.startswith("backends") for b in bs if tier_of(b) > carry]
    assert not bad, "\n".join(_fmt(a, b) for a, b in bad)


def test_the_checker_sees_what_it_must():
    """The parser finds imports inside functions, relative imports of every depth,
    re-exports through a package and ``sys.modules`` look-ups (so the tests above
    can fail for their stated reason)."""
    g = edges()
    # a function-level import (the engine is imported by networks' methods too)
    assert "engine.explain" in g["networks"]
    # ``from ..rules import affine`` in a subpackage module, two dots
    assert "rules.affine" in g["layers.dense"]
    # a name re-exported by a package is an edge to its defining submodule
    assert "engine.plan" in g["networks"]
    assert tier_of("backends._torch_step") < tier_of("layers.dense")
    # a cycle is found: the one Dask closed until issue 21 item 4 (networks -> _dask_hook ->
    # dask -> networks), put back by hand; dask._network imports networks inside a function
    assert "networks" in g["dask._network"]
    assert any({"networks", "_dask_hook"} <= set(c) for c in cycles({"_dask_hook": {"dask._network"}}))
