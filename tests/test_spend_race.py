"""Budgets across processes (issue 15): two Python processes race N concurrent requests each
past one key's budget on the same PostgreSQL and Redis; the spend passes the limit by at most
one request's worth per process. Skipped without PostgreSQL (DATABASE_URL) and REDIS_URL."""

import json
import os
import subprocess
import sys
import time
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection

from accounts.models import ApiKey
from routing.models import Generation
from routing.services.spend import budget_reset
from tests.factories import mock_model
from tests.live import database_url

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL"),
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL", "").startswith("postgres"),
        reason="needs PostgreSQL (DATABASE_URL)",
    ),
    pytest.mark.django_db(transaction=True),
]

PER_PROCESS = 20

# argv: api key id, model name, start time (both processes start together), requests.
CHILD = """
import asyncio, json, sys, time
import django
django.setup()
from accounts.models import ApiKey
from routing.services.generation import GenerationParams, GenerationRequest
from routing.services.generation import generation_acreate, generation_complete
from tokenflow_site.errors import ApiError

key = ApiKey.objects.get(pk=int(sys.argv[1]))
request = GenerationRequest(
    messages=[{"role": "user", "content": "race"}],
    model=sys.argv[2],
    params=GenerationParams(max_tokens=5),
)

async def one():
    try:
        prepared = await generation_acreate(request=request, api_key=key, transport="sse")
    except ApiError as exc:
        return exc.code
    await generation_complete(prepared.generation, fallbacks=prepared.choice.fallbacks)
    return prepared.generation.status

async def main():
    time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
    return await asyncio.gather(*[one() for _ in range(int(sys.argv[4]))])

codes = asyncio.run(main())
print(json.dumps({c: codes.count(c) for c in set(codes)}))
"""


def _children(key: ApiKey, model_name: str, count: int = 2) -> list[dict[str, int]]:
    start = time.time() + 4  # both have loaded Django by then
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "tokenflow_site.settings",
    }
    args = [str(key.pk), model_name, repr(start), str(PER_PROCESS)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            env=env,
            cwd=settings.BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_two_processes_racing_past_a_budget_overspend_at_most_one_request_each():
    assert connection.vendor == "postgresql"
    assert settings.CACHES["default"]["BACKEND"].endswith("RedisCache")
    model = mock_model("mock/race", response="w " * 5, token_delay=0.02)
    model.input_price_per_mtok, model.output_price_per_mtok = Decimal(3000), Decimal(15000)
    model.save()
    probe, _ = ApiKey.issue(name="probe")
    [probe_result] = _children(probe, model.name, count=1)
    assert probe_result == {"completed": PER_PROCESS}
    one = max(g.cost_usd for g in Generation.objects.filter(api_key=probe))
    budget = one * Decimal("7.5")
    key, _ = ApiKey.issue(name="race", max_budget_usd=budget, budget_period="day")
    budget_reset(api_key_id=key.pk, period="day")  # a reused id on a shared Redis
    results = _children(key, model.name)
    admitted = sum(r.get("completed", 0) for r in results)
    refused = sum(r.get("budget_exceeded", 0) for r in results)
    total = sum(g.cost_usd for g in Generation.objects.filter(api_key=key))
    overspend = total - budget
    print(
        f"\nbudget race: 2 processes x {PER_PROCESS} requests, budget {budget:.6f} USD "
        f"(7.5 requests), admitted {admitted}, refused {refused}, spent {total:.6f} USD, "
        f"overspend {overspend / one:.2f} requests"
    )
    assert admitted + refused == 2 * PER_PROCESS
    assert total >= budget - one  # the budget was used, not refused early
    assert overspend <= 2 * one  # at most one request's worth per process
    assert Generation.objects.filter(api_key=key).count() == admitted  # refused: no row
