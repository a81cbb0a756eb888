"""One module per benchmarked op; :data:`benchmarks.run.OPS` maps op names to them.

An op module defines ``OP``, ``X_NAME``, ``DEFAULTS`` (sweep list under ``X_NAME`` plus fixed parameters),
``MODES``, ``ANCHOR``, ``LIMIT``, ``PROVIDERS``, ``WARMUP_OVERRIDES``, ``available_providers(device)``,
``make_inputs(x, params, device)`` and ``make_fn(provider, mode, inputs)``.
"""
