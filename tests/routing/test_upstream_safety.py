"""Staff-side guards: a model row can neither send a server secret upstream nor aim the
gateway at internal hosts (issue 11, finding 7)."""

import pytest
from django.core.exceptions import ValidationError

from routing.models import ModelRanking
from routing.providers.base import ProviderError
from routing.providers.registry import provider_for

pytestmark = pytest.mark.django_db


def custom(**fields) -> ModelRanking:
    return ModelRanking(name="custom/x", provider="custom", upstream_model="x", **fields)


@pytest.mark.parametrize(
    "name", ["SECRET_KEY", "DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "HOME", "PATH"]
)
def test_server_secrets_and_other_variables_cannot_hold_a_provider_key(monkeypatch, name):
    monkeypatch.setenv(name, "something")
    model = custom(base_url="https://api.example.com/v1", api_key_env=name)
    with pytest.raises(ValidationError) as info:
        model.full_clean()
    assert "api_key_env" in info.value.message_dict
    with pytest.raises(ProviderError) as refused:  # a row saved around the form
        provider_for(model).check_ready()
    assert refused.value.code == "provider_not_configured"
    assert name not in refused.value.public_message


def test_a_provider_key_variable_is_accepted(monkeypatch):
    monkeypatch.setenv("ACME_API_KEY", "k" * 20)
    model = custom(base_url="https://api.example.com/v1", api_key_env="ACME_API_KEY")
    model.full_clean()
    provider_for(model).check_ready()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "http://localhost/v1",
        "http://10.0.0.5/v1",
        "http://192.168.1.10/v1",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9000/v1",
        "http://[::ffff:127.0.0.1]/v1",
        "http://0.0.0.0/v1",
    ],
)
def test_private_loopback_and_link_local_upstreams_are_refused(settings, url):
    settings.TOKENFLOW_ALLOW_PRIVATE_UPSTREAMS = False
    model = custom(base_url=url)
    with pytest.raises(ValidationError) as info:
        model.full_clean()
    assert "TOKENFLOW_ALLOW_PRIVATE_UPSTREAMS" in info.value.message_dict["base_url"][0]
    with pytest.raises(ProviderError):
        provider_for(model).check_ready()


def test_local_servers_are_allowed_when_the_operator_says_so(settings):
    settings.TOKENFLOW_ALLOW_PRIVATE_UPSTREAMS = True
    custom(base_url="http://127.0.0.1:11434/v1").full_clean()


@pytest.mark.parametrize(
    "url", ["ftp://example.com/v1", "file:///etc/passwd", "https://user:pw@example.com/v1"]
)
def test_only_plain_http_urls(settings, url):
    settings.TOKENFLOW_ALLOW_PRIVATE_UPSTREAMS = True
    with pytest.raises(ValidationError):
        custom(base_url=url).full_clean()
