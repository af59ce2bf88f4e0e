"""The Generation admin: full text, timings, filters."""

import pytest

from routing.models import Generation
from tests.factories import mock_model

pytestmark = pytest.mark.django_db


def test_admin_shows_full_text_and_filters(staff_client):
    model = mock_model("mock/admin")
    row = Generation.objects.create(
        model=model,
        model_name=model.name,
        provider="mock",
        status="completed",
        output_text="the full answer " * 20,
        ttft_ms=12.5,
    )
    listing = staff_client.get("/admin/routing/generation/?status=completed&provider=mock")
    assert listing.status_code == 200 and b"mock/admin" in listing.content
    detail = staff_client.get(f"/admin/routing/generation/{row.pk}/change/")
    assert detail.status_code == 200
    assert (b"the full answer " * 20).strip() in detail.content and b"12.5" in detail.content
