from django.apps import AppConfig


class RollupsConfig(AppConfig):
    """Hourly aggregates of generations, classifications and compressions (the dashboard's
    day and week views read them instead of the raw rows)."""

    name = "rollups"
    verbose_name = "Dashboard rollups"
