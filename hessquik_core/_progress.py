"""Progress bars for long computations (tqdm, optional).

``progress=None`` (the default everywhere) shows a bar only when tqdm is
installed and standard error is a terminal, so scripts, CI logs and
notebooks-turned-logs stay quiet; ``True`` forces a bar (and needs tqdm),
``False`` never shows one. Bars write to standard error and never change a
result.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["Progress", "progress_bar"]


def _interactive() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def _enabled(progress: bool | None) -> bool:
    if progress is None:
        if not _interactive():
            return False
        try:
            import tqdm  # noqa: F401
        except ImportError:
            return False
        return True
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")
    if progress:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            raise ImportError(
                "progress=True needs tqdm, which is not installed: pip install tqdm "
                "(or pass progress=None / False)"
            ) from None
    return progress


class Progress:
    """A tqdm bar, or nothing: ``update(n)``, ``set_postfix_str(s)``, ``close()``; a context manager."""

    def __init__(self, bar: Any = None) -> None:
        self._bar = bar

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix_str(self, s: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(s, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(progress: bool | None, *, total: int | None = None, desc: str, unit: str = "it") -> Progress:
    """A :class:`Progress` for ``total`` steps (``None``: unknown) if ``progress`` asks for one.

    Parameters
    ----------
    progress : bool or None
        ``None``: a bar only if tqdm is installed and standard error is a
        terminal; ``True``: always (``ImportError`` without tqdm); ``False``: never.
    total : int, optional
        Number of steps, when known.
    desc, unit : str
        Label of the bar and of its steps.

    Returns
    -------
    Progress
        A no-op object when no bar is shown.
    """
    if not _enabled(progress):
        return Progress(None)
    from tqdm import tqdm

    return Progress(tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr))
