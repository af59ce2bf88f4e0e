"""What a model call costs, and per-key budgets.

Cost: a model's prices (USD per million tokens) times its tokens (`generation_cost`).

Budgets: a key's spend in its current period (day / month in UTC, or total) lives in one
integer counter in the Django cache (Redis in scale-out, so every process shares it),
kept in units of 1e-10 USD, the precision of Generation.cost_usd. A request reserves its
worst-case cost (prompt tokens + max_tokens at the model's prices) before any upstream
call and is refused with 429 `budget_exceeded` once the counter has reached the limit;
`budget_settle` moves the counter to the actual cost when the call finishes. Because the
check and the reservation are one atomic step (a Lua script on Redis, the process lock of
accounts.ratelimit elsewhere), racing requests see each other's reservations: the spend
passes the limit by at most the last request admitted.

A missing (or expired) counter is seeded from the database: SUM(cost_usd) of the key's
generations and batch attempts created in the period. The cache breaker of
accounts.ratelimit is shared: while the cache is down, the check reads the database
instead (no reservation), so a budget never fails open.
"""

import datetime
import logging
import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from django.conf import settings
from django.core.cache import cache
from django.db.models import Q, Sum
from django.utils import timezone

from accounts.models import ApiKey, BudgetPeriod
from accounts.ratelimit import _cache_available, _cache_failed, _lock, _redis_client
from routing.models import ModelRanking
from tokenflow_site.errors import ApiError

logger = logging.getLogger(__name__)

PER_MTOK = Decimal(1_000_000)
UNIT = Decimal("1e-10")  # counter unit: Generation.cost_usd's precision
BUDGET_HEADER = "x-tokenflow-budget-remaining"


def generation_cost(
    model: ModelRanking | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    cached_prompt_tokens: int | None = 0,
) -> Decimal:
    """USD for these token counts at `model`'s prices. Cached prompt tokens (served from
    the provider's prompt cache) are billed at the cached input price instead."""
    if model is None:
        return Decimal(0)
    cached = min(cached_prompt_tokens or 0, prompt_tokens or 0)
    fresh = (prompt_tokens or 0) - cached
    total = (
        fresh * model.input_price_per_mtok
        + cached * model.cached_input_price_per_mtok
        + (completion_tokens or 0) * model.output_price_per_mtok
    )
    return Decimal(total) / PER_MTOK


def worst_case_cost(
    model: ModelRanking | None, prompt_tokens: int, max_tokens: int | None
) -> Decimal:
    """The most a call may cost: every prompt token uncached, and max_tokens of output (or
    TOKENFLOW_RATE_LIMIT_RESERVE_TOKENS when the request sets none)."""
    completion = max_tokens or settings.TOKENFLOW_RATE_LIMIT_RESERVE_TOKENS
    return generation_cost(model, prompt_tokens, completion)


def input_cost(model: ModelRanking | None, tokens: int) -> Decimal:
    """What `tokens` prompt tokens cost at `model`'s input price (compression savings)."""
    return generation_cost(model, tokens, 0)


def _units(usd: Decimal, *, up: bool = False) -> int:
    value = Decimal(usd) / UNIT
    return int(value.to_integral_value(rounding=ROUND_CEILING)) if up else int(value)


def _usd(units: int) -> Decimal:
    return (Decimal(units) * UNIT).quantize(UNIT)


# --- periods -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    label: str  # part of the counter's cache key
    start: datetime.datetime | None  # None: since the beginning (total)
    end: datetime.datetime | None


def budget_period(period: str, now: datetime.datetime | None = None) -> Period:
    """The current day / month (UTC) or the whole history."""
    now = now or timezone.now()
    now = now.astimezone(datetime.UTC)
    if period == BudgetPeriod.DAY:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return Period(f"d{start:%Y%m%d}", start, start + datetime.timedelta(days=1))
    if period == BudgetPeriod.MONTH:
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (start + datetime.timedelta(days=32)).replace(day=1)
        return Period(f"m{start:%Y%m}", start, following)
    return Period("total", None, None)


def _counter_key(api_key_id: int, period: Period) -> str:
    return f"budget:{api_key_id}:{period.label}"


def _ttl(period: Period) -> int:
    """Counters of a day or month live until the period is over (plus an hour for late
    settlements); the total counter is re-read from the database every
    TOKENFLOW_BUDGET_SYNC_SECONDS."""
    if period.end is None:
        return max(1, int(settings.TOKENFLOW_BUDGET_SYNC_SECONDS))
    return max(1, math.ceil((period.end - timezone.now()).total_seconds())) + 3600


