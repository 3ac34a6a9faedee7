"""The process cluster of the Dask tests (``tests/test_dask.py``, ``tests/pinn/test_dask_problem.py``).

Two worker processes, one thread each, a small memory limit, localhost only: what the
workers run travels pickled, as on a real cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def local_client(*paths: str) -> Iterator[Any]:
    """A ``distributed.Client`` of a fresh ``LocalCluster``; ``paths`` are added to the workers'
    ``PYTHONPATH`` after this repository (for modules defining pickled functions)."""
    import distributed

    import hessquik_core as hq

    root = str(Path(hq.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, *paths, os.environ.get("PYTHONPATH", "")) if p)
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        memory_limit="768MiB",
        host="127.0.0.1",
        # None would still bind the HTTP server to 8787 and warn when it is taken
        # (another cluster running); port 0 on localhost is any free port, no warning
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.CRITICAL,
        env={"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    )
    c = distributed.Client(cluster, set_as_default=False)
    try:
        yield c
    finally:
        c.close()
        cluster.close()
