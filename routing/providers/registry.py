"""Pick the provider backend of a ModelRanking by the dotted path in TOKENFLOW_PROVIDERS."""

from django.conf import settings
from django.utils.module_loading import import_string

from routing.models import ModelRanking
from routing.providers.base import BaseProvider


def provider_for(model: ModelRanking) -> BaseProvider:
    path = settings.TOKENFLOW_PROVIDERS[model.provider]
    endpoint = settings.TOKENFLOW_PROVIDER_ENDPOINTS.get(model.provider, {})
    return import_string(path)(
        name=model.name,
        options=model.options,
        provider=model.provider,
        base_url=model.base_url or None,
        api_key_env=model.api_key_env or endpoint.get("key_env", ""),
        endpoint=endpoint,
    )
