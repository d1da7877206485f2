"""Benchmarks that print ratios measured side by side in one run; run from the project
root as modules (``python -m bench.run``), every one printing :mod:`bench.table`'s table."""
