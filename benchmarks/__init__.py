"""Benchmarks of hessquik-core against its peers.

Run ``python -m benchmarks --quick`` (CI smoke run) or ``python -m benchmarks``
(full run, writes ``benchmarks/results/``); see :mod:`benchmarks.run`.
Nothing here is imported by the library or its tests, except the smoke test
of the runner.
"""
