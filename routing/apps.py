from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"

    def ready(self) -> None:
        from routing import signals  # noqa: F401  (connects the route-change receivers)
        from tokenflow_site.assets import use_tiktoken_cache

        use_tiktoken_cache()
