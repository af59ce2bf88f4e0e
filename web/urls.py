from django.urls import path

from web import views

app_name = "web"

urlpatterns = [
    path("", views.playground, name="playground"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/data", views.dashboard_data, name="dashboard-data"),
]
