"""DRF adapter: the middleware already authenticated and authorized the request."""

from rest_framework.authentication import BaseAuthentication


class PrincipalAuthentication(BaseAuthentication):
    """`request.user` is the key's owner or the staff user; `request.auth` the Principal."""

    def authenticate(self, request):
        principal = getattr(request._request, "principal", None)
        if principal is None:
            return None
        return (principal.user, principal)

    def authenticate_header(self, request) -> str:
        return "Bearer"
