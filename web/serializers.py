"""Parameters of the pages, validated by DRF serializers (the project's one validation layer)."""

from rest_framework import serializers

RANGES = {"hour": "Last hour", "day": "Last day", "week": "Last week"}
DEFAULT_RANGE = "day"


class RangeSerializer(serializers.Serializer):
    range = serializers.ChoiceField(choices=list(RANGES), required=False, default=DEFAULT_RANGE)
