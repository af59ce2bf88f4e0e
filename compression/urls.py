from django.urls import path

from compression import views

urlpatterns = [
    path("compress", views.compress, name="compress"),
    path("compressions", views.CompressionList.as_view(), name="compression-list"),
    path("compressions/<int:pk>", views.CompressionDetail.as_view(), name="compression-detail"),
]
