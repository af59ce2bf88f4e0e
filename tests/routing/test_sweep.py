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
