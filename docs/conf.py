"""Sphinx configuration: furo theme, MyST markdown, autodoc + napoleon (NumPy docstrings).

Build with ``nox -s docs`` or ``sphinx-build -n -W -b html docs docs/_build/html``.
The performance page shows whatever the benchmarks have committed under
``benchmarks/results/``: at build start those files are copied to
``docs/_generated/`` (git-ignored) and listed, so a missing plot never
breaks the build.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hessquik_core  # noqa: E402

project = "hessquik-core"
author = "hessquik-core developers"
copyright = "2025, hessquik-core developers"  # noqa: A001
release = hessquik_core.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    # MathJax 3 shipped in a PyPI package and copied into _static/mathjax, so
    # the built site shows its math offline (no CDN); sets mathjax_path.
    "sphinx-mathjax-offline",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}
autodoc_typehints = "signature"
# annotations imported only under TYPE_CHECKING (estimators: ``net: NN``)
autodoc_type_aliases = {"NN": "hessquik_core.NN"}

html_theme = "furo"
html_title = f"hessquik-core {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]

# --------------------------------------------------------------------------
# nitpicky: every cross-reference must resolve (CI builds with ``-n -W``).
# Left out, with reasons:
# * objects of other projects: the build is offline, so there is no
#   intersphinx inventory to resolve them against;
# * the words of free-text type fields ("array", "optional", "callable",
#   shape symbols such as ``n`` or ``d``): napoleon hands every word of a
#   type field to the Python domain as a class name. The patterns below only
#   match lower-case words, single letters and non-identifiers, so a dead
#   reference to a documented (CamelCase or dotted) object still fails.
# --------------------------------------------------------------------------
nitpicky = True
nitpick_ignore = [
    ("py:class", name)
    for name in (
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.random.Generator",
        "numpy.random._generator.Generator",
        "os.PathLike",
        "types.ModuleType",
        "collections.abc.Callable",
        "collections.abc.Iterator",
        "collections.abc.Mapping",
        "collections.abc.Sequence",
        "torch.Tensor",
        "torch.device",
        "torch.dtype",
        "torch.nn.Module",
        "torch.nn.Sequential",
        "torch.nn.MSELoss",
        "torch.nn.CrossEntropyLoss",
        "nn.Module",
        "hessQuik.networks.NN",
        # the private problem object a CurvatureOperator is built from (users
        # call hessian_operator & co.)
        "hessquik_core.curvature.sources._Problem",
        "scipy.sparse.linalg.LinearOperator",
        "matplotlib.axes.Axes",
    )
]
nitpick_ignore_regex = [
    ("py:class", r"[a-z][a-z_0-9]*"),  # array, optional, callable, in_features, ...
    ("py:class", r"[A-Za-z]"),  # shape symbols N, P, H, d, ...
    ("py:class", r".*[^\w.].*"),  # free text: spaces, quotes, braces, operators
    ("py:class", r"[0-9.]+"),
    ("py:class", r"[a-z]\w*\."),  # a word ending a sentence
    ("py:exc", r".*\s.*"),  # "FileFormatError (a ValueError)"
]

# --------------------------------------------------------------------------
# benchmark results -> docs/_generated/
# --------------------------------------------------------------------------

#: captions of the plots ``python -m benchmarks`` writes (others get their file name)
FIGURE_CAPTIONS = {
    "w1_time_vs_d.png": "W1: time of value + gradient + Hessian against the input dimension d.",
    "w2_heatmaps.png": "W2: times over (d, width) for each implementation.",
    "w2_ratio_heatmaps.png": "W2: time ratio to the reference over (d, width).",
    "w3_time_vs_d.png": "W3: time of the Laplacian against the input dimension d.",
    "w5_batch_scaling.png": "W5: time against the batch size n.",
}


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def _shift_headings(text: str) -> list[str]:
    """Lines of ``text`` with every heading one level deeper (fenced code left alone)."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            line = "#" + line
        out.append(line)
    return out


def _benchmark_pages(app) -> None:
    src = ROOT / "benchmarks" / "results"
    gen = Path(app.srcdir) / "_generated"
    shutil.rmtree(gen, ignore_errors=True)
    gen.mkdir()
    pngs = sorted(src.glob("*.png")) if src.is_dir() else []
    tables = sorted(src.glob("*.md")) if src.is_dir() else []
    for png in pngs:
        shutil.copy2(png, gen / png.name)

    # result tables: copied, with images that are not committed replaced by a note
    inc: list[str] = []
    shown: set[str] = set()

    def image(match):
        target = match.group(2)
        if "/" not in target and (gen / target).is_file():
            shown.add(target)
            return f"![{match.group(1)}](_generated/{target})"
        return f"*(plot `{target}` is not committed)*"

    for md in tables:
        inc += _shift_headings(_IMAGE.sub(image, md.read_text(encoding="utf-8"))) + [""]
    if not tables:
        inc = ["No result tables are committed yet (`benchmarks/results/*.md`).", ""]
    (gen / "benchmark_tables.md").write_text("\n".join(inc), encoding="utf-8")

    figs: list[str] = []
    for png in pngs:
        if png.name in shown:
            continue
        caption = FIGURE_CAPTIONS.get(png.name, png.stem.replace("_", " "))
        figs += [f"```{{figure}} _generated/{png.name}", ":width: 100%", "", caption, "```", ""]
    if not pngs:
        figs = [
            "No benchmark plots are committed yet. `nox -s bench` (or `python -m benchmarks`) "
            "writes them to `benchmarks/results/`; the next docs build shows them here.",
            "",
        ]
    elif not figs:
        figs = ["Every committed plot is shown with its table below.", ""]
    (gen / "benchmark_figures.md").write_text("\n".join(figs), encoding="utf-8")


# --------------------------------------------------------------------------
# "net : NN" in a docstring would be ambiguous: hessquik_core.compat.networks.NN
# (the hessQuik-compatible class) is documented too. Qualify the short type
# names on type lines (``name : type`` and the bare type lines of Returns).
# --------------------------------------------------------------------------

_TYPE_LINE = re.compile(r"^(\s*[\w, *]+ : )(.*)$")
_BARE_TYPE = re.compile(r"^(\s*)((?:NN|Layer|Result)(?: or (?:NN|Layer|Result|None))*)\s*$")
_QUALIFIED = {
    "NN": "hessquik_core.NN",
    "Layer": "hessquik_core.layers.Layer",
    "Result": "hessquik_core.Result",
}
_SHORT = re.compile(r"(?<![\w.`])(NN|Layer|Result)(?![\w`])")


# Shapes in type fields ("array of shape (n, d)") become literals: a type
# field holding markup is not split into cross-references, so the shape
# symbols (n, d, K, ...) are not looked up as classes.
_SHAPE = re.compile(r"(?<!`)(\([^()`]*\))(?!`)")


def _qualify_types(app, what, name, obj, options, lines) -> None:
    for i, line in enumerate(lines):
        m = _TYPE_LINE.match(line)
        if m:
            typ = _SHORT.sub(lambda t: _QUALIFIED[t.group(1)], m.group(2))
            lines[i] = m.group(1) + _SHAPE.sub(r"``\1``", typ)
            continue
        m = _BARE_TYPE.match(line)
        if m:
            lines[i] = m.group(1) + _SHORT.sub(lambda t: _QUALIFIED[t.group(1)], m.group(2))


def setup(app):
    app.connect("builder-inited", _benchmark_pages)
    # before napoleon (priority 500) turns the sections into fields
    app.connect("autodoc-process-docstring", _qualify_types, priority=400)
