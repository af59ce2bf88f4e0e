from django.apps import AppConfig


class ResponseCacheConfig(AppConfig):
    name = "response_cache"
    verbose_name = "Response cache"
