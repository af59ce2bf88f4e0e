"""GET /api/generations (filterable, paginated) and /api/generations/<id>."""

from rest_framework import generics

from routing.selectors import generation_list
from routing.serializers import GenerationSerializer


class _Scoped:
    def get_queryset(self):
        params = self.request.query_params
        return generation_list(
            api_key=self.request.api_key,
            user=getattr(self.request._request, "user", None),
            status=params.get("status"),
            model=params.get("model"),
            provider=params.get("provider"),
            transport=params.get("transport"),
        )


class GenerationList(_Scoped, generics.ListAPIView):
    """Generations, newest first; filters: status, model, provider, transport."""

    serializer_class = GenerationSerializer


class GenerationDetail(_Scoped, generics.RetrieveAPIView):
    """One generation with its full input, output, timings and attempts."""

    serializer_class = GenerationSerializer
