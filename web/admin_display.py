"""Formatting helpers shared by the admin screens: truncated text, units, links."""

from django.contrib import admin
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

EMPTY = "–"


def truncated(text: str | None, length: int = 80) -> str:
    """One line of at most `length` characters (the full text is on the change page)."""
    if not text:
        return EMPTY
    line = " ".join(str(text).split())
    return line if len(line) <= length else line[: length - 1].rstrip() + "…"


def ms(value: float | None) -> str:
    """12.53 -> '12.5 ms'; 4627.0738 -> '4,627 ms'; 61234 -> '61.2 s'."""
    if value is None:
        return EMPTY
    if value >= 60_000:
        return f"{value / 1000:,.1f} s"
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def tokens(value: int | None) -> str:
    return EMPTY if value is None else f"{value:,} tok"


def usd(value) -> str:
    """0.0001234 -> '$0.000123'; 12.5 -> '$12.500000' (costs are small: six decimals)."""
    return EMPTY if value is None else f"${value:,.6f}"


def percent(value: float | None, digits: int = 1) -> str:
    return EMPTY if value is None else f"{100 * value:.{digits}f} %"


def admin_link(app_model: str, pk, label: str | None = None) -> str:
    """A link to the change page of `app_label.model` #pk ('–' when there is none)."""
    if pk is None:
        return EMPTY
    app_label, model = app_model.split(".")
    try:
        url = reverse(f"admin:{app_label}_{model}_change", args=[pk])
    except NoReverseMatch:
        return label or f"#{pk}"
    return format_html('<a href="{}">{}</a>', url, label or f"#{pk}")


def changelist_link(app_model: str, query: str, label: str) -> str:
    app_label, model = app_model.split(".")
    url = reverse(f"admin:{app_label}_{model}_changelist")
    return format_html('<a href="{}?{}">{}</a>', url, query, label)


class TimingColumns:
    """ModelAdmin mixin: `ttft` and `duration` columns with units, sortable by the raw
    `ttft_ms` / `duration_ms` fields (generations, classifications, runs, compressions)."""

    @admin.display(description="TTFT", ordering="ttft_ms")
    def ttft(self, obj):
        return ms(obj.ttft_ms)

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj):
        return ms(obj.duration_ms)
