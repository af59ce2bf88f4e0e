from django.urls import path

from routing.views.rankings import ModelRankingList

urlpatterns = [
    path("model-rankings", ModelRankingList.as_view(), name="model-rankings"),
]
