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