def spend_in_db(*, api_key_id: int, period: Period) -> Decimal:
    """The key's recorded spend in the period: its generations plus its batch attempts."""
    from batches.models import BatchAttempt
    from routing.models import Generation

    generations = Generation.objects.filter(api_key_id=api_key_id)
    attempts = BatchAttempt.objects.filter(item__job__api_key_id=api_key_id)
    if period.start is not None:
        generations = generations.filter(created_at__gte=period.start, created_at__lt=period.end)
        attempts = attempts.filter(created_at__gte=period.start, created_at__lt=period.end)
    total = Decimal(0)
    for queryset in (generations, attempts):
        total += queryset.aggregate(s=Sum("cost_usd"))["s"] or Decimal(0)
    return total


# --- the counter ---------------------------------------------------------------------------

# KEYS[1] = counter; ARGV = amount (units), limit (units). Returns {state, spent}: state
# "missing" (seed it first), "0" (over the limit: nothing reserved) or "1" (reserved).
_RESERVE_LUA = """
local v = redis.call('GET', KEYS[1])
if not v then return {'missing', '0'} end
local limit = tonumber(ARGV[2])
if tonumber(v) >= limit then return {'0', v} end
local amount = tonumber(ARGV[1])
if amount ~= 0 then v = redis.call('INCRBY', KEYS[1], ARGV[1]) end
return {'1', tostring(v)}
"""
# KEYS[1] = counter; ARGV[1] = delta. A counter that expired meanwhile is left alone (the
# next seed reads this call's cost from the database).
_SETTLE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return false
"""


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _counter_step(key: str, amount: int, limit: int) -> tuple[str, int]:
    client = _redis_client()
    if client is not None:
        state, spent = client.eval(
            _RESERVE_LUA, 1, cache.make_and_validate_key(key), str(amount), str(limit)
        )
        return _text(state), int(_text(spent))
    with _lock:
        spent = cache.get(key)
        if spent is None:
            return "missing", 0
        if spent >= limit:
            return "0", spent
        if amount:
            spent = cache.incr(key, amount)  # keeps the counter's expiry
        return "1", spent


def _counter_seed(key: str, api_key_id: int, period: Period) -> None:
    """Create the counter from the database unless another process just did."""
    units = _units(spend_in_db(api_key_id=api_key_id, period=period))
    cache.add(key, units, timeout=_ttl(period))


def _counter_add(key: str, delta: int) -> None:
    client = _redis_client()
    if client is not None:
        client.eval(_SETTLE_LUA, 1, cache.make_and_validate_key(key), str(delta))
        return
    with _lock:
        if cache.get(key) is not None:
            cache.incr(key, delta)


@dataclass
class BudgetHold:
    """A reservation against a key's budget counter, settled once by `budget_settle`."""

    api_key: ApiKey
    key: str  # the counter (the period it was taken in)
    units: int
    spent: Decimal  # the key's spend after the reservation


def has_budget(api_key: ApiKey | None) -> bool:
    return api_key is not None and (
        api_key.max_budget_usd is not None or api_key.soft_budget_usd is not None
    )


def _exceeded(api_key: ApiKey, spent: Decimal, period: Period) -> ApiError:
    retry = None if period.end is None else (period.end - timezone.now()).total_seconds()
    label = {"day": "today (UTC)", "month": "this month (UTC)"}.get(api_key.budget_period, "")
    return ApiError(
        f"This API key has spent ${spent:.6f} {label or 'in total'}; its budget is "
        f"${api_key.max_budget_usd:.6f} per {api_key.budget_period}.".replace(
            "per total", "in total"
        ),
        code="budget_exceeded",
        status=429,
        retry_after=retry,
        extra={"max_budget_usd": float(api_key.max_budget_usd), "spent_usd": float(spent)},
    )


