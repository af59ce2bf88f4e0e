"""The admin shows compressions read-only, original and compressed text side by side."""

import pytest

from compression.models import Compression


@pytest.mark.django_db
def test_admin_is_read_only_side_by_side(staff_client):
    row = Compression.objects.create(
        original_text="The original <b>prompt</b> text",
        compressed_text="original prompt",
        original_tokens=6,
        compressed_tokens=2,
        requested_ratio=0.33,
        ratio=2 / 6,
        engine="fast",
        duration_ms=12.5,
    )
    listing = staff_client.get("/admin/compression/compression/")
    assert listing.status_code == 200
    assert b"fast" in listing.content
    page = staff_client.get(f"/admin/compression/compression/{row.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "The original &lt;b&gt;prompt&lt;/b&gt; text" in html  # escaped
    assert "12.5" in html
    assert 'name="_save"' not in html
    assert staff_client.get("/admin/compression/compression/add/").status_code == 403
