from django.urls import path

from routing.views.classify import ClassificationDetail, ClassificationList, ClassifyView
from routing.views.rankings import ModelRankingList
from routing.views.select import models_select

urlpatterns = [
    path("model-rankings", ModelRankingList.as_view(), name="model-rankings"),
    path("classify", ClassifyView.as_view(), name="classify"),
    path("classifications", ClassificationList.as_view(), name="classification-list"),
    path("classifications/<int:pk>", ClassificationDetail.as_view(), name="classification-detail"),
    path("models/select", models_select, name="models-select"),
]
