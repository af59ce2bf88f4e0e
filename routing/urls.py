from django.urls import path

from routing.views.generate import generate
from routing.views.generations import GenerationDetail, GenerationList
from routing.views.rankings import ModelRankingList

urlpatterns = [
    path("model-rankings", ModelRankingList.as_view(), name="model-rankings"),
    path("generate", generate, name="generate"),
    path("generations", GenerationList.as_view(), name="generation-list"),
    path("generations/<int:pk>", GenerationDetail.as_view(), name="generation-detail"),
]
