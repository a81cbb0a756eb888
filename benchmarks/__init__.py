"""Side-by-side benchmarks of lckernels ops against the anchors a user would pick instead and the machine's limit.

``python -m benchmarks.run --op fused_logprobs`` runs a sweep (see :mod:`benchmarks.run`);
``pytest benchmarks/ --benchmark-only`` runs the pytest-benchmark suite.  See ``benchmarks/README.md``.
"""
