"""Prometheus metrics of the generation service (per process; scrape every daphne process)."""

from prometheus_client import Counter, Gauge, Histogram

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
IN_FLIGHT = Gauge("tokenflow_streams_in_flight", "Generations currently running.", ["transport"])
