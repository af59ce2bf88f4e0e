from django.urls import path

from pipelines.views import process_view, run_view

urlpatterns = [
    path("process", process_view, name="process"),
    path("process/<int:run_id>", run_view, name="process-run"),
]
