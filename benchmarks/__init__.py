"""Benchmarks of hessquik-core against its peers: ``python -m benchmarks [--quick]``, see ``README.md``."""
