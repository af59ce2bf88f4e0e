"""What staff may point the gateway at: which environment variable may hold a provider
key, and which base URLs a model may call.

A ModelRanking row is typed in the admin; without these checks `api_key_env=SECRET_KEY`
sends Django's secret as a Bearer token to any `base_url`, and `base_url` can aim the
gateway at internal services (SSRF). Checked when the row is saved (model `clean`) and
again before every upstream call (`check_ready`), so rows made any other way are covered.
"""

import ipaddress
import socket
import time
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from django.conf import settings

# Never sent upstream, whatever the allow pattern says.
DENIED_ENV = ("SECRET_KEY", "DJANGO_*", "DATABASE_*", "REDIS_*", "*PASSWORD*", "TOKENFLOW_*")

_resolved: dict[str, tuple[float, list[str]]] = {}
RESOLVE_TTL = 60.0


def api_key_env_problem(name: str) -> str | None:
    """Why `name` may not hold a provider key (None if it may)."""
    if not name:
        return None
    if any(fnmatchcase(name.upper(), pattern) for pattern in DENIED_ENV):
        return f"{name!r} is a server secret, not a provider key."
    allowed = settings.TOKENFLOW_API_KEY_ENV_PATTERNS
    if not any(fnmatchcase(name, pattern) for pattern in allowed):
        return f"{name!r} does not match the allowed key variables ({', '.join(allowed)})."
    return None


def _addresses(host: str) -> list[str]:
    """The IP addresses `host` resolves to (cached for a minute); [] if it does not."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    cached = _resolved.get(host)
    if cached and time.monotonic() - cached[0] < RESOLVE_TTL:
        return cached[1]
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        addresses = sorted({info[4][0].split("%")[0] for info in infos})
    except (OSError, UnicodeError):
        addresses = []
    _resolved[host] = (time.monotonic(), addresses)
    return addresses


def _is_internal(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def base_url_problem(url: str) -> str | None:
    """Why a model may not call `url` (None if it may): http(s) only, and no private,
    loopback or link-local address unless TOKENFLOW_ALLOW_PRIVATE_UPSTREAMS is set."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "the base URL must be an http(s) URL with a host."
    if parts.username or parts.password:
        return "the base URL must not carry credentials (use the key variable)."
    if settings.TOKENFLOW_ALLOW_PRIVATE_UPSTREAMS:
        return None
    internal = [a for a in _addresses(parts.hostname) if _is_internal(a)]
    if internal:
        return (
            f"{parts.hostname} is a private, loopback or link-local address ({internal[0]}); "
            "set TOKENFLOW_ALLOW_PRIVATE_UPSTREAMS=1 to allow local OpenAI-compatible servers."
        )
    return None
