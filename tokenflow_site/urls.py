from django.contrib import admin
from django.db import connection
from django.http import JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from routing.views.metrics import metrics
from web.views import images_from_this_server

admin.site.site_header = "TokenFlow"
admin.site.site_title = "TokenFlow admin"
admin.site.index_title = "Gateway records and routing tables"
admin.site.site_url = "/"  # "View site": the playground

handler404 = "tokenflow_site.errors.handler404"
handler500 = "tokenflow_site.errors.handler500"


def healthz(request):
    """Liveness plus a cheap database round trip."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path(
        "api/redoc/",
        # The stock template loads Google Fonts and the bundle a logo: nothing off-box here.
        images_from_this_server(
            SpectacularRedocView.as_view(url_name="schema", template_name="web/redoc.html")
        ),
        name="redoc",
    ),
    path("api/", include("routing.urls")),
    path("api/", include("compression.urls")),
    path("api/", include("pipelines.urls")),
    path("api/", include("batches.urls")),
    path("v1/", include("routing.openai_urls")),
    path("v1/", include("openai_batches.urls")),
    path("metrics", metrics, name="metrics"),
    path("", include("web.urls")),
]
