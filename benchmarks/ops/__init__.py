"""One module per benchmarked op; :data:`benchmarks.run.OPS` maps op names to them.

An op module defines ``OP``, ``X_NAME``, ``DEFAULTS`` (sweep list under ``X_NAME`` plus fixed parameters),
``MODES``, ``ANCHOR``, ``LIMIT``, ``PROVIDERS``, ``WARMUP_OVERRIDES``, ``available_providers(device)``,
``make_inputs(x, params, device)`` and ``make_fn(provider, mode, inputs)``.

Optional hooks (see :mod:`benchmarks.ops.rl_step`): ``unavailable(provider, params)`` (a reason string for a
provider that cannot run with these parameters; :func:`benchmarks.run.run` leaves it out with a note),
``extra_metrics(fn, timing)`` (more rows -- dicts with ``metric``, ``unit``, ``median``, ``p20``, ``p80`` -- derived
from the same timed calls) and ``format_rows(rows)`` (the op's own text table).
"""


def available(providers: dict, device: str) -> list[str]:
    """Names of the providers whose ``available(device)`` is true, in registry order."""
    return [name for name, p in providers.items() if p.available(device)]


def check_choice(op: str, provider: str, mode: str, providers: dict, modes) -> None:
    """``ValueError`` naming the valid choices for an unknown provider or mode."""
    if provider not in providers:
        raise ValueError(f"{op}: unknown provider {provider!r}; choose from {', '.join(providers)}")
    if mode not in modes:
        raise ValueError(f"{op}: unknown mode {mode!r}; choose from {', '.join(modes)}")
