"""Benchmarks: zfnet against PyTorch on the same machine, in the same process.

Run ``python -m benchmarks`` from the repository root (``--help`` for options).  Each
case is checked against a reference (PyTorch, and the readable NumPy paths) before it
is timed; timings are interleaved, repeated, and summarised by median and range, and
the results are written to ``benchmarks/RESULTS.md``.
"""
