"""Fan-out latency: time to the aggregator's first token vs max(agent latency) + aggregator TTFT.

Mock agents with fixed latencies run concurrently, so the ratio should be close to 1.0
(a sequential fan-out would be sum(L) + TTFT). Runs against a throwaway test database.

    .venv/bin/python bench/fanout.py            # writes bench/results/fanout.txt too
"""

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenflow_site.settings")
os.environ.setdefault("TOKENFLOW_TEST_DB_NAME", "bench_fanout.sqlite3")

import django  # noqa: E402

django.setup()

from asgiref.sync import sync_to_async  # noqa: E402
from django.db import connection  # noqa: E402

REPEATS = 5
AGGREGATOR_TTFT = 0.2
SCENARIOS = [  # agent latencies (seconds)
    [0.5, 0.5, 0.5],
    [0.2, 0.5, 1.0],
    [0.5] * 5,
    [0.3] * 10,
]


def build(latencies: list[float], index: int):
    from pipelines.models import Agent, Pipeline
    from routing.models import ModelRanking

    def model(name: str, delay: float) -> ModelRanking:
        return ModelRanking.objects.create(
            name=name,
            provider="mock",
            upstream_model="echo",
            options={"response": "one two three", "first_token_delay": delay, "token_delay": 0},
        )

    pipeline = Pipeline.objects.create(
        name=f"bench-{index}", aggregator_model=model(f"bench/agg-{index}", AGGREGATOR_TTFT)
    )
    for order, latency in enumerate(latencies):
        Agent.objects.create(
            pipeline=pipeline,
            name=f"agent{order}",
            model=model(f"bench/a{index}-{order}", latency),
            order=order,
        )
    return pipeline


async def first_token_time(pipeline, message_id: str) -> float:
    from pipelines.services import ProcessRequest, process_events, process_start

    started = time.perf_counter()
    request = ProcessRequest(message="bench", message_id=message_id, pipeline=pipeline.name)
    start = await sync_to_async(process_start)(request=request, api_key=None, transport="bench")
    first = None
    async for event in process_events(start):
        if event.type == "text" and first is None:
            first = time.perf_counter() - started
    assert first is not None, "no aggregated token"
    return first


async def main() -> list[str]:
    lines = [
        f"fan-out: time to the aggregator's first token (median of {REPEATS} runs), "
        f"aggregator TTFT {AGGREGATOR_TTFT:.1f} s, mock agents",
        f"{'agent latencies (s)':<40}{'measured':>10}{'ideal':>8}{'ratio':>8}"
        f"{'sequential':>12}{'speed-up':>10}",
    ]
    for index, latencies in enumerate(SCENARIOS):
        pipeline = await sync_to_async(build)(latencies, index)
        times = [await first_token_time(pipeline, f"{index}-{n}") for n in range(REPEATS)]
        measured = statistics.median(times)
        ideal = max(latencies) + AGGREGATOR_TTFT
        sequential = sum(latencies) + AGGREGATOR_TTFT
        label = ",".join(f"{x:g}" for x in latencies)
        lines.append(
            f"{label:<40}{measured:>9.3f}s{ideal:>7.2f}s{measured / ideal:>8.2f}"
            f"{sequential:>11.2f}s{sequential / measured:>9.1f}x"
        )
    lines.append("ratio = measured / (max(L) + aggregator TTFT); 1.00 is ideal.")
    return lines


if __name__ == "__main__":
    db_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        output = asyncio.run(main())
    finally:
        connection.creation.destroy_test_db(db_name, verbosity=0)
    text = "\n".join(output) + "\n"
    print(text, end="")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "fanout.txt").write_text(text)
