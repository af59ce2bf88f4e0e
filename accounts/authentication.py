"""DRF adapter: the middleware already authenticated the request."""

from rest_framework.authentication import BaseAuthentication


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        key = getattr(request._request, "api_key", None)
        if key is None:
            return None
        return (key.user, key)

    def authenticate_header(self, request) -> str:
        return "Bearer"
