"""Studies: one-off measurements that fed ``benchmarks/analysis.md``, kept runnable.

Not part of the suite (``python -m benchmarks``) and not run by CI; each says in its
docstring what it measured and how to run it. ``benchmarks/README.md`` lists them with
the result files they wrote.
"""
