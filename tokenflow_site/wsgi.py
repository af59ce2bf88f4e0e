"""WSGI entry point (admin and REST only; streaming needs ASGI)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenflow_site.settings")
application = get_wsgi_application()
