"""Benchmark harness for Arbiter: floors, peer task queues and workloads.

Run it with ``python -m benchmarks`` (see ``benchmarks/README.md``). Every system is
measured in one process run so that the figures, and above all their ratios to the
floors, compare.
"""
