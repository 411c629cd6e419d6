"""``python -m benchmarks.bench``: what pgnotify's hot path costs, measured on a real Postgres.

Not part of ``make test``: the figures are reported beside their targets, never asserted.
"""
