from django.urls import path

from batches import views

urlpatterns = [
    path("batches", views.BatchCollection.as_view(), name="batches"),
    path("batches/<int:job_id>", views.BatchDetail.as_view(), name="batch-detail"),
    path("batches/<int:job_id>/pause", views.BatchPause.as_view(), name="batch-pause"),
    path("batches/<int:job_id>/resume", views.BatchResume.as_view(), name="batch-resume"),
    path("batches/<int:job_id>/cancel", views.BatchCancel.as_view(), name="batch-cancel"),
    path("batches/<int:job_id>/results", views.BatchResults.as_view(), name="batch-results"),
    path("batches/<int:job_id>/items", views.BatchItemList.as_view(), name="batch-items"),
]
