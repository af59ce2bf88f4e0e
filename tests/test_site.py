"""Project-wide behaviour: JSON errors, admin access, deploy checks, migrations."""

import os
import subprocess
import sys

import pytest
from django.apps import apps
from django.conf import settings
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_unknown_route_is_json_404(client, auth):
    response = client.get("/api/nope", **auth)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "not_found"


def test_unknown_top_level_route_is_json_404(client):
    response = client.get("/definitely-not-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_wrong_method_is_json_405(client, auth):
    response = client.delete("/api/model-rankings", **auth)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


ADMIN_MODELS = [
    m for m in apps.get_models() if m._meta.app_label in {"accounts", "routing", "compression"}
]


@pytest.mark.parametrize("model", ADMIN_MODELS, ids=lambda m: m._meta.label)
def test_admin_changelist_renders_for_staff(staff_client, model):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    response = staff_client.get(url)
    assert response.status_code == 200


def test_admin_redirects_anonymous_to_login(client):
    response = client.get(reverse("admin:routing_categoryroute_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_admin_shows_seeded_routing_tables(staff_client):
    body = staff_client.get(reverse("admin:routing_categoryroute_changelist")).content.decode()
    assert "function-calling" in body and "local/smollm2-135m-instruct" in body


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_check_deploy_is_clean_with_production_env():
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="0",
        HTTPS="1",
        SECRET_KEY="x" * 20 + "a-real-looking-secret-key-0123456789!@#$",
        ALLOWED_HOSTS="tokenflow.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_no_missing_migrations():
    result = _manage("makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_setting_read_from_the_environment_is_in_the_readme():
    """The README's tables document every variable settings.py reads."""
    import re

    from django.conf import settings

    source = (settings.BASE_DIR / "tokenflow_site" / "settings.py").read_text()
    names = set(re.findall(r'(?:environ\.get|env_bool|env_list)\(\s*"([A-Z0-9_]+)"', source))
    readme = (settings.BASE_DIR / "README.md").read_text()
    missing = sorted(name for name in names if name not in readme)
    assert len(names) > 50 and not missing, missing
