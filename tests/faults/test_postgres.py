"""PostgreSQL unavailable for 10 s while streams are in flight (every connection of the live
server reset, new ones refused), then back.

Stated bounds: every stream in flight ends with `end_stream` or an `error` event (never a cut
connection); within 10 s of PostgreSQL's return no row is left queued/streaming and /healthz
and a new stream answer again. While it is down, new requests get a JSON 503."""

import time

import httpx

from accounts.models import ApiKey
from routing.models import Generation
from tests.factories import mock_model
from tests.faults.clients import OPEN, SCENARIO_MARKS, SseStream, stream, wait_rows_closed

pytestmark = SCENARIO_MARKS

OUTAGE = 10.0  # seconds, as the issue names
RECOVERY = 10.0  # stated bound after PostgreSQL returns


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_postgres_down_10s_during_streaming(stack):
    key = ApiKey.issue(name="faults-pg")[1]
    # Two streams end during the outage (their final write waits for the database), one
    # outlasts it (tokens keep flowing: no database on the token path).
    short = mock_model("mock/pg-short", response=words(20), token_delay=0.15)
    long = mock_model("mock/pg-long", response=words(90), token_delay=0.15)
    quick = mock_model("mock/pg-quick", response="back again")
    streams = [
        SseStream(stack.url, key, {"model": model.name, "prompt": "hi"})
        for model in (short, short, long)
    ]
    for thread in streams:
        thread.start()
    for thread in streams:
        assert thread.first_text.wait(30)

    stack.postgres.refuse()
    down_at = time.monotonic()
    during = httpx.post(
        f"{stack.url}/api/generate",
        json={"model": short.name, "prompt": "during"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    health = httpx.get(f"{stack.url}/healthz", timeout=30)
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
    stack.postgres.passthrough()
    back_at = time.monotonic()

    healthy = _until(lambda: httpx.get(f"{stack.url}/healthz", timeout=5).status_code == 200)
    fresh = stream(stack.url, key, {"model": quick.name, "prompt": "after"})
    serving = time.monotonic() - back_at
    assert fresh.last[0] == "end_stream", fresh
    assert serving < RECOVERY, serving

    assert during.status_code == 503, during.text
    assert during.json()["error"]["code"] == "database_unavailable"
    assert "Retry-After" in during.headers
    assert health.status_code == 503 and health.json()["error"]["code"] == "database_unavailable"

    for thread in streams:
        thread.join(RECOVERY + 30)
    results = [thread.result for thread in streams]
    for result in results:
        assert result.transport_error is None, result
        assert result.last[0] in ("end_stream", "error"), result.names
    wait_rows_closed([result.generation_id for result in results], RECOVERY)
    # A stream's row is written before its last event: when the last stream ended, all were.
    rows_closed = max(thread.finished_at for thread in streams) - back_at
    assert rows_closed < RECOVERY, rows_closed
    for result in results:
        row = Generation.objects.get(pk=result.generation_id)
        if result.last[0] == "end_stream":
            assert row.status == "completed" and row.output_text == result.text
        else:
            assert row.status in ("failed", "cancelled")
    assert not Generation.objects.filter(status__in=OPEN).exists()
    print(
        f"\n[faults] postgres down {OUTAGE:.0f} s: streams {[r.last[0] for r in results]}; "
        f"after PostgreSQL returned: healthz 200 in {healthy:.2f} s, a new stream done in "
        f"{serving:.2f} s, each stream's row closed (last event) at "
        f"{[round(t.finished_at - back_at, 2) for t in streams]} s"
    )


def _until(predicate, timeout: float = RECOVERY) -> float:
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        assert time.monotonic() - started < timeout
        time.sleep(0.1)
