from django.apps import AppConfig


class WebConfig(AppConfig):
    """The staff pages: playground, dashboard (and its live socket), admin look."""

    name = "web"
    verbose_name = "Web pages"