def budget_reserve(*, api_key: ApiKey | None, amount: Decimal = Decimal(0)) -> BudgetHold | None:
    """Reserve `amount` USD of the key's budget before an upstream call (None: the key has
    no budget). 429 `budget_exceeded` when the key's spend has reached its limit."""
    if not has_budget(api_key):
        return None
    period = budget_period(api_key.budget_period)
    key = _counter_key(api_key.pk, period)
    limit = api_key.max_budget_usd
    limit_units = _units(limit) if limit is not None else 2**62
    units = _units(amount, up=True)
    spent_units = None
    if _cache_available():
        try:
            state, spent_units = _counter_step(key, units, limit_units)
            if state == "missing":
                _counter_seed(key, api_key.pk, period)
                state, spent_units = _counter_step(key, units, limit_units)
        except Exception:  # noqa: BLE001 - the database decides while the cache is down
            _cache_failed("budget read from the database")
            spent_units = None
    if spent_units is None or state == "missing":
        spent = spend_in_db(api_key_id=api_key.pk, period=period)
        state, spent_units, units = ("0" if _units(spent) >= limit_units else "1"), _units(spent), 0
    spent = _usd(spent_units)
    if state == "0":
        raise _exceeded(api_key, spent, period)
    _soft_check(api_key, spent, period)
    api_key.budget_spent_seen = spent  # the response header reads it: no second lookup
    return BudgetHold(api_key=api_key, key=key, units=units, spent=spent)


def budget_check(*, api_key: ApiKey | None) -> None:
    """429 `budget_exceeded` if the key's budget is spent (nothing reserved): a cheap
    early check before local work (classification, compression)."""
    budget_reserve(api_key=api_key)


def budget_settle(hold: BudgetHold | None, cost: Decimal | None) -> None:
    """Replace the reservation by the call's actual cost (once)."""
    if hold is None:
        return
    delta = _units(cost or 0) - hold.units
    hold.units = _units(cost or 0)
    if delta and _cache_available():
        try:
            _counter_add(hold.key, delta)
        except Exception:  # noqa: BLE001 - the next seed reads it from the database
            _cache_failed("budget not settled")
    hold.spent += _usd(delta)
    if delta > 0:
        period = budget_period(hold.api_key.budget_period)
        _soft_check(hold.api_key, hold.spent, period)


def budget_remaining(*, api_key: ApiKey | None) -> Decimal | None:
    """USD left in the key's current period (None: no hard budget)."""
    if api_key is None or api_key.max_budget_usd is None:
        return None
    spent = budget_spent(api_key=api_key)
    return max(Decimal(0), api_key.max_budget_usd - spent)


def budget_spent(*, api_key: ApiKey) -> Decimal:
    """The key's spend in its current period, reservations included."""
    period = budget_period(api_key.budget_period)
    key = _counter_key(api_key.pk, period)
    if _cache_available():
        try:
            units = cache.get(key)
            if units is None:
                _counter_seed(key, api_key.pk, period)
                units = cache.get(key)
            if units is not None:
                return _usd(int(units))
        except Exception:  # noqa: BLE001
            _cache_failed("budget read from the database")
    return spend_in_db(api_key_id=api_key.pk, period=period)


def budget_header(api_key: ApiKey | None, spent: Decimal | None = None) -> dict[str, str]:
    """{x-tokenflow-budget-remaining: USD} for a key with a budget, else {}; `spent` when
    the caller already knows it (a request that just reserved)."""
    if api_key is None or api_key.max_budget_usd is None:
        return {}
    if spent is None:
        remaining = budget_remaining(api_key=api_key)
    else:
        remaining = max(Decimal(0), api_key.max_budget_usd - spent)
    return {BUDGET_HEADER: f"{remaining:.6f}"}


def budget_reset(*, api_key_id: int, period: str) -> None:
    """Forget the key's counter for the current period (re-seeded from the database)."""
    cache.delete(_counter_key(api_key_id, budget_period(period)))


def _soft_check(api_key: ApiKey, spent: Decimal, period: Period) -> None:
    """Log and record (soft_budget_crossed_at) the first time in a period that the key's
    spend reaches its soft limit; one process wins the conditional update."""
    soft = api_key.soft_budget_usd
    if soft is None or spent < soft:
        return
    crossed = api_key.soft_budget_crossed_at
    if crossed is not None and (period.start is None or crossed >= period.start):
        return
    now = timezone.now()
    stale = Q(soft_budget_crossed_at__isnull=True)
    if period.start is not None:
        stale |= Q(soft_budget_crossed_at__lt=period.start)
    if ApiKey.objects.filter(stale, pk=api_key.pk).update(soft_budget_crossed_at=now):
        logger.warning(
            "API key %s crossed its soft budget: $%s spent, soft limit $%s per %s",
            api_key.prefix,
            f"{spent:.6f}",
            f"{soft:.6f}",
            api_key.budget_period,
        )
    api_key.soft_budget_crossed_at = now
