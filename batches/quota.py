"""Per-key batch quotas: unfinished jobs and items in flight (creation and claims), and the
key's rpm/tpm limits applied to every item a worker starts (`accounts.ratelimit`, GCRA).

A key over its rate limits is slowed, never failed: `item_admit` answers "not before
`retry_after` seconds" and the worker keeps the item leased and stops claiming for that
key until then. Only an item whose own reservation exceeds the key's whole per-minute
token budget can never run; it fails with `exceeds_token_limit`.
"""

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from accounts.models import ApiKey
from accounts.ratelimit import limits_for, rate_limit_hit, tokens_reserve, tokens_settle
from tokenflow_site.errors import ApiError


def key_caps(api_key: ApiKey | None) -> tuple[int, int]:
    """(max unfinished jobs, max items in flight) of a key; 0 = unlimited."""
    if api_key is None:
        return 0, 0
    jobs, concurrency = api_key.batch_max_active_jobs, api_key.batch_max_concurrency
    return (
        settings.TOKENFLOW_BATCH_MAX_ACTIVE_JOBS_PER_KEY if jobs is None else jobs,
        settings.TOKENFLOW_BATCH_MAX_CONCURRENCY_PER_KEY if concurrency is None else concurrency,
    )


def active_jobs_check(*, api_key: ApiKey | None, active: int) -> None:
    """429 `too_many_active_jobs` when the key already has its cap of unfinished jobs."""
    cap = key_caps(api_key)[0]
    if cap and active >= cap:
        raise ApiError(
            f"This API key has {active} unfinished batch jobs; its limit is {cap} "
            "(TOKENFLOW_BATCH_MAX_ACTIVE_JOBS_PER_KEY or the key's own). Wait for one to "
            "finish, or cancel one.",
            code="too_many_active_jobs",
            status=429,
            extra={"limit": cap},
        )


def concurrency_for(*, api_key: ApiKey | None, requested: int | None, default: int) -> int:
    """The job's concurrency: the default capped by the key's, or 400 above that cap."""
    cap = key_caps(api_key)[1]
    if requested is None:
        return min(default, cap) if cap else default
    if cap and requested > cap:
        raise ApiError(
            f"concurrency {requested} is above this API key's batch concurrency limit {cap} "
            "(TOKENFLOW_BATCH_MAX_CONCURRENCY_PER_KEY or the key's own).",
            code="out_of_range",
            field="concurrency",
            extra={"limit": cap},
        )
    return requested


class Throttled(Exception):
    """The key is over its rpm or tpm: try again in `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = max(0.05, float(retry_after or 0))


@dataclass(frozen=True)
class Admission:
    reserved: int = 0


def item_tokens(params: dict[str, Any]) -> int:
    """Tokens an item may use: its prompt plus its max_tokens (or the reserve default)."""
    from routing.tokens import count_message_tokens

    completion = params.get("max_tokens") or settings.TOKENFLOW_RATE_LIMIT_RESERVE_TOKENS
    return count_message_tokens(params.get("messages") or []) + int(completion)


def item_admit(*, api_key: ApiKey | None, params: dict[str, Any]) -> Admission:
    """Count one request and reserve the item's tokens, or raise Throttled (or ApiError
    `exceeds_token_limit` when the item alone is larger than the key's tpm)."""
    if api_key is None:
        return Admission()
    rpm, tpm = limits_for(api_key)
    if not rpm and not tpm:
        return Admission()
    reserved = 0
    if tpm:
        tokens = item_tokens(params)
        if tokens > tpm:
            raise ApiError(
                f"This item may use {tokens} tokens (prompt + max_tokens); the API key's "
                f"limit is {tpm} tokens per minute.",
                code="exceeds_token_limit",
                status=429,
            )
        try:
            reserved = tokens_reserve(api_key=api_key, tokens=tokens)
        except ApiError as exc:
            raise Throttled(exc.retry_after or 1.0) from exc
    decision = rate_limit_hit(api_key=api_key)
    if decision is not None and not decision.allowed:
        tokens_settle(api_key=api_key, reserved=reserved, used=0)
        raise Throttled(decision.retry_after_seconds)
    return Admission(reserved=reserved)


def item_settle(*, api_key: ApiKey | None, admission: Admission, used: int | None) -> None:
    """After the call: settle the reservation with the tokens actually used (all of it
    when the upstream reported no usage)."""
    if api_key is None or not admission.reserved:
        return
    tokens_settle(
        api_key=api_key,
        reserved=admission.reserved,
        used=admission.reserved if used is None else used,
    )
