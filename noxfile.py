"""Developer sessions: ``nox -s tests``, ``nox -s tests_numpy`` ..., ``nox -s lint``,
``nox -s docs``, ``nox -s bench -- --quick`` (``python -m pip install nox`` first).

torch is pinned to the CPU wheel here (the package itself only asks for a
range) so a session never pulls a multi-GB CUDA build.
"""

import nox

nox.options.sessions = ["lint", "tests"]
TORCH_CPU = "torch==2.13.0"
BACKENDS = ["numpy", "torch", "array_api_strict"]


def _install(session, extras: str) -> None:
    session.install(TORCH_CPU)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session):
    """Whole suite on every installed backend."""
    _install(session, "test")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
@nox.parametrize("backend", BACKENDS)
def tests_backend(session, backend):
    """Suite restricted to one array library (``-k`` on the lib fixture id)."""
    _install(session, "test")
    session.run("python", "-m", "pytest", "-k", backend, *session.posargs)


@nox.session
def lint(session):
    """ruff, and mypy on the annotated package (config in pyproject.toml)."""
    session.install("ruff", "mypy>=1.10", "-e", ".")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "hessquik_core")


@nox.session
def docs(session):
    """Build the Sphinx site, nitpicky (every reference must resolve), warnings as errors."""
    _install(session, "test,docs")
    session.run("sphinx-build", "-n", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def bench(session):
    """Benchmarks against every installed peer: ``nox -s bench -- --quick``."""
    _install(session, "test,bench")
    session.run("python", "-m", "benchmarks", *session.posargs)
