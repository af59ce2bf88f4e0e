from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from routing.models import Generation
from tests.factories import mock_model

pytestmark = pytest.mark.django_db


def make(status: str, age: timedelta) -> Generation:
    model = mock_model()
    row = Generation.objects.create(
        model=model, model_name=model.name, provider="mock", status=status, output_text="part"
    )
    Generation.objects.filter(pk=row.pk).update(created_at=timezone.now() - age)
    return row


def test_sweep_fails_only_old_open_generations(capsys):
    old_streaming = make("streaming", timedelta(hours=2))
    old_queued = make("queued", timedelta(hours=2))
    live = make("streaming", timedelta(seconds=5))
    done = make("completed", timedelta(hours=2))
    call_command("sweep_generations", "--older-than", "3600")
    assert "2 abandoned" in capsys.readouterr().out
    for row in (old_streaming, old_queued):
        row.refresh_from_db()
        assert row.status == "failed" and row.error_code == "abandoned"
        assert row.output_text == "part" and row.finished_at is not None
    live.refresh_from_db()
    done.refresh_from_db()
    assert live.status == "streaming" and done.status == "completed"


def test_a_streaming_row_whose_heartbeat_stopped_is_swept_long_before_the_queued_limit():
    silent = make("streaming", timedelta(minutes=10))
    Generation.objects.filter(pk=silent.pk).update(
        heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    beating = make("streaming", timedelta(minutes=10))
    Generation.objects.filter(pk=beating.pk).update(heartbeat_at=timezone.now())
    waiting = make("queued", timedelta(minutes=10))  # a queue may hold it that long
    call_command("sweep_generations", "--older-than", "3600", "--silent-for", "120")
    assert Generation.objects.get(pk=silent.pk).status == "failed"
    assert Generation.objects.get(pk=beating.pk).status == "streaming"
    assert Generation.objects.get(pk=waiting.pk).status == "queued"


@pytest.mark.django_db(transaction=True)
async def test_partial_text_is_checkpointed_while_streaming(settings):
    """A killed process loses at most TOKENFLOW_CHECKPOINT_SECONDS of text: the row holds
    the partial output and a fresh heartbeat while the stream is still running."""
    import asyncio
    from contextlib import aclosing

    from asgiref.sync import sync_to_async

    from routing.services.generation import GenerationParams, generation_prepare, generation_run

    settings.TOKENFLOW_CHECKPOINT_SECONDS = 0.05
    model = await sync_to_async(mock_model)(response=" ".join(["w"] * 40), token_delay=0.02)
    generation = await sync_to_async(generation_prepare)(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        params=GenerationParams(),
        api_key=None,
        transport="test",
    )
    seen = 0
    async with aclosing(generation_run(generation)) as events:
        async for event in events:
            seen += event.type == "text"
            if seen == 25:
                await asyncio.sleep(0.2)  # let the checkpoint write land
                row = await Generation.objects.aget(pk=generation.pk)
                assert row.status == "streaming" and row.heartbeat_at is not None
                assert row.output_text.count("w") >= 15
                break  # the client goes away: the row is cancelled with its text
    row = await Generation.objects.aget(pk=generation.pk)
    assert row.status == "cancelled" and row.output_text.count("w") == 25


def test_a_swept_stream_costs_the_prompt_and_the_partial_output_it_used():
    from decimal import Decimal

    from routing.tokens import count_message_tokens, count_tokens

    model = mock_model()
    model.input_price_per_mtok, model.output_price_per_mtok = Decimal(3000), Decimal(15000)
    model.save()
    messages = [{"role": "user", "content": "Tell me a long story about a lighthouse."}]
    started = make("streaming", timedelta(hours=2))
    queued = make("queued", timedelta(hours=2))
    Generation.objects.filter(pk__in=[started.pk, queued.pk]).update(
        model=model, input_messages=messages, output_text="Once upon a time, a keeper"
    )
    Generation.objects.filter(pk=started.pk).update(ttft_ms=120.0)
    call_command("sweep_generations", "--older-than", "3600")
    started.refresh_from_db()
    queued.refresh_from_db()
    prompt, completion = count_message_tokens(messages), count_tokens("Once upon a time, a keeper")
    assert (started.prompt_tokens, started.completion_tokens) == (prompt, completion)
    by_hand = (prompt * Decimal(3000) + completion * Decimal(15000)) / Decimal(1_000_000)
    assert started.cost_usd == pytest.approx(by_hand)
    assert started.cost_usd > 0 and started.status == "failed"
    assert queued.cost_usd == 0 and queued.status == "failed"  # never answered: costs nothing
