"""Prometheus metrics of the generation service.

One process (daphne, `make serve`): the default registry. Several processes (gunicorn,
`make serve-prod`): prometheus_client's multiprocess mode, switched on by
PROMETHEUS_MULTIPROC_DIR in the environment before this module is imported; every process
(web workers, batch workers) writes its samples there and /metrics sums them.
"""

import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

GENERATIONS = Counter(
    "tokenflow_generations_total",
    "Finished generations by terminal status and provider.",
    ["status", "provider"],
)
TTFT = Histogram(
    "tokenflow_time_to_first_token_seconds",
    "Time from the start of a generation to its first token.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# livesum: the sum over live processes (a dead worker's streams are no longer in flight).
IN_FLIGHT = Gauge(
    "tokenflow_streams_in_flight",
    "Generations currently running.",
    ["transport"],
    multiprocess_mode="livesum",
)


def metrics_exposition() -> bytes:
    """The Prometheus text of this process, or of all processes in multiprocess mode."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)
