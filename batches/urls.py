from django.urls import path

from batches import views

urlpatterns = [
    path("batches", views.batch_collection, name="batches"),
    path("batches/<int:job_id>", views.batch_detail, name="batch-detail"),
    path("batches/<int:job_id>/pause", views.batch_pause, name="batch-pause"),
    path("batches/<int:job_id>/resume", views.batch_resume, name="batch-resume"),
    path("batches/<int:job_id>/cancel", views.batch_cancel, name="batch-cancel"),
    path("batches/<int:job_id>/results", views.batch_results, name="batch-results"),
    path("batches/<int:job_id>/items", views.batch_items, name="batch-items"),
]
