from django.urls import path

from pipelines.views import RunDetailView, process_view

urlpatterns = [
    path("process", process_view, name="process"),
    path("process/<int:run_id>", RunDetailView.as_view(), name="process-run"),
]
