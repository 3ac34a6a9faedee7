"""Run a docs page's ```python blocks in order, in one namespace, skipping per block what is not installed.

A block *needs* an optional library when it imports one that is not installed
(``import torch``, ``from hessQuik import ...``), or, for torch, names it anywhere
outside a comment (``backend="torch"``, ``hq.to_torch(net)``, ``training.torch_parameters``). A block
that reads a name bound only by a skipped block is skipped too (its input does
not exist), so what runs is exactly the blocks whose whole input is there.
:func:`run_page_blocks` runs those and returns the skipped ones with their
reasons; the caller ends with :func:`skip_if_any` so that a page with skipped
blocks reports as *skipped* (saying which), never as silently passed, while an
error in a block that did run still fails the test.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import re
import tokenize
from collections.abc import Callable
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of ``docs/<page>`` (```{code-block} python blocks are not run)."""
    return re.findall(r"^```python\n(.*?)^```", (DOCS / page).read_text(encoding="utf-8"), re.S | re.M)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module.split(".")[0]) is not None


def _imports(tree: ast.AST) -> set[str]:
    mods: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module.split(".")[0])
    return mods


def _bound(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _loaded(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _without_comments(block: str) -> str:
    tokens = tokenize.generate_tokens(io.StringIO(block).readline)
    return tokenize.untokenize((t.type, t.string) for t in tokens if t.type != tokenize.COMMENT)


def _stale(tree: ast.Module, unavailable: set[str]) -> set[str]:
    """Names the block reads before binding them itself, of those in ``unavailable``."""
    stale: set[str] = set()
    left = set(unavailable)
    for stmt in tree.body:
        stale |= _loaded(stmt) & left
        left -= _bound(stmt)
    return stale


def missing_for(block: str, installed: Callable[[str], bool] = _installed) -> list[str]:
    """The optional libraries ``block`` needs that are not installed (empty: it can run)."""
    need = {m for m in _imports(ast.parse(block)) if not installed(m)}
    # any torch in the code (torch.nn, backend="torch", hq.to_torch, training.torch_parameters),
    # but a comment that mentions torch ("same order as torch's 0.weight") is no use of it
    if "torch" in _without_comments(block) and not installed("torch"):
        need.add("torch")
    return sorted(need)


def run_blocks(
    blocks: list[str], label: str, ns: dict, installed: Callable[[str], bool] = _installed
) -> list[str]:
    """Execute the runnable ``blocks`` in order in ``ns``; return one reason per skipped block."""
    skipped: list[str] = []
    unavailable: set[str] = set()  # names bound only by skipped blocks so far
    for i, block in enumerate(blocks):
        tree = ast.parse(block, f"{label} block {i}")
        need = missing_for(block, installed)
        stale = sorted(_stale(tree, unavailable))
        if need or stale:
            why = f"needs {', '.join(need)}" if need else f"reads {', '.join(stale)} from a skipped block"
            skipped.append(f"block {i} {why}")
            unavailable |= _bound(tree)
            continue
        exec(compile(block, f"{label} block {i}", "exec"), ns)
        unavailable -= _bound(tree)
    return skipped


def run_page_blocks(page: str, ns: dict) -> list[str]:
    """:func:`run_blocks` on the ```python blocks of ``docs/<page>``."""
    blocks = python_blocks(page)
    assert blocks, f"docs/{page} has no ```python block"
    return run_blocks(blocks, f"docs/{page}", ns)


def skip_if_any(page: str, skipped: list[str], total: int) -> None:
    """Report the page as skipped when some of its blocks could not run (the others did)."""
    if skipped:
        ran = total - len(skipped)
        pytest.skip(
            f"docs/{page}: {len(skipped)} of {total} blocks not run ({'; '.join(skipped)}); {ran} ran"
        )
