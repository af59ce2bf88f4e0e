"""GET /api/usage: requests, tokens, cost, cache hits and savings, grouped by model, day or
API key (a key sees its own usage; staff see everyone's)."""

import datetime

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routing.selectors import USAGE_GROUPS, usage_summary
from tokenflow_site.endpoints import query_validate
from tokenflow_site.errors import ErrorSerializer

MAX_RANGE_DAYS = 3660


class DateOrDateTimeField(serializers.DateTimeField):
    """An ISO 8601 date (`2026-12-04`: midnight UTC) or datetime; remembers which."""

    def to_internal_value(self, value):
        if isinstance(value, str) and len(value.strip()) == 10:
            try:
                day = datetime.date.fromisoformat(value.strip())
            except ValueError:
                self.fail("invalid", format="YYYY-MM-DD or an ISO 8601 datetime")
            return datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.UTC), True
        return super().to_internal_value(value), False


class UsageQuerySerializer(serializers.Serializer):
    group_by = serializers.ChoiceField(choices=USAGE_GROUPS, default="model")
    start = DateOrDateTimeField(
        required=False, help_text="From (inclusive): an ISO date or datetime; default 30 days ago."
    )
    end = DateOrDateTimeField(
        required=False,
        help_text="Until: a datetime is exclusive, a date includes that whole day; default now.",
    )

    def validate(self, attrs):
        now = datetime.datetime.now(datetime.UTC)
        end, end_is_date = attrs.get("end") or (now, False)
        if end_is_date:
            end += datetime.timedelta(days=1)
        start = (attrs.get("start") or (end - datetime.timedelta(days=30), False))[0]
        if start >= end:
            raise serializers.ValidationError({"end": "end must be after start."})
        if end - start > datetime.timedelta(days=MAX_RANGE_DAYS):
            raise serializers.ValidationError(
                {"start": f"The range may span at most {MAX_RANGE_DAYS} days."}
            )
        return {"group_by": attrs["group_by"], "start": start, "end": end}


class UsageTotalSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost_usd = serializers.FloatField()
    cache_hits = serializers.IntegerField()
    saved_usd = serializers.FloatField()
    errors = serializers.IntegerField()


class UsageRowSerializer(UsageTotalSerializer):
    model = serializers.CharField(required=False, help_text="group_by=model")
    day = serializers.DateField(required=False, help_text="group_by=day (UTC)")
    api_key = serializers.CharField(
        required=False, allow_null=True, help_text="group_by=key: the key's prefix"
    )
    api_key_name = serializers.CharField(required=False, allow_null=True)


class UsageSerializer(serializers.Serializer):
    group_by = serializers.ChoiceField(choices=USAGE_GROUPS)
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    data = UsageRowSerializer(many=True)
    total = UsageTotalSerializer()


class UsageView(APIView):
    """Usage in [start, end): generations and batch attempts of the caller's key (all keys
    for staff), per model, UTC day or key."""

    query_serializer = UsageQuerySerializer

    @extend_schema(
        parameters=[UsageQuerySerializer],
        responses={200: UsageSerializer, 400: OpenApiResponse(ErrorSerializer)},
        summary="Requests, tokens, cost, cache hits and savings",
    )
    def get(self, request: Request) -> Response:
        query = query_validate(UsageQuerySerializer, request)
        rows, total = usage_summary(principal=request.auth, **query)
        return Response(
            {
                "group_by": query["group_by"],
                "start": query["start"],
                "end": query["end"],
                "data": rows,
                "total": total,
            }
        )
