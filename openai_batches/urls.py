"""/v1/files and /v1/batches (mounted under /v1/ next to routing.openai_urls)."""

from django.urls import path

from openai_batches import views

urlpatterns = [
    path("files", views.FileCollection.as_view(), name="openai-files"),
    path("files/<str:file_id>", views.FileDetail.as_view(), name="openai-file"),
    path("files/<str:file_id>/content", views.FileContent.as_view(), name="openai-file-content"),
    path("batches", views.BatchCollection.as_view(), name="openai-batches"),
    path("batches/<str:batch_id>", views.BatchDetail.as_view(), name="openai-batch"),
    path("batches/<str:batch_id>/cancel", views.BatchCancel.as_view(), name="openai-batch-cancel"),
]
